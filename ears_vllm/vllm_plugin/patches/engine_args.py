"""Patch ``EngineArgs.create_speculative_config``: accept ``rejection_sampler`` / ``alpha`` in --speculative-config.

Why: ``SpeculativeConfig`` is a pydantic dataclass with ``extra="forbid"``; the two EARS keys would be rejected.
How: before the original runs, pop the two keys and build the one ``EarsSettings`` (validated: a one-line
``EarsConfigError``; a hand-written ``--additional-config '{"ears": {...}}'`` is checked the same way), and put
``settings.as_dict()`` in ``EngineArgs.additional_config["ears"]``, which becomes ``VllmConfig.additional_config``
(built right after) and is pickled to the engine core and every worker, tensor-parallel ranks included. This runs in
the front-end inside ``create_engine_config``, before any model weights load, so ``vllm serve`` stops early on a
bad value.
Active without EARS: no (a speculative config without the two keys passes through untouched).
Versions: vLLM 0.32.x (run), 0.33.x (same code, read).
Remove when: vLLM lets a plugin register rejection samplers with their own config keys.
"""

from __future__ import annotations

import sys
import threading

from ..config import ADDITIONAL_CONFIG_KEY, EarsConfigError, EarsSettings
from ._patch import log_once, wrap


def _install_one_line_excepthook() -> None:
    """Make an uncaught EarsConfigError print one line (the CLI would otherwise print a long traceback)."""
    if threading.current_thread() is not threading.main_thread() or getattr(sys.excepthook, "_ears", False):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, EarsConfigError):
            print(f"Error: {exc}", file=sys.stderr)
        else:
            previous(exc_type, exc, tb)

    hook._ears = True
    sys.excepthook = hook


def _settings(args) -> EarsSettings | None:
    spec = args.speculative_config
    if isinstance(spec, dict):
        # As vLLM does next for its own keys: "rejection-sampler" is "rejection_sampler".
        spec = {k.replace("-", "_"): v for k, v in spec.items()}
        has_method = bool(spec.get("method") or spec.get("model") or args.spec_method or args.spec_model)
        settings = EarsSettings.pop_from(spec, has_method)
        if settings is not None:
            # With only the EARS keys left over there is no speculative config at all.
            args.speculative_config = spec or None
            return settings
    return EarsSettings.from_additional_config(args.additional_config)


def apply(arg_utils) -> None:
    @wrap(arg_utils.EngineArgs, "create_speculative_config")
    def create_speculative_config(original, self, *args, **kwargs):
        try:
            settings = _settings(self)
            if settings is not None:
                settings.check_engine(getattr(self, "watermark_config", None))
        except EarsConfigError:
            _install_one_line_excepthook()
            raise
        if settings is not None:
            self.additional_config = {**(self.additional_config or {}), ADDITIONAL_CONFIG_KEY: settings.as_dict()}
            log_once("config", "EARS config: %s", settings.as_dict())
        return original(self, *args, **kwargs)

"""Patch ``EngineArgs.create_speculative_config``: accept ``rejection_sampler`` / ``alpha`` in --speculative-config.

Why: ``SpeculativeConfig`` is a pydantic dataclass with ``extra="forbid"``; the two EARS keys would be rejected.
How: before the original runs, pop and validate the two keys (one-line ``EarsConfigError``), and put the result in
``EngineArgs.additional_config["ears"]``, which becomes ``VllmConfig.additional_config`` (built right after) and is
pickled to the engine core and every worker, tensor-parallel ranks included. This runs in the front-end inside
``create_engine_config``, before any model weights load, so ``vllm serve`` stops early on a bad value.
Versions: vLLM 0.32.x (run), 0.33.x (same code, read).
Remove when: vLLM lets a plugin register rejection samplers with their own config keys.
"""

from __future__ import annotations

import sys
import threading

from ..config import ADDITIONAL_CONFIG_KEY, EarsConfigError, pop_ears_settings
from ._hooks import log_once


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


def apply(arg_utils) -> None:
    cls = arg_utils.EngineArgs
    original = cls.create_speculative_config
    if getattr(original, "_ears", False):
        return

    def create_speculative_config(self, *args, **kwargs):
        spec = self.speculative_config
        if isinstance(spec, dict):
            # As vLLM does next for its own keys: "rejection-sampler" is "rejection_sampler".
            spec = {k.replace("-", "_"): v for k, v in spec.items()}
            has_method = bool(spec.get("method") or spec.get("model") or self.spec_method or self.spec_model)
            try:
                settings = pop_ears_settings(spec, has_method)
            except EarsConfigError:
                _install_one_line_excepthook()
                raise
            if settings is not None:
                # With only the EARS keys left over there is no speculative config at all.
                self.speculative_config = spec or None
                self.additional_config = {**(self.additional_config or {}), ADDITIONAL_CONFIG_KEY: settings.as_dict()}
                log_once("config", "EARS config: %s", settings.as_dict())
        return original(self, *args, **kwargs)

    create_speculative_config._ears = True
    create_speculative_config.__wrapped__ = original
    cls.create_speculative_config = create_speculative_config

"""The two speculative-config keys EARS adds, their validation, and how they travel to every process.

``--speculative-config '{"method": "ngram", ..., "rejection_sampler": "ears", "alpha": 0.3}'``

- ``rejection_sampler``: ``"ears"`` or ``"standard"`` (default; vLLM's own sampler, untouched).
- ``alpha``: a number in [0, 1]; only with ``"ears"``; default ``DEFAULT_ALPHA`` (0.3, the paper's setting).

The front-end removes both keys before vLLM builds its ``SpeculativeConfig`` (which forbids unknown keys) and
stores the validated values in ``VllmConfig.additional_config["ears"]``, a free-form dict that vLLM pickles to the
engine core and to every worker / tensor-parallel rank. Workers read them back with ``ears_settings()``.

Per request: ``SamplingParams(extra_args={"ears_alpha": 0.1})`` (OpenAI: ``extra_body={"vllm_xargs": {...}}``).
This module imports nothing from vLLM, so it is cheap to use anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, Mapping

SAMPLER_KEY = "rejection_sampler"
ALPHA_KEY = "alpha"
REQUEST_ALPHA_KEY = "ears_alpha"
ADDITIONAL_CONFIG_KEY = "ears"
SAMPLERS = ("standard", "ears")
DEFAULT_ALPHA = 0.3


class EarsConfigError(ValueError):
    """A bad EARS setting. Its message is one line: the key, the value, and what is allowed."""


@dataclass(frozen=True)
class EarsSettings:
    rejection_sampler: str = "standard"
    alpha: float = DEFAULT_ALPHA

    @property
    def enabled(self) -> bool:
        return self.rejection_sampler == "ears"

    def as_dict(self) -> dict[str, Any]:
        if not self.enabled:
            return {SAMPLER_KEY: self.rejection_sampler}
        return {SAMPLER_KEY: self.rejection_sampler, ALPHA_KEY: self.alpha}


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_alpha_value(value: Any, where: str) -> float:
    """Return ``value`` as a float in [0, 1], or raise EarsConfigError naming ``where``."""
    if not _is_number(value) or math.isnan(float(value)) or not 0.0 <= float(value) <= 1.0:
        raise EarsConfigError(f"{where}={value!r} is not allowed: it must be a number in [0, 1]")
    return float(value)


def pop_ears_settings(spec: dict[str, Any], has_method: bool) -> EarsSettings | None:
    """Remove ``rejection_sampler`` / ``alpha`` from a speculative-config dict (in place) and validate them.

    Returns None when neither key is present. ``has_method`` says whether the dict (or a ``--spec-*`` flag) names a
    speculative method or draft model: the keys mean nothing without one.
    """
    if SAMPLER_KEY not in spec and ALPHA_KEY not in spec:
        return None
    has_sampler, has_alpha = SAMPLER_KEY in spec, ALPHA_KEY in spec
    sampler = spec.pop(SAMPLER_KEY, "standard")
    alpha = spec.pop(ALPHA_KEY, DEFAULT_ALPHA)
    if sampler not in SAMPLERS:
        raise EarsConfigError(
            f"speculative_config[{SAMPLER_KEY!r}]={sampler!r} is not allowed: use one of {', '.join(map(repr, SAMPLERS))}"
        )
    alpha = check_alpha_value(alpha, f"speculative_config[{ALPHA_KEY!r}]")
    if has_alpha and sampler != "ears":
        raise EarsConfigError(
            f"speculative_config[{ALPHA_KEY!r}]={alpha!r} is not allowed with {SAMPLER_KEY}={sampler!r}: "
            f"alpha needs {SAMPLER_KEY}='ears'"
        )
    if not has_method:
        key, value = (SAMPLER_KEY, sampler) if has_sampler else (ALPHA_KEY, alpha)
        raise EarsConfigError(
            f"speculative_config[{key!r}]={value!r} is not allowed without a speculative method: "
            f"add \"method\" (ngram, draft_model, eagle3, ...) or \"model\""
        )
    method = spec.get("rejection_sample_method", "standard")
    if sampler == "ears" and method not in (None, "standard"):
        raise EarsConfigError(
            f"speculative_config['rejection_sample_method']={method!r} is not allowed with {SAMPLER_KEY}='ears': "
            f"leave it at 'standard'"
        )
    return EarsSettings(rejection_sampler=sampler, alpha=alpha)


def ears_settings(additional_config: Mapping[str, Any] | None) -> EarsSettings | None:
    """The settings carried in ``VllmConfig.additional_config`` (None when EARS was never configured)."""
    raw = (additional_config or {}).get(ADDITIONAL_CONFIG_KEY)
    if not raw:
        return None
    # A hand-written --additional-config '{"ears": {...}}' goes through the same checks.
    raw = dict(raw)
    settings = pop_ears_settings(raw, has_method=True)
    if raw:
        raise EarsConfigError(
            f"additional_config[{ADDITIONAL_CONFIG_KEY!r}] has unknown keys {sorted(raw)}: "
            f"only {SAMPLER_KEY!r} and {ALPHA_KEY!r} are allowed"
        )
    return settings


def check_request_alpha(extra_args: Mapping[str, Any] | None) -> float | None:
    """The per-request alpha from ``SamplingParams.extra_args`` (None if absent); raises EarsConfigError if bad."""
    if not extra_args or REQUEST_ALPHA_KEY not in extra_args:
        return None
    return check_alpha_value(extra_args[REQUEST_ALPHA_KEY], f"extra_args[{REQUEST_ALPHA_KEY!r}]")

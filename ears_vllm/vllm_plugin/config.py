"""The EARS settings: the speculative-config keys EARS adds, one validated object, and how it travels.

``--speculative-config '{"method": "ngram", ..., "rejection_sampler": "ears", "alpha": 0.3, "tv_budget": 2}'``

- ``rejection_sampler``: ``"ears"`` or ``"standard"`` (default; vLLM's own sampler, untouched).
- ``alpha``: a number in [0, 1]; only with ``"ears"``; default ``DEFAULT_ALPHA`` (0.3, the paper's setting).
- ``tv_budget``: a number >= 0; only with ``"ears"``; default none. Each request's tolerance is at most what is left
  of B, and it spends the exact expected TV cost of every position it verifies, so its completion's distribution
  is within total variation B of the target model's (``docs/vllm.md``, "TV budget"). 0 is the standard rule.

``EarsSettings`` is the one settings object: it validates itself when built, whoever builds it. The front-end
(``patches/engine_args.py``) builds it once, before any model loads, from the speculative config (or a hand-written
``--additional-config '{"ears": {...}}'``), and stores ``settings.as_dict()`` in ``VllmConfig.additional_config
["ears"]``: vLLM hashes that dict as JSON and pickles it to the engine core and every worker / tensor-parallel rank.
Every consumer reads it back with ``EarsSettings.of(vllm_config)``.

Per request: ``SamplingParams(extra_args={"ears_alpha": 0.1, "ears_tv_budget": 1.5})`` (OpenAI:
``extra_body={"vllm_xargs": {...}}``), checked by ``request_alpha()`` and ``request_tv_budget()``. This module
imports nothing from vLLM, so it is cheap to use anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, Mapping

from .._common import check_alpha

SAMPLER_KEY = "rejection_sampler"
ALPHA_KEY = "alpha"
TV_BUDGET_KEY = "tv_budget"
REQUEST_ALPHA_KEY = "ears_alpha"
REQUEST_TV_BUDGET_KEY = "ears_tv_budget"
ADDITIONAL_CONFIG_KEY = "ears"
SAMPLERS = ("standard", "ears")
DEFAULT_ALPHA = 0.3


class EarsConfigError(ValueError):
    """A bad EARS setting. Its message is one line: the key, the value, and what is allowed."""


def check_tv_budget(budget, name: str) -> float:
    """A TV budget: a real number >= 0 (inf allowed: no budget), NaN and booleans rejected; returns a float."""
    if isinstance(budget, bool) or not isinstance(budget, Real) or math.isnan(budget) or budget < 0:
        raise EarsConfigError(f"{name}={budget!r} is not allowed: it must be a number >= 0")
    return float(budget)


@dataclass(frozen=True)
class EarsSettings:
    """``rejection_sampler``, ``alpha`` and ``tv_budget``, validated on construction (``EarsConfigError``)."""

    rejection_sampler: str = "standard"
    alpha: float = DEFAULT_ALPHA
    tv_budget: float | None = None

    def __post_init__(self):
        if self.rejection_sampler not in SAMPLERS:
            raise EarsConfigError(
                f"speculative_config[{SAMPLER_KEY!r}]={self.rejection_sampler!r} is not allowed: "
                f"use one of {', '.join(map(repr, SAMPLERS))}"
            )
        object.__setattr__(self, "alpha",
                           check_alpha(self.alpha, f"speculative_config[{ALPHA_KEY!r}]", EarsConfigError))
        if self.tv_budget is not None:
            object.__setattr__(self, "tv_budget",
                               check_tv_budget(self.tv_budget, f"speculative_config[{TV_BUDGET_KEY!r}]"))

    @property
    def enabled(self) -> bool:
        return self.rejection_sampler == "ears"

    def as_dict(self) -> dict[str, Any]:
        if not self.enabled:
            return {SAMPLER_KEY: self.rejection_sampler}
        out = {SAMPLER_KEY: self.rejection_sampler, ALPHA_KEY: self.alpha}
        if self.tv_budget is not None:
            out[TV_BUDGET_KEY] = self.tv_budget
        return out

    @classmethod
    def pop_from(cls, spec: dict[str, Any], has_method: bool) -> EarsSettings | None:
        """Remove ``rejection_sampler`` / ``alpha`` / ``tv_budget`` from a speculative-config dict (in place) and
        validate them.

        Returns None when none of the keys is present. ``has_method`` says whether the dict (or a ``--spec-*``
        flag) names a speculative method or draft model: the keys mean nothing without one.
        """
        has_sampler, has_alpha, has_budget = SAMPLER_KEY in spec, ALPHA_KEY in spec, TV_BUDGET_KEY in spec
        if not (has_sampler or has_alpha or has_budget):
            return None
        settings = cls(spec.pop(SAMPLER_KEY, "standard"), spec.pop(ALPHA_KEY, DEFAULT_ALPHA),
                       spec.pop(TV_BUDGET_KEY, None))
        for key, given, value in ((ALPHA_KEY, has_alpha, settings.alpha),
                                  (TV_BUDGET_KEY, has_budget, settings.tv_budget)):
            if given and not settings.enabled:
                raise EarsConfigError(
                    f"speculative_config[{key!r}]={value!r} is not allowed with "
                    f"{SAMPLER_KEY}={settings.rejection_sampler!r}: {key} needs {SAMPLER_KEY}='ears'"
                )
        if not has_method:
            key, value = ((SAMPLER_KEY, settings.rejection_sampler) if has_sampler else
                          (ALPHA_KEY, settings.alpha) if has_alpha else (TV_BUDGET_KEY, settings.tv_budget))
            raise EarsConfigError(
                f"speculative_config[{key!r}]={value!r} is not allowed without a speculative method: "
                f"add \"method\" (ngram, draft_model, eagle3, ...) or \"model\""
            )
        method = spec.get("rejection_sample_method", "standard")
        if settings.enabled and method not in (None, "standard"):
            raise EarsConfigError(
                f"speculative_config['rejection_sample_method']={method!r} is not allowed with "
                f"{SAMPLER_KEY}='ears': EARS replaces 'standard' verification and cannot combine with "
                f"'block', 'synthetic' or 'fly' (adaptive verification can)"
            )
        return settings

    def check_engine(self, watermark_config) -> None:
        """Refuse what EARS cannot combine with outside the speculative config (front-end, before any model loads).

        Watermarking (MRV2 only) keys the resampled tokens to a watermark whose detector assumes standard
        verification: EARS over-represents accepted drafts, so it is refused rather than silently weakened.
        """
        if self.enabled and watermark_config:
            raise EarsConfigError(
                f"watermark_config={watermark_config!r} is not allowed with {SAMPLER_KEY}='ears': EARS changes which "
                f"tokens are emitted and cannot combine with watermarking; remove one of them"
            )

    @classmethod
    def from_additional_config(cls, additional_config: Mapping[str, Any] | None) -> EarsSettings | None:
        """The settings in ``additional_config["ears"]`` (None when absent); unknown keys are an error."""
        raw = (additional_config or {}).get(ADDITIONAL_CONFIG_KEY)
        if not raw:
            return None
        raw = dict(raw)
        settings = cls.pop_from(raw, has_method=True)
        if raw or settings is None:
            raise EarsConfigError(
                f"additional_config[{ADDITIONAL_CONFIG_KEY!r}] has keys {sorted(raw)}: "
                f"only {SAMPLER_KEY!r}, {ALPHA_KEY!r} and {TV_BUDGET_KEY!r} are allowed"
            )
        return settings

    @classmethod
    def of(cls, vllm_config) -> EarsSettings | None:
        """The settings of a ``VllmConfig`` when EARS verifies its drafts (EARS selected and speculative decoding
        on), else None: the one question every patch asks."""
        settings = cls.from_additional_config(getattr(vllm_config, "additional_config", None))
        if settings is None or not settings.enabled or getattr(vllm_config, "speculative_config", None) is None:
            return None
        return settings


def request_alpha(extra_args: Mapping[str, Any] | None) -> float | None:
    """The per-request alpha from ``SamplingParams.extra_args`` (None if absent); raises EarsConfigError if bad."""
    if not extra_args or REQUEST_ALPHA_KEY not in extra_args:
        return None
    return check_alpha(extra_args[REQUEST_ALPHA_KEY], f"extra_args[{REQUEST_ALPHA_KEY!r}]", EarsConfigError)


def request_tv_budget(extra_args: Mapping[str, Any] | None) -> float | None:
    """The per-request TV budget from ``SamplingParams.extra_args`` (None if absent); raises EarsConfigError."""
    if not extra_args or REQUEST_TV_BUDGET_KEY not in extra_args:
        return None
    return check_tv_budget(extra_args[REQUEST_TV_BUDGET_KEY], f"extra_args[{REQUEST_TV_BUDGET_KEY!r}]")

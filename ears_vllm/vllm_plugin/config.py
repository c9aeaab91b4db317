"""The EARS settings: the speculative-config keys EARS adds, one validated object, and how it travels.

``--speculative-config '{"method": "ngram", ..., "rejection_sampler": "ears", "alpha": 0.3, "tv_budget": 2}'``

- ``rejection_sampler``: ``"ears"`` or ``"standard"`` (default; vLLM's own sampler, untouched).
- ``alpha``: a number in [0, 1]; only with ``"ears"``; default ``DEFAULT_ALPHA`` (0.3, the paper's setting).
- ``tv_budget``: a number >= 0; only with ``"ears"``; default none. Each request's tolerance is at most what is left
  of B, and it spends the exact expected TV cost of every position it verifies, so its completion's distribution
  is within total variation B of the target model's (``docs/vllm.md``, "TV budget"). 0 is the standard rule.

Experimental, evaluation arms beside EARS (V1 runner; ``peers.py``): ``"rejection_sampler": "fly"`` (knobs
``fly_window_size``, default min(6, k-1); ``fly_entropy_threshold``, 0.3; ``fly_entropy_top_k``, 3: vLLM 0.33's
FLy) and ``"typical"`` (``posterior_threshold``, 0.95; ``posterior_alpha``, 0.4: typical acceptance).

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
SAMPLERS = ("standard", "ears", "fly", "typical")
DEFAULT_ALPHA = 0.3


class EarsConfigError(ValueError):
    """A bad EARS setting. Its message is one line: the key, the value, and what is allowed."""


def check_tv_budget(budget, name: str) -> float:
    """A TV budget: a real number >= 0 (inf allowed: no budget), NaN and booleans rejected; returns a float."""
    if isinstance(budget, bool) or not isinstance(budget, Real) or math.isnan(budget) or budget < 0:
        raise EarsConfigError(f"{name}={budget!r} is not allowed: it must be a number >= 0")
    return float(budget)


# Experimental rules, evaluation arms beside EARS (``peers.py``), and their knobs: name -> (default, check).
EXPERIMENTAL = ("fly", "typical")


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EarsConfigError(f"{name}={value!r} is not allowed: it must be an integer >= 1")
    return value


def _non_negative(value, name):
    return check_tv_budget(value, name)


def _probability(value, name):
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value) or not 0 < value <= 1:
        raise EarsConfigError(f"{name}={value!r} is not allowed: it must be a number in (0, 1]")
    return float(value)


# Knob names that are also vLLM's own speculative-config keys (0.33's FLy).
VLLM_KEYS = ("fly_window_size", "fly_entropy_threshold", "fly_entropy_top_k")
RULE_KNOBS = {
    "fly": {"fly_window_size": (None, _positive_int), "fly_entropy_threshold": (0.3, _non_negative),
            "fly_entropy_top_k": (3, _positive_int)},
    "typical": {"posterior_threshold": (0.95, _probability), "posterior_alpha": (0.4, _non_negative)},
}


@dataclass(frozen=True)
class EarsSettings:
    """``rejection_sampler``, ``alpha``, ``tv_budget`` and an experimental rule's knobs, validated on construction
    (``EarsConfigError``)."""

    rejection_sampler: str = "standard"
    alpha: float = DEFAULT_ALPHA
    tv_budget: float | None = None
    knobs: tuple[tuple[str, Any], ...] = ()  # an experimental rule's (name, value), every knob of the rule

    def __post_init__(self):
        if self.rejection_sampler not in SAMPLERS:
            raise EarsConfigError(
                f"speculative_config[{SAMPLER_KEY!r}]={self.rejection_sampler!r} is not allowed: "
                f"use one of {', '.join(map(repr, SAMPLERS))} ('fly' and 'typical': experimental, V1 runner)"
            )
        object.__setattr__(self, "alpha",
                           check_alpha(self.alpha, f"speculative_config[{ALPHA_KEY!r}]", EarsConfigError))
        if self.tv_budget is not None:
            object.__setattr__(self, "tv_budget",
                               check_tv_budget(self.tv_budget, f"speculative_config[{TV_BUDGET_KEY!r}]"))
        given = dict(self.knobs)
        allowed = RULE_KNOBS.get(self.rejection_sampler, {})
        for name in given:
            if name not in allowed:
                raise EarsConfigError(
                    f"speculative_config[{name!r}]={given[name]!r} is not allowed with "
                    f"{SAMPLER_KEY}={self.rejection_sampler!r}: it is a knob of the experimental "
                    f"{next((r for r, k in RULE_KNOBS.items() if name in k), '?')!r} rule"
                )
        knobs = []
        for name, (default, check) in allowed.items():
            value = given.get(name, default)
            knobs.append((name, None if value is None else check(value, f"speculative_config[{name!r}]")))
        object.__setattr__(self, "knobs", tuple(knobs))

    @property
    def enabled(self) -> bool:
        """Whether the plugin's sampler verifies the drafts (EARS, or an experimental rule)."""
        return self.rejection_sampler != "standard"

    @property
    def rule(self) -> str:
        return self.rejection_sampler

    @property
    def tolerance_alpha(self) -> float:
        """The EARS tolerance factor the sampler applies: alpha with EARS, 0 with an experimental rule."""
        return self.alpha if self.rejection_sampler == "ears" else 0.0

    def knob(self, name: str):
        return dict(self.knobs)[name]

    def as_dict(self) -> dict[str, Any]:
        if not self.enabled:
            return {SAMPLER_KEY: self.rejection_sampler}
        if self.rejection_sampler != "ears":
            return {SAMPLER_KEY: self.rejection_sampler, **{k: v for k, v in self.knobs if v is not None}}
        out = {SAMPLER_KEY: self.rejection_sampler, ALPHA_KEY: self.alpha}
        if self.tv_budget is not None:
            out[TV_BUDGET_KEY] = self.tv_budget
        return out

    @classmethod
    def pop_from(cls, spec: dict[str, Any], has_method: bool) -> EarsSettings | None:
        """Remove ``rejection_sampler`` / ``alpha`` / ``tv_budget`` (and, with an experimental rule, its knobs) from
        a speculative-config dict (in place) and validate them.

        Returns None when none of the keys is present. ``has_method`` says whether the dict (or a ``--spec-*``
        flag) names a speculative method or draft model: the keys mean nothing without one.
        """
        has_sampler, has_alpha, has_budget = SAMPLER_KEY in spec, ALPHA_KEY in spec, TV_BUDGET_KEY in spec
        if not (has_sampler or has_alpha or has_budget):
            return None
        sampler = spec.pop(SAMPLER_KEY, "standard")
        # The chosen rule's knobs, and any other knob of ours; FLy's keys are also vLLM 0.33's own (its FLy): they
        # are taken only for the plugin's "fly".
        knob_names = [name for rule, rule_knobs in RULE_KNOBS.items() for name in rule_knobs
                      if rule == sampler or name not in VLLM_KEYS]
        knobs = tuple((name, spec.pop(name)) for name in knob_names if name in spec)
        settings = cls(sampler, spec.pop(ALPHA_KEY, DEFAULT_ALPHA), spec.pop(TV_BUDGET_KEY, None), knobs)
        for key, given, value in ((ALPHA_KEY, has_alpha, settings.alpha),
                                  (TV_BUDGET_KEY, has_budget, settings.tv_budget)):
            if given and settings.rejection_sampler != "ears":
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
                f"{SAMPLER_KEY}={settings.rejection_sampler!r}: EARS replaces 'standard' verification and cannot "
                f"combine with 'block', 'synthetic' or 'fly' (adaptive verification can)"
            )
        return settings

    def check_engine(self, watermark_config) -> None:
        """Refuse what EARS cannot combine with outside the speculative config (front-end, before any model loads).

        Watermarking (MRV2 only) keys the resampled tokens to a watermark whose detector assumes standard
        verification: EARS over-represents accepted drafts, so it is refused rather than silently weakened.
        """
        if self.enabled and watermark_config:
            raise EarsConfigError(
                f"watermark_config={watermark_config!r} is not allowed with {SAMPLER_KEY}="
                f"{self.rejection_sampler!r}: EARS changes which tokens are emitted and cannot combine with "
                f"watermarking; remove one of them"
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
                f"only {SAMPLER_KEY!r}, {ALPHA_KEY!r}, {TV_BUDGET_KEY!r} and the experimental rules' knobs are "
                f"allowed"
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

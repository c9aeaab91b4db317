"""Fused EARS verification in Triton.

Two launches, and probabilities are never materialised:
1. ``_ears_row_stats_kernel``, grid ``(batch, max_spec_len, num_splits)``: one streaming pass over each draft
   position's logits (temperature division fused) gives, per vocabulary split, the online max, the sum of exp and the
   argmax. Splitting a row over several programs keeps the GPU's memory system busy when batch * K is small.
2. ``_ears_verify_kernel``, grid ``(batch,)``: per request, combines the splits of every position into
   (max, Z, argmax); from them alone: max_v p = 1 / Z, p(x) = exp(l_x - max) / Z, h = 1 - max_v p and the EARS
   decision  p(x) > 0 and q(x) > 0 and p(x)/q(x) >= u - alpha*h  (argmax matching for greedy requests). At the first
   rejection, and only there, a second pass over that one row draws the recovered token from max(p - q, 0) with the
   caller's exponential noise (vLLM's exponential race); otherwise the bonus token is written.

Bytes moved: one read of the logits, plus one row of logits (+ draft probs, + noise) per rejecting request.
"""

import os

import torch
import triton
import triton.language as tl

from .._common import PLACEHOLDER_TOKEN_ID

GREEDY_TEMPERATURE_EPS = tl.constexpr(1e-5)
FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)
MAX_FUSED_SIZE = 4096
MAX_SPLITS = 16


@triton.jit
def _scaled_logits(row_ptr, offs, mask, temp):
    # NaN -> -inf (never emitted), +inf -> float32 max (the +inf tokens share the mass); float32 math throughout.
    s = tl.load(row_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32) / temp
    s = tl.where(s != s, float("-inf"), s)
    return tl.minimum(s, FLOAT32_MAX)


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
    vocab_size,
    split_size,
    NUM_SPLITS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    req = tl.program_id(0)
    pos = tl.program_id(1)
    split = tl.program_id(2)
    start, num_draft = _request_span(cu_num_draft_tokens_ptr, req)
    if pos < num_draft:
        row = (start + pos).to(tl.int64)
        temp = tl.load(temperature_ptr + req).to(tl.float32)
        temp = tl.where(temp < GREEDY_TEMPERATURE_EPS, 1.0, temp)
        row_ptr = logits_ptr + row * logits_stride
        lo = split * split_size
        hi = tl.minimum(lo + split_size, vocab_size)
        # The running max starts finite so that an all -inf split gives sum 0, not NaN.
        m = -FLOAT32_MAX
        z = 0.0
        best = float("-inf")
        best_idx = lo
        for off in range(lo, hi, BLOCK_SIZE):
            offs = off + tl.arange(0, BLOCK_SIZE)
            s = _scaled_logits(row_ptr, offs, offs < hi, temp)
            block_max = tl.max(s, axis=0)
            new_m = tl.maximum(m, block_max)
            z = z * tl.exp(m - new_m) + tl.sum(tl.exp(s - new_m), axis=0)
            m = new_m
            # Strictly greater: on ties the earliest block wins, like torch.argmax.
            if block_max > best:
                best = block_max
                best_idx = off + tl.argmax(s, axis=0, tie_break_left=True)
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
    num_accepted_ptr,  # [batch] int32 out
    num_tolerance_ptr,  # [batch] int32 out
    cu_num_draft_tokens_ptr,  # [batch]
    draft_token_ids_ptr,  # [num_tokens]
    bonus_token_ids_ptr,  # [batch]
    temperature_ptr,  # [batch]
    alpha_ptr,  # [batch] (read only when not SCALAR_ALPHA)
    alpha_scalar,
    uniform_probs_ptr,  # [num_tokens] float64
    split_max_ptr,  # [num_tokens, NUM_SPLITS]
    split_sum_ptr,  # [num_tokens, NUM_SPLITS]
    split_best_ptr,  # [num_tokens, NUM_SPLITS]
    split_argmax_ptr,  # [num_tokens, NUM_SPLITS]
    logits_ptr,  # [num_tokens, vocab_size]
    logits_stride,
    draft_probs_ptr,  # [num_tokens, vocab_size] (read only when HAS_DRAFT_PROBS)
    draft_probs_stride,
    noise_ptr,  # [batch, vocab_size] float32, Exp(1)
    noise_stride,
    vocab_size,
    HAS_DRAFT_PROBS: tl.constexpr,
    SCALAR_ALPHA: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    req = tl.program_id(0).to(tl.int64)
    start, num_draft = _request_span(cu_num_draft_tokens_ptr, req)
    out_ptr = output_token_ids_ptr + req * output_stride
    temp = tl.load(temperature_ptr + req).to(tl.float32)
    is_greedy = temp < GREEDY_TEMPERATURE_EPS
    temp = tl.where(is_greedy, 1.0, temp)
    if SCALAR_ALPHA:
        alpha = alpha_scalar
    else:
        alpha = tl.load(alpha_ptr + req)
    inv_v = 1.0 / vocab_size
    splits = tl.arange(0, NUM_SPLITS)

    num_accepted = 0
    num_tolerance = 0
    rejected = False
    rej_max = 0.0
    rej_sum = 0.0
    rej_argmax = 0
    for pos in range(num_draft):
        row = (start + pos).to(tl.int64)
        # Combine the vocabulary splits of this row: max, rescaled sum of exp, earliest argmax.
        pm = tl.load(split_max_ptr + row * NUM_SPLITS + splits)
        pz = tl.load(split_sum_ptr + row * NUM_SPLITS + splits)
        pb = tl.load(split_best_ptr + row * NUM_SPLITS + splits)
        pa = tl.load(split_argmax_ptr + row * NUM_SPLITS + splits)
        m = tl.max(pm, axis=0)
        z = tl.sum(pz * tl.exp(pm - m), axis=0)
        target_argmax = tl.min(tl.where(pb == tl.max(pb, axis=0), pa, vocab_size), axis=0)

        x = tl.load(draft_token_ids_ptr + row).to(tl.int64)
        s_x = _scaled_logits(logits_ptr + row * logits_stride, x, True, temp)
        valid = z > 0  # False only for a row with no finite logit: treated as uniform
        p_x = tl.where(valid, tl.exp(s_x - m) / z, inv_v)
        max_p = tl.where(valid, 1.0 / z, inv_v)
        h = tl.where(is_greedy, 0.0, 1.0 - max_p)
        tl.store(uncertainty_ptr + row, h)

        if not rejected:
            if HAS_DRAFT_PROBS:
                q_x = tl.load(draft_probs_ptr + row * draft_probs_stride + x).to(tl.float32)
            else:
                q_x = 1.0
            u = tl.load(uniform_probs_ptr + row)
            ratio = tl.where(q_x > 0, p_x.to(tl.float64) / q_x, 0.0)
            accept_random = (p_x > 0) & (q_x > 0) & (ratio >= u - alpha * h.to(tl.float64))
            accept = tl.where(is_greedy, x == target_argmax, accept_random)
            if accept:
                tl.store(out_ptr + pos, x.to(tl.int32))
                num_accepted += 1
                num_tolerance += ((is_greedy == 0) & (ratio < u)).to(tl.int32)
            else:
                rejected = True
                rej_max = m
                rej_sum = z
                rej_argmax = target_argmax

    if rejected:
        row = (start + num_accepted).to(tl.int64)
        recovered = rej_argmax
        if not is_greedy:
            # The only second pass over a row: residual max(p - q, 0), exponential race with the caller's noise.
            valid = rej_sum > 0
            x = tl.load(draft_token_ids_ptr + row)
            row_ptr = logits_ptr + row * logits_stride
            best = -1.0
            best_idx = 0
            best_p = -1.0
            best_p_idx = 0
            for off in range(0, vocab_size, BLOCK_SIZE):
                offs = off + tl.arange(0, BLOCK_SIZE)
                mask = offs < vocab_size
                s = _scaled_logits(row_ptr, offs, mask, temp)
                p = tl.where(valid, tl.exp(s - rej_max) / rej_sum, inv_v)
                p = tl.where(mask, p, 0.0)
                if HAS_DRAFT_PROBS:
                    q = tl.load(draft_probs_ptr + row * draft_probs_stride + offs, mask=mask, other=0.0)
                    residual = tl.maximum(p - q.to(tl.float32), 0.0)
                else:
                    residual = tl.where(offs == x, 0.0, p)
                noise = tl.load(noise_ptr + req * noise_stride + offs, mask=mask, other=1.0)
                score = residual / noise
                block_best = tl.max(score, axis=0)
                if block_best > best:
                    best = block_best
                    best_idx = off + tl.argmax(score, axis=0, tie_break_left=True)
                score_p = p / noise
                block_best_p = tl.max(score_p, axis=0)
                if block_best_p > best_p:
                    best_p = block_best_p
                    best_p_idx = off + tl.argmax(score_p, axis=0, tie_break_left=True)
            # A numerically empty residual falls back to the target itself.
            recovered = tl.where(best > 0, best_idx, best_p_idx)
        tl.store(out_ptr + num_accepted, recovered.to(tl.int32))
    else:
        tl.store(out_ptr + num_draft, tl.load(bonus_token_ids_ptr + req).to(tl.int32))
    tl.store(num_accepted_ptr + req, num_accepted)
    tl.store(num_tolerance_ptr + req, num_tolerance)


def _num_sms(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def ears_rejection_sample_triton(
    draft_token_ids: torch.Tensor,  # [num_tokens]
    cu_num_draft_tokens: torch.Tensor,  # [batch]
    target_logits: torch.Tensor,  # [num_tokens, vocab_size]
    bonus_token_ids: torch.Tensor,  # [batch] or [batch, 1]
    temperature: torch.Tensor,  # [batch]
    alpha,  # float or [batch]
    max_spec_len: int,
    draft_probs,  # [num_tokens, vocab_size] or None
    uniform_probs: torch.Tensor,  # [num_tokens] float64
    recovery_noise: torch.Tensor,  # [batch, vocab_size] float32
    block_size: int = None,
    num_splits: int = None,
):
    """Host launcher; inputs are assumed validated (see ``ears_vllm.ops``). Returns the four EarsOutput tensors."""
    device = target_logits.device
    batch = cu_num_draft_tokens.numel()
    num_tokens, vocab_size = target_logits.shape
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if block_size is None:
        # The interpreter runs one numpy op per block: fewer, larger blocks are much faster there.
        block_size = min(65536 if interpret else MAX_FUSED_SIZE, triton.next_power_of_2(vocab_size))
    if num_splits is None:
        # Aim for a few programs per SM in the streaming pass, never a split smaller than one block.
        want = triton.cdiv(4 * _num_sms(device), max(num_tokens, 1))
        num_splits = 1 if interpret else min(MAX_SPLITS, triton.next_power_of_2(want),
                                             triton.next_power_of_2(triton.cdiv(vocab_size, block_size)))
    split_size = triton.cdiv(triton.cdiv(vocab_size, num_splits), block_size) * block_size
    num_warps = 4 if block_size <= 1024 else 8

    target_logits = target_logits if target_logits.stride(-1) == 1 else target_logits.contiguous()
    if draft_probs is not None and draft_probs.stride(-1) != 1:
        draft_probs = draft_probs.contiguous()
    if recovery_noise.stride(-1) != 1:
        recovery_noise = recovery_noise.contiguous()
    cu = cu_num_draft_tokens.to(torch.int32)
    bonus = bonus_token_ids.reshape(-1)
    scalar_alpha = not (isinstance(alpha, torch.Tensor) and alpha.dim() > 0)

    output = torch.full((batch, max_spec_len + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.int32, device=device)
    uncertainty = torch.empty(num_tokens, dtype=torch.float32, device=device)
    num_accepted = torch.empty(batch, dtype=torch.int32, device=device)
    num_tolerance = torch.empty(batch, dtype=torch.int32, device=device)
    stats_shape = (max(num_tokens, 1), num_splits)
    split_max = torch.empty(stats_shape, dtype=torch.float32, device=device)
    split_sum = torch.empty(stats_shape, dtype=torch.float32, device=device)
    split_best = torch.empty(stats_shape, dtype=torch.float32, device=device)
    split_argmax = torch.empty(stats_shape, dtype=torch.int32, device=device)

    if num_tokens > 0 and max_spec_len > 0:
        _ears_row_stats_kernel[(batch, max_spec_len, num_splits)](
            target_logits, target_logits.stride(0), cu, temperature,
            split_max, split_sum, split_best, split_argmax, vocab_size, split_size,
            NUM_SPLITS=num_splits, BLOCK_SIZE=block_size, num_warps=num_warps,
        )
    _ears_verify_kernel[(batch,)](
        output, output.stride(0), uncertainty, num_accepted, num_tolerance, cu, draft_token_ids, bonus,
        temperature, temperature if scalar_alpha else alpha, float(alpha) if scalar_alpha else 0.0, uniform_probs,
        split_max, split_sum, split_best, split_argmax, target_logits, target_logits.stride(0),
        draft_probs if draft_probs is not None else target_logits,
        draft_probs.stride(0) if draft_probs is not None else 0,
        recovery_noise, recovery_noise.stride(0), vocab_size,
        HAS_DRAFT_PROBS=draft_probs is not None, SCALAR_ALPHA=scalar_alpha, NUM_SPLITS=num_splits,
        BLOCK_SIZE=block_size, num_warps=num_warps,
    )
    return output, uncertainty, num_accepted, num_tolerance

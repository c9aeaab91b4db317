"""Fused EARS verification in Triton.

Two launches:
1. ``_ears_row_kernel``, grid ``(batch, max_spec_len)``: one streaming pass over each draft position's logits
   (temperature division fused) gives the online max, the sum of exp and the argmax. From them, with no further read
   of the row: max_v p = 1 / Z, p(x) = exp(l_x - max) / Z, the uncertainty h = 1 - max_v p, and the EARS accept
   decision  p(x) > 0 and q(x) > 0 and p(x)/q(x) >= u - alpha*h  (argmax matching for greedy requests).
2. ``_ears_finalize_kernel``, grid ``(batch,)``: walks each request's decisions to its first rejection and, only
   there, makes the second pass over that one row to draw the recovered token from max(p - q, 0) (exponential race
   with the caller's noise, as vLLM does); otherwise writes the bonus token.

Probabilities are never materialised: bytes moved are one read of the logits plus one row per rejecting request.
"""

import torch
import triton
import triton.language as tl

from .._common import PLACEHOLDER_TOKEN_ID

GREEDY_TEMPERATURE_EPS = tl.constexpr(1e-5)
FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)
MAX_FUSED_SIZE = 8192


def _is_interpreter() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _scaled_logits(logits_ptr, offs, mask, temp):
    # NaN -> -inf (never emitted), +inf -> float32 max (the +inf tokens share the mass); float32 math throughout.
    s = tl.load(logits_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32) / temp
    s = tl.where(s != s, float("-inf"), s)
    return tl.minimum(s, FLOAT32_MAX)


@triton.jit
def _ears_row_kernel(
    logits_ptr,  # [num_tokens, vocab_size]
    logits_stride,
    draft_token_ids_ptr,  # [num_tokens]
    cu_num_draft_tokens_ptr,  # [batch]
    temperature_ptr,  # [batch]
    alpha_ptr,  # [batch] (read only when not SCALAR_ALPHA)
    alpha_scalar,
    uniform_probs_ptr,  # [num_tokens] float64
    draft_probs_ptr,  # [num_tokens, vocab_size] (read only when HAS_DRAFT_PROBS)
    draft_probs_stride,
    accepted_ptr,  # [num_tokens] int8 out
    tolerance_ptr,  # [num_tokens] int8 out
    uncertainty_ptr,  # [num_tokens] float32 out
    row_max_ptr,  # [num_tokens] float32 out
    row_sum_ptr,  # [num_tokens] float32 out
    row_argmax_ptr,  # [num_tokens] int32 out
    vocab_size,
    HAS_DRAFT_PROBS: tl.constexpr,
    SCALAR_ALPHA: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    req = tl.program_id(0)
    pos = tl.program_id(1)
    start = 0
    if req > 0:
        start = tl.load(cu_num_draft_tokens_ptr + req - 1)
    end = tl.load(cu_num_draft_tokens_ptr + req)
    if pos < end - start:
        row = (start + pos).to(tl.int64)
        temp = tl.load(temperature_ptr + req).to(tl.float32)
        is_greedy = temp < GREEDY_TEMPERATURE_EPS
        temp = tl.where(is_greedy, 1.0, temp)
        row_ptr = logits_ptr + row * logits_stride

        # Online max / sum-exp / argmax. The running max starts finite so that an all -inf row gives Z = 0, not NaN.
        m = -FLOAT32_MAX
        z = 0.0
        best = float("-inf")
        best_idx = 0
        for off in range(0, vocab_size, BLOCK_SIZE):
            offs = off + tl.arange(0, BLOCK_SIZE)
            s = _scaled_logits(row_ptr, offs, offs < vocab_size, temp)
            block_max = tl.max(s, axis=0)
            new_m = tl.maximum(m, block_max)
            z = z * tl.exp(m - new_m) + tl.sum(tl.exp(s - new_m), axis=0)
            m = new_m
            block_idx = tl.argmax(s, axis=0, tie_break_left=True)
            # Strictly greater: on ties the earliest block wins, like torch.argmax.
            if block_max > best:
                best = block_max
                best_idx = off + block_idx

        x = tl.load(draft_token_ids_ptr + row).to(tl.int64)
        s_x = _scaled_logits(row_ptr, x, True, temp)
        valid = z > 0
        inv_v = 1.0 / vocab_size
        p_x = tl.where(valid, tl.exp(s_x - m) / z, inv_v)
        max_p = tl.where(valid, 1.0 / z, inv_v)
        h = tl.where(is_greedy, 0.0, 1.0 - max_p)

        if HAS_DRAFT_PROBS:
            q_x = tl.load(draft_probs_ptr + row * draft_probs_stride + x).to(tl.float32)
        else:
            q_x = 1.0
        if SCALAR_ALPHA:
            alpha = alpha_scalar
        else:
            alpha = tl.load(alpha_ptr + req).to(tl.float64)
        u = tl.load(uniform_probs_ptr + row).to(tl.float64)
        ratio = tl.where(q_x > 0, p_x.to(tl.float64) / q_x.to(tl.float64), 0.0)
        accept_random = (p_x > 0) & (q_x > 0) & (ratio >= u - alpha * h.to(tl.float64))
        accept = tl.where(is_greedy, x == best_idx, accept_random)
        tolerance = accept & (is_greedy == 0) & (ratio < u)

        tl.store(accepted_ptr + row, accept.to(tl.int8))
        tl.store(tolerance_ptr + row, tolerance.to(tl.int8))
        tl.store(uncertainty_ptr + row, h)
        tl.store(row_max_ptr + row, m)
        tl.store(row_sum_ptr + row, z)
        tl.store(row_argmax_ptr + row, best_idx.to(tl.int32))


@triton.jit
def _ears_finalize_kernel(
    output_token_ids_ptr,  # [batch, max_spec_len + 1] int32 out
    output_stride,
    num_accepted_ptr,  # [batch] int32 out
    num_tolerance_ptr,  # [batch] int32 out
    cu_num_draft_tokens_ptr,  # [batch]
    draft_token_ids_ptr,  # [num_tokens]
    bonus_token_ids_ptr,  # [batch]
    temperature_ptr,  # [batch]
    accepted_ptr,  # [num_tokens] int8
    tolerance_ptr,  # [num_tokens] int8
    row_max_ptr,  # [num_tokens] float32
    row_sum_ptr,  # [num_tokens] float32
    row_argmax_ptr,  # [num_tokens] int32
    logits_ptr,  # [num_tokens, vocab_size]
    logits_stride,
    draft_probs_ptr,  # [num_tokens, vocab_size]
    draft_probs_stride,
    noise_ptr,  # [batch, vocab_size] float32, Exp(1)
    noise_stride,
    vocab_size,
    HAS_DRAFT_PROBS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    req = tl.program_id(0).to(tl.int64)
    start = 0
    if req > 0:
        start = tl.load(cu_num_draft_tokens_ptr + req - 1)
    end = tl.load(cu_num_draft_tokens_ptr + req)
    num_draft = end - start
    out_ptr = output_token_ids_ptr + req * output_stride

    num_accepted = 0
    num_tolerance = 0
    rejected = False
    for pos in range(num_draft):
        if not rejected:
            row = start + pos
            if tl.load(accepted_ptr + row) != 0:
                tl.store(out_ptr + pos, tl.load(draft_token_ids_ptr + row).to(tl.int32))
                num_accepted += 1
                num_tolerance += tl.load(tolerance_ptr + row).to(tl.int32)
            else:
                rejected = True

    if rejected:
        row = (start + num_accepted).to(tl.int64)
        recovered = tl.load(row_argmax_ptr + row)
        temp = tl.load(temperature_ptr + req).to(tl.float32)
        if temp >= GREEDY_TEMPERATURE_EPS:
            # The only second pass over a row: residual max(p - q, 0), exponential race with the caller's noise.
            m = tl.load(row_max_ptr + row)
            z = tl.load(row_sum_ptr + row)
            valid = z > 0
            inv_v = 1.0 / vocab_size
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
                p = tl.where(valid, tl.exp(s - m) / z, inv_v)
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
            recovered = tl.where(best > 0, best_idx, best_p_idx).to(tl.int32)
        tl.store(out_ptr + num_accepted, recovered)
    else:
        tl.store(out_ptr + num_draft, tl.load(bonus_token_ids_ptr + req).to(tl.int32))
    tl.store(num_accepted_ptr + req, num_accepted)
    tl.store(num_tolerance_ptr + req, num_tolerance)


def ears_rejection_sample_triton(
    draft_token_ids: torch.Tensor,  # [num_tokens]
    cu_num_draft_tokens: torch.Tensor,  # [batch]
    target_logits: torch.Tensor,  # [num_tokens, vocab_size]
    bonus_token_ids: torch.Tensor,  # [batch]
    temperature: torch.Tensor,  # [batch]
    alpha,  # float or [batch]
    max_spec_len: int,
    draft_probs,  # [num_tokens, vocab_size] or None
    uniform_probs: torch.Tensor,  # [num_tokens] float64
    recovery_noise: torch.Tensor,  # [batch, vocab_size] float32
    block_size: int = None,
):
    """Host launcher; inputs are assumed validated (see ``ears_vllm.ops``). Returns the four EarsOutput tensors."""
    device = target_logits.device
    batch = cu_num_draft_tokens.numel()
    num_tokens, vocab_size = target_logits.shape
    if block_size is None:
        # The interpreter runs one numpy op per block: fewer, larger blocks are much faster there.
        cap = 65536 if _is_interpreter() else MAX_FUSED_SIZE
        block_size = min(cap, triton.next_power_of_2(vocab_size))
    num_warps = 4 if block_size <= 2048 else 8 if block_size <= 4096 else 16

    target_logits = target_logits if target_logits.stride(-1) == 1 else target_logits.contiguous()
    if draft_probs is not None and draft_probs.stride(-1) != 1:
        draft_probs = draft_probs.contiguous()
    if recovery_noise.stride(-1) != 1:
        recovery_noise = recovery_noise.contiguous()
    bonus = bonus_token_ids.reshape(-1)
    cu_num_draft_tokens = cu_num_draft_tokens.to(torch.int32)
    scalar_alpha = not (isinstance(alpha, torch.Tensor) and alpha.dim() > 0)
    alpha_tensor = temperature if scalar_alpha else alpha  # any pointer; not read when SCALAR_ALPHA
    alpha_scalar = float(alpha) if scalar_alpha else 0.0

    output = torch.full((batch, max_spec_len + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.int32, device=device)
    num_accepted = torch.empty(batch, dtype=torch.int32, device=device)
    num_tolerance = torch.empty(batch, dtype=torch.int32, device=device)
    accepted = torch.empty(num_tokens, dtype=torch.int8, device=device)
    tolerance = torch.empty(num_tokens, dtype=torch.int8, device=device)
    uncertainty = torch.empty(num_tokens, dtype=torch.float32, device=device)
    row_max = torch.empty(num_tokens, dtype=torch.float32, device=device)
    row_sum = torch.empty(num_tokens, dtype=torch.float32, device=device)
    row_argmax = torch.empty(num_tokens, dtype=torch.int32, device=device)
    probs_arg = draft_probs if draft_probs is not None else target_logits
    probs_stride = draft_probs.stride(0) if draft_probs is not None else 0

    if num_tokens > 0 and max_spec_len > 0:
        _ears_row_kernel[(batch, max_spec_len)](
            target_logits, target_logits.stride(0), draft_token_ids, cu_num_draft_tokens, temperature,
            alpha_tensor, alpha_scalar, uniform_probs, probs_arg, probs_stride,
            accepted, tolerance, uncertainty, row_max, row_sum, row_argmax, vocab_size,
            HAS_DRAFT_PROBS=draft_probs is not None, SCALAR_ALPHA=scalar_alpha, BLOCK_SIZE=block_size,
            num_warps=num_warps,
        )
    _ears_finalize_kernel[(batch,)](
        output, output.stride(0), num_accepted, num_tolerance, cu_num_draft_tokens, draft_token_ids, bonus,
        temperature, accepted, tolerance, row_max, row_sum, row_argmax, target_logits, target_logits.stride(0),
        probs_arg, probs_stride, recovery_noise, recovery_noise.stride(0), vocab_size,
        HAS_DRAFT_PROBS=draft_probs is not None, BLOCK_SIZE=block_size, num_warps=num_warps,
    )
    return output, uncertainty, num_accepted, num_tolerance

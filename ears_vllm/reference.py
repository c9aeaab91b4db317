"""Plain-torch reference of EARS verification: one request, one position at a time, float64 by default.

Readable rather than fast: it is the specification the CPU path and the Triton kernel are tested against.
"""

import torch

from ._common import (
    GREEDY_TEMPERATURE_EPS,
    PLACEHOLDER_TOKEN_ID,
    EarsInputs,
    EarsOutput,
    sample_inverse_cdf,
    sanitize_logits,
)


def target_probs_reference(logits_row: torch.Tensor, temperature: float, dtype=torch.float64) -> torch.Tensor:
    """softmax(sanitize(logits / T)). A row with no finite logit (everything banned) is treated as uniform."""
    s = sanitize_logits(logits_row.to(dtype) / temperature)
    m = s.max()
    if m == float("-inf"):
        return torch.full_like(s, 1.0 / s.numel())
    e = torch.exp(s - m)
    return e / e.sum()


def _sample(weights: torch.Tensor, noise_row: torch.Tensor) -> int:
    """One index from non-negative ``weights``: exponential race ([V] Exp(1) noise) or inverse CDF ([] uniform)."""
    if noise_row.dim() == 1:
        return int(torch.argmax(weights / noise_row.to(weights.dtype)))
    return int(sample_inverse_cdf(weights[None], noise_row.reshape(1))[0])


def ears_rejection_sample_reference(inputs: EarsInputs, dtype: torch.dtype = torch.float64) -> EarsOutput:
    """The specification: :func:`ears_vllm.ears_rejection_sample` on explicit inputs, one position at a time,
    in ``dtype`` (float64) on the CPU."""
    (draft_token_ids, cu_num_draft_tokens, target_logits, bonus_token_ids, temperature, alpha, max_spec_len,
     draft_probs, uniform_probs, recovery_noise, tv_budget) = inputs[:11]  # seeds: drawn by ears_vllm.ops
    batch = cu_num_draft_tokens.numel()
    num_tokens = draft_token_ids.numel()
    packed = bonus_token_ids is None  # target_logits holds each request's draft rows, then its bonus row
    out = torch.full((batch, max_spec_len + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.int32)
    uncertainty = torch.zeros(num_tokens, dtype=torch.float32)
    tv_cost = torch.zeros(num_tokens, dtype=torch.float32)
    num_accepted = torch.zeros(batch, dtype=torch.int32)
    num_tolerance = torch.zeros(batch, dtype=torch.int32)
    cu = cu_num_draft_tokens.tolist()
    alphas = alpha.tolist() if isinstance(alpha, torch.Tensor) and alpha.dim() > 0 else [float(alpha)] * batch
    budget_left = [float("inf")] * batch if tv_budget is None else [float(v) for v in tv_budget.tolist()]

    for b in range(batch):
        start = 0 if b == 0 else cu[b - 1]
        n = cu[b] - start
        row0 = start + b if packed else start  # row of draft 0 in target_logits
        temp = float(temperature[b])
        greedy = temp < GREEDY_TEMPERATURE_EPS
        if not greedy:  # reported at every draft position, also those after the first rejection
            for j in range(n):
                p = target_probs_reference(target_logits[row0 + j], temp, dtype)
                uncertainty[start + j] = 1.0 - float(p.max())
        rejected = False
        for j in range(n):
            row = row0 + j
            x = int(draft_token_ids[start + j])  # PLACEHOLDER_TOKEN_ID (-1): no draft here, always rejected
            if greedy:
                target_argmax = int(torch.argmax(sanitize_logits(target_logits[row].to(dtype))))
                if x == target_argmax:
                    out[b, j] = x
                    num_accepted[b] += 1
                    continue
                out[b, j] = target_argmax
                rejected = True
                break

            p = target_probs_reference(target_logits[row], temp, dtype)
            h = 1.0 - float(p.max())
            px = float(p[x]) if x >= 0 else 0.0
            qx = 1.0 if draft_probs is None else (float(draft_probs[start + j, x]) if x >= 0 else 0.0)
            ratio = px / qx if qx > 0 else 0.0
            u = float(uniform_probs[start + j])
            valid = px > 0 and qx > 0
            # Exact expected TV cost of this step's tolerance: P(accept | EARS) - P(accept | standard). With a TV
            # budget the tolerance is at most what is left of it, and its cost (<= the tolerance) is spent.
            tolerance = min(alphas[b] * h, budget_left[b])
            if valid:
                gain = min(1.0, ratio + tolerance) - min(1.0, ratio)
                tv_cost[start + j] = gain
                budget_left[b] = max(0.0, budget_left[b] - gain)
            # EARS: u <= p/q + alpha*h, and a token the target forbids (p = 0) is never accepted.
            if valid and ratio >= u - tolerance:
                out[b, j] = x
                num_accepted[b] += 1
                num_tolerance[b] += int(ratio < u)
                continue
            if draft_probs is None:
                residual = p.clone()
                if x >= 0:
                    residual[x] = 0
            else:
                residual = (p - draft_probs[start + j].to(dtype)).clamp(min=0)
            if not bool((residual > 0).any()):
                residual = p  # numerically empty residual: fall back to the target itself
            out[b, j] = _sample(residual, recovery_noise[b])
            rejected = True
            break
        if rejected:
            continue
        if not packed:
            out[b, n] = int(bonus_token_ids.reshape(-1)[b])
        elif greedy:
            out[b, n] = int(torch.argmax(sanitize_logits(target_logits[row0 + n].to(dtype))))
        else:  # the bonus token, drawn with the same per-request noise a recovered token would have used
            out[b, n] = _sample(target_probs_reference(target_logits[row0 + n], temp, dtype), recovery_noise[b])
    return EarsOutput(out, uncertainty, num_accepted, num_tolerance, tv_cost)

"""Plain-torch reference of EARS verification: one request, one position at a time, float64 by default.

Readable rather than fast: it is the specification the CPU path and the Triton kernel are tested against.
"""

from typing import Optional, Union

import torch

from ._common import FLOAT32_MAX, GREEDY_TEMPERATURE_EPS, PLACEHOLDER_TOKEN_ID, EarsOutput, sample_inverse_cdf


def sanitize_logits(scaled_logits: torch.Tensor) -> torch.Tensor:
    """The behaviour on non-finite logits, shared by all backends.

    NaN is treated as -inf (the token can never be emitted); +inf is clamped to float32's max, so tokens with +inf
    share the probability mass equally and every finite token gets probability 0.
    """
    x = torch.where(torch.isnan(scaled_logits), float("-inf"), scaled_logits)
    return x.clamp(max=FLOAT32_MAX)


def target_probs_reference(logits_row: torch.Tensor, temperature: float, dtype=torch.float64) -> torch.Tensor:
    """softmax(sanitize(logits / T)). A row with no finite logit (everything banned) is treated as uniform."""
    s = sanitize_logits(logits_row.to(dtype) / temperature)
    m = s.max()
    if m == float("-inf"):
        return torch.full_like(s, 1.0 / s.numel())
    e = torch.exp(s - m)
    return e / e.sum()


def ears_rejection_sample_reference(
    draft_token_ids: torch.Tensor,
    cu_num_draft_tokens: torch.Tensor,
    target_logits: torch.Tensor,
    bonus_token_ids: torch.Tensor,
    temperature: torch.Tensor,
    alpha: Union[float, torch.Tensor],
    max_spec_len: int,
    draft_probs: Optional[torch.Tensor],
    uniform_probs: torch.Tensor,
    recovery_noise: torch.Tensor,
    dtype: torch.dtype = torch.float64,
) -> EarsOutput:
    """Same contract as :func:`ears_vllm.ears_rejection_sample`, with every input given explicitly."""
    batch = cu_num_draft_tokens.numel()
    num_tokens = draft_token_ids.numel()
    out = torch.full((batch, max_spec_len + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.int32)
    uncertainty = torch.zeros(num_tokens, dtype=torch.float32)
    num_accepted = torch.zeros(batch, dtype=torch.int32)
    num_tolerance = torch.zeros(batch, dtype=torch.int32)
    cu = cu_num_draft_tokens.tolist()
    bonus = bonus_token_ids.reshape(-1).tolist()
    alphas = alpha.tolist() if isinstance(alpha, torch.Tensor) and alpha.dim() > 0 else [float(alpha)] * batch

    for b in range(batch):
        start = 0 if b == 0 else cu[b - 1]
        n = cu[b] - start
        temp = float(temperature[b])
        greedy = temp < GREEDY_TEMPERATURE_EPS
        if not greedy:  # reported at every draft position, also those after the first rejection
            for row in range(start, start + n):
                uncertainty[row] = 1.0 - float(target_probs_reference(target_logits[row], temp, dtype).max())
        rejected = False
        for j in range(n):
            row = start + j
            x = int(draft_token_ids[row])
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
            px = float(p[x])
            qx = 1.0 if draft_probs is None else float(draft_probs[row, x])
            ratio = px / qx if qx > 0 else 0.0
            u = float(uniform_probs[row])
            # EARS: u <= p/q + alpha*h, and a token the target forbids (p = 0) is never accepted.
            if px > 0 and qx > 0 and ratio >= u - alphas[b] * h:
                out[b, j] = x
                num_accepted[b] += 1
                num_tolerance[b] += int(ratio < u)
                continue
            if draft_probs is None:
                residual = p.clone()
                residual[x] = 0
            else:
                residual = (p - draft_probs[row].to(dtype)).clamp(min=0)
            if not bool((residual > 0).any()):
                residual = p  # numerically empty residual: fall back to the target itself
            if recovery_noise.dim() == 2:  # exponential race (vLLM's convention)
                out[b, j] = int(torch.argmax(residual / recovery_noise[b].to(dtype)))
            else:  # inverse CDF with one uniform per request
                out[b, j] = int(sample_inverse_cdf(residual[None], recovery_noise[b:b + 1])[0])
            rejected = True
            break
        if not rejected:
            out[b, n] = bonus[b]
    return EarsOutput(out, uncertainty, num_accepted, num_tolerance)

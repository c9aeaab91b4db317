"""Vectorised torch implementation of EARS verification (the backend for CPU tensors).

Cost: one pass over the draft rows' logits, a few rows at a time so that the scaled copy and the softmax stay in
the CPU cache (temperature division, softmax, its max for h, one gather for p(x)); then full-vocabulary work only
for the one row per request that emits a sampled token (the row of the first rejection, or the bonus row when
``bonus_token_ids`` is None), drawn by inverse CDF from one uniform per request. The stock vLLM path materialises
the scaled logits and the softmax of every row and draws ``[batch, vocab]`` exponentials.
"""

import torch

from ._common import (
    FLOAT32_MAX,
    GREEDY_TEMPERATURE_EPS,
    PLACEHOLDER_TOKEN_ID,
    EarsInputs,
    EarsOutput,
    budget_tolerance,
    sample_inverse_cdf,
    sanitize_logits,
)

# Rows per pass are chosen so that one float32 temporary stays near this size (1 MiB: L2-resident). Larger
# temporaries are also returned to the system and faulted back in by glibc on every call.
CHUNK_ELEMS = 1 << 18


def _softmax(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax of scaled logits ``s`` [n, V] and its row max, with the shared non-finite rules.

    Any row with NaN, +inf or no finite logit comes out of softmax as NaN, so the max (needed for h anyway) finds
    them: only those rows are sanitised and recomputed, and finite inputs pay for no extra pass.
    """
    probs = torch.softmax(s, dim=-1)
    max_p = probs.amax(dim=-1)
    bad = torch.isnan(max_p)
    if bool(bad.any()):
        sb = sanitize_logits(s[bad])
        # Shift those rows by their max: rows of clamped +inf keep their precision.
        sb = sb - sb.amax(dim=-1, keepdim=True).clamp(min=-FLOAT32_MAX)
        pb = torch.softmax(sb, dim=-1)
        pb[sb.amax(dim=-1) == float("-inf")] = 1.0 / s.shape[-1]  # no finite logit at all: uniform
        probs[bad] = pb
        max_p[bad] = pb.amax(dim=-1)
    return probs, max_p


def _scaled_rows(logits: torch.Tensor, rows: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
    """float32 ``logits[rows] / temp[:, None]``, never writing into ``logits``."""
    s = logits.index_select(0, rows).to(torch.float32)  # a fresh copy: divide it in place
    return s.div_(temp[:, None]) if bool((temp != 1).any()) else s


def _draft_row_stats(logits, rows, temp, x):
    """(max_v p(v), p(x)) of softmax(logits[row] / T) for every draft row, a cache-sized chunk of rows at a time."""
    n, vocab = rows.numel(), logits.shape[1]
    max_p = torch.empty(n, dtype=torch.float32, device=logits.device)
    p_x = torch.empty(n, dtype=torch.float32, device=logits.device)
    step = n if logits.is_cuda else max(1, CHUNK_ELEMS // vocab)
    for a in range(0, n, step):
        b = min(n, a + step)
        probs, max_p[a:b] = _softmax(_scaled_rows(logits, rows[a:b], temp[a:b]))
        p_x[a:b] = probs.gather(1, x[a:b].clamp(min=0)[:, None]).squeeze(1)
    return max_p, p_x.masked_fill_(x < 0, 0.0)


def _argmax(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """argmax of sanitize(logits[row]) (greedy requests: no temperature), sanitising only rows that need it."""
    g = logits.index_select(0, rows)
    values, idx = g.max(dim=-1)
    bad = ~torch.isfinite(values)  # NaN, +inf, or no finite logit
    if bool(bad.any()):
        idx[bad] = sanitize_logits(g[bad].to(torch.float32)).argmax(dim=-1)
    return idx


def _sample_tokens(logits, rows, temp, d_idx, draft, draft_probs, noise, noise_rows):
    """One token per row of ``logits[rows] / temp``: from the residual at a rejected draft (``d_idx`` >= 0, its draft
    index), from p itself at a bonus row (``d_idx`` = -1), a cache-sized chunk of rows at a time; row j's
    randomness is ``noise[noise_rows[j]]``, gathered per chunk (a ``[batch, vocab]`` race noise is never copied
    whole)."""
    n, vocab = rows.numel(), logits.shape[1]
    tokens = torch.empty(n, dtype=torch.int64, device=logits.device)
    step = n if logits.is_cuda else max(1, CHUNK_ELEMS // vocab)
    for a in range(0, n, step):
        b = min(n, a + step)
        weights, _ = _softmax(_scaled_rows(logits, rows[a:b], temp[a:b]))
        rej = (d_idx[a:b] >= 0).nonzero().squeeze(1)
        if rej.numel():  # the residual, in place
            di = d_idx[a:b][rej]
            if draft_probs is None:  # p without the rejected draft (a -1 placeholder removes nothing)
                x = draft[di]
                rr, xx = rej[x >= 0], x[x >= 0]
                p_x = weights[rr, xx]
                weights[rr, xx] = 0.0
                empty = weights.sum(dim=1)[rr] <= 0  # all of p was on x (numerically): fall back to p
                weights[rr[empty], xx[empty]] = p_x[empty]
            else:
                residual = weights[rej].sub_(draft_probs[di].to(torch.float32)).clamp_(min=0)
                empty = residual.sum(dim=1) <= 0  # p <= q everywhere (numerically): fall back to p
                residual[empty] = weights[rej[empty]]
                weights[rej] = residual
        chunk_noise = noise[noise_rows[a:b]]
        if chunk_noise.dim() == 2:  # exponential race
            tokens[a:b] = weights.div_(chunk_noise.to(torch.float32)).argmax(dim=1)
        else:
            tokens[a:b] = sample_inverse_cdf(weights, chunk_noise)
    return tokens


def ears_rejection_sample_torch(inputs: EarsInputs) -> EarsOutput:
    (draft_token_ids, cu_num_draft_tokens, target_logits, bonus_token_ids, temperature, alpha, max_spec_len,
     draft_probs, uniform_probs, recovery_noise, tv_budget) = inputs[:11]  # seeds: drawn by ears_vllm.ops
    device = target_logits.device
    batch = cu_num_draft_tokens.numel()
    num_tokens = draft_token_ids.numel()
    packed = bonus_token_ids is None
    out = torch.full((batch, max_spec_len + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.int32, device=device)

    cu = cu_num_draft_tokens.to(torch.int64)
    num_draft = torch.diff(cu, prepend=cu.new_zeros(1))
    start = cu - num_draft
    arange_b = torch.arange(batch, device=device)
    # Row of draft 0 of each request in target_logits; with bonus rows, request b's rows are shifted by b.
    row0 = start + arange_b if packed else start
    temp = temperature.to(torch.float32)
    greedy_req = temp < GREEDY_TEMPERATURE_EPS
    t_eff = torch.where(greedy_req, torch.ones_like(temp), temp)
    draft = draft_token_ids.to(torch.int64)

    req = torch.repeat_interleave(arange_b, num_draft, output_size=num_tokens)
    pos = torch.arange(num_tokens, device=device) - start[req]
    rows = row0[req] + pos
    greedy = greedy_req[req]

    # Pass over the rows of random requests: h and p(x) from softmax; greedy rows: argmax only.
    rand_idx = (~greedy).nonzero().squeeze(1)
    greedy_idx = greedy.nonzero().squeeze(1)
    max_p = torch.ones(num_tokens, dtype=torch.float32, device=device)
    p_x = torch.zeros(num_tokens, dtype=torch.float32, device=device)
    if rand_idx.numel():
        max_p[rand_idx], p_x[rand_idx] = _draft_row_stats(target_logits, rows[rand_idx], t_eff[req[rand_idx]],
                                                          draft[rand_idx])
    target_argmax = torch.full((num_tokens,), -2, dtype=torch.int64, device=device)
    if greedy_idx.numel():
        target_argmax[greedy_idx] = _argmax(target_logits, rows[greedy_idx])
    h = torch.where(greedy, torch.zeros_like(max_p), 1.0 - max_p)

    valid_x = draft >= 0
    if draft_probs is None:
        q_x = valid_x.to(torch.float32)
    else:
        q_x = draft_probs.gather(1, draft.clamp(min=0)[:, None]).squeeze(1).to(torch.float32).masked_fill_(~valid_x, 0)
    alpha_tok = alpha.to(torch.float64)[req] if isinstance(alpha, torch.Tensor) and alpha.dim() > 0 else float(alpha)
    u = uniform_probs.to(torch.float64)
    decidable = (p_x > 0) & (q_x > 0)
    ratio = torch.where(decidable, p_x.double() / q_x.double().clamp(min=1e-300), torch.zeros_like(u))
    tolerance_term = torch.where(decidable & ~greedy, alpha_tok * h.double(), torch.zeros_like(ratio))
    if tv_budget is not None:  # no more tolerance than the budget left can pay for
        tol_pad = torch.zeros(batch, max_spec_len, dtype=torch.float64, device=device)
        ratio_pad = torch.zeros_like(tol_pad)
        tol_pad[req, pos], ratio_pad[req, pos] = tolerance_term, ratio
        tolerance_term = budget_tolerance(tol_pad, ratio_pad, tv_budget)[req, pos]
    # Expected TV cost of the tolerance at each position, were it decided: the extra acceptance probability of x.
    gain = (ratio + tolerance_term).clamp(max=1.0) - ratio.clamp(max=1.0)
    accept_random = decidable & (ratio >= u - tolerance_term)
    accepted = torch.where(greedy, draft == target_argmax, accept_random)
    tolerance = accepted & ~greedy & (ratio < u)

    # First rejection per request: pad to [batch, max_spec_len] with "accepted" and take a running product.
    acc_pad = torch.ones(batch, max_spec_len, dtype=torch.int32, device=device)
    acc_pad[req, pos] = accepted.to(torch.int32)
    chain = torch.cumprod(acc_pad, dim=1)
    num_accepted = torch.minimum(chain.sum(dim=1), num_draft).to(torch.int32)
    in_chain = chain[req, pos] == 1
    draft_pad = torch.full((batch, max_spec_len), PLACEHOLDER_TOKEN_ID, dtype=torch.int32, device=device)
    draft_pad[req, pos] = torch.where(in_chain, draft, PLACEHOLDER_TOKEN_ID).to(torch.int32)
    out[:, :max_spec_len] = draft_pad
    num_tolerance = torch.zeros(batch, dtype=torch.int32, device=device)
    num_tolerance.index_add_(0, req, (tolerance & in_chain).to(torch.int32))
    # Decided positions: every accepted one and the first rejection.
    decided = pos <= num_accepted.to(torch.int64)[req]
    tv_cost = torch.where(decided, gain, torch.zeros_like(gain)).to(torch.float32)

    # The one sampled token per request: recovered (first rejection) or bonus (all accepted).
    rejected = num_accepted < num_draft
    acc64 = num_accepted.to(torch.int64)
    final = torch.full((batch,), -1, dtype=torch.int64, device=device)
    rej_draft = (start + acc64)[rejected]  # draft index of the first rejection
    final[rejected] = torch.where(greedy_req[rejected], target_argmax[rej_draft], final[rejected])
    if packed:
        bonus_req = (~rejected & greedy_req).nonzero().squeeze(1)
        if bonus_req.numel():
            final[bonus_req] = _argmax(target_logits, row0[bonus_req] + num_draft[bonus_req])
        sample_req = (~greedy_req).nonzero().squeeze(1)
    else:
        final[~rejected] = bonus_token_ids.reshape(-1).to(torch.int64)[~rejected]
        sample_req = (rejected & ~greedy_req).nonzero().squeeze(1)
    if sample_req.numel():
        # Draft index of each sampling request's rejection; -1 for a bonus row (it samples p itself).
        d_idx = torch.where(rejected[sample_req], start[sample_req] + acc64[sample_req], -1)
        final[sample_req] = _sample_tokens(target_logits, row0[sample_req] + acc64[sample_req], t_eff[sample_req],
                                           d_idx, draft, draft_probs, recovery_noise, sample_req)
    out[arange_b, acc64] = final.to(torch.int32)
    return EarsOutput(out, h.to(torch.float32), num_accepted, num_tolerance, tv_cost)

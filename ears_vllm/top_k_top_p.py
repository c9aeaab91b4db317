"""vLLM's top-k / top-p kept set, by definition (a stable sort): the reference of the Triton thresholds.

On the logits divided by the temperature, ranked by (value descending, index ascending): top-k keeps the first
``k`` tokens (every token when at most ``k`` are finite); top-p then keeps, of those, the fewest first tokens whose
probability mass reaches ``p`` (a token is kept while the mass ranked before it is below ``p``). Ties at either
boundary are thus kept in index order, as vLLM's Triton kernel keeps them (``vllm/v1/sample/ops/
topk_topp_triton.py``, which this set follows wherever that kernel's pivot search is exact). Greedy rows keep
every token (top-k / top-p cannot drop the first maximum, which is all a greedy request reads).

The Triton backend finds the same set without a sort (``kernels/top_k_top_p.py``); the torch and reference
backends of ``ears_rejection_sample`` mask a copy of the logits with this one. Masses here are float64.
"""

from __future__ import annotations

import torch

from ._common import GREEDY_TEMPERATURE_EPS, sanitize_logits


def rows_of_requests(values: torch.Tensor, cu_num_draft_tokens: torch.Tensor, packed: bool) -> torch.Tensor:
    """Each logits row's value of its request: ``values`` [batch] repeated over the request's draft rows (and its
    bonus row when ``packed``)."""
    cu = cu_num_draft_tokens.to(torch.int64)
    counts = torch.diff(cu, prepend=cu.new_zeros(1)) + int(packed)
    return torch.repeat_interleave(values, counts)


def top_k_top_p_keep(scaled: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None) -> torch.Tensor:
    """Boolean ``[rows, vocab]``: the tokens top-k ``top_k`` [rows] then top-p ``top_p`` [rows] keep in each row
    of ``scaled`` (logits already divided by the temperature; ``top_k >= vocab`` / ``top_p >= 1``: none)."""
    rows, vocab = scaled.shape
    s = sanitize_logits(scaled.to(torch.float32)) + 0.0  # NaN -> -inf, +inf -> float32 max, -0.0 -> +0.0
    values, order = torch.sort(s, dim=1, descending=True, stable=True)  # ties in index order
    rank = torch.arange(vocab, device=s.device)
    n_finite = (values > float("-inf")).sum(dim=1)
    n_kept = torch.full((rows,), vocab, dtype=torch.int64, device=s.device)
    if top_k is not None:
        k = top_k.to(torch.int64).clamp(max=vocab)
        n_kept = torch.where(k < n_finite, k, n_kept)
    if top_p is not None:
        mass = torch.exp(values.double() - values[:, :1].double())
        mass = torch.where((rank[None, :] < n_kept[:, None]) & (values > float("-inf")), mass, 0.0)
        total = mass.sum(dim=1, keepdim=True)
        running = mass.cumsum(dim=1)
        # The first rank whose running mass reaches p: every token before it and it.
        first = ((running < top_p.double()[:, None] * total) & (mass > 0)).sum(dim=1)
        last = torch.minimum(first, torch.minimum(n_kept, n_finite) - 1)
        n_kept = torch.where((top_p < 1) & (n_finite > 0), last + 1, n_kept)
    keep_sorted = rank[None, :] < n_kept[:, None]
    return torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)


def truncate_logits(logits: torch.Tensor, cu_num_draft_tokens: torch.Tensor, temperature: torch.Tensor,
                    top_k: torch.Tensor | None, top_p: torch.Tensor | None, packed: bool) -> torch.Tensor:
    """A copy of the raw ``logits`` with ``-inf`` outside each request's top-k / top-p set (of its scaled
    logits); greedy requests' rows unchanged."""
    if top_k is None and top_p is None:
        return logits
    temp = rows_of_requests(temperature.to(torch.float32), cu_num_draft_tokens, packed)
    random = temp >= GREEDY_TEMPERATURE_EPS
    scaled = logits.to(torch.float32) / torch.where(random, temp, 1.0)[:, None]
    k = None if top_k is None else rows_of_requests(top_k, cu_num_draft_tokens, packed)
    p = None if top_p is None else rows_of_requests(top_p, cu_num_draft_tokens, packed)
    keep = top_k_top_p_keep(scaled, k, p) | ~random[:, None]
    return logits.masked_fill(~keep, float("-inf"))

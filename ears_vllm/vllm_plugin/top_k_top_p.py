"""Top-k / top-p masks on CPU without sorting the vocabulary: vLLM's semantics, a partial sort's cost.

vLLM's ``apply_top_k_top_p`` has no CPU kernel: with a top-p it sorts every row of the vocabulary
(``apply_top_k_top_p_pytorch``), which at B=32, K=4, V=32000 is ~95% of a speculative step on this project's CPU.
The masks only need the head of each row: top-k keeps the logits >= the k-th largest (``torch.topk``); top-p keeps
a token when the probability mass of the tokens ranked above it is < p, computed over the top-k-kept
distribution, so with a top-k it lies in the top-k head. Without one it is searched among the ``c`` largest
logits, ``c`` growing (x8) only for the rows whose nucleus is not yet closed; a row so flat that its nucleus holds
more than a quarter of the vocabulary is sorted, as vLLM would.

Differences from vLLM: on ties, every token equal to the last kept logit is kept (vLLM's sort keeps an arbitrary
subset of a tie that straddles the top-p boundary); cumulative sums are float32 like vLLM's but summed from the
top, so a token within float rounding (~1e-7) of the boundary may fall on the other side. On CUDA vLLM's own
Triton kernel is used instead (it does not sort either).
"""

from __future__ import annotations

import torch

FIRST_CANDIDATES = 64
GROWTH = 8


def apply_top_k_top_p_cpu(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None,
                          temperature: torch.Tensor | None = None) -> torch.Tensor:
    """Mask ``logits`` [rows, V] in place with -inf outside top-k / top-p of ``softmax(logits / temperature)``.

    ``k`` [rows] int (``k >= V``: no top-k for that row) and ``p`` [rows] float (``p >= 1``: no top-p), either may
    be None, as vLLM's ``apply_top_k_top_p``. ``temperature`` [rows] (> 0; None = 1): the logits are *not*
    divided by it (dividing preserves the order, so the kept set is found on the raw values and a kernel can fuse
    the division); it only scales the probabilities top-p sums. Returns ``logits``.
    """
    if k is None and p is None:
        return logits
    rows, vocab = logits.shape
    # float32 thresholds and head: exact copies of the (maybe bf16) logits, and float32 probabilities for top-p.
    threshold = torch.full((rows,), float("-inf"), dtype=torch.float32, device=logits.device)
    kk = torch.full((rows,), vocab, dtype=torch.int64, device=logits.device) if k is None else \
        k.to(torch.int64).clamp(1, vocab)
    pp = torch.ones(rows, dtype=torch.float32, device=logits.device) if p is None else p.to(torch.float32)
    k_rows = (kk < vocab).nonzero().squeeze(1)
    if k_rows.numel():
        x = logits if k_rows.numel() == rows else logits[k_rows]  # no copy when every row has a top-k
        kept = kk[k_rows]
        # One logit past each row's k: it shows whether the k-th logit is tied with logits that top-k also keeps.
        head = x.topk(min(int(kept.max()) + 1, vocab), dim=1).values.to(torch.float32)  # descending
        k_threshold = head.gather(1, (kept - 1)[:, None]).squeeze(1)
        beyond = torch.arange(head.shape[1], device=head.device) >= kept[:, None]
        tied_beyond = (head.masked_fill(~beyond, float("nan")) == k_threshold[:, None]).any(dim=1)
        head.masked_fill_(beyond, float("-inf"))  # past each row's own k: logits top-k drops (or ties, counted below)
        threshold[k_rows] = k_threshold
        both = (pp[k_rows] < 1).nonzero().squeeze(1)
        if both.numel():  # top-p over the top-k-kept distribution: its nucleus lies in the head
            h, t = head[both], k_threshold[both]
            tb = None if temperature is None else temperature[k_rows[both]][:, None]
            hs, ts = (h, t) if tb is None else (h / tb, t / tb[:, 0])
            lse = torch.logsumexp(hs, dim=1)
            tied = tied_beyond[both].nonzero().squeeze(1)
            if tied.numel():  # vLLM keeps every logit >= the k-th one: add the tied ones past k to the mass
                r = k_rows[both[tied]]
                extra = (logits[r] == t[tied, None]).sum(dim=1) - (h[tied] == t[tied, None]).sum(dim=1)
                lse[tied] = torch.logaddexp(lse[tied], ts[tied] + torch.log(extra.to(t.dtype)))
            # (max: with ties past the k-th logit the head may hold less mass than p; then top-k alone decides)
            threshold[k_rows[both]] = torch.maximum(t, _nucleus_threshold(h, hs, lse, pp[k_rows][both]))
    p_rows = ((pp < 1) & (kk >= vocab)).nonzero().squeeze(1)
    if p_rows.numel():
        threshold[p_rows] = _top_p_threshold(logits[p_rows], pp[p_rows],
                                             None if temperature is None else temperature[p_rows])
    # A few rows at a time: the comparison's mask stays in the CPU cache.
    step = max(1, (1 << 18) // vocab)
    for a in range(0, rows, step):
        chunk = logits[a:a + step]
        chunk.masked_fill_(chunk < threshold[a:a + step, None], float("-inf"))
    return logits


def _nucleus_threshold(head: torch.Tensor, scaled_head: torch.Tensor, lse: torch.Tensor, p: torch.Tensor):
    """The smallest logit kept by top-p ``p`` [r], from each row's descending ``head`` [r, c] holding its whole
    nucleus, the same divided by the temperature, and the log-normaliser ``lse`` [r] of the scaled row."""
    cum = torch.exp(scaled_head - lse[:, None]).cumsum(dim=1)
    # Token i is kept iff the mass above it (cum[i - 1]) is < p: the first token always is.
    num_kept = 1 + (cum[:, :-1] < p[:, None]).sum(dim=1)
    return head.gather(1, (num_kept - 1)[:, None]).squeeze(1)


def _top_p_threshold(x: torch.Tensor, p: torch.Tensor, temperature: torch.Tensor | None) -> torch.Tensor:
    """The smallest logit kept by top-p ``p`` [r] in each row of ``x`` [r, V] (no top-k): the nucleus is searched
    in the ``c`` largest logits, ``c`` growing for the rows whose nucleus the head does not close; rows that would
    need more than a quarter of the vocabulary (where topk costs about what a sort does) are sorted."""
    vocab = x.shape[1]
    t = torch.ones(x.shape[0], device=x.device) if temperature is None else temperature.to(torch.float32)
    lse = torch.logsumexp(x.to(torch.float32) / t[:, None], dim=1)
    out = torch.empty_like(lse)
    todo = torch.arange(x.shape[0], device=x.device)
    c = FIRST_CANDIDATES
    while todo.numel():
        head = (x[todo].sort(dim=1, descending=True).values if c > vocab // 4 else
                x[todo].topk(c, dim=1).values).to(torch.float32)
        scaled = head / t[todo, None]
        # Closed when the head holds the whole nucleus: its mass reaches p, or it runs to -inf / the row's end.
        closed = (torch.exp(scaled - lse[todo, None]).sum(dim=1) >= p[todo]) | (head[:, -1] == float("-inf")) | \
            (head.shape[1] == vocab)
        done = closed.nonzero().squeeze(1)
        out[todo[done]] = _nucleus_threshold(head[done], scaled[done], lse[todo[done]], p[todo[done]])
        todo = todo[~closed]
        c *= GROWTH
    return out

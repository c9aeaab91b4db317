"""Top-k / top-p in the V1 sampler's fused path: which implementation runs, and the CPU one.

On CUDA (EARS rule) the EARS kernel truncates the rows itself (``kernels/top_k_top_p.py``: thresholds found on the
raw logits without a sort, applied while the rows are read; no float32 copy). ``EARS_VLLM_TOP_K_TOP_P=vllm`` turns
that off (vLLM's own kernel on a float32 copy divided by the temperature, as vLLM's sampler does); so does a failed
start-up check (``fused_top_k_top_p_usable``: the kernels compile on the device and agree with the definition on a
small awkward batch), with a warning.

On CPU, masks without sorting the vocabulary: vLLM's semantics, a partial sort's cost.

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

import functools
import logging
import os

import torch

from .config import EarsConfigError

logger = logging.getLogger("vllm.ears_vllm")
TOP_K_TOP_P_ENV = "EARS_VLLM_TOP_K_TOP_P"

FIRST_CANDIDATES = 64
GROWTH = 8


def top_k_top_p_choice() -> str:
    """``EARS_VLLM_TOP_K_TOP_P``: ``fused`` (default: the EARS kernel truncates on CUDA) or ``vllm``."""
    value = os.environ.get(TOP_K_TOP_P_ENV, "fused").strip()
    if value not in ("fused", "vllm"):
        raise EarsConfigError(f"{TOP_K_TOP_P_ENV}={value!r} is not allowed: use fused (the default: the EARS kernel "
                              "applies top-k / top-p on CUDA) or vllm (vLLM's own top-k / top-p kernel)")
    return value


@functools.lru_cache(maxsize=None)
def fused_top_k_top_p_usable(device: torch.device) -> bool:
    """Whether the V1 sampler lets the EARS kernel apply top-k / top-p on ``device``: CUDA, not turned off, and
    the start-up check passed (the kernels compile there and give the tokens of the reference backend, which
    masks with the definition, on a small batch with ties at both boundaries, -inf rows and a wide tie)."""
    return device.type == "cuda" and top_k_top_p_choice() == "fused" and passes_start_up_check(device)


def passes_start_up_check(device: torch.device) -> bool:
    """Run ``start_up_check`` on ``device``; a failure (or an exception: a compile error, a launch failure) is
    logged as a warning and gives False, so that vLLM's own path keeps the server serving."""
    try:
        problem = start_up_check(device)
    except Exception as error:
        problem = f"{type(error).__name__}: {error}"
    if problem:
        logger.warning("EARS: the fused top-k / top-p kernel failed its start-up check on %s (%s); vLLM's own "
                       "top-k / top-p kernel is used instead", device, problem)
        return False
    return True


def start_up_check(device: torch.device) -> str | None:
    """The Triton backend with top-k / top-p on ``device`` against the reference backend (which masks a copy by
    the definition) on a small awkward batch: None if the tokens agree, else what differed."""
    from ears_vllm import ears_rejection_sample

    g = torch.Generator().manual_seed(0)
    batch, k, vocab = 4, 3, 3000
    logits = torch.round(torch.randn(batch * (k + 1), vocab, generator=g) * 4) / 2  # many ties
    logits[0:4, 1500:] = float("-inf")  # request 0: 1500 finite tokens, top-k 2000
    logits[4:8, :1200] = 9.0  # request 1: a tie wider than the kernel's buffer at the top
    args = dict(draft_token_ids=torch.randint(0, vocab, (batch * k,), generator=g),
                cu_num_draft_tokens=torch.arange(1, batch + 1) * k, target_logits=logits, bonus_token_ids=None,
                temperature=torch.tensor([0.7, 1.0, 0.0, 1.3]), alpha=0.3, max_spec_len=k,
                seeds=torch.arange(batch) + 7, positions=torch.full((batch,), 40),
                top_k=torch.tensor([2000, 5, 3, vocab]), top_p=torch.tensor([0.9, 0.5, 1.0, 0.3]))
    ref = ears_rejection_sample(**args, backend="reference")
    got = ears_rejection_sample(**{n: a.to(device) if isinstance(a, torch.Tensor) else a for n, a in args.items()},
                                backend="triton", validate=False)
    if not torch.equal(got.output_token_ids.cpu(), ref.output_token_ids):
        return f"tokens {got.output_token_ids.tolist()} != reference {ref.output_token_ids.tolist()}"
    return None


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

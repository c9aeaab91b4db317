"""Shared inputs for the EARS tests: ragged batches in vLLM's layout, and a textbook standard sampler."""

import torch

from ears_vllm import PLACEHOLDER_TOKEN_ID

BACKENDS = ["torch", "triton"]


def backend_device(backend: str) -> str:
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def make_case(seed, batch=5, max_spec_len=4, vocab=37, draft_probs=False, greedy_frac=0.3, alpha=0.3,
              per_request_alpha=False, logit_scale=2.0, zero_drafts=True, dtype=torch.float32, device="cpu",
              inverse_cdf=False, packed=False, placeholder_frac=0.0):
    """A random ragged batch. Returns the positional arguments of `ears_rejection_sample`, randomness included.

    ``packed``: vLLM's sampler layout, each request's draft rows followed by its bonus row, and no bonus ids (the
    bonus token is sampled in the step). ``placeholder_frac``: that share of requests has its drafts from a random
    position on replaced by -1, as vLLM pads drafts that a grammar rejected.
    """
    g = torch.Generator().manual_seed(seed)
    low = 0 if zero_drafts else 1
    num_draft = torch.randint(low, max_spec_len + 1, (batch,), generator=g)
    cu = num_draft.cumsum(0).to(torch.int32)
    n = int(cu[-1])
    rows = n + batch if packed else n
    logits = torch.randn(rows, vocab, generator=g) * logit_scale
    # A few banned tokens per row (top-k / grammar masks), and drafts that sometimes hit them.
    banned = torch.rand(rows, vocab, generator=g) < 0.1
    logits[banned] = float("-inf")
    draft = torch.randint(0, vocab, (n,), generator=g)
    bonus = torch.randint(0, vocab, (batch,), generator=g)
    temp = torch.where(torch.rand(batch, generator=g) < greedy_frac, 0.0, 0.5 + torch.rand(batch, generator=g))
    probs = torch.softmax(torch.randn(n, vocab, generator=g), -1) if draft_probs else None
    if per_request_alpha:
        alpha = torch.rand(batch, generator=g)
        alpha[0] = 0.0
    u = torch.rand(n, dtype=torch.float64, generator=g)
    noise = torch.empty(batch, vocab).exponential_(generator=g)
    if inverse_cdf:  # one uniform per request instead of exponential-race noise
        noise = torch.rand(batch, dtype=torch.float64, generator=g)
    if placeholder_frac:
        start = 0
        for b in range(batch):
            k = int(num_draft[b])
            if k and float(torch.rand((), generator=g)) < placeholder_frac:
                first = int(torch.randint(0, k, (), generator=g))
                draft[start + first:start + k] = -1
            start += k
    to = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    return tuple(to(t) for t in (draft, cu, logits.to(dtype), None if packed else bonus, temp, alpha, max_spec_len,
                                 probs, u, noise))


def standard_speculative_sample(draft, cu, logits, bonus, temp, max_spec_len, draft_probs, u, noise):
    """Leviathan et al.'s rule written independently of the package (float64): the alpha = 0 oracle.

    ``bonus`` None: ``logits`` has each request's bonus row after its draft rows, and the bonus token is drawn from
    it with the request's noise (exponential race), as the package does.
    """
    batch, vocab = cu.numel(), logits.shape[1]
    out = torch.full((batch, max_spec_len + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.int32)
    start = 0
    for b in range(batch):
        end = int(cu[b])
        shift = b if bonus is None else 0
        greedy = float(temp[b]) < 1e-5
        for row in range(start, end):
            x = int(draft[row])
            row_logits = logits[row + shift].double()
            if greedy:
                t = int(torch.argmax(row_logits))
                out[b, row - start] = x if x == t else t
                if x != t:
                    break
                continue
            p = torch.softmax(row_logits / float(temp[b]), -1)
            q = torch.zeros(vocab, dtype=torch.float64)
            if draft_probs is None:
                if x >= 0:
                    q[x] = 1.0
            else:
                q = draft_probs[row].double()
            if x >= 0 and q[x] > 0 and float(u[row]) <= float(p[x] / q[x]):
                out[b, row - start] = x
                continue
            out[b, row - start] = int(torch.argmax((p - q).clamp(min=0) / noise[b].double()))
            break
        else:
            if bonus is not None:
                out[b, end - start] = int(bonus[b])
            else:
                bonus_logits = logits[end + shift].double()
                out[b, end - start] = int(torch.argmax(bonus_logits)) if greedy else \
                    int(torch.argmax(torch.softmax(bonus_logits / float(temp[b]), -1) / noise[b].double()))
        start = end
    return out

"""Constants, the output type and the small numerical rules shared by every EARS backend."""

import math
from collections.abc import Mapping
from numbers import Real
from typing import NamedTuple, Optional, Union

import torch

# Same value as vLLM's `vllm.v1.sample.rejection_sampler.PLACEHOLDER_TOKEN_ID`: in `draft_token_ids` it means "no
# draft at this position" (vLLM pads drafts that a grammar rejected with it); in the output it pads each row.
PLACEHOLDER_TOKEN_ID = -1
# Same value as vLLM's `_SAMPLING_EPS`: a request whose temperature is below it is greedy.
GREEDY_TEMPERATURE_EPS = 1e-5
# +inf logits are clamped to this (so several +inf tokens share the mass equally instead of producing NaN).
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# Inverse-CDF sampling works on blocks of this many tokens: block sums, then one block's cumulative sum.
CDF_BLOCK = 256


def check_alpha(alpha, name: str = "alpha", error: type = ValueError):
    """The one check of an EARS alpha: a real number in [0, 1], NaN rejected; tensors elementwise (float dtype).

    Returns ``alpha`` (a number as ``float``). Raises ``error`` (a ``ValueError`` subclass) with a one-line message
    that starts with ``name``: ``"<name>=1.5 is not allowed: it must be a number in [0, 1]"``.
    """
    if isinstance(alpha, torch.Tensor):
        if not alpha.dtype.is_floating_point:
            raise error(f"{name} is not allowed: it must be a floating-point tensor, got dtype {alpha.dtype}")
        ok = (alpha >= 0) & (alpha <= 1)
        if alpha.numel() and not bool(ok.all()):
            bad = alpha[~ok].flatten()[0].item()
            raise error(f"{name} is not allowed: it must lie in [0, 1] (no NaN); found {bad}")
        return alpha
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or math.isnan(alpha) or not 0.0 <= alpha <= 1.0:
        raise error(f"{name}={alpha!r} is not allowed: it must be a number in [0, 1]")
    return float(alpha)


def sanitize_logits(scaled_logits: torch.Tensor) -> torch.Tensor:
    """The behaviour on non-finite logits, shared by all backends.

    NaN is treated as -inf (the token can never be emitted); +inf is clamped to float32's max, so tokens with +inf
    share the probability mass equally and every finite token gets probability 0.
    """
    x = torch.where(torch.isnan(scaled_logits), float("-inf"), scaled_logits)
    return x.clamp(max=FLOAT32_MAX)


def sample_inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index drawn from each row of ``weights`` [n, V] (non-negative, not normalised) by inverse CDF.

    ``uniforms`` [n] in [0, 1). The first index whose cumulative weight exceeds ``u * total``, where cumulative
    weights are float64 running sums of the blocks' sums (``CDF_BLOCK`` tokens each, summed in the weights' dtype),
    then of the chosen block's weights: no [n, V] float64 copy and no full-row cumulative sum. The result differs
    from a flat float64 cumulative sum only by rounding (relative 1e-7 for float32 weights). A zero-weight
    token is never chosen; if rounding puts ``u * total`` at or past the total, the last positive weight is taken.
    Rows of total weight 0 return 0: callers handle them.
    """
    n, vocab = weights.shape
    num_blocks = -(-vocab // CDF_BLOCK)
    if num_blocks * CDF_BLOCK != vocab:
        weights = torch.nn.functional.pad(weights, (0, num_blocks * CDF_BLOCK - vocab))
    blocks = weights.view(n, num_blocks, CDF_BLOCK)
    block_cdf = blocks.sum(dim=-1).to(torch.float64).cumsum_(dim=-1)  # [n, num_blocks]
    total = block_cdf[:, -1:]
    target = uniforms.to(torch.float64)[:, None] * total
    # The block holding the sample: the first whose cumulative weight exceeds the target, else the last positive one.
    blk = torch.minimum(torch.searchsorted(block_cdf, target, right=True),
                        torch.searchsorted(block_cdf, total.contiguous(), right=False)).clamp_(max=num_blocks - 1)
    below = torch.where(blk > 0, block_cdf.gather(1, (blk - 1).clamp(min=0)), torch.zeros_like(target))
    rows = torch.arange(n, device=weights.device)
    cdf = blocks[rows, blk.squeeze(1)].to(torch.float64).cumsum_(dim=-1)  # [n, CDF_BLOCK]
    idx = torch.minimum(torch.searchsorted(cdf, target - below, right=True),
                        torch.searchsorted(cdf, cdf[:, -1:].contiguous(), right=False))
    return (blk * CDF_BLOCK + idx).squeeze(1).clamp_(max=vocab - 1)


def budget_tolerance(tolerance: torch.Tensor, ratio: torch.Tensor, remaining: torch.Tensor) -> torch.Tensor:
    """The tolerance a TV budget lets act at each position: ``tolerance`` ``[batch, K]`` (alpha*h, 0 where nothing
    is decided by the random rule), ``ratio`` ``[batch, K]`` (p(x)/q(x), finite), ``remaining`` ``[batch]`` (budget
    left). Position j gets ``min(alpha*h, left)``, where ``left`` is the budget minus the cost
    ``min(1, ratio + t) - min(1, ratio)`` of the tolerances t given to positions 0..j-1; that cost is at most t, so
    a request never spends more than its budget, and a request reaches j only by accepting 0..j-1, so every cost
    counted was spent. Budget 0: no tolerance anywhere (the standard rule); inf: alpha*h everywhere. Returns
    ``[batch, K]`` float64."""
    granted = torch.zeros_like(tolerance, dtype=torch.float64)
    left = remaining.to(torch.float64).clone()
    for j in range(tolerance.shape[1]):
        t = torch.minimum(tolerance[:, j].to(torch.float64), left)
        r = ratio[:, j].to(torch.float64)
        granted[:, j] = t
        left = (left - ((r + t).clamp(max=1.0) - r.clamp(max=1.0))).clamp(min=0.0)
    return granted


def exponential_noise(rows: int, vocab: int, generators: Optional[Mapping[int, torch.Generator]] = None
                      ) -> torch.Tensor:
    """``[rows, vocab]`` float32 Exp(1) noise for an exponential race (``argmax(weights / noise)``), drawn as
    ``-log(U)`` from ``torch.rand`` on CPU: row ``i`` from ``generators[i]`` when given, the other rows from the
    global RNG.

    Why a race and not ``sample_inverse_cdf`` where a seeded draw must be reproducible: an inverse CDF maps one
    uniform through the running sum of the whole row, so a perturbation of the logits at the level of rounding (the
    target's forward on a batch of another size) moves every boundary of that sum, and the drawn token changes when
    the uniform lies between a boundary's old and new place: a chance of the order of the sum of all the boundaries'
    shifts. A race changes its winner only if the two best ``log w - log E`` are within the perturbation of each other.
    ``-log(torch.rand(...))`` because it is cheaper than ``exponential_()`` on CPU (``docs/benchmarks.md``, "Seeded
    tokens and the batch size"). ``U = 0`` gives ``E = inf`` (that token cannot win);
    ``U < 1`` keeps ``E > 0``, so a zero weight never wins while any token has positive weight.
    """
    generators = generators or {}
    uniform = torch.empty(rows, vocab, dtype=torch.float32)
    unseeded = [i for i in range(rows) if i not in generators]
    if unseeded:
        uniform[unseeded] = torch.rand(len(unseeded), vocab)
    for i, generator in generators.items():
        torch.rand(vocab, generator=generator, out=uniform[i])
    return uniform.log_().neg_()


class EarsInputs(NamedTuple):
    """The inputs of one EARS step, every one given: what ``ears_vllm.ears_rejection_sample`` hands a backend after
    validating its arguments and drawing the randomness not passed in. Shapes and meaning: that function's
    docstring."""

    draft_token_ids: torch.Tensor  # [num_tokens], -1 = no draft
    cu_num_draft_tokens: torch.Tensor  # [batch]
    target_logits: torch.Tensor  # [num_tokens, V], or [num_tokens + batch, V] when bonus_token_ids is None
    bonus_token_ids: Optional[torch.Tensor]  # [batch] or [batch, 1]; None: sampled from each request's last row
    temperature: torch.Tensor  # [batch]
    alpha: Union[float, torch.Tensor]  # scalar or [batch]
    max_spec_len: int
    draft_probs: Optional[torch.Tensor]  # [num_tokens, V]; None: one-hot drafts
    uniform_probs: torch.Tensor  # [num_tokens] float64
    recovery_noise: torch.Tensor  # [batch, V] Exp(1), or [batch] U(0, 1) (inverse CDF; not the Triton backend)
    tv_budget: Optional[torch.Tensor] = None  # [batch] float64 budget left per request (inf: none); None: no budget
    # Stateless randomness (ears_vllm/stateless.py), Triton backend only: then uniform_probs and recovery_noise are
    # not read (the other backends get them drawn from these by ``stateless_inputs``).
    seeds: Optional[torch.Tensor] = None  # [batch] int64
    positions: Optional[torch.Tensor] = None  # [batch] int64, the token position of each request's bonus row


class EarsOutput(NamedTuple):
    """Result of one EARS verification step.

    Attributes
    ----------
    output_token_ids : torch.Tensor
        Shape: ``[batch, max_spec_len + 1]``, int32. Per request: the accepted draft tokens, then either the
        recovered token (at the first rejection) or the bonus token (all drafts accepted), then
        ``PLACEHOLDER_TOKEN_ID`` (-1) padding.
    uncertainty : torch.Tensor
        Shape: ``[num_tokens]``, float32. ``h = 1 - max_v p(v)`` of the target at every draft position
        (0 for greedy requests, whose target distribution is a point mass).
    num_accepted : torch.Tensor
        Shape: ``[batch]``, int32. Draft tokens accepted per request.
    num_tolerance_accepted : torch.Tensor
        Shape: ``[batch]``, int32. Accepted draft tokens that the standard rule would have rejected with the same
        uniform draw (``p/q < u <= p/q + alpha*h``): the tokens accepted only thanks to the EARS tolerance.
    tv_cost : torch.Tensor
        Shape: ``[num_tokens]``, float32. At every position the random rule decided (up to and including a request's
        first rejection): ``min(1, p(x)/q(x) + alpha*h) - min(1, p(x)/q(x))`` (0 when ``p(x) = 0``, ``q(x) = 0`` or
        ``x = -1``, and where a TV budget withheld the tolerance), the extra acceptance probability the tolerance
        gave the drafted ``x``. Its expectation over
        ``x ~ q`` is exactly the total-variation distance between the token EARS emits at that position and the
        target distribution (with one-hot drafts it is that distance itself). 0 at undecided positions and for
        greedy requests. The sum over a step is the expected TV cost the step added; a request's sum is what it
        spent of its TV budget.
    request_stats : torch.Tensor or None
        Shape: ``[batch, 4]``, float64, when asked for (``request_stats=True``): per request, the tolerance-accepted
        drafts, the positions the random rule decided, the sum of their uncertainty and the sum of ``tv_cost``
        (see :func:`request_stats`).
    """

    output_token_ids: torch.Tensor
    uncertainty: torch.Tensor
    num_accepted: torch.Tensor
    num_tolerance_accepted: torch.Tensor
    tv_cost: torch.Tensor
    request_stats: Optional[torch.Tensor] = None


def request_stats(out: "EarsOutput", temperature: torch.Tensor, cu_num_draft_tokens: torch.Tensor) -> torch.Tensor:
    """``[batch, 4]`` float64 per request: tolerance-accepted drafts, positions the random rule decided (up to and
    including the first rejection; none for a greedy request), the sum of their uncertainty, the sum of ``tv_cost``.
    What the Triton kernel writes in the step; computed here from the outputs for the other backends."""
    cu = cu_num_draft_tokens.to(torch.int64)
    num_draft = torch.diff(cu, prepend=cu.new_zeros(1))
    batch, num_tokens = cu.numel(), out.uncertainty.numel()
    is_random = temperature >= GREEDY_TEMPERATURE_EPS
    decided = torch.minimum(out.num_accepted.to(torch.int64) + 1, num_draft) * is_random
    req = torch.repeat_interleave(torch.arange(batch, device=cu.device), num_draft, output_size=num_tokens)
    pos = torch.arange(num_tokens, device=cu.device) - (cu - num_draft)[req]
    h = torch.where(pos < decided[req], out.uncertainty.to(torch.float64), 0.0)
    stats = torch.zeros(batch, 4, dtype=torch.float64, device=cu.device)
    stats[:, 0] = out.num_tolerance_accepted.to(torch.float64)
    stats[:, 1] = decided.to(torch.float64)
    stats[:, 2].index_add_(0, req, h)
    stats[:, 3].index_add_(0, req, out.tv_cost.to(torch.float64))
    return stats

"""Public functional API: EARS verification of a ragged batch of draft tokens, in vLLM's layout."""

from typing import Optional, Union

import torch

from ._common import PLACEHOLDER_TOKEN_ID, EarsInputs, EarsOutput, check_alpha
from ._common import request_stats as _request_stats

_BACKENDS = ("auto", "triton", "torch", "reference")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _fail(name: str, problem: str):
    raise ValueError(f"ears_rejection_sample: `{name}` {problem}")


def _check_tensor(name, t, ndim, *, integer=None, floating=None, shape=None, device=None):
    if not isinstance(t, torch.Tensor):
        _fail(name, f"must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        _fail(name, f"must be {ndim}-D, got shape {tuple(t.shape)}")
    if integer and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
        _fail(name, f"must have an integer dtype, got {t.dtype}")
    if floating and t.dtype not in _FLOAT_DTYPES:
        _fail(name, f"must have a float dtype (float32/float16/bfloat16/float64), got {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        _fail(name, f"must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if device is not None and t.device != device:
        _fail(name, f"must be on {device} like target_logits, got {t.device}")


def _validate(draft_token_ids, cu_num_draft_tokens, target_logits, bonus_token_ids, temperature, alpha,
              max_spec_len, draft_probs, uniform_probs, recovery_noise, tv_budget=None, seeds=None, positions=None,
              top_k=None, top_p=None):
    _check_tensor("target_logits", target_logits, 2, floating=True)
    num_rows, vocab_size = target_logits.shape
    dev = target_logits.device
    if vocab_size == 0:
        _fail("target_logits", "has an empty vocabulary dimension")
    _check_tensor("draft_token_ids", draft_token_ids, 1, integer=True, device=dev)
    num_tokens = draft_token_ids.numel()
    _check_tensor("cu_num_draft_tokens", cu_num_draft_tokens, 1, integer=True, device=dev)
    batch = cu_num_draft_tokens.numel()
    if bonus_token_ids is None:
        if num_rows != num_tokens + batch:
            _fail("target_logits", f"must have num_tokens + batch = {num_tokens + batch} rows (each request's draft "
                                   f"rows, then its bonus row) when bonus_token_ids is None, got {num_rows}")
    else:
        if num_rows != num_tokens:
            _fail("draft_token_ids", f"must have one entry per row of target_logits ({num_rows}), got {num_tokens}")
        if bonus_token_ids.dim() == 2:
            _check_tensor("bonus_token_ids", bonus_token_ids, 2, integer=True, shape=(batch, 1), device=dev)
        else:
            _check_tensor("bonus_token_ids", bonus_token_ids, 1, integer=True, shape=(batch,), device=dev)
    _check_tensor("temperature", temperature, 1, floating=True, shape=(batch,), device=dev)
    if bool(torch.isnan(temperature).any()) or bool((temperature < 0).any()):
        _fail("temperature", "must be >= 0 and not NaN (0 means greedy)")
    if isinstance(alpha, torch.Tensor) and alpha.dim() > 0:
        _check_tensor("alpha", alpha, 1, floating=True, shape=(batch,), device=dev)
    check_alpha(alpha, "ears_rejection_sample: `alpha`")
    if isinstance(max_spec_len, bool) or not isinstance(max_spec_len, int) or max_spec_len < 0:
        _fail("max_spec_len", f"must be a non-negative int, got {max_spec_len!r}")
    if batch:
        cu = cu_num_draft_tokens.to(torch.int64)
        counts = torch.diff(cu, prepend=cu.new_zeros(1))
        if bool((counts < 0).any()):
            _fail("cu_num_draft_tokens", "must be non-decreasing and start >= 0")
        if int(cu[-1]) != num_tokens:
            _fail("cu_num_draft_tokens", f"must end at num_tokens={num_tokens}, got {int(cu[-1])}")
        if int(counts.max()) > max_spec_len:
            _fail("max_spec_len", f"is {max_spec_len} but a request has {int(counts.max())} draft tokens")
    elif num_tokens:
        _fail("cu_num_draft_tokens", "is empty but there are draft tokens")
    if num_tokens and (int(draft_token_ids.min()) < PLACEHOLDER_TOKEN_ID or int(draft_token_ids.max()) >= vocab_size):
        _fail("draft_token_ids", f"must lie in [0, vocab_size={vocab_size}), or be {PLACEHOLDER_TOKEN_ID} (no draft)")
    if draft_probs is not None:
        _check_tensor("draft_probs", draft_probs, 2, floating=True, shape=(num_tokens, vocab_size), device=dev)
    if uniform_probs is not None:
        _check_tensor("uniform_probs", uniform_probs, 1, floating=True, shape=(num_tokens,), device=dev)
    if recovery_noise is not None:
        if recovery_noise.dim() == 1:
            _check_tensor("recovery_noise", recovery_noise, 1, floating=True, shape=(batch,), device=dev)
        else:
            _check_tensor("recovery_noise", recovery_noise, 2, floating=True, shape=(batch, vocab_size), device=dev)
    if tv_budget is not None:
        _check_tensor("tv_budget", tv_budget, 1, floating=True, shape=(batch,), device=dev)
        if bool(torch.isnan(tv_budget).any()) or bool((tv_budget < 0).any()):
            _fail("tv_budget", "must be >= 0 and not NaN (inf: no budget)")
    if top_k is not None:
        _check_tensor("top_k", top_k, 1, integer=True, shape=(batch,), device=dev)
        if batch and int(top_k.min()) < 1:
            _fail("top_k", f"must be >= 1 (>= vocab_size: no top-k), got {int(top_k.min())}")
    if top_p is not None:
        _check_tensor("top_p", top_p, 1, floating=True, shape=(batch,), device=dev)
        if batch and not bool(((top_p > 0) & (top_p <= 1)).all()):
            _fail("top_p", "must lie in (0, 1] (1: no top-p)")
    if (seeds is None) != (positions is None):
        _fail("seeds" if seeds is None else "positions", "must be given with `positions` / `seeds` (stateless "
                                                          "randomness needs both)")
    if seeds is not None:
        if uniform_probs is not None or recovery_noise is not None:
            _fail("seeds", "excludes `uniform_probs` and `recovery_noise`: the randomness is drawn from the seeds")
        _check_tensor("seeds", seeds, 1, integer=True, shape=(batch,), device=dev)
        _check_tensor("positions", positions, 1, integer=True, shape=(batch,), device=dev)
        if batch:
            first = positions.to(torch.int64) - torch.diff(cu_num_draft_tokens.to(torch.int64),
                                                            prepend=cu_num_draft_tokens.new_zeros(1))
            if bool((first < 0).any()) or int(positions.max()) >= 1 << 31:
                _fail("positions", "must lie in [num_drafts, 2**31) for each request (the bonus row's token "
                                   "position)")


def ears_rejection_sample(
    draft_token_ids: torch.Tensor,
    cu_num_draft_tokens: torch.Tensor,
    target_logits: torch.Tensor,
    bonus_token_ids: Optional[torch.Tensor],
    temperature: torch.Tensor,
    alpha: Union[float, torch.Tensor],
    max_spec_len: int,
    draft_probs: Optional[torch.Tensor] = None,
    uniform_probs: Optional[torch.Tensor] = None,
    recovery_noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    validate: bool = True,
    backend: str = "auto",
    tv_budget: Optional[torch.Tensor] = None,
    seeds: Optional[torch.Tensor] = None,
    positions: Optional[torch.Tensor] = None,
    request_stats: bool = False,
    top_k: Optional[torch.Tensor] = None,
    top_p: Optional[torch.Tensor] = None,
) -> EarsOutput:
    r"""Verify a ragged batch of draft tokens with EARS (uncertainty-adaptive rejection sampling).

    At every draft position the target's uncertainty is :math:`h = 1 - \max_v p(v)` and the draft token ``x`` is
    accepted iff ``p(x) > 0``, ``q(x) > 0`` and :math:`u \le p(x)/q(x) + \alpha h` with ``u ~ U(0, 1)``. The first
    rejected position emits a recovered token drawn from ``normalize(max(p - q, 0))`` (``p`` without ``x`` when
    ``draft_probs`` is None), and a request whose drafts are all accepted emits its bonus token. Greedy requests
    (temperature 0) accept by exact argmax matching. ``alpha = 0`` is exactly standard speculative sampling
    (Leviathan et al., https://arxiv.org/abs/2211.17192); EARS is https://arxiv.org/abs/2512.13194.

    Parameters
    ----------
    draft_token_ids : torch.Tensor
        Shape: ``[num_tokens]``, integer. The draft tokens of all requests, flattened. ``-1``
        (``PLACEHOLDER_TOKEN_ID``) means "no draft here" and is always rejected, for greedy and random requests
        alike (vLLM pads drafts that a grammar rejected with it); its recovered token is drawn from
        ``normalize(max(p - q, 0))`` with ``draft_probs``, from ``p`` without.
    cu_num_draft_tokens : torch.Tensor
        Shape: ``[batch]``, integer. Cumulative number of draft tokens per request (vLLM's layout); a request may
        have 0 drafts.
    target_logits : torch.Tensor
        Shape: ``[num_tokens, vocab_size]``, or ``[num_tokens + batch, vocab_size]`` when ``bonus_token_ids`` is
        None (vLLM's sampler layout: each request's draft rows, then its bonus row). float32 / bfloat16 / float16,
        with top-k / top-p / bans already applied as ``-inf`` but *not* divided by the temperature (the division is
        fused). NaN logits count as ``-inf``; ``+inf`` logits share the mass equally; a row with no finite logit is
        treated as uniform.
    bonus_token_ids : torch.Tensor or None
        Shape: ``[batch]`` or ``[batch, 1]``, integer. Token emitted when every draft of a request is accepted. If
        None, the bonus token is sampled here from the request's bonus row (argmax for a greedy request), only for
        requests that accept every draft.
    temperature : torch.Tensor
        Shape: ``[batch]``, float. Below 1e-5 the request is greedy. Pass 1.0 for rows whose logits are already
        scaled.
    alpha : float or torch.Tensor
        Shape: scalar or ``[batch]``. Tolerance factor in [0, 1].
    max_spec_len : int
        Width of the output minus one; at least the largest number of drafts of a request.
    draft_probs : torch.Tensor, optional
        Shape: ``[num_tokens, vocab_size]``, float. Draft distributions; None means one-hot on the draft token.
    uniform_probs : torch.Tensor, optional
        Shape: ``[num_tokens]``, float64 recommended. The ``u`` of each position; drawn with ``generator`` if None.
    recovery_noise : torch.Tensor, optional
        The randomness of each request's one sampled token: the recovered token, or the bonus token when
        ``bonus_token_ids`` is None (a request emits one or the other, never both). Shape ``[batch, vocab_size]``,
        float32, i.i.d. Exp(1): token = ``argmax(weights / noise)`` (vLLM's exponential race). Or shape ``[batch]``,
        float64 U(0, 1): the token is drawn by inverse CDF, one uniform per request (torch / reference backends
        only; far cheaper on CPU, where drawing ``batch * vocab_size`` exponentials costs more than the whole
        verification). Drawn with ``generator`` if None: ``[batch, vocab_size]`` for the Triton backend,
        ``[batch]`` otherwise.
    generator : torch.Generator, optional
        Used only for randomness not passed in.
    validate : bool
        Check shapes, dtypes, ranges (host syncs). Pass False on a hot path whose inputs are known good.
    backend : str
        ``"auto"`` (Triton on CUDA, vectorised torch on CPU), ``"triton"``, ``"torch"`` or ``"reference"``.
    tv_budget : torch.Tensor, optional
        Shape: ``[batch]``, float (float64 recommended). What is left of each request's total-variation budget
        (``inf``: none). Position by position the tolerance is ``min(alpha*h, left)``, and its cost
        ``min(1, p/q + t) - min(1, p/q)`` (at most t) is subtracted from what is left: budget 0 is the standard
        rule, a spent budget turns the tolerance off for the rest of the request. The caller
        subtracts each request's ``tv_cost`` sum from its budget between steps; since per-token TV costs add up
        along a sequence, a request whose costs never exceed B samples within total variation B of the target.
        None: no budget.
    seeds, positions : torch.Tensor, optional
        Shape: ``[batch]``, integer, given together: stateless randomness instead of ``uniform_probs``,
        ``recovery_noise`` and ``generator`` (which is then not used). Each request's uniforms and race noise are
        Triton's Philox keyed by its seed and the token positions of its rows (``positions``: the token position
        of each request's bonus row, its last; draft ``j`` of ``n`` sits at ``positions - n + j``), drawn inside
        the Triton kernel (no ``[batch, vocab_size]`` noise, no generator) and materialised bit for bit for the
        other backends: the same seed at the same position draws the same numbers in any batch. Keys and guarantees:
        ``ears_vllm/stateless.py``.
    request_stats : bool
        Also return the per-request sums a caller's counters need (``EarsOutput.request_stats``), written by the
        Triton kernel in the step (no extra launches), computed from the outputs by the other backends.
    top_k, top_p : torch.Tensor, optional
        Shape: ``[batch]``; integer ``>= 1`` (``>= vocab_size``: none) and float in ``(0, 1]`` (1: none). Each
        random request's rows (drafts and, with ``bonus_token_ids`` None, its bonus row) are truncated to vLLM's
        top-k / top-p set of ``softmax(logits / temperature)``: the ``k`` largest, then the fewest largest of those
        whose probability reaches ``p``, ties at either boundary kept in index order (``ears_vllm/top_k_top_p.py``).
        The Triton backend finds each row's threshold without a sort and applies it while it reads the logits (no
        masked copy); the others mask a copy. Greedy requests are not affected (their argmax is always kept).

    Returns
    -------
    EarsOutput
        ``output_token_ids`` ``[batch, max_spec_len + 1]`` int32 padded with -1; ``uncertainty`` ``[num_tokens]``
        float32; ``num_accepted`` ``[batch]`` int32; ``num_tolerance_accepted`` ``[batch]`` int32 (drafts accepted
        only thanks to the tolerance: ``p/q < u``); ``tv_cost`` ``[num_tokens]`` float32, the exact expected
        total-variation cost of the tolerance at each decided position (see :class:`ears_vllm.EarsOutput`).

    Examples
    --------
    A 4-token vocabulary, two requests with 2 drafts each. Request 0's target is flat (h = 0.7) and its draft
    token 1 has p = 0.3 < u = 0.5: the standard rule rejects it, EARS with alpha = 0.5 accepts it (0.3 + 0.35 >=
    0.5), at an expected TV cost of min(1, 0.3 + 0.35) - 0.3 = 0.35. Request 1 drafts token 3, which its target
    forbids (p = 0): rejected whatever alpha, and the recovered token comes from p without token 3.

    >>> import torch
    >>> from ears_vllm import ears_rejection_sample
    >>> flat = torch.tensor([0.3, 0.3, 0.2, 0.2]).log()
    >>> peaked = torch.tensor([0.1, 0.9, 0.0, 0.0]).log()
    >>> out = ears_rejection_sample(
    ...     draft_token_ids=torch.tensor([1, 0, 3, 1]),
    ...     cu_num_draft_tokens=torch.tensor([2, 4]),
    ...     target_logits=torch.stack([flat, flat, peaked, peaked]),
    ...     bonus_token_ids=torch.tensor([2, 2]),
    ...     temperature=torch.tensor([1.0, 1.0]),
    ...     alpha=0.5,
    ...     max_spec_len=2,
    ...     uniform_probs=torch.tensor([0.5, 0.1, 0.5, 0.5], dtype=torch.float64),
    ...     recovery_noise=torch.ones(2, 4),
    ... )
    >>> out.output_token_ids.tolist()
    [[1, 0, 2], [1, -1, -1]]
    >>> out.num_accepted.tolist(), out.num_tolerance_accepted.tolist()
    ([2, 0], [1, 0])
    >>> [round(h, 2) for h in out.uncertainty.tolist()]
    [0.7, 0.7, 0.1, 0.1]
    >>> [round(c, 2) for c in out.tv_cost.tolist()]
    [0.35, 0.35, 0.0, 0.0]

    vLLM's layout with the bonus sampled in the step: each request's draft rows, then its bonus row, and
    ``bonus_token_ids=None``. Request 0 accepts its draft and samples its bonus from its second (flat) row;
    request 1 is greedy and its draft is a ``-1`` placeholder: rejected, the target's argmax is emitted.

    >>> out = ears_rejection_sample(
    ...     torch.tensor([1, -1]), torch.tensor([1, 2]), torch.stack([flat, flat, peaked, peaked]), None,
    ...     temperature=torch.tensor([1.0, 0.0]), alpha=0.5, max_spec_len=1,
    ...     uniform_probs=torch.tensor([0.5, 0.5], dtype=torch.float64), recovery_noise=torch.ones(2, 4))
    >>> out.output_token_ids.tolist()
    [[1, 0], [1, -1]]
    """
    if backend not in _BACKENDS:
        _fail("backend", f"must be one of {_BACKENDS}, got {backend!r}")
    if validate:
        _validate(draft_token_ids, cu_num_draft_tokens, target_logits, bonus_token_ids, temperature, alpha,
                  max_spec_len, draft_probs, uniform_probs, recovery_noise, tv_budget, seeds, positions, top_k, top_p)
    num_tokens, vocab_size = draft_token_ids.numel(), target_logits.shape[1]
    device = target_logits.device
    if backend == "auto":
        backend = "triton" if target_logits.is_cuda else "torch"
    if seeds is not None and backend != "triton":  # the kernel draws them itself; the others get them here
        from .stateless import stateless_inputs

        uniform_probs, recovery_noise = stateless_inputs(seeds, positions, cu_num_draft_tokens, vocab_size)
        seeds = positions = None
    batch = cu_num_draft_tokens.numel()
    if seeds is None:  # the randomness not passed in is drawn here
        if uniform_probs is None:
            uniform_probs = torch.rand(num_tokens, dtype=torch.float64, device=device, generator=generator)
        if recovery_noise is None:
            if backend == "triton":
                recovery_noise = torch.empty(batch, vocab_size, dtype=torch.float32, device=device)
                recovery_noise.exponential_(generator=generator)
            else:
                recovery_noise = torch.rand(batch, dtype=torch.float64, device=device, generator=generator)
        elif backend == "triton" and recovery_noise.dim() != 2:
            _fail("recovery_noise", "must be [batch, vocab_size] Exp(1) noise for the triton backend")
    if top_p is not None:  # every backend compares float32 probabilities with it, as the kernel (and vLLM's) does
        top_p = top_p.to(torch.float32)
    if backend != "triton" and (top_k is not None or top_p is not None):  # the kernel truncates as it reads
        from .top_k_top_p import truncate_logits

        target_logits = truncate_logits(target_logits, cu_num_draft_tokens, temperature, top_k, top_p,
                                        packed=bonus_token_ids is None)
    inputs = EarsInputs(draft_token_ids, cu_num_draft_tokens, target_logits, bonus_token_ids, temperature, alpha,
                        max_spec_len, draft_probs, uniform_probs, recovery_noise, tv_budget, seeds, positions)
    if backend == "triton":
        from .kernels.ears_verify import ears_rejection_sample_triton

        return EarsOutput(*ears_rejection_sample_triton(inputs, with_stats=request_stats, top_k=top_k,
                                                        top_p=top_p))
    if backend == "torch":
        from .cpu import ears_rejection_sample_torch

        out = ears_rejection_sample_torch(inputs)
    else:
        from .reference import ears_rejection_sample_reference

        on_cpu = EarsInputs(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in inputs))
        out = EarsOutput(*(t.to(device) for t in ears_rejection_sample_reference(on_cpu)[:5]))
    if request_stats:
        out = out._replace(request_stats=_request_stats(out, temperature, cu_num_draft_tokens))
    return out

"""CPU path and Triton kernel against the reference: identical tokens for identical randomness."""

import pytest
import torch
from ears_cases import backend_device, make_case, standard_speculative_sample

from ears_vllm import ears_rejection_sample

HAS_CUDA = torch.cuda.is_available()

# (batch, max_spec_len, vocab): vocabularies that are not powers of two exercise the block masking.
SMALL_SHAPES = [(1, 1, 2), (5, 4, 37), (7, 8, 129), (3, 3, 1271), (4, 2, 8193)]
LARGE_SHAPES = [(32, 4, 32000), (16, 8, 50257)]
OPTIONS = [
    dict(draft_probs=False, alpha=0.0),
    dict(draft_probs=True, alpha=0.0),
    dict(draft_probs=False, alpha=0.3),
    dict(draft_probs=True, alpha=0.7),
    dict(draft_probs=False, per_request_alpha=True),
    dict(draft_probs=True, per_request_alpha=True, greedy_frac=0.0),
    dict(draft_probs=False, alpha=1.0, greedy_frac=1.0),
    # vLLM's sampler layout (bonus rows in the logits, bonus sampled in the step) and -1 placeholder drafts.
    dict(draft_probs=False, alpha=0.3, packed=True),
    dict(draft_probs=True, per_request_alpha=True, packed=True, placeholder_frac=0.5),
    dict(draft_probs=False, alpha=0.5, placeholder_frac=0.5),
    dict(draft_probs=False, alpha=0.5, greedy_frac=0.5, packed=True, placeholder_frac=0.5),
]
# Recovered tokens by inverse CDF (one uniform per request): the CPU path and the reference only.
INVERSE_CDF_OPTIONS = [dict(o, inverse_cdf=True) for o in OPTIONS[:6] + OPTIONS[7:]]


def _check(backend, seed, shape, opts, dtype=torch.float32, tv_budget=None):
    batch, k, vocab = shape
    args = make_case(seed, batch=batch, max_spec_len=k, vocab=vocab, dtype=dtype, device=backend_device(backend),
                     **opts)
    budget = None if tv_budget is None else tv_budget(batch)
    got = ears_rejection_sample(*args, backend=backend, request_stats=True,
                                tv_budget=None if budget is None else budget.to(backend_device(backend)))
    ref = ears_rejection_sample(*[a.cpu() if isinstance(a, torch.Tensor) else a for a in args],
                                backend="reference", tv_budget=budget, request_stats=True)
    assert torch.equal(got.output_token_ids.cpu(), ref.output_token_ids)
    assert torch.equal(got.num_accepted.cpu(), ref.num_accepted)
    assert torch.equal(got.num_tolerance_accepted.cpu(), ref.num_tolerance_accepted)
    torch.testing.assert_close(got.uncertainty.cpu(), ref.uncertainty, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(got.tv_cost.cpu(), ref.tv_cost, atol=2e-6, rtol=1e-5)
    # The per-request sums: written by the kernel in the step, computed from the outputs elsewhere.
    torch.testing.assert_close(got.request_stats.cpu(), ref.request_stats, atol=1e-5, rtol=1e-5)
    return ref


@pytest.mark.parametrize("shape", SMALL_SHAPES)
@pytest.mark.parametrize("opts", OPTIONS)
def test_torch_path_matches_reference(shape, opts):
    _check("torch", 1, shape, opts)


@pytest.mark.parametrize("shape", SMALL_SHAPES)
@pytest.mark.parametrize("opts", INVERSE_CDF_OPTIONS)
def test_torch_path_matches_reference_inverse_cdf(shape, opts):
    _check("torch", 6, shape, opts)


@pytest.mark.parametrize("shape", LARGE_SHAPES)
@pytest.mark.parametrize("opts", OPTIONS[1:4] + INVERSE_CDF_OPTIONS[2:4])
def test_torch_path_matches_reference_large(shape, opts):
    _check("torch", 2, shape, opts)


@pytest.mark.parametrize("shape", SMALL_SHAPES)
@pytest.mark.parametrize("opts", OPTIONS)
def test_triton_matches_reference(shape, opts):
    # On CPU this runs under TRITON_INTERPRET=1 (set by the root conftest.py before the kernels are imported).
    _check("triton", 3, shape, opts)


@pytest.mark.skipif(not HAS_CUDA, reason="large-vocabulary kernel shapes need a GPU (interpreter too slow)")
@pytest.mark.parametrize("shape", [(64, 4, 151936), (256, 1, 128256), (8, 8, 32000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("opts", OPTIONS[1:4])
def test_triton_matches_torch_path_large_cuda(shape, dtype, opts):
    batch, k, vocab = shape
    args = make_case(4, batch=batch, max_spec_len=k, vocab=vocab, dtype=dtype, device="cuda", **opts)
    got = ears_rejection_sample(*args, backend="triton")
    ref = ears_rejection_sample(*args, backend="torch")
    assert torch.equal(got.output_token_ids, ref.output_token_ids)
    assert torch.equal(got.num_accepted, ref.num_accepted)
    assert torch.equal(got.num_tolerance_accepted, ref.num_tolerance_accepted)
    torch.testing.assert_close(got.uncertainty, ref.uncertainty, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(got.tv_cost, ref.tv_cost, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
@pytest.mark.parametrize("draft_probs", [False, True])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_alpha_zero_is_standard_speculative_sampling(backend, draft_probs, packed, seed):
    args = make_case(seed, batch=8, max_spec_len=5, vocab=61, draft_probs=draft_probs, alpha=0.0, logit_scale=1.0,
                     packed=packed, placeholder_frac=0.3, device=backend_device(backend))
    got = ears_rejection_sample(*args, backend=backend)
    draft, cu, logits, bonus, temp, _, k, probs, u, noise = [a.cpu() if isinstance(a, torch.Tensor) else a
                                                               for a in args]
    want = standard_speculative_sample(draft, cu, logits, bonus, temp, k, probs, u, noise)
    assert torch.equal(got.output_token_ids.cpu(), want)
    assert int(got.num_tolerance_accepted.sum()) == 0
    assert float(got.tv_cost.abs().sum()) == 0.0


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("packed", [False, True])
def test_output_invariants(backend, packed):
    args = make_case(7, batch=16, max_spec_len=6, vocab=97, draft_probs=True, alpha=0.5, packed=packed,
                     placeholder_frac=0.3, device=backend_device(backend))
    out = ears_rejection_sample(*args, backend=backend)
    tokens = out.output_token_ids.cpu()
    cu = args[1].cpu().long()
    num_draft = torch.diff(cu, prepend=cu.new_zeros(1))
    emitted = (tokens != -1).sum(1)
    # Accepted drafts plus exactly one recovered or bonus token; nothing after the first -1.
    assert torch.equal(emitted, out.num_accepted.cpu().long() + 1)
    assert bool((out.num_accepted.cpu() <= num_draft).all())
    for row in tokens:
        valid = (row != -1).long()
        assert torch.equal(valid, valid.cummin(0).values)
    assert bool((tokens < 97).all())
    assert bool((out.num_tolerance_accepted <= out.num_accepted).all())
    # A -1 placeholder is never accepted: every emitted token is a real one, and no chain passes a placeholder.
    draft = args[0].cpu()
    for b in range(cu.numel()):
        start = 0 if b == 0 else int(cu[b - 1])
        first_placeholder = next((j for j in range(int(num_draft[b])) if int(draft[start + j]) == -1), None)
        if first_placeholder is not None:
            assert int(out.num_accepted[b]) <= first_placeholder
    # The expected TV cost lies in [0, 1] and is 0 where nothing was decided (after the first rejection).
    pos = torch.arange(draft.numel()) - torch.repeat_interleave(cu - num_draft, num_draft)
    decided = pos <= torch.repeat_interleave(out.num_accepted.cpu().long(), num_draft)
    assert bool((out.tv_cost.cpu() >= 0).all()) and bool((out.tv_cost.cpu() <= 1).all())
    assert bool((out.tv_cost.cpu()[~decided] == 0).all())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_deterministic_given_generator(backend):
    args = list(make_case(11, batch=6, vocab=50, device=backend_device(backend)))
    args[8] = args[9] = None  # randomness drawn from the generator
    device = backend_device(backend)
    outs = [ears_rejection_sample(*args, generator=torch.Generator(device).manual_seed(5), backend=backend)
            for _ in range(2)]
    assert torch.equal(outs[0].output_token_ids, outs[1].output_token_ids)


@pytest.mark.parametrize("block_size,num_splits", [(16, 4), (32, 8), (64, 2), (16, 16)])
@pytest.mark.parametrize("opts", [OPTIONS[1], OPTIONS[4], OPTIONS[5], OPTIONS[8], OPTIONS[10]])
def test_triton_vocab_splits_match_reference(block_size, num_splits, opts):
    """Rows split over several programs (the GPU default for small batches) combine to the same decisions."""
    from ears_vllm.kernels.ears_verify import ears_rejection_sample_triton

    from ears_vllm._common import EarsInputs

    args = make_case(5, batch=5, max_spec_len=4, vocab=229, device=backend_device("triton"), **opts)
    got = ears_rejection_sample_triton(EarsInputs(*args), block_size=block_size, num_splits=num_splits,
                                       with_stats=True)
    ref = ears_rejection_sample(*[a.cpu() if isinstance(a, torch.Tensor) else a for a in args],
                                backend="reference", request_stats=True)
    for name, g, r in zip(ref._fields, got, ref, strict=True):
        if name in ("uncertainty", "tv_cost", "request_stats"):
            torch.testing.assert_close(g.cpu(), r, atol=2e-6, rtol=1e-5)
        else:
            assert torch.equal(g.cpu(), r), name


# ---- TV budgets -------------------------------------------------------------------------------------------------
BUDGET_OPTIONS = [
    dict(draft_probs=False, alpha=0.8, greedy_frac=0.2),
    dict(draft_probs=True, per_request_alpha=True, packed=True, placeholder_frac=0.3),
]


def budgets(batch: int, seed: int = 0) -> torch.Tensor:
    """Budgets small enough that some positions are granted the tolerance and some are not; one of 0, one of inf."""
    b = torch.rand(batch, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 0.5
    b[0] = 0.0
    b[-1] = float("inf")
    return b


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("shape", SMALL_SHAPES[1:4])
@pytest.mark.parametrize("opts", BUDGET_OPTIONS)
def test_budget_matches_reference(backend, shape, opts):
    _check(backend, 8, shape, opts, tv_budget=budgets)


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
@pytest.mark.parametrize("packed", [False, True])
def test_budget_bounds_and_limits(backend, packed):
    """A request's costs never exceed its budget; budget 0 is the standard rule token for token; budget inf is no
    budget; and a small budget withholds the tolerance somewhere."""
    dev = backend_device(backend)
    args = make_case(9, batch=12, max_spec_len=5, vocab=41, draft_probs=True, alpha=0.9, packed=packed,
                     placeholder_frac=0.2, logit_scale=1.0, device=dev)
    run = lambda **kw: ears_rejection_sample(*args, backend=backend, **kw)  # noqa: E731
    free, zero_alpha = run(), ears_rejection_sample(*(args[:5] + (0.0,) + args[6:]), backend=backend)
    batch = args[1].numel()
    cu = args[1].cpu().long()
    req = torch.repeat_interleave(torch.arange(batch), torch.diff(cu, prepend=cu.new_zeros(1)))
    spent = lambda out: torch.zeros(batch, dtype=torch.float64).index_add_(  # noqa: E731
        0, req, out.tv_cost.cpu().double())
    small = torch.full((batch,), 0.05, dtype=torch.float64)
    limited = run(tv_budget=small.to(dev))
    assert bool((spent(limited) <= small + 1e-6).all())
    assert float(spent(limited).sum()) < float(spent(free).sum())
    zero = run(tv_budget=torch.zeros(batch, dtype=torch.float64, device=dev))
    assert torch.equal(zero.output_token_ids, zero_alpha.output_token_ids)
    assert float(zero.tv_cost.abs().sum()) == 0.0 and int(zero.num_tolerance_accepted.sum()) == 0
    unlimited = run(tv_budget=torch.full((batch,), float("inf"), dtype=torch.float64, device=dev))
    assert torch.equal(unlimited.output_token_ids, free.output_token_ids)
    assert torch.equal(unlimited.tv_cost, free.tv_cost)

"""Stateless randomness (``ears_vllm/stateless.py``): the torch copy is Triton's Philox bit for bit, the kernel's
in-kernel draws and the materialised ones give the same tokens, a seeded request draws by (seed, position) alone,
and the law is EARS's.

On CPU the Triton kernels run under TRITON_INTERPRET=1 (the root conftest.py); on CUDA they compile.
"""

import math

import pytest
import torch
import triton
import triton.language as tl
from ears_cases import backend_device, make_case
from ears_vllm.kernels.ears_verify import _stateless_rand
from test_statistics import FLAT, _expected_tv, _tv

from ears_vllm import ears_rejection_sample
from ears_vllm.stateless import RAND_MIN, stateless_inputs, stateless_rand

DEV = backend_device("triton")


@triton.jit
def _draw_kernel(seed_ptr, stream_ptr, out_ptr, tl_out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    seed = tl.load(seed_ptr + i)
    stream = tl.load(stream_ptr + i)
    tl.store(out_ptr + i * n + offs, _stateless_rand(seed, stream, offs), mask=offs < n)
    # Triton's own tl.rand at the same offsets: the kernel's draw is it, floored.
    tl.store(tl_out_ptr + i * n + offs, tl.rand(seed, (stream.to(tl.int64) << 32) + offs), mask=offs < n)


def test_torch_copy_is_the_kernels_draw_bit_for_bit():
    seeds = torch.tensor([0, 1, 42, -1, 2**62 + 12345, -(2**63), 2**63 - 1, 987654321987], dtype=torch.int64)
    # Streams up to 2**32 - 1 (2 * position + 1 for positions just under 2**31: ``stream << 32`` wraps negative).
    streams = torch.tensor([0, 1, 7, 2**30, 2 * 4095 + 1, 2**32 - 1, 2**31 + 5, 2**32 - 2], dtype=torch.int64)
    n = 300
    out = torch.empty(len(seeds), n, dtype=torch.float32, device=DEV)
    tl_out = torch.empty_like(out)
    _draw_kernel[(len(seeds),)](seeds.to(DEV), streams.to(DEV), out, tl_out, n, BLOCK=512)
    want = stateless_rand(seeds[:, None], (streams << 32)[:, None] + torch.arange(n))
    assert torch.equal(out.cpu(), want)
    assert torch.equal(out.cpu(), tl_out.cpu().clamp(min=RAND_MIN))
    # Uniform in (0, 1): mean 1/2 within 5 sigma (sigma = sqrt(1/12 / 2400)), nothing outside.
    assert float(want.min()) >= RAND_MIN and float(want.max()) < 1.0
    assert abs(float(want.double().mean()) - 0.5) <= 5 * math.sqrt(1 / 12 / want.numel())


def _stateless_case(seed, shape, opts):
    batch, k, vocab = shape
    args = list(make_case(seed, batch=batch, max_spec_len=k, vocab=vocab, **opts))
    g = torch.Generator().manual_seed(seed + 1000)
    seeds = torch.randint(-(2**62), 2**62, (batch,), generator=g)
    cu = args[1].to(torch.int64)
    num_draft = torch.diff(cu, prepend=cu.new_zeros(1))
    positions = num_draft + torch.randint(0, 5000, (batch,), generator=g)
    return args[:8], seeds, positions


def _run(backend, args, seeds, positions, **kw):
    dev = backend_device(backend)
    on = [a.to(dev) if isinstance(a, torch.Tensor) else a for a in args]
    out = ears_rejection_sample(*on, seeds=seeds.to(dev), positions=positions.to(dev), backend=backend,
                                request_stats=True, **kw)
    return type(out)(*(t.cpu() for t in out))


STATELESS_OPTIONS = [
    dict(draft_probs=False, alpha=0.3),
    dict(draft_probs=True, alpha=0.0, greedy_frac=0.0),
    dict(draft_probs=True, per_request_alpha=True, packed=True, placeholder_frac=0.5),
    dict(draft_probs=False, alpha=0.5, greedy_frac=0.5, packed=True, placeholder_frac=0.5),
]


@pytest.mark.parametrize("shape", [(1, 1, 2), (5, 4, 37), (7, 8, 129), (3, 3, 1271)])
@pytest.mark.parametrize("opts", STATELESS_OPTIONS)
def test_backends_agree_with_stateless_randomness(shape, opts):
    """The kernel draws in place what ``stateless_inputs`` materialises for the torch path and the reference."""
    args, seeds, positions = _stateless_case(7, shape, opts)
    budget = torch.rand(shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for tv_budget in (None, budget):
        tri = _run("triton", args, seeds, positions, tv_budget=tv_budget)
        cpu = _run("torch", args, seeds, positions, tv_budget=tv_budget)
        ref = _run("reference", args, seeds, positions, tv_budget=tv_budget)
        # and the reference given the materialised numbers explicitly, as the old API takes them
        u, noise = stateless_inputs(seeds, positions, args[1], shape[2])
        explicit = ears_rejection_sample(*args, uniform_probs=u, recovery_noise=noise, backend="reference",
                                         tv_budget=tv_budget)
        for got in (tri, cpu, explicit):
            assert torch.equal(got.output_token_ids, ref.output_token_ids)
            assert torch.equal(got.num_accepted, ref.num_accepted)
            assert torch.equal(got.num_tolerance_accepted, ref.num_tolerance_accepted)
            torch.testing.assert_close(got.tv_cost, ref.tv_cost, atol=2e-6, rtol=1e-5)
            if got.request_stats is not None:
                torch.testing.assert_close(got.request_stats, ref.request_stats, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_a_seeded_request_draws_by_seed_and_position_alone(backend):
    """The same request (logits, drafts, seed, position) gives the same tokens wherever it sits in any batch;
    another position or another seed draws other numbers."""
    args, seeds, positions = _stateless_case(11, (6, 4, 61), dict(draft_probs=True, alpha=0.4, greedy_frac=0.0,
                                                                  packed=True, zero_drafts=False))
    draft, cu, logits, _, temp, alpha, k, probs = args
    num_draft = torch.diff(cu.to(torch.int64), prepend=torch.zeros(1, dtype=torch.int64))
    rows = torch.split(logits, (num_draft + 1).tolist())
    drafts, qs = torch.split(draft, num_draft.tolist()), torch.split(probs, num_draft.tolist())

    def batch_of(order, pos=None, seed=None):
        pos = positions if pos is None else pos
        seed = seeds if seed is None else seed
        a = [torch.cat([drafts[i] for i in order]), num_draft[order].cumsum(0).to(torch.int32),
             torch.cat([rows[i] for i in order]), None, temp[order], alpha, k, torch.cat([qs[i] for i in order])]
        return _run(backend, a, seed[order], pos[order]).output_token_ids

    base = batch_of(list(range(6)))
    shuffled = [3, 0, 5, 1, 4, 2]
    again = batch_of(shuffled)
    for slot, i in enumerate(shuffled):
        assert torch.equal(again[slot], base[i])
    alone = batch_of([4])
    assert torch.equal(alone[0], base[4])
    # Other positions / other seeds: the tokens of 6 requests x 5 rows cannot all repeat by chance when the draws
    # are fresh (each request's first decision alone changes with probability > 0 at alpha < 1 and peaked rows).
    moved = batch_of(list(range(6)), pos=positions + 1000)
    reseeded = batch_of(list(range(6)), seed=seeds + 1)
    assert not torch.equal(moved, base) and not torch.equal(reseeded, base)


def test_stateless_inputs_validation():
    args = list(make_case(0, batch=3, max_spec_len=2, vocab=11))[:8]
    cu = args[1].to(torch.int64)
    ok = torch.diff(cu, prepend=cu.new_zeros(1)) + 10
    with pytest.raises(ValueError, match="`positions` must be given with"):
        ears_rejection_sample(*args, seeds=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="`seeds` excludes `uniform_probs`"):
        ears_rejection_sample(*args, uniform_probs=torch.rand(int(cu[-1]), dtype=torch.float64),
                              seeds=torch.zeros(3, dtype=torch.int64), positions=ok)
    with pytest.raises(ValueError, match=r"`positions` must lie in \[num_drafts, 2\*\*31\)"):
        ears_rejection_sample(*args, seeds=torch.zeros(3, dtype=torch.int64), positions=ok - 11)
    with pytest.raises(ValueError, match="`seeds` must have an integer dtype"):
        ears_rejection_sample(*args, seeds=torch.zeros(3), positions=ok)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_stateless_draws_follow_the_ears_law(alpha):
    """n requests, each with its own seed, draft x = 2 against the flat target: the first emitted token follows
    P(x) = a, P(v != x) = (1 - a) p(v) / (1 - p(x)), a = min(1, p(x) + alpha*h) (alpha 0: the target itself).
    Threshold as in test_statistics.py: TV within 3x its expectation for n draws. The torch path (materialised
    draws, equal to the kernel's by the tests above); 40000 requests."""
    p, x, n = FLAT, 2, 40000
    a = min(1.0, float(p[x]) + alpha * (1 - float(p.max())))
    want = (1 - a) * p / (1 - p[x])
    want[x] = a
    g = torch.Generator().manual_seed(5)
    seeds = torch.randint(-(2**62), 2**62, (n,), generator=g)
    positions = torch.randint(1, 10000, (n,), generator=g)
    out = ears_rejection_sample(torch.full((n,), x), torch.arange(1, n + 1, dtype=torch.int32),
                                p.log().repeat(n, 1), torch.zeros(n, dtype=torch.long), torch.ones(n), alpha, 1,
                                seeds=seeds, positions=positions, backend="torch")
    counts = torch.bincount(out.output_token_ids[:, 0], minlength=6)
    assert _tv(counts, want) <= 3 * _expected_tv(want, n)
    assert int(counts[5]) == 0  # p = 0: never emitted


def test_unseeded_requests_get_the_same_seed_on_every_worker():
    """vLLM seeds numpy's global state alike in every worker (``set_random_seed``); tensor-parallel ranks each
    sample, so an unseeded request must get the same seed on each of them: two ``RequestSeeds`` (two ranks) given
    the same batch updates after the same ``np.random.seed`` hold the same seeds, and a seeded request keeps its
    own seed (its low 64 bits)."""
    pytest.importorskip("vllm")
    import numpy as np
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor.interface import BatchUpdate

    from ears_vllm.vllm_plugin.request_seed import RequestSeeds

    ranks = []
    for _ in range(2):
        np.random.seed(0)
        seeds = RequestSeeds(4, torch.device("cpu"))
        seeds.update_state(BatchUpdate(3, removed=[], moved=[], added=[
            (0, SamplingParams(), None, []), (1, SamplingParams(seed=2**64 + 7), None, []),
            (2, SamplingParams(), None, [])]))
        ranks.append(seeds.seeds(3).clone())
    assert torch.equal(ranks[0], ranks[1])
    assert int(ranks[0][1]) == 7 and int(ranks[0][0]) != int(ranks[0][2])

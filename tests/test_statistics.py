"""Statistical properties of EARS, with fixed seeds and thresholds derived from the math.

Notation: one-hot draft x (or draft distribution q), target p, uncertainty h = 1 - max_v p(v), tolerance alpha.
The rule accepts with probability a = min(1, p(x)/q(x) + alpha*h) when p(x) > 0, else 0.

Thresholds. An empirical frequency over n i.i.d. draws has standard deviation sigma = sqrt(a(1-a)/n). We allow
5 sigma: a correct implementation fails with probability < 6e-7 per check (and the seeds are fixed, so a pass is
reproducible), while each wrong rule we guard against (alpha ignored, h replaced by max p, tolerance applied to
banned tokens) moves the frequency by >= 0.04, which is >= 10 sigma at the sample sizes used here.
For distributions we use the total-variation distance TV = 1/2 sum_v |f_v - p_v|; its expectation for n draws is
about 1/2 sum_v sqrt(2 p_v (1 - p_v) / (pi n)); we allow 3x that.
"""

import math

import pytest
import torch
from ears_cases import backend_device

from ears_vllm import ears_rejection_sample

# The Triton kernel runs the statistics only on a GPU (the interpreter is too slow for 10^5 rows).
STAT_BACKENDS = ["torch"] + (["triton"] if torch.cuda.is_available() else [])

# A flat target (h = 0.6) over 6 tokens, plus a sharper one (h = 0.3); token 5 is banned in the flat row.
FLAT = torch.tensor([0.40, 0.20, 0.15, 0.15, 0.10, 0.0])
SHARP = torch.tensor([0.70, 0.10, 0.10, 0.05, 0.05, 0.0])


def _repeat(rows, n, backend, draft_tokens, q_rows=None, alpha=0.0, seed=0):
    """n identical requests whose K drafts are `draft_tokens` against target rows `rows` (probability vectors)."""
    g = torch.Generator().manual_seed(seed)
    k, vocab = len(rows), rows[0].numel()
    logits = torch.stack([r.log() for r in rows]).repeat(n, 1)
    draft = torch.tensor(draft_tokens).repeat(n)
    cu = torch.arange(1, n + 1, dtype=torch.int32) * k
    q = None if q_rows is None else torch.stack(q_rows).repeat(n, 1)
    u = torch.rand(n * k, dtype=torch.float64, generator=g)
    noise = torch.empty(n, vocab).exponential_(generator=g)
    dev = backend_device(backend)
    args = [draft, cu, logits, torch.zeros(n, dtype=torch.long), torch.ones(n), alpha, k, q, u, noise]
    args = [a.to(dev) if isinstance(a, torch.Tensor) else a for a in args]
    out = ears_rejection_sample(*args, backend=backend)
    return out.output_token_ids.cpu(), out.num_accepted.cpu()


def _tv(counts, p):
    f = counts.double() / counts.sum()
    return 0.5 * float((f - p.double()).abs().sum())


def _expected_tv(p, n):
    return 0.5 * sum(math.sqrt(2 * float(pv) * (1 - float(pv)) / (math.pi * n)) for pv in p)


@pytest.mark.parametrize("backend", STAT_BACKENDS)
@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("with_q", [False, True])
def test_acceptance_rate_per_position(backend, alpha, with_q):
    """Position j, once reached, accepts with probability min(1, p_j(x_j)/q_j(x_j) + alpha*h_j)."""
    n = 60000
    rows = [FLAT, SHARP, FLAT]
    drafts = [1, 0, 2]
    q_rows = [torch.tensor([0.1, 0.5, 0.1, 0.1, 0.1, 0.1]), torch.full((6,), 1 / 6),
              torch.tensor([0.2, 0.2, 0.3, 0.1, 0.1, 0.1])] if with_q else None
    _, num_acc = _repeat(rows, n, backend, drafts, q_rows, alpha=alpha, seed=1)
    for j, (row, x) in enumerate(zip(rows, drafts)):
        q_x = 1.0 if q_rows is None else float(q_rows[j][x])
        a = min(1.0, float(row[x]) / q_x + alpha * (1 - float(row.max())))
        reached = int((num_acc >= j).sum())
        rate = int((num_acc >= j + 1).sum()) / reached
        sigma = math.sqrt(a * (1 - a) / reached)
        assert abs(rate - a) <= 5 * sigma + 1e-12, (j, rate, a, reached)


@pytest.mark.parametrize("backend,inverse_cdf", [(b, False) for b in STAT_BACKENDS] + [("torch", True)])
@pytest.mark.parametrize("sampled_draft", [False, True])
def test_alpha_zero_emits_the_target_distribution(backend, inverse_cdf, sampled_draft):
    """alpha = 0 is lossless: the first emitted token is distributed as p, and the distance shrinks with n.

    Fixed draft (one-hot q): P(emit x) = p(x), P(emit v) = (1 - p(x)) p(v) / (1 - p(x)) = p(v).
    Sampled draft x ~ q with q passed in: the classic speculative-sampling theorem. Both recovered-token samplers
    (exponential race over [batch, V] noise, inverse CDF with one uniform per request) are exact.
    """
    p = FLAT
    q = torch.tensor([0.05, 0.05, 0.3, 0.3, 0.2, 0.1])  # q puts mass on the banned token 5
    tvs = []
    for n in (2000, 200000):
        g = torch.Generator().manual_seed(n)
        drafts = torch.multinomial(q, n, replacement=True, generator=g) if sampled_draft else torch.full((n,), 3)
        logits = p.log().repeat(n, 1)
        args = [drafts, torch.arange(1, n + 1, dtype=torch.int32), logits, torch.zeros(n, dtype=torch.long),
                torch.ones(n), 0.0, 1, q.repeat(n, 1) if sampled_draft else None,
                torch.rand(n, dtype=torch.float64, generator=g),
                torch.rand(n, dtype=torch.float64, generator=g) if inverse_cdf
                else torch.empty(n, 6).exponential_(generator=g)]
        dev = backend_device(backend)
        args = [a.to(dev) if isinstance(a, torch.Tensor) else a for a in args]
        first = ears_rejection_sample(*args, backend=backend).output_token_ids[:, 0].cpu()
        tv = _tv(torch.bincount(first, minlength=6), p)
        assert tv <= 3 * _expected_tv(p, n), (n, tv)
        tvs.append(tv)
    assert tvs[1] < tvs[0]


@pytest.mark.parametrize("backend", STAT_BACKENDS)
@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_ears_emitted_distribution_and_its_cost(backend, alpha):
    """With one-hot q on x: P(emit x) = a, P(emit v != x) = (1 - a) p(v) / (1 - p(x)), a = min(1, p(x) + alpha*h).

    So the per-token total-variation cost against the target is exactly a - p(x).
    """
    p, x, n = FLAT, 2, 200000
    a = min(1.0, float(p[x]) + alpha * (1 - float(p.max())))
    want = (1 - a) * p / (1 - p[x])
    want[x] = a
    toks, _ = _repeat([p], n, backend, [x], alpha=alpha, seed=3)
    counts = torch.bincount(toks[:, 0], minlength=6)
    assert _tv(counts, want) <= 3 * _expected_tv(want, n)
    assert abs(_tv(counts, p) - (a - float(p[x]))) <= 3 * _expected_tv(want, n)
    assert int(counts[5]) == 0


@pytest.mark.parametrize("backend", STAT_BACKENDS)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("with_q", [False, True])
def test_zero_probability_token_never_emitted(backend, alpha, with_q):
    """Banned tokens (p = 0) are drafted at every position and never emitted, whatever alpha and u."""
    n, vocab, k = 20000, 16, 3
    g = torch.Generator().manual_seed(int(alpha * 10) + with_q)
    logits = torch.randn(n * k, vocab, generator=g) * 0.1  # nearly flat: h close to 1, the largest tolerance
    banned = torch.rand(n * k, vocab, generator=g) < 0.5
    banned[:, 0] = False  # keep at least one allowed token per row
    logits[banned] = float("-inf")
    draft = torch.where(banned.any(1), banned.float().argmax(1), torch.zeros(n * k, dtype=torch.long))
    q = torch.softmax(torch.randn(n * k, vocab, generator=g), -1) if with_q else None
    cu = torch.arange(1, n + 1, dtype=torch.int32) * k
    args = [draft, cu, logits, torch.zeros(n, dtype=torch.long), torch.ones(n), alpha, k, q,
            torch.rand(n * k, dtype=torch.float64, generator=g), torch.empty(n, vocab).exponential_(generator=g)]
    dev = backend_device(backend)
    args = [t.to(dev) if isinstance(t, torch.Tensor) else t for t in args]
    toks = ears_rejection_sample(*args, backend=backend).output_token_ids.cpu()
    for j in range(k):
        tok = toks[:, j]
        rows = torch.arange(n) * k + j
        emitted = tok >= 0
        assert not bool(banned[rows[emitted], tok[emitted].long()].any())


@pytest.mark.parametrize("backend", STAT_BACKENDS)
def test_acceptance_monotone_in_alpha(backend):
    """With the same u, the EARS threshold u - alpha*h only falls as alpha grows: acceptance is pathwise monotone."""
    n = 20000
    totals, prev = [], None
    for alpha in (0.0, 0.1, 0.3, 0.6, 1.0):
        _, num_acc = _repeat([FLAT, SHARP, FLAT, FLAT], n, backend, [1, 1, 2, 3], alpha=alpha, seed=9)
        if prev is not None:
            assert bool((num_acc >= prev).all())
        prev = num_acc
        totals.append(int(num_acc.sum()))
    assert all(b > a for a, b in zip(totals, totals[1:])), totals


@pytest.mark.parametrize("backend", STAT_BACKENDS)
@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_tv_cost_is_the_distance_between_emitted_and_target(backend, alpha):
    """The reported cost c(x) = min(1, p/q + alpha*h) - min(1, p/q) has expectation E_{x~q}[c(x)] = TV(e, p).

    Closed form, for a draft x ~ q: a(v) = min(1, p(v)/q(v) + alpha*h) (0 if p(v) = 0), the emitted distribution
    is e(v) = q(v) a(v) + (1 - sum_w q(w) a(w)) r(v) with r = normalize(max(p - q, 0)). Where q > p, e - p = the
    extra acceptance q (a - min(1, p/q)); where p > q the residual loses the same total. So TV(e, p) = D =
    sum_v q(v) (a(v) - min(1, p(v)/q(v))): checked exactly, then against the sampler: its per-row cost equals
    c(x) of the drawn x, their mean lies within 5 sigma of D, and the emitted frequencies lie within 3x the
    expected sampling TV of e (and their distance to p within that of D).
    """
    p, n = FLAT.double() / FLAT.double().sum(), 200000
    q = torch.tensor([0.05, 0.05, 0.3, 0.3, 0.2, 0.1], dtype=torch.float64)  # mass on the banned token 5
    h = 1 - float(p.max())
    ratio = torch.where(p > 0, p / q, torch.zeros_like(p))
    base = ratio.clamp(max=1)
    a = torch.where(p > 0, (ratio + alpha * h).clamp(max=1), torch.zeros_like(p))
    cost = a - base  # c(v) for a draft v
    d = float((q * cost).sum())
    residual = (p - q).clamp(min=0)
    e = q * a + (1 - float((q * a).sum())) * residual / residual.sum()
    assert abs(0.5 * float((e - p).abs().sum()) - d) < 1e-12

    g = torch.Generator().manual_seed(17)
    drafts = torch.multinomial(q, n, replacement=True, generator=g)
    args = [drafts, torch.arange(1, n + 1, dtype=torch.int32), p.float().log().repeat(n, 1),
            torch.zeros(n, dtype=torch.long), torch.ones(n), alpha, 1, q.float().repeat(n, 1),
            torch.rand(n, dtype=torch.float64, generator=g), torch.empty(n, 6).exponential_(generator=g)]
    dev = backend_device(backend)
    out = ears_rejection_sample(*[t.to(dev) if isinstance(t, torch.Tensor) else t for t in args], backend=backend)
    got_cost = out.tv_cost.cpu().double()
    torch.testing.assert_close(got_cost, cost[drafts], atol=1e-6, rtol=1e-5)
    sigma = math.sqrt(float((q * (cost - d) ** 2).sum()) / n)
    assert abs(float(got_cost.mean()) - d) <= 5 * sigma + 1e-9, (float(got_cost.mean()), d, sigma)
    counts = torch.bincount(out.output_token_ids[:, 0].cpu().long(), minlength=6)
    assert _tv(counts, e) <= 3 * _expected_tv(e, n)
    assert abs(_tv(counts, p) - d) <= 3 * _expected_tv(e, n)


@pytest.mark.parametrize("backend,inverse_cdf", [(b, False) for b in STAT_BACKENDS] + [("torch", True)])
def test_bonus_sampled_in_the_step_follows_the_target(backend, inverse_cdf):
    """Without bonus ids the bonus token comes from the request's bonus row: distributed as that row's softmax.

    Half the requests have no draft (the bonus is their only token), half one draft that is always accepted
    (FLAT, x = 0, alpha = 1: p(x) + alpha*h = 1); their bonus rows are SHARP at temperature 0.8.
    """
    n, t = 200000, 0.8
    g = torch.Generator().manual_seed(23)
    num_draft = torch.arange(n) % 2
    cu = num_draft.cumsum(0).to(torch.int32)
    m = int(cu[-1])
    rows = []
    for k in num_draft.tolist():
        rows += [FLAT] * k + [SHARP]
    logits = (torch.stack(rows).log() * t)  # softmax(logits / t) = the row
    noise = torch.rand(n, dtype=torch.float64, generator=g) if inverse_cdf else \
        torch.empty(n, 6).exponential_(generator=g)
    args = [torch.zeros(m, dtype=torch.long), cu, logits, None, torch.full((n,), t), 1.0, 1, None,
            torch.rand(m, dtype=torch.float64, generator=g), noise]
    dev = backend_device(backend)
    out = ears_rejection_sample(*[a.to(dev) if isinstance(a, torch.Tensor) else a for a in args], backend=backend)
    tokens = out.output_token_ids.cpu()
    assert int(out.num_accepted.sum()) == m
    bonus = tokens[torch.arange(n), num_draft].long()
    for half in (0, 1):
        counts = torch.bincount(bonus[num_draft == half], minlength=6)
        assert _tv(counts, SHARP) <= 3 * _expected_tv(SHARP, n // 2)
        assert int(counts[5]) == 0


@pytest.mark.parametrize("with_q", [False, True])
def test_tv_budget_bounds_the_whole_completion(with_q):
    """Two-token completions of a toy target (p1, then p2 given the first token), drafted one token at a time,
    verified with EARS alpha 1 under a TV budget B = 0.1 carried between steps: the empirical distribution of whole
    completions lies within B of the target's (plus 3x the expected sampling distance of n draws over the 16
    completions), while the same EARS without a budget is far outside it. The bound is the budget's theorem:
    per-token TV distances add up along a sequence, and every request's granted costs sum to at most B."""
    n, vocab, alpha, budget = 200000, 4, 1.0, 0.1
    g = torch.Generator().manual_seed(21)
    p1 = torch.tensor([0.35, 0.3, 0.2, 0.15], dtype=torch.float64)
    p2 = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4]],
                      dtype=torch.float64)
    q = torch.tensor([0.1, 0.6, 0.2, 0.1], dtype=torch.float64)  # the drafter's distribution, at both steps

    def draft(rows):
        return torch.multinomial(q, rows, replacement=True, generator=g) if with_q else torch.full((rows,), 1)

    def verify(logits, drafts, left):
        rows = drafts.numel()
        return ears_rejection_sample(
            drafts, torch.arange(1, rows + 1, dtype=torch.int32), logits.float(), None, torch.ones(rows), alpha, 1,
            q.float().repeat(rows, 1) if with_q else None, torch.rand(rows, dtype=torch.float64, generator=g),
            torch.empty(rows, vocab).exponential_(generator=g), backend="torch", tv_budget=left)

    def completions(tv_budget):
        # Step 1: draft x1 against p1; the bonus row is p2 given x1 (it completes the pair when x1 is accepted).
        x1 = draft(n)
        logits = torch.stack([p1.log().expand(n, vocab), p2[x1].log()], 1).reshape(2 * n, vocab)
        out = verify(logits, x1, None if tv_budget is None else torch.full((n,), tv_budget, dtype=torch.float64))
        first, second = out.output_token_ids[:, 0].long(), out.output_token_ids[:, 1].long()
        # Step 2, for requests whose first draft was rejected: draft x2 against p2 given the recovered token.
        again = out.num_accepted == 0
        m = int(again.sum())
        if m == 0:
            return torch.bincount(first * vocab + second, minlength=vocab * vocab)
        left = None if tv_budget is None else (tv_budget - out.tv_cost.double()).clamp(min=0)[again]
        x2 = draft(m)
        logits2 = torch.stack([p2[first[again]].log(), torch.zeros(m, vocab, dtype=torch.float64)], 1)
        out2 = verify(logits2.reshape(2 * m, vocab), x2, left)
        second[again] = out2.output_token_ids[:, 0].long()
        return torch.bincount(first * vocab + second, minlength=vocab * vocab)

    target = (p1[:, None] * p2).reshape(-1)
    floor = 3 * _expected_tv(target, n)
    assert _tv(completions(budget), target) <= budget + floor
    assert _tv(completions(None), target) > 3 * budget  # the same EARS unbudgeted: the bound is not vacuous

"""The EARS sampler against vLLM's own ``RejectionSampler``, in-process (no engine; vLLM imported, ~20 s).

With alpha = 0 EARS is the standard rule: given the same uniforms both samplers must accept exactly the same
drafts (mixed greedy / random rows, 0-draft requests, top-k / top-p, seeded requests, draft probabilities or none),
through EARS's fused path (raw logits, real temperatures, bonus sampled in the step) and its processed path
(vLLM's processing of copies, vLLM's bonus sampler) alike. The one sampled token per request (recovered or bonus)
comes from different randomness (EARS on CPU: inverse CDF from one uniform per request, or a race from
``-log(torch.rand)`` noise when the batch has a seeded request), so only its validity is compared. vLLM's sampler
runs with the plugin's CPU expand fix (without it vLLM divides the logits by garbage).
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.vllm

VOCAB = 50
TEMPERATURES = (0.0, 0.7, 1.0, 1.5)


@pytest.fixture(scope="module")
def vllm_parts():
    pytest.importorskip("vllm")
    from ears_vllm.vllm_plugin import register

    register()
    import vllm.utils.cpu_triton_utils  # noqa: F401  (the plugin's expand fix applies on import)
    from vllm.platforms import current_platform
    from vllm.v1.sample.rejection_sampler import RejectionSampler
    from vllm.v1.sample.sampler import Sampler

    if current_platform.device_type != "cpu":
        pytest.skip("CPU comparison (recovered-token noise differs by device)")
    current_platform.register_triton_kernel_overrides()
    return RejectionSampler, Sampler


def spec_metadata(num_draft: list[int], draft_ids: list[int]):
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

    target, bonus, start = [], [], 0
    for n in num_draft:
        target += range(start, start + n)
        bonus.append(start + n)
        start += n + 1
    i32 = dict(dtype=torch.int32)
    return SpecDecodeMetadata(
        draft_token_ids=torch.tensor(draft_ids, **i32),
        num_draft_tokens=list(num_draft),
        cu_num_draft_tokens=torch.tensor(np.cumsum(num_draft), **i32),
        cu_num_sampled_tokens=torch.tensor(np.cumsum([n + 1 for n in num_draft]), **i32),
        target_logits_indices=torch.tensor(target, **i32),
        bonus_logits_indices=torch.tensor(bonus, **i32),
        logits_indices=torch.arange(start, **i32),
    )


def sampling_metadata(temps, top_k=None, top_p=None, seeds=None, logprobs=None, logitsprocs=None, penalties=False):
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    b = len(temps)
    generators = {i: torch.Generator().manual_seed(s) for i, s in (seeds or {}).items()}
    return SamplingMetadata(
        temperature=None if all(t == 0 for t in temps) else torch.tensor(temps, dtype=torch.float32),
        all_greedy=all(t == 0 for t in temps), all_random=all(t > 0 for t in temps),
        top_p=None if top_p is None else torch.tensor(top_p, dtype=torch.float32),
        top_k=None if top_k is None else torch.tensor(top_k, dtype=torch.int32),
        generators=generators, max_num_logprobs=logprobs, no_penalties=not penalties,
        prompt_token_ids=torch.zeros(b, 1, dtype=torch.int64) if penalties else None,
        frequency_penalties=torch.zeros(b), presence_penalties=torch.zeros(b),
        repetition_penalties=torch.full((b,), 1.2 if penalties else 1.0),
        output_token_ids=[[] for _ in range(b)], allowed_token_ids_mask=None, bad_words_token_ids={},
        logitsprocs=logitsprocs or LogitsProcessors(), spec_token_ids=[[] for _ in range(b)])


def random_step(trial: int, batch: int = 4):
    num_draft = torch.randint(0, 4, (batch,)).tolist()
    if sum(num_draft) == 0:  # vLLM builds no spec-decode metadata for a step without drafts
        num_draft[0] = 2
    temps = [TEMPERATURES[i] for i in torch.randint(0, len(TEMPERATURES), (batch,)).tolist()]
    if trial % 7 == 0:
        temps = [0.0] * batch  # all greedy
    n = sum(num_draft)
    return dict(
        num_draft=num_draft, temps=temps, logits=torch.randn(n + batch, VOCAB) * 2,
        draft=torch.randint(0, VOCAB, (n,)).tolist(),
        draft_probs=torch.softmax(torch.randn(n, VOCAB), -1) if trial % 2 == 0 else None,
        top_k=torch.randint(5, VOCAB + 1, (batch,)).tolist() if trial % 2 else None,
        top_p=[0.9] * batch if trial % 3 == 0 else None,
        seeds={1: 7 + trial} if trial % 4 == 0 else None,
        logprobs=2 if trial % 5 == 0 else None,
    )


def run(sampler, step, seed, **sm_kw):
    torch.manual_seed(seed)
    meta = spec_metadata(step["num_draft"], step["draft"])
    sm = sampling_metadata(step["temps"], step["top_k"], step["top_p"], step["seeds"], step["logprobs"], **sm_kw)
    return sampler(meta, step["draft_probs"], step["logits"].clone(), sm)


def ears_sampler(vllm_parts, alpha, alphas=None):
    from ears_vllm.vllm_plugin import EarsSettings
    from ears_vllm.vllm_plugin.sampler import EarsRejectionSampler

    _, Sampler = vllm_parts
    return EarsRejectionSampler(Sampler(), None, torch.device("cpu"), EarsSettings("ears", alpha), alphas)


@contextmanager
def shared_uniforms(seed):
    """Both samplers draw their uniforms with vLLM's ``generate_uniform_probs``: make it a function of ``seed``."""
    from vllm.v1.sample import rejection_sampler as rs

    original = rs.generate_uniform_probs
    gen = torch.Generator().manual_seed(seed)
    fixed = torch.rand(4096, dtype=torch.float64, generator=gen)
    rs.generate_uniform_probs = lambda num_tokens, *args, **kwargs: fixed[:num_tokens].clone()
    try:
        yield
    finally:
        rs.generate_uniform_probs = original


def check_step(step, a, b, vocab=VOCAB):
    """Same accepted drafts and same number of tokens per request; every token valid (no -1 inside a row)."""
    na, nb = (a != -1).sum(1), (b != -1).sum(1)
    assert torch.equal(na, nb), (a, b)
    for i in range(len(step["temps"])):
        k = int(na[i]) - 1  # the last token of a row is the recovered or bonus one
        assert a[i, :k].tolist() == b[i, :k].tolist(), (i, a, b)
        row = b[i, : int(nb[i])]
        assert bool(((row >= 0) & (row < vocab)).all())


def test_alpha_0_matches_vllm_rejection_sampler(vllm_parts):
    """Fused path (and, with penalties of 1.0 that force a processed copy, the processed path) vs vLLM."""
    RejectionSampler, Sampler = vllm_parts
    standard, ears = RejectionSampler(Sampler()), ears_sampler(vllm_parts, 0.0)
    torch.manual_seed(0)
    checked_logprobs, paths = 0, set()
    for trial in range(160):
        step = random_step(trial)
        seed = int(torch.randint(0, 1 << 30, ()))
        penalties = trial % 4 == 3  # repetition penalty 1.2 on the (empty) outputs: vLLM processes a copy
        paths.add(ears.needs_processed_copy(sampling_metadata(step["temps"], penalties=penalties)))
        with shared_uniforms(seed):
            a = run(standard, step, seed, penalties=penalties).sampled_token_ids
            out = run(ears, step, seed, penalties=penalties)
        check_step(step, a, out.sampled_token_ids)
        if step["logprobs"] is not None and all(t == 0 for t in step["temps"]):  # greedy: identical tokens
            assert torch.equal(a, out.sampled_token_ids)
            with shared_uniforms(seed):
                ref = run(standard, step, seed, penalties=penalties).logprobs_tensors
            for x, y in zip(ref, out.logprobs_tensors):
                assert (x is None and y is None) or torch.equal(x, y)
            checked_logprobs += 1
    assert checked_logprobs > 0 and paths == {False, True}


def test_placeholder_drafts_padded_by_vllms_scheduler_are_rejected(vllm_parts):
    """Drafts a grammar rejects, padded with -1 by vLLM's own ``Scheduler.update_draft_token_ids_in_output`` (the
    engine core's batch-queue path with structured outputs), then verified: never accepted, never emitted, and the
    step does not fail, greedy or random, fused or processed, with or without draft probabilities, any alpha."""
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.outputs import DraftTokenIds

    banned = {3, 7}  # what the "grammar" rejects: validate_tokens keeps the prefix before the first banned token

    class Grammar:
        @staticmethod
        def validate_tokens(request, tokens):
            for i, t in enumerate(tokens):
                if t in banned:
                    return tokens[:i]
            return tokens

    g = torch.Generator().manual_seed(5)
    req_ids = [f"r{i}" for i in range(6)]
    drafted = [torch.randint(0, 10, (3,), generator=g).tolist() for _ in req_ids]
    drafted[0] = [1, 3, 2]  # -> [1, -1, -1]
    drafted[1] = [7, 1, 1]  # -> [-1, -1, -1]
    scheduler = types.SimpleNamespace(
        requests={r: types.SimpleNamespace(is_finished=lambda: False) for r in req_ids},
        structured_output_manager=Grammar())
    out = types.SimpleNamespace(scheduled_spec_decode_tokens={r: [0, 0, 0] for r in req_ids})
    Scheduler.update_draft_token_ids_in_output(scheduler, DraftTokenIds(req_ids, [list(d) for d in drafted]), out)
    padded = [out.scheduled_spec_decode_tokens[r] for r in req_ids]
    assert padded[0] == [1, -1, -1] and padded[1] == [-1, -1, -1] and sum(-1 in d for d in padded) >= 2
    flat = [t for d in padded for t in d]
    logits = torch.randn(len(flat) + len(req_ids), VOCAB, generator=g)
    # Tokens 0 and 1 are likely: drafts of token 1 before a placeholder are often accepted, and a sampler that read
    # a -1 draft as token 0 (the row's first entry) would accept it.
    logits[:, :2] += 8.0
    for temps in ([0.0] * 6, [1.0] * 6, [0.0, 1.0] * 3):
        for alpha in (0.0, 1.0):
            ears = ears_sampler(vllm_parts, alpha)
            for probs in (None, torch.softmax(torch.randn(len(flat), VOCAB, generator=g), -1)):
                for penalties in (False, True):
                    step = dict(num_draft=[3] * 6, temps=temps, logits=logits, draft=flat, draft_probs=probs,
                                top_k=None, top_p=None, seeds={2: 11}, logprobs=None)
                    tokens = run(ears, step, 0, penalties=penalties).sampled_token_ids
                    for i, d in enumerate(padded):
                        first = d.index(-1) if -1 in d else 3
                        emitted = int((tokens[i] != -1).sum())
                        row = tokens[i][:emitted]
                        assert bool((tokens[i][emitted:] == -1).all())  # no hole: a placeholder never "accepted"
                        assert emitted - 1 <= first and row[:emitted - 1].tolist() == d[:emitted - 1]
                        assert bool(((row >= 0) & (row < VOCAB)).all())


def test_fused_top_k_top_p_matches_vllms_masks(vllm_parts):
    """Top-k / top-p in the fused path (raw logits masked without sorting, division fused) makes the same accept
    decisions as vLLM's sort-based masks on divided copies (the processed path), alpha 0.3 and mixed rows."""
    from ears_vllm.vllm_plugin.sampler import EarsRejectionSampler

    ears = ears_sampler(vllm_parts, 0.3)
    torch.manual_seed(1)
    for trial in range(60):
        step = random_step(trial)
        step["top_k"] = torch.randint(1, VOCAB + 1, (4,)).tolist()
        step["top_p"] = (torch.rand(4) * 0.6 + 0.5).tolist() if trial % 2 else None
        step["logits"][:, :5] += 3.0  # a few likely tokens: the drafts hit the masks' boundary region
        seed = int(torch.randint(0, 1 << 30, ()))
        with shared_uniforms(seed):
            fused = run(ears, step, seed).sampled_token_ids
            processed = EarsRejectionSampler._forward_processed(
                ears, spec_metadata(step["num_draft"], step["draft"]), step["draft_probs"], step["logits"].clone(),
                sampling_metadata(step["temps"], step["top_k"], step["top_p"], step["seeds"]),
            ).sampled_token_ids
        check_step(step, processed, fused)


@pytest.mark.parametrize("ties", [False, True])
def test_top_k_top_p_without_sorting_keeps_vllms_tokens(vllm_parts, ties):
    """``apply_top_k_top_p_cpu`` (raw logits, per-row temperature) against vLLM's sort-based
    ``apply_top_k_top_p_pytorch`` on divided logits: the same kept set on 300 random rows batches (vocabularies
    of 2..3000, flat to peaked, top-k, top-p, both). With bf16-rounded logits (ties), ours keeps a superset: only
    tokens tied with the smallest logit vLLM kept, of which vLLM's sort keeps an arbitrary part."""
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    from ears_vllm.vllm_plugin.top_k_top_p import apply_top_k_top_p_cpu

    g = torch.Generator().manual_seed(int(ties))
    differing = 0
    for trial in range(300):
        rows, vocab = 7, int(torch.randint(2, 3000, (), generator=g))
        x = torch.randn(rows, vocab, generator=g) * float(torch.rand((), generator=g) * 5 + 0.01)
        if ties:
            x = x.bfloat16().float()
        temp = torch.rand(rows, generator=g) + 0.3
        k = torch.randint(1, vocab + 1, (rows,), generator=g) if trial % 3 else None
        p = (torch.rand(rows, generator=g) * 1.2).clamp(max=1.0) if trial % 3 != 1 else None
        theirs = apply_top_k_top_p_pytorch(x / temp[:, None], k, p) == float("-inf")
        ours = apply_top_k_top_p_cpu(x.clone(), k, p, temp) == float("-inf")
        if ties:
            assert not bool((ours & ~theirs).any())
            for r in (ours != theirs).any(1).nonzero().squeeze(1).tolist():
                assert bool((x[r][ours[r] != theirs[r]] == x[r][~theirs[r]].min()).all())
            differing += int(not torch.equal(ours, theirs))
        else:
            assert torch.equal(ours, theirs), trial
    assert not ties or differing > 0  # the bf16 case does exercise ties


def test_seeded_request_does_not_depend_on_the_rest_of_the_batch(vllm_parts):
    """A seeded request's tokens come from its own generator only: the same whatever else is in the batch and
    whichever row it sits in (both paths), while an unseeded request's tokens vary."""
    ears = ears_sampler(vllm_parts, 0.3)
    g = torch.Generator().manual_seed(3)
    mine = torch.randn(4, VOCAB, generator=g) * 0.5  # a flat target: randomness decides
    my_draft = torch.randint(0, VOCAB, (3,), generator=g).tolist()
    for penalties in (False, True):
        seen = set()
        for trial in range(8):
            others = torch.randn(8, VOCAB, generator=g)
            row = trial % 3
            blocks = [others[:4], others[4:]]
            blocks.insert(row, mine)
            drafts = [torch.randint(0, VOCAB, (3,), generator=g).tolist() for _ in range(2)]
            drafts.insert(row, my_draft)
            step = dict(num_draft=[3, 3, 3], temps=[1.0, 1.0, 1.0], logits=torch.cat(blocks),
                        draft=sum(drafts, []), draft_probs=None, top_k=None, top_p=None, seeds={row: 1234},
                        logprobs=None)
            tokens = run(ears, step, trial, penalties=penalties).sampled_token_ids
            seen.add(tuple(tokens[row].tolist()))
        assert len(seen) == 1, seen


def test_seeded_token_survives_rounding_level_changes_of_the_logits(vllm_parts):
    """The target's forward rounds differently at another batch size (seen on this CPU: log-sum-exp differences up
    to 4e-5 between 1 and 16 concurrent requests), and a seeded request must still get the same token. Its sampled
    token is an exponential race (``exponential_noise`` from its generator): it changes only when the two best
    ``log p - log E`` are within the perturbation (chance ~2 * 3e-5 / 0.7 per draw, the gap's density at 0 being at
    most ~1), so at most 1 of 400 draws may change (expected 0.03). Control: the same steps unseeded take the
    inverse CDF from the same uniform, whose token changes when the uniform lies between any boundary's old and new
    place: 8 of 400 (fixed seeds; measured), so the perturbation is large enough to matter (seeded: 0; with the
    inverse CDF for seeded requests too, the seeded count is 12 and the test fails)."""
    ears = ears_sampler(vllm_parts, 0.1)
    vocab, n, eps = 49152, 400, 3e-5
    changed = {"seeded": 0, "unseeded": 0}
    for trial in range(n):
        g = torch.Generator().manual_seed(trial)
        logits = torch.randn(2, vocab, generator=g) * 2  # a draft row (random draft: rejected) and a bonus row
        moved = logits + eps * torch.randn(2, vocab, generator=g)
        draft = torch.randint(0, vocab, (1,), generator=g).tolist()
        for kind, seeds in (("seeded", {0: 1000 + trial}), ("unseeded", None)):
            step = dict(num_draft=[1], temps=[0.7], draft=draft, draft_probs=None, top_k=None, top_p=None,
                        seeds=seeds, logprobs=None)
            a = run(ears, dict(step, logits=logits), trial).sampled_token_ids
            b = run(ears, dict(step, logits=moved), trial).sampled_token_ids
            changed[kind] += int(not torch.equal(a, b))
    assert changed["seeded"] <= 1 and changed["unseeded"] >= 3, changed


def test_seeded_requests_emit_the_target_distribution_at_alpha_0(vllm_parts):
    """The seeded path's race (``-log(torch.rand)`` noise from each request's generator) is an exact draw: at
    alpha 0 the first token of 8000 seeded one-draft steps (draft token 1, accepted with probability p(1), else the
    residual) follows p. Pearson chi-square, 7 degrees of freedom: below 24.3, its 99.9% quantile."""
    ears = ears_sampler(vllm_parts, 0.0)
    p = torch.tensor([0.05, 0.3, 0.15, 0.2, 0.1, 0.1, 0.07, 0.03])
    temperature, n = 0.7, 8000
    logits = (p.log() * temperature).expand(2, -1).contiguous()  # the draft row and the bonus row
    counts = torch.zeros(len(p))
    for trial in range(n):
        step = dict(num_draft=[1], temps=[temperature], draft=[1], draft_probs=None, top_k=None, top_p=None,
                    seeds={0: trial}, logprobs=None, logits=logits)
        counts[int(run(ears, step, trial).sampled_token_ids[0, 0])] += 1
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 24.3, (chi2, (counts / n).tolist())


def test_stateless_randomness_keys_each_request_by_seed_and_position(vllm_parts):
    """The CUDA path's randomness (forced on here; on CPU the torch backend materialises the kernel's draws bit for
    bit, ``tests/test_stateless.py``): each request's seed comes from ``RequestSeeds`` (its ``SamplingParams.seed``,
    followed across vLLM's batch updates) and its positions from the runner's buffer at the step's
    ``logits_indices``. So the step equals ``ears_rejection_sample`` with those seeds and positions, a seeded
    request's tokens are the same in any slot and batch (fused and processed paths), vLLM's generators are not
    drawn from, and an unseeded request gets a seed of its own."""
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.logits_processor.interface import BatchUpdate

    from ears_vllm import ears_rejection_sample
    from ears_vllm.vllm_plugin import EarsSettings
    from ears_vllm.vllm_plugin.request_seed import RequestSeeds
    from ears_vllm.vllm_plugin.sampler import EarsRejectionSampler

    _, Sampler = vllm_parts
    seeds = RequestSeeds(8, torch.device("cpu"))
    ears = EarsRejectionSampler(Sampler(), None, torch.device("cpu"), EarsSettings("ears", 0.3), None, None, seeds,
                                torch.zeros(1, dtype=torch.int64))
    assert not ears.stateless  # only on CUDA by default
    ears.stateless = True
    procs = LogitsProcessors()
    procs.argmax_invariant.append(seeds)
    g = torch.Generator().manual_seed(5)
    mine = torch.randn(4, VOCAB, generator=g) * 0.5  # flat: randomness decides
    my_draft = torch.randint(0, VOCAB, (3,), generator=g).tolist()
    seen = {False: set(), True: set()}
    for trial in range(6):
        row = trial % 3
        others = torch.randn(8, VOCAB, generator=g)
        blocks = [others[:4], others[4:]]
        blocks.insert(row, mine)
        drafts = [torch.randint(0, VOCAB, (3,), generator=g).tolist() for _ in range(2)]
        drafts.insert(row, my_draft)
        # Token positions of the 12 rows: the seeded request's rows sit at 700..703 whatever its slot.
        positions = torch.randint(0, 5000, (12,), generator=g)
        positions[4 * row: 4 * row + 4] = torch.arange(700, 704)
        ears.token_positions = torch.cat([torch.zeros(3, dtype=torch.int64), positions])  # rows start at 3
        params = [SamplingParams(temperature=1.0, seed=1234 if i == row else None) for i in range(3)]
        seeds.update_state(BatchUpdate(3, removed=[], moved=[], added=[(i, params[i], None, []) for i in range(3)]))
        assert int(seeds.seeds(3)[row]) == 1234
        step = dict(num_draft=[3, 3, 3], temps=[1.0, 1.0, 1.0], logits=torch.cat(blocks), draft=sum(drafts, []),
                    draft_probs=None, top_k=None, top_p=None, seeds={row: 99}, logprobs=None)
        for penalties in (False, True):
            meta = spec_metadata(step["num_draft"], step["draft"])
            meta.logits_indices = meta.logits_indices + 3
            sm = sampling_metadata(step["temps"], seeds=step["seeds"], penalties=penalties, logitsprocs=procs)
            before = sm.generators[row].get_state()
            out = ears(meta, None, step["logits"].clone(), sm).sampled_token_ids
            seen[penalties].add(tuple(out[row].tolist()))
            if not penalties:  # fused: the whole step, bonus included, from (seed, position)
                assert torch.equal(sm.generators[row].get_state(), before)
                want = ears_rejection_sample(
                    meta.draft_token_ids, meta.cu_num_draft_tokens, step["logits"], None, sm.temperature, 0.3, 3,
                    seeds=seeds.seeds(3), positions=positions[[3, 7, 11]]).output_token_ids
                assert torch.equal(out, want)
    assert len(seen[False]) == 1 and len(seen[True]) == 1, seen
    unseeded = seeds.seeds(3)[[i for i in range(3) if i != row]]
    assert int(unseeded[0]) != int(unseeded[1])


def test_per_request_alpha_follows_the_batch_slots(vllm_parts):
    """``RequestAlphas`` tracks vLLM's BatchUpdates (added, removed, swapped, moved) like vLLM's min-p state.

    Target: a flat distribution (h = 1 - 1/V, p(x) = 1/V); one-hot drafts. With u in [0, 1), alpha = 1 accepts
    every draft (1/V >= u - h), alpha = 0 almost none (w.p. 1/V per draft)."""
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.logits_processor.interface import BatchUpdate, MoveDirectionality

    from ears_vllm.vllm_plugin.request_alpha import RequestAlphas

    alphas = RequestAlphas(0.0, 8, torch.device("cpu"))
    ears = ears_sampler(vllm_parts, 0.0, alphas)
    procs = LogitsProcessors()
    procs.argmax_invariant.append(alphas)
    assert not ears.needs_processed_copy(sampling_metadata([1.0], logitsprocs=procs))

    def params(alpha):
        return SamplingParams(temperature=1.0, extra_args=None if alpha is None else {"ears_alpha": alpha})

    def accepted(batch):
        n = 3
        step = dict(num_draft=[n] * batch, temps=[1.0] * batch, logits=torch.zeros(batch * (n + 1), VOCAB),
                    draft=[1] * (batch * n), draft_probs=None, top_k=None, top_p=None, seeds=None, logprobs=None)
        total = torch.zeros(batch)
        for seed in range(10):
            out = run(ears, step, seed, logitsprocs=procs)
            total += (out.sampled_token_ids[:, :n] == 1).cumprod(1).sum(1)
        return (total == 10 * n).tolist()  # True: every draft accepted (alpha 1)

    alphas.update_state(BatchUpdate(4, removed=[], moved=[],
                                    added=[(0, params(1.0), None, []), (1, params(0.0), None, []),
                                           (2, params(None), None, []), (3, params(1.0), None, [])]))
    assert accepted(4) == [True, False, False, True]
    ears.recording = True
    alphas.update_state(BatchUpdate(4, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))
    assert accepted(4) == [False, True, False, True]
    tolerance, verified, h_sum, tv_sum = ears.drain_stats()
    # Rows 1 and 3 accept all 3 drafts in 10 steps, nearly all only thanks to the tolerance (p(x) = 1/V < u).
    assert 0.9 * 60 <= tolerance <= 60
    assert verified >= 60 and h_sum == pytest.approx(verified * (1 - 1 / VOCAB), rel=1e-5)
    # Each alpha-1 decision costs min(1, 1/V + h) - 1/V = 1 - 1/V; each alpha-0 one costs 0.
    assert tv_sum == pytest.approx(60 * (1 - 1 / VOCAB), rel=1e-5)
    # Request in slot 3 leaves, slot 1 moves into it (vLLM's condense), a default-alpha request joins slot 1.
    alphas.update_state(BatchUpdate(3, removed=[3], added=[(1, params(None), None, [])],
                                    moved=[(1, 3, MoveDirectionality.UNIDIRECTIONAL)]))
    assert accepted(3) == [False, False, False]
    assert ears.alphas.alpha(3) == 0.0  # no override left: the scalar path
    alphas.update_state(BatchUpdate(3, removed=[], added=[(2, params(1.0), None, [])], moved=[]))
    assert accepted(3) == [False, False, True]


def test_per_request_tv_budget_follows_the_request(vllm_parts):
    """``RequestBudgets``: what a request spent of its TV budget follows the request across steps and across its
    removal from the batch and return (vLLM's V1 runner removes a request whenever a step does not schedule it), a
    request never spends more than its budget, budget 0 is the standard rule, and a finished request's entry is
    freed. Flat target over V tokens, one-hot drafts, alpha 1: every decided draft's tolerance would cost
    1 - 1/V."""
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.logits_processor.interface import BatchUpdate

    from ears_vllm.vllm_plugin import EarsSettings
    from ears_vllm.vllm_plugin.request_alpha import RequestAlphas
    from ears_vllm.vllm_plugin.request_budget import RequestBudgets
    from ears_vllm.vllm_plugin.sampler import EarsRejectionSampler

    _, Sampler = vllm_parts
    cpu = torch.device("cpu")
    alphas, budgets = RequestAlphas(1.0, 8, cpu), RequestBudgets(None, 8, cpu)
    ears = EarsRejectionSampler(Sampler(), None, cpu, EarsSettings("ears", 1.0), alphas, budgets)
    procs = LogitsProcessors()
    procs.argmax_invariant.extend([alphas, budgets])
    assert not ears.needs_processed_copy(sampling_metadata([1.0], logitsprocs=procs))

    def params(budget):
        return SamplingParams(temperature=1.0, extra_args=None if budget is None else {"ears_tv_budget": budget})

    def step(batch, seed, n=3):
        s = dict(num_draft=[n] * batch, temps=[1.0] * batch, logits=torch.zeros(batch * (n + 1), VOCAB),
                 draft=[1] * (batch * n), draft_probs=None, top_k=None, top_p=None, seeds=None, logprobs=None)
        return (run(ears, s, seed, logitsprocs=procs).sampled_token_ids[:, :n] == 1).cumprod(1).sum(1).tolist()

    def spent(p):
        return float(budgets.ledger.spent[budgets.ledger.entry(id(p))])

    cost = 1 - 1 / VOCAB
    a, b, c = params(1.5), params(0.0), params(None)
    budgets.update_state(BatchUpdate(3, removed=[], moved=[],
                                     added=[(0, a, None, []), (1, b, None, []), (2, c, None, [])]))
    alphas.update_state(BatchUpdate(3, removed=[], moved=[],
                                    added=[(0, a, None, []), (1, b, None, []), (2, c, None, [])]))
    first = step(3, 0)
    assert first[2] == 3  # no budget: alpha 1 accepts every draft
    assert spent(a) == pytest.approx(1.5, abs=1e-6)  # one full tolerance (cost 1 - 1/V), then the rest of 1.5
    assert spent(b) == 0.0
    # a leaves the batch (not scheduled this step) and comes back in another slot: its budget stays spent.
    budgets.update_state(BatchUpdate(2, removed=[0], moved=[], added=[(0, c, None, [])]))
    budgets.update_state(BatchUpdate(3, removed=[], moved=[], added=[(2, a, None, [])]))
    alphas.update_state(BatchUpdate(3, removed=[], moved=[], added=[(0, c, None, []), (2, a, None, [])]))
    totals = torch.zeros(3)
    for seed in range(1, 11):
        totals += torch.tensor(step(3, seed), dtype=torch.float32)
    assert totals[0] == 30  # c: no budget
    # a and b have nothing left: the standard rule accepts a draft with p = 1/V w.p. 1/V (30 chances each).
    assert totals[1] <= 6 and totals[2] <= 6
    assert spent(a) == pytest.approx(1.5, abs=1e-6) and spent(b) == 0.0
    assert cost < 1.5 < 2 * cost
    budgets.release(a)
    assert len(budgets.ledger) == 1  # b's entry only (c has no budget, a's was freed)


def test_request_tv_spent_reaches_stats_and_per_request_metrics(vllm_parts):
    """The scheduler patch adds each step's per-request TV costs per request id; a request's total goes, when it
    finishes, into the step's stats (the histogram's samples) and into its per-request spec-decode metrics, whose
    ``to_dict`` (the OpenAI response's ``speculative_decoding``) shows it; an aborted request's total is dropped."""
    import vllm.v1.metrics.stats as stats_module
    from vllm.v1.spec_decode.metrics import SpecDecodingStats

    from ears_vllm.vllm_plugin.patches.scheduler import _finished_spending
    from ears_vllm.vllm_plugin.patches.spec_decoding_stats import add

    metrics = stats_module.RequestSpecDecodeMetrics.new(3)
    assert "ears_tv_spent" not in metrics.to_dict()  # absent until the plugin sets it
    scheduler = types.SimpleNamespace(requests={"a": 1, "b": 1})

    def outputs(*finished):
        ecos = [types.SimpleNamespace(request_id=r, finish_reason="stop" if r in finished else None,
                                      spec_decode_metrics=metrics if r == "a" else None) for r in ("a", "b")]
        return {0: types.SimpleNamespace(outputs=ecos)}

    assert _finished_spending(scheduler, outputs(), types.SimpleNamespace(ears_request_tv={"a": 0.25, "b": 0.5})) == []
    scheduler.requests = {"a": 1}  # b was aborted: no output will carry its total
    assert _finished_spending(scheduler, outputs("a"), types.SimpleNamespace(ears_request_tv={"a": 0.5})) == [0.75]
    assert scheduler._ears_tv_spent == {}
    assert metrics.to_dict()["ears_tv_spent"] == 0.75
    # Both ride msgspec from the engine core to the front-end.
    from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

    message = EngineCoreOutputs(outputs=[EngineCoreOutput(request_id="a", new_token_ids=[1],
                                                          spec_decode_metrics=metrics)])
    back = MsgpackDecoder(EngineCoreOutputs).decode(MsgpackEncoder().encode(message))
    assert back.outputs[0].spec_decode_metrics.to_dict()["ears_tv_spent"] == 0.75
    stats = SpecDecodingStats.new(3)
    add(stats, 1, 2, 0.5, 0.25, [0.75])
    add(stats, 0, 0, 0.0, 0.0, [1.5])
    assert stats.ears_request_tv_spent == [0.75, 1.5] and SpecDecodingStats.new(3).ears_request_tv_spent == ()


def test_register_is_idempotent(vllm_parts):
    from vllm.engine.arg_utils import EngineArgs
    from vllm.sampling_params import SamplingParams
    from vllm.v1.core.sched.scheduler import Scheduler

    from ears_vllm.vllm_plugin import register
    from ears_vllm.vllm_plugin.patches._patch import MARK

    before = (EngineArgs.create_speculative_config, SamplingParams.verify, Scheduler.update_from_output)
    register()
    from ears_vllm.vllm_plugin import patches

    patches.install()  # even a second install wraps nothing twice
    assert (EngineArgs.create_speculative_config, SamplingParams.verify, Scheduler.update_from_output) == before
    assert all(hasattr(f, MARK) and not hasattr(f.__wrapped__, MARK) for f in before)


def test_patch_helper_guards_keeps_and_restores():
    """``wrap``: one wrapper however often it is applied, the original kept as ``__wrapped__``, ``restore`` puts
    it back; ``replace`` likewise."""
    from ears_vllm.vllm_plugin.patches import _patch

    class Owner:
        def f(self, x):
            return x

    original = Owner.__dict__["f"]
    def old_g():
        return "old"

    def new_g():
        return "new"

    module = types.ModuleType("fake_module")
    module.g = old_g

    def apply():
        @_patch.wrap(Owner, "f")
        def f(orig, self, x):
            return orig(self, x) + 1

        _patch.replace(module, "g", new_g)

    apply()
    apply()
    assert Owner().f(1) == 2 and Owner.f.__wrapped__ is original and module.g() == "new"
    applied = list(_patch._applied)
    try:
        _patch._applied[:] = applied[-2:]  # restore only what this test applied
        _patch.restore()
        assert Owner.__dict__["f"] is original and Owner().f(1) == 1 and module.g is old_g
    finally:
        _patch._applied[:] = applied[:-2]


def test_kebab_case_keys_are_accepted(vllm_parts):
    from vllm.engine.arg_utils import EngineArgs

    args = EngineArgs(model="unused", speculative_config={"method": "ngram", "num-speculative-tokens": 2,
                                                          "rejection-sampler": "ears", "alpha": 0.2})
    try:
        args.create_speculative_config(None, None)
    except Exception:  # the original needs real model configs; the EARS keys are handled before it runs
        pass
    assert args.additional_config["ears"] == {"rejection_sampler": "ears", "alpha": 0.2}
    assert "rejection_sampler" not in args.speculative_config and "rejection-sampler" not in args.speculative_config


def test_scheduler_adds_ears_counters_only_to_vllm_spec_stats(vllm_parts):
    from vllm.v1.spec_decode.metrics import SpecDecodingStats

    from ears_vllm.vllm_plugin.patches import scheduler as scheduler_patch

    def stats_of(spec):
        return types.SimpleNamespace(scheduler_stats=types.SimpleNamespace(spec_decoding_stats=spec))

    class Scheduler:
        def update_from_output(self, scheduler_output, model_runner_output):
            return scheduler_output  # the test passes the outputs the original would build

    module = types.SimpleNamespace(Scheduler=Scheduler)
    scheduler_patch.apply(module)
    scheduler_patch.apply(module)  # idempotent
    runner_output = types.SimpleNamespace(ears_stats=(2, 9, 1.5, 0.25))
    spec = SpecDecodingStats.new(3)
    first, second = stats_of(spec), stats_of(None)
    Scheduler().update_from_output({0: first, 1: second}, runner_output)
    assert (spec.ears_num_tolerance_accepted, spec.ears_num_verified, spec.ears_uncertainty_sum,
            spec.ears_tv_cost_sum) == (2, 9, 1.5, 0.25)
    # vLLM counted no drafts this step (all drafted requests finished meanwhile): no 0-draft stats object appears
    none = stats_of(None)
    Scheduler().update_from_output({0: none}, runner_output)
    assert none.scheduler_stats.spec_decoding_stats is None


def test_fused_truncation_hands_each_request_its_top_k_top_p(vllm_parts):
    """The CUDA path's top-k / top-p (forced on here, with its stateless randomness): the sampler hands each
    request's ``top_k`` / ``top_p`` and real temperature to ``ears_rejection_sample`` with the raw logits, which it
    does not modify (no masked or divided copy); on CPU the torch backend truncates by the same definition as the
    kernel. So the step equals ``ears_rejection_sample`` with those arguments, and every emitted token of a random
    request lies in its row's kept set."""
    from ears_vllm import ears_rejection_sample
    from ears_vllm.top_k_top_p import truncate_logits
    from ears_vllm.vllm_plugin import EarsSettings
    from ears_vllm.vllm_plugin.request_seed import RequestSeeds
    from ears_vllm.vllm_plugin.sampler import EarsRejectionSampler

    _, Sampler = vllm_parts
    seeds = RequestSeeds(8, torch.device("cpu"))
    ears = EarsRejectionSampler(Sampler(), None, torch.device("cpu"), EarsSettings("ears", 0.3), None, None, seeds,
                                torch.arange(64, dtype=torch.int64) + 100)
    assert not ears.fused_top_k_top_p  # CUDA only
    ears.stateless = ears.fused_top_k_top_p = True
    torch.manual_seed(3)
    for trial in range(20):
        step = random_step(trial)
        step["logits"] = torch.round(step["logits"] * 2) / 2  # ties at the boundaries
        step["top_k"] = torch.randint(1, VOCAB + 1, (4,)).tolist()
        step["top_p"] = (torch.rand(4) * 0.6 + 0.3).tolist() if trial % 2 else None
        step["logprobs"] = None
        meta = spec_metadata(step["num_draft"], step["draft"])
        sm = sampling_metadata(step["temps"], step["top_k"], step["top_p"])
        logits = step["logits"].clone()
        out = ears(meta, step["draft_probs"], logits, sm).sampled_token_ids
        assert torch.equal(logits, step["logits"])
        if sm.all_greedy:
            continue
        top_k = torch.tensor(step["top_k"])
        top_p = None if step["top_p"] is None else torch.tensor(step["top_p"])
        positions = ears.token_positions[meta.logits_indices[meta.bonus_logits_indices]]
        want = ears_rejection_sample(meta.draft_token_ids, meta.cu_num_draft_tokens, step["logits"], None,
                                     sm.temperature, 0.3, meta.max_spec_len, draft_probs=step["draft_probs"],
                                     seeds=seeds.seeds(4), positions=positions, top_k=top_k, top_p=top_p)
        assert torch.equal(out, want.output_token_ids), (trial, out, want.output_token_ids)
        kept = truncate_logits(step["logits"], meta.cu_num_draft_tokens, sm.temperature, top_k, top_p, packed=True)
        start = 0
        for r, n in enumerate(step["num_draft"]):
            for j, token in enumerate(out[r].tolist()):
                if token >= 0 and step["temps"][r] > 0:
                    assert kept[start + j, token] > float("-inf"), (trial, r, j, token)
            start += n + 1


def test_start_up_check_of_the_fused_top_k_top_p(vllm_parts, monkeypatch, caplog):
    """The check that lets the V1 sampler use the kernel's top-k / top-p (run on CPU under the interpreter here;
    on CUDA at the sampler's construction): it passes with the kernel as it is, and a kernel that fails or errs
    turns the fused path off with one warning instead of failing the server."""
    import logging

    from ears_vllm.vllm_plugin import top_k_top_p as plugin_tkp

    assert plugin_tkp.start_up_check(torch.device("cpu")) is None
    monkeypatch.setattr(plugin_tkp, "start_up_check", lambda device: "tokens differ")
    with caplog.at_level(logging.WARNING, logger="vllm.ears_vllm"):
        assert not plugin_tkp.passes_start_up_check(torch.device("cpu"))

    def broken(device):
        raise RuntimeError("PTX compile failed")

    monkeypatch.setattr(plugin_tkp, "start_up_check", broken)
    with caplog.at_level(logging.WARNING, logger="vllm.ears_vllm"):
        assert not plugin_tkp.passes_start_up_check(torch.device("cpu"))
    warnings = [r.getMessage() for r in caplog.records if "start-up check" in r.getMessage()]
    assert len(warnings) == 2 and "tokens differ" in warnings[0] and "PTX compile failed" in warnings[1]


@pytest.mark.parametrize("value,ok", [(None, "fused"), ("vllm", "vllm"), ("fused", "fused"), ("sorted", None)])
def test_top_k_top_p_switch(monkeypatch, value, ok):
    from ears_vllm.vllm_plugin import EarsConfigError
    from ears_vllm.vllm_plugin.top_k_top_p import TOP_K_TOP_P_ENV, top_k_top_p_choice

    monkeypatch.delenv(TOP_K_TOP_P_ENV, raising=False)
    if value is not None:
        monkeypatch.setenv(TOP_K_TOP_P_ENV, value)
    if ok is None:
        with pytest.raises(EarsConfigError, match=r"^EARS_VLLM_TOP_K_TOP_P='sorted' is not allowed: use fused"):
            top_k_top_p_choice()
    else:
        assert top_k_top_p_choice() == ok

"""Seeded probabilistic drafts, in-process (no engine; vLLM imported, ~20 s): the plugin's patched
``SpecDecodeBaseProposer._sample_from_logits`` (patches/spec_decode_base_proposer.py) and the runner wrapper
that gives it its keys (patches/gpu_model_runner.py, job 3).

A seeded row's draft token depends on (seed, token count, draft step) and its logits only: not on the other rows,
its row index, or the global RNG; its target-side generator is never drawn from. Unseeded rows, and every call made
without keys, are vLLM's own draws.
"""

from __future__ import annotations

import types

import pytest
import torch

from .conftest import sampling_metadata as metadata

pytestmark = pytest.mark.vllm

VOCAB = 1000


@pytest.fixture(scope="module")
def vllm_parts(llm_base_proposer):
    from ears_vllm.vllm_plugin.patches import spec_decode_base_proposer as patch
    from ears_vllm.vllm_plugin.patches._patch import MARK

    assert hasattr(llm_base_proposer.SpecDecodeBaseProposer._sample_from_logits, MARK)
    return llm_base_proposer, patch


def proposer(vllm_parts, keys=None):
    """The real class without its (model-loading) __init__: only what ``_sample_from_logits`` reads."""
    module, patch = vllm_parts
    p = object.__new__(module.SpecDecodeBaseProposer)
    p._enable_probabilistic_draft_probs = True
    p.use_fp64_gumbel = False
    setattr(p, patch.KEYS_ATTR, keys)
    return p


def keys(vllm_parts, lengths: dict[int, int], calls: int = 0):
    return vllm_parts[1].DraftSeedKeys(dict(lengths), calls)


def sample(vllm_parts, logits, temps, seeds=None, lengths=None, calls=0):
    k = None if lengths is None else keys(vllm_parts, lengths, calls)
    return proposer(vllm_parts, k)._sample_from_logits(logits.clone(), metadata(temps, seeds))


def test_row_depends_on_seed_length_step_only(vllm_parts):
    """Same (seed, L, j) and logits: same token and probabilities in any batch, at any row, whatever the global RNG."""
    g = torch.Generator().manual_seed(0)
    checked = 0
    for trial in range(40):
        row_logits = torch.randn(VOCAB, generator=g) * 0.5  # flat enough that the noise decides the token
        seed, length, step = 11 + trial, 20 + trial, trial % 3
        ref_tokens, ref_probs = sample(vllm_parts, row_logits[None], [1.0], {0: seed}, {0: length}, step)
        for other in range(5):
            b = int(torch.randint(2, 9, (), generator=g))
            at = int(torch.randint(0, b, (), generator=g))
            logits = torch.randn(b, VOCAB, generator=g)
            logits[at] = row_logits
            temps = [float(t) for t in torch.tensor([0.0, 0.7, 1.0, 1.3])[torch.randint(0, 4, (b,), generator=g)]]
            temps[at] = 1.0
            seeds = {i: 100 + i for i in range(b) if i != at and i % 2}  # other seeded rows, other keys
            seeds[at] = seed
            lengths = {i: 7 * i for i in seeds}
            lengths[at] = length
            torch.manual_seed(trial * 10 + other)  # the global RNG differs between batches
            tokens, probs = sample(vllm_parts, logits, temps, seeds, lengths, step)
            assert int(tokens[at]) == int(ref_tokens[0]), (trial, other)
            assert torch.equal(probs[at], ref_probs[0])
            checked += 1
    assert checked == 200


def test_token_changes_with_step_and_length_and_follows_probs(vllm_parts):
    uniform = torch.zeros(1, VOCAB)
    by_step = {int(sample(vllm_parts, uniform, [1.0], {0: 11}, {0: 30}, j)[0]) for j in range(50)}
    by_length = {int(sample(vllm_parts, uniform, [1.0], {0: 11}, {0: n}, 0)[0]) for n in range(30, 80)}
    by_seed = {int(sample(vllm_parts, uniform, [1.0], {0: s}, {0: 30}, 0)[0]) for s in range(50)}
    # 50 draws from 1000 tokens: ~1.2 collisions expected; one fixed noise row would give a single token.
    assert min(len(by_step), len(by_length), len(by_seed)) >= 44, (len(by_step), len(by_length), len(by_seed))
    # Determinism: the same key twice gives the same token.
    assert sample(vllm_parts, uniform, [1.0], {0: 11}, {0: 30}, 7)[0].item() == \
        sample(vllm_parts, uniform, [1.0], {0: 11}, {0: 30}, 7)[0].item()
    # Distribution: 4000 seeded rows (one key each) sample probs = softmax(logits / T) at T = 0.8.
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 4000
    logits = (p.log() * 0.8).expand(n, 4).contiguous()
    tokens, probs = sample(vllm_parts, logits, [0.8] * n, {i: 5 for i in range(n)}, {i: 100 + i for i in range(n)})
    assert torch.allclose(probs[0], p, atol=1e-6)
    freq = torch.bincount(tokens, minlength=4).float() / n
    assert torch.allclose(freq, p, atol=0.03), freq  # sigma <= 0.008 per token


def test_seeded_draft_survives_rounding_level_changes_of_the_logits(vllm_parts):
    """The draft model's logits round differently at another batch size; a seeded row's draft token must not
    change with them. The redraw is an exponential race (``exponential_noise`` keyed by seed, length and step):
    it changes only when the two best ``log p - log E`` are within the perturbation (chance <~ 2 * 3e-5 per row at
    T = 1, the gap's density at 0 being at most ~1), so at most 2 of 2000 rows may change (expected 0.12; P(>= 3)
    ~3e-4; measured 0). Control: an inverse CDF of the same probabilities from a fixed uniform per row changes in 13
    of them (fixed seeds), so the perturbation matters; the same check on the inverse-CDF redraw fails."""
    from ears_vllm._common import sample_inverse_cdf

    n, vocab, eps = 2000, 8192, 3e-5
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(n, vocab, generator=g) * 2
    moved = logits + eps * torch.randn(n, vocab, generator=g)
    seeds, lengths = {i: 100 + i for i in range(n)}, {i: 50 for i in range(n)}
    a, pa = sample(vllm_parts, logits, [1.0] * n, seeds, lengths)
    b, pb = sample(vllm_parts, moved, [1.0] * n, seeds, lengths)
    assert int((a != b).sum()) <= 2, int((a != b).sum())
    u = torch.rand(n, dtype=torch.float64, generator=g)
    control = sample_inverse_cdf(pa, u) != sample_inverse_cdf(pb, u)
    assert int(control.sum()) >= 5, int(control.sum())


def test_target_generator_is_not_drawn_from(vllm_parts):
    meta = metadata([1.0, 1.0], {0: 11, 1: 12})
    states = {i: g.get_state() for i, g in meta.generators.items()}
    proposer(vllm_parts, keys(vllm_parts, {0: 30, 1: 40}))._sample_from_logits(torch.randn(2, VOCAB), meta)
    for i, g in meta.generators.items():
        assert torch.equal(g.get_state(), states[i])
        assert g.initial_seed() == 11 + i


def test_unseeded_rows_are_vllms_global_draws(vllm_parts):
    _, patch = vllm_parts
    original = vllm_parts[0].SpecDecodeBaseProposer._sample_from_logits.__wrapped__
    logits = torch.zeros(8, VOCAB)
    temps = [1.0, 1.0, 0.0, 1.0, 0.7, 1.0, 1.0, 1.3]
    seeds, lengths = {1: 3, 5: 4}, {1: 10, 5: 10}
    unseeded = [0, 2, 3, 4, 6, 7]
    torch.manual_seed(1)
    a, pa = sample(vllm_parts, logits, temps, seeds, lengths)
    b, _ = sample(vllm_parts, logits, temps, seeds, lengths)  # the global RNG has moved on
    assert a[[0, 3, 4, 6, 7]].tolist() != b[[0, 3, 4, 6, 7]].tolist()
    assert a[[1, 5]].tolist() == b[[1, 5]].tolist()
    assert int(a[2]) == int(b[2]) == 0  # greedy row: argmax of uniform logits
    # With the same global RNG state the unseeded rows (and all probabilities) are exactly vLLM's.
    torch.manual_seed(1)
    ref, pref = original(proposer(vllm_parts), logits.clone(), metadata(temps, seeds))
    assert a[unseeded].tolist() == ref[unseeded].tolist() and torch.equal(pa, pref)
    assert patch.draft_noise_seed(3, 10, 0) != patch.draft_noise_seed(4, 10, 0)


def test_without_keys_or_generators_the_original_runs(vllm_parts):
    original = vllm_parts[0].SpecDecodeBaseProposer._sample_from_logits.__wrapped__
    logits = torch.randn(6, VOCAB)
    temps = [1.0, 0.5, 0.0, 1.0, 1.0, 2.0]
    cases = [
        (None, {0: 3, 4: 5}),  # no keys (a call outside propose_draft_token_ids): seeded rows too
        ({0: 1, 4: 2}, None),  # keys but no seeded request
    ]
    for lengths, seeds in cases:
        torch.manual_seed(2)
        a, pa = sample(vllm_parts, logits, temps, seeds, lengths)
        torch.manual_seed(2)
        b, pb = original(proposer(vllm_parts), logits.clone(), metadata(temps, seeds))
        assert torch.equal(a, b) and torch.equal(pa, pb)
    # Greedy drafting: argmax, no probabilities, the key counter still counts the call.
    k = keys(vllm_parts, {0: 1})
    p = proposer(vllm_parts, k)
    p._enable_probabilistic_draft_probs = False
    tokens, probs = p._sample_from_logits(logits.clone(), metadata(temps, {0: 3}))
    assert probs is None and torch.equal(tokens, logits.argmax(-1)) and k.calls == 1


def test_parallel_drafting_row_is_request_and_step(vllm_parts):
    """Parallel drafting: logits with batch * K rows and per-request metadata; row r is request r // K, step r % K,
    the same noise as sequential draft step r % K."""
    K, b = 3, 4
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(b * K, VOCAB, generator=g) * 0.3
    temps, seeds, lengths = [1.0, 0.9, 1.0, 0.0], {0: 21, 2: 22}, {0: 50, 2: 60}
    p = proposer(vllm_parts, keys(vllm_parts, lengths))
    tokens, probs = p._sample_from_logits(logits.clone(), metadata(temps, seeds))
    assert tokens.shape == (b * K,) and probs.shape == (b * K, VOCAB)
    for i in seeds:
        for k in range(K):
            r = i * K + k
            alone, _ = sample(vllm_parts, logits[r:r + 1], [temps[i]], {0: seeds[i]}, {0: lengths[i]}, k)
            assert int(tokens[r]) == int(alone[0]), (i, k)
    assert tokens[3 * K:].tolist() == logits[3 * K:].argmax(-1).tolist()  # greedy request


def test_runner_sets_keys_for_the_call_only(vllm_parts):
    """The runner wrapper, on a stand-in runner class: keys = num_tokens_no_spec of the seeded rows at the start of
    the call, reset afterwards (also when the call raises); none without seeded requests."""
    import numpy as np

    from ears_vllm.vllm_plugin.patches import gpu_model_runner
    from ears_vllm.vllm_plugin.patches._patch import MARK

    module, patch = vllm_parts
    seen = []

    class Runner:  # the methods the patch wraps; only the drafting one is exercised here
        def __init__(self, vllm_config):
            pass

        def _update_states(self, scheduler_output):
            pass

        def sample_tokens(self):
            pass

        def _bookkeeping_sync(self):
            pass

        def propose_draft_token_ids(self, fail=False):
            k = getattr(self.drafter, patch.KEYS_ATTR, None)
            seen.append(None if k is None else dict(k.lengths))
            self.input_batch.num_tokens_no_spec[:] += 5  # what a later read would see
            if fail:
                raise RuntimeError("boom")
            return "drafts"

    fake = types.SimpleNamespace(GPUModelRunner=Runner)
    gpu_model_runner.apply(fake)
    wrapped = Runner.propose_draft_token_ids
    gpu_model_runner.apply(fake)  # idempotent
    assert Runner.propose_draft_token_ids is wrapped and wrapped.__wrapped__ is not None
    r = Runner(types.SimpleNamespace(additional_config={}))  # no EARS: only the original __init__ runs
    r.drafter = proposer(vllm_parts)
    r.input_batch = types.SimpleNamespace(generators={1: torch.Generator().manual_seed(9)},
                                          num_tokens_no_spec=np.array([10, 20, 30]))
    assert r.propose_draft_token_ids() == "drafts"
    with pytest.raises(RuntimeError):
        r.propose_draft_token_ids(fail=True)
    r.input_batch.generators = {}
    r.propose_draft_token_ids()
    assert seen == [{1: 20}, {1: 25}, None]
    assert getattr(r.drafter, patch.KEYS_ATTR) is None
    # The real runner class is patched too (the plugin's install, on import).
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    assert hasattr(GPUModelRunner.propose_draft_token_ids, MARK)
    patch.apply(module)  # idempotent: still one wrapper around vLLM's function
    assert not hasattr(module.SpecDecodeBaseProposer._sample_from_logits.__wrapped__, MARK)

"""CPU draft tokens by inverse CDF (patches/draft_sampling_cpu.py), in-process: vLLM imported, no engine.

The patched ``compute_probs_and_sample_next_token`` must return vLLM's probabilities bit for bit, draw every random
row from exactly those probabilities (never a zero-probability token), keep greedy rows at the argmax, and follow
the global torch RNG as vLLM's draw does.
"""

from __future__ import annotations

import pytest
import torch

from .conftest import sampling_metadata as metadata

pytestmark = pytest.mark.vllm

VOCAB = 1000


@pytest.fixture(scope="module")
def module(llm_base_proposer):
    from ears_vllm.vllm_plugin.patches._patch import MARK

    assert hasattr(llm_base_proposer.compute_probs_and_sample_next_token, MARK)
    return llm_base_proposer


def test_probabilities_and_greedy_rows_are_vllms(module):
    patched = module.compute_probs_and_sample_next_token
    original = patched.__wrapped__
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, VOCAB, generator=g) * 2
    logits[:, 500:] = float("-inf")  # a reduced draft vocabulary, as EAGLE-3 heads map theirs
    temps = [1.0, 0.0, 0.7, 1.3, 0.0, 0.9]
    tokens, probs = patched(logits.clone(), metadata(temps))
    ref_tokens, ref_probs = original(logits.clone(), metadata(temps))
    assert torch.equal(probs, ref_probs)
    assert tokens.dtype == ref_tokens.dtype and tokens.shape == ref_tokens.shape
    for i in (1, 4):  # greedy rows: the argmax, as vLLM's
        assert int(tokens[i]) == int(ref_tokens[i]) == int(logits[i].argmax())
    assert bool((tokens < 500).all())
    # All-greedy batches run vLLM's function (probs is the logits, no softmax).
    t, p = patched(logits.clone(), metadata([0.0] * 6))
    assert torch.equal(p, logits) and torch.equal(t, logits.argmax(-1))
    from ears_vllm.vllm_plugin.patches import draft_sampling_cpu

    draft_sampling_cpu.apply(module)  # idempotent
    assert module.compute_probs_and_sample_next_token is patched


def test_draws_follow_probs_and_never_a_zero_probability_token(module):
    """20000 draws of one row: every frequency within 4.5 sigma of its probability (sigma = sqrt(p(1-p)/n) <= 0.0035
    at n = 20000, so a tolerance of 0.016 fails with probability < 1e-4 per token if the draw is exact), and no draw
    ever lands on a token of probability 0."""
    p = torch.zeros(VOCAB)
    p[[3, 250, 251, 999]] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 20000
    logits = (p.log() * 0.8).expand(n, VOCAB).contiguous()  # T = 0.8 gives back p
    torch.manual_seed(7)
    tokens, probs = module.compute_probs_and_sample_next_token(logits, metadata([0.8] * n))
    assert torch.allclose(probs[0], p, atol=1e-6)
    freq = torch.bincount(tokens, minlength=VOCAB).double() / n
    assert set(tokens.unique().tolist()) <= {3, 250, 251, 999}
    assert torch.allclose(freq[[3, 250, 251, 999]], p[[3, 250, 251, 999]].double(), atol=0.016), freq


def test_draws_follow_the_global_rng(module):
    logits = torch.zeros(16, VOCAB)  # uniform rows: the uniform alone decides each token
    draw = module.compute_probs_and_sample_next_token
    torch.manual_seed(3)
    a, _ = draw(logits.clone(), metadata([1.0] * 16))
    torch.manual_seed(3)
    b, _ = draw(logits.clone(), metadata([1.0] * 16))
    c, _ = draw(logits.clone(), metadata([1.0] * 16))  # the RNG has moved on
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len(set(a.tolist())) >= 14  # 16 draws from 1000 tokens: ~0.1 collisions expected


def test_inverse_cdf_edges():
    """u = 0 takes the first positive weight, u just below 1 the last one, never the zero weights around them."""
    from ears_vllm._common import sample_inverse_cdf

    w = torch.zeros(3, 49152)
    w[:, 100], w[:, 30000], w[:, 40000] = 0.25, 0.5, 0.25
    u = torch.tensor([0.0, 0.5, 1.0 - 2.0 ** -53], dtype=torch.float64)
    assert sample_inverse_cdf(w, u).tolist() == [100, 30000, 40000]

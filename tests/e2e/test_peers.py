"""The experimental rules beside EARS (``ears_vllm/vllm_plugin/peers.py``), in process.

- FLy against vLLM 0.33's own functions (``vllm/v1/spec_decode/fly.py`` from the 0.33.0 wheel, fetched from the
  package registry into ``.cache/``, its kernels run under Triton's interpreter on CPU): the same top-k entropy, the
  same deferred positions for random requests (uniform set to 0) and greedy ones (target argmax set to the draft),
  on random batches with and without draft probabilities, and windows of 1 to 3.
- Typical acceptance (Medusa's rule in the form of vllm-ascend's Entropy Verify): tau on distributions worked out
  by hand, and vllm-ascend's own n-gram example (accept, then reject).
- Both inside ``EarsRejectionSampler`` (the V1 runner's sampler, as an engine with ``rejection_sampler: "fly"`` /
  ``"typical"`` runs them): every decision equals the rule on the very uniforms of the step, and the counters
  (drafts accepted beyond the standard rule; typical acceptance's exact TV cost) match their definitions.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
import zipfile

import pytest
import torch

from .conftest import ROOT, sampling_metadata
from .mrv2_setup import vllm_triton_is_real

pytestmark = pytest.mark.vllm

VLLM_033 = "0.33.0"
CACHE = ROOT / ".cache" / f"vllm-{VLLM_033}"


@pytest.fixture(scope="module")
def vllm_fly():
    """vLLM 0.33.0's ``fly.py``, loaded on its own (it imports only torch and ``vllm.triton_utils``)."""
    pytest.importorskip("vllm")
    path = CACHE / "fly.py"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--platform", "manylinux_2_28_x86_64", "-d", str(CACHE), f"vllm=={VLLM_033}"], check=True)
        wheel = next(CACHE.glob(f"vllm-{VLLM_033}-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            path.write_bytes(z.read("vllm/v1/spec_decode/fly.py"))
        wheel.unlink()
    spec = importlib.util.spec_from_file_location("vllm_033_fly", path)
    module = importlib.util.module_from_spec(spec)
    with vllm_triton_is_real():
        spec.loader.exec_module(module)
    return module


def fly_case(seed, batch=32, k=6, vocab=12, draft_probs=True):
    """A random ragged batch, plus two planted requests (0: random, 1: greedy) that FLy must defer at position 0: a
    flat first row whose draft the standard rule rejects, then peaked rows whose drafts (their argmax) it accepts."""
    g = torch.Generator().manual_seed(seed)
    num_draft = torch.randint(0, k + 1, (batch,), generator=g)
    num_draft[:2] = k
    cu = num_draft.cumsum(0)
    n = int(cu[-1])
    # Flat-ish targets (high top-k entropy) and peaked ones; drafts often the argmax, so windows get accepted.
    logits = torch.randn(n, vocab, generator=g) * torch.where(torch.rand(n, 1, generator=g) < 0.5, 0.3, 3.0)
    draft = torch.where(torch.rand(n, generator=g) < 0.7, logits.argmax(-1), torch.randint(0, vocab, (n,), generator=g))
    draft[torch.rand(n, generator=g) < 0.05] = -1
    u = torch.rand(n, dtype=torch.float64, generator=g) ** 2  # small uniforms: windows of accepted drafts
    greedy = torch.rand(batch, generator=g) < 0.3
    greedy[:2] = torch.tensor([False, True])
    q = torch.softmax(torch.randn(n, vocab, generator=g), -1) if draft_probs else None
    for start in (0, k):
        logits[start:start + k] = 0.0
        logits[start, 0] = -3.0  # flat row; the draft has p(x) well below 1/V
        logits[start + 1:start + k, 5] = 10.0  # peaked rows
        draft[start:start + k] = torch.tensor([0] + [5] * (k - 1))
        u[start:start + k] = torch.tensor([0.99] + [0.01] * (k - 1), dtype=u.dtype)
        if q is not None:
            q[start:start + k] = 1.0 / vocab
    return dict(num_draft=num_draft, cu=cu.to(torch.int32), logits=logits, probs=torch.softmax(logits, -1),
                draft=draft, q=q, u=u, greedy=greedy, n=n, batch=batch, k=k, vocab=vocab)


def ours(c, window, threshold, top_k):
    from ears_vllm.vllm_plugin.peers import fly_deferrals, fly_entropy

    req = torch.repeat_interleave(torch.arange(c["batch"]), c["num_draft"])
    pos = torch.arange(c["n"]) - (c["cu"].long() - c["num_draft"])[req]
    draft, valid = c["draft"], c["draft"] >= 0
    p_x = c["probs"].gather(1, draft.clamp(min=0)[:, None]).squeeze(1) * valid
    q_x = valid.float() if c["q"] is None else c["q"].gather(1, draft.clamp(min=0)[:, None]).squeeze(1) * valid
    random = ~c["greedy"][req]
    accepted = torch.where(random, valid & (q_x > 0) & (p_x / q_x.clamp(min=1e-30) >= c["u"]),
                           valid & (draft == c["logits"].argmax(-1)))
    deferrable = torch.where(random, valid & (q_x > 0) & (p_x > 0), valid)

    def per_request(t):
        return torch.zeros(c["batch"], c["k"], dtype=t.dtype).index_put_((req, pos), t)

    deferred = fly_deferrals(per_request(accepted), per_request(deferrable),
                             per_request(fly_entropy(c["probs"], top_k)), c["num_draft"], window, threshold)
    return deferred[req, pos], random


@pytest.mark.parametrize("window", [1, 2, 3])
@pytest.mark.parametrize("draft_probs", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_fly_matches_vllm_033(vllm_fly, window, draft_probs, seed):
    threshold, top_k = 0.3, 3
    c = fly_case(seed, draft_probs=draft_probs)
    from ears_vllm.vllm_plugin.peers import fly_entropy

    entropy = vllm_fly.compute_fly_entropy(c["probs"], top_k)
    torch.testing.assert_close(fly_entropy(c["probs"], top_k), entropy)
    # vLLM's random-request pass: the uniform of a deferred position becomes 0.
    uniform = c["u"].clone()
    vllm_fly.apply_fly_random_acceptance_kernel[(c["batch"],)](
        c["cu"], c["draft"], c["q"], c["probs"], uniform, entropy, c["greedy"], c["vocab"], threshold,
        NO_DRAFT_PROBS=c["q"] is None, FLY_WINDOW_SIZE=window)
    # vLLM's greedy-request pass: the target argmax of a deferred position becomes the draft.
    argmax = c["logits"].argmax(-1)
    greedy_argmax = argmax.clone()
    vllm_fly.apply_fly_greedy_acceptance_kernel[(c["batch"],)](
        c["cu"], c["draft"], greedy_argmax, c["logits"], entropy, c["greedy"], c["vocab"], threshold,
        FLY_WINDOW_SIZE=window)
    deferred, random = ours(c, window, threshold, top_k)
    assert torch.equal(deferred & random, (uniform == 0) & (c["u"] != 0))
    assert torch.equal(deferred & ~random, greedy_argmax != argmax)
    assert bool((deferred & random).any()) and bool((deferred & ~random).any())  # the planted requests


def test_typical_scale_by_hand():
    from ears_vllm.vllm_plugin.peers import typical_scale

    flat, peaked = torch.full((1, 4), 0.25), torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    # tau = min(exp(-alpha * H), threshold): H(flat) = log 4; H(one-hot) = 0, so tau is the threshold.
    assert float(typical_scale(flat, 0.4, 0.95)) == pytest.approx(math.exp(-0.4 * math.log(4)), rel=1e-5)
    assert float(typical_scale(peaked, 0.4, 0.95)) == pytest.approx(0.95)
    # vllm-ascend's n-gram example (one-hot drafts, u = 0.7 then 0.6, alpha 0.4, threshold 0.95): token 0 with
    # p = 0.6 is accepted (0.6 >= tau * 0.7), token 1 with p = 0.1 is rejected.
    rows = torch.tensor([[0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])
    tau = typical_scale(rows, 0.4, 0.95)
    assert 0.6 >= float(tau[0]) * 0.7 and 0.1 < float(tau[1]) * 0.6


# ---- inside the V1 sampler -----------------------------------------------------------------------------------
def sampler_with(rule, **knobs):
    from vllm.v1.sample.sampler import Sampler

    from ears_vllm.vllm_plugin import register
    from ears_vllm.vllm_plugin.config import EarsSettings
    from ears_vllm.vllm_plugin.sampler import EarsRejectionSampler

    register()
    import vllm.utils.cpu_triton_utils  # noqa: F401  (the plugin's CPU expand fix applies on import)
    from vllm.platforms import current_platform

    current_platform.register_triton_kernel_overrides()
    settings = EarsSettings(rule, knobs=tuple(knobs.items()))
    return EarsRejectionSampler(Sampler(), None, torch.device("cpu"), settings)


def step_inputs(seed, batch=5, k=3, vocab=20):
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

    g = torch.Generator().manual_seed(seed)
    n = batch * k
    logits = torch.randn(n + batch, vocab, generator=g) * torch.where(torch.rand(n + batch, 1, generator=g) < 0.6,
                                                                        0.2, 3.0)
    target_rows = torch.tensor([b * (k + 1) + j for b in range(batch) for j in range(k)])
    draft = torch.where(torch.rand(n, generator=g) < 0.6, logits[target_rows].argmax(-1),
                        torch.randint(0, vocab, (n,), generator=g))
    i32 = dict(dtype=torch.int32)
    meta = SpecDecodeMetadata(
        draft_token_ids=draft.to(torch.int32), num_draft_tokens=[k] * batch,
        cu_num_draft_tokens=torch.arange(1, batch + 1, **i32) * k,
        cu_num_sampled_tokens=torch.arange(1, batch + 1, **i32) * (k + 1),
        target_logits_indices=target_rows.to(torch.int32),
        bonus_logits_indices=torch.tensor([b * (k + 1) + k for b in range(batch)], **i32),
        logits_indices=torch.arange(n + batch, **i32))
    u = torch.rand(n, dtype=torch.float64, generator=g)
    return meta, logits, target_rows, draft, u


def run_with_uniforms(sampler, meta, logits, u, temperature=1.0):
    from vllm.v1.sample import rejection_sampler as rs

    original = rs.generate_uniform_probs
    rs.generate_uniform_probs = lambda num_tokens, *args, **kwargs: u[:num_tokens].clone()
    sampler.recording = True
    try:
        out = sampler(meta, None, logits.clone(), sampling_metadata([temperature] * len(meta.num_draft_tokens)))
    finally:
        rs.generate_uniform_probs = original
        sampler.recording = False
    return out.sampled_token_ids, sampler.drain_stats()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_typical_acceptance_in_the_sampler(seed):
    """Every draft is accepted iff p(x) >= tau * u (one-hot drafts, T = 1), and the step's TV cost is the sum over
    decided positions of min(1, p / tau) - p."""
    from ears_vllm.vllm_plugin.peers import typical_scale

    sampler = sampler_with("typical", posterior_alpha=1.0)
    meta, logits, rows, draft, u = step_inputs(seed)
    tokens, stats = run_with_uniforms(sampler, meta, logits, u)
    probs = torch.softmax(logits[rows].double(), -1)
    p = probs.gather(1, draft[:, None]).squeeze(1)
    tau = typical_scale(probs.float(), 1.0, 0.95).double()
    accept = (p >= tau * u).view(len(meta.num_draft_tokens), -1)
    chain = accept.int().cumprod(1).sum(1)
    emitted = (tokens != -1).sum(1) - 1
    assert torch.equal(emitted, chain), (emitted, chain)
    decided = torch.arange(accept.shape[1])[None, :] <= chain[:, None]
    cost = ((p / tau).clamp(max=1.0) - p).view_as(accept)
    assert stats[1] == int(decided.sum()) and stats[3] == pytest.approx(float(cost[decided].sum()), rel=1e-4)
    beyond = (p < u).view_as(accept) & (torch.arange(accept.shape[1])[None, :] < chain[:, None])
    assert stats[0] == int(beyond.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fly_in_the_sampler(seed):
    """A draft is accepted iff the standard rule accepts it with its own uniform, or FLy defers its rejection
    (high top-k entropy, and the next W drafts accepted natively); deferred acceptances are counted, at no TV
    cost (FLy's cost is not a per-position quantity)."""
    from ears_vllm.vllm_plugin.peers import fly_entropy

    window, threshold = 1, 0.4
    sampler = sampler_with("fly", fly_window_size=window, fly_entropy_threshold=threshold)
    meta, logits, rows, draft, u = step_inputs(seed)
    tokens, stats = run_with_uniforms(sampler, meta, logits, u)
    probs = torch.softmax(logits[rows].float(), -1)
    p = probs.gather(1, draft[:, None]).squeeze(1).double()
    batch, k = len(meta.num_draft_tokens), meta.max_spec_len
    native = (p >= u).view(batch, k)
    high = (fly_entropy(probs, 3) >= threshold).view(batch, k)
    next_ok = torch.cat([native[:, 1:], torch.zeros(batch, 1, dtype=torch.bool)], 1)
    positions = torch.arange(k)[None, :]
    deferred = ~native & high & next_ok & (positions + window < k)
    chain = (native | deferred).int().cumprod(1).sum(1)
    assert torch.equal((tokens != -1).sum(1) - 1, chain)
    assert stats[0] == int((deferred & (positions < chain[:, None])).sum()) and stats[3] == 0.0
    assert bool((deferred & (positions < chain[:, None])).any())  # FLy changed an outcome in this step

"""Top-k / top-p: the Triton thresholds against the definition, and the backends with truncation.

The definition (``ears_vllm/top_k_top_p.py``, a stable sort): top-k keeps the ``k`` largest scaled logits, ties in
index order; top-p keeps, of those, the fewest largest whose probability reaches ``p``, ties in index order. The
Triton kernel (``kernels/top_k_top_p.py``) must give exactly that set on rows built to be awkward: wide ties
(wider than its buffer, so that its tie pass runs), ties at either boundary, ``-inf`` rows, fewer finite tokens
than ``k``, extreme magnitudes, ``-0.0`` against ``0.0``, NaN and ``+inf``, bfloat16 logits. Masses are float32 in
the kernel and float64 in the definition, so no row puts a top-p boundary within rounding of ``p``: the rows are
chosen so, and the comparison is exact. On CPU the kernels run under TRITON_INTERPRET=1 (root conftest.py).
"""

import pytest
import torch
from ears_cases import backend_device, make_case
from ears_vllm.kernels.top_k_top_p import BUFFER_SIZE, top_k_top_p_thresholds

from ears_vllm import ears_rejection_sample
from ears_vllm._common import sanitize_logits
from ears_vllm.top_k_top_p import top_k_top_p_keep, truncate_logits

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
VOCAB = 3000  # > BUFFER_SIZE: the selection's levels and its tie pass run


def awkward_rows(vocab: int = VOCAB) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(12, vocab, generator=g) * 3
    rows[1] = torch.round(rows[1] * 2) / 2  # ties everywhere
    rows[2] = 0.0  # one value
    rows[3, 100:] = float("-inf")  # 100 finite tokens
    rows[4] = float("-inf")  # none
    rows[5] = rows[5].clamp(max=6.0)
    rows[5, :1500] = 7.0  # a tie at the top wider than the buffer
    rows[6] = rows[6].bfloat16().float()
    rows[7] = torch.randn(vocab, generator=g) - 10  # k = 50: 40 tokens at 10, then 10 of a tie of 30 at 5
    rows[7, :40] = 10.0
    rows[7, 40 + torch.randperm(vocab - 40, generator=g)[:30]] = 5.0
    rows[8] = -3.0  # 4 tokens of probability 0.1998 each: p = 0.35 keeps 2 of them, p = 0.5 three (index order)
    rows[8, [17, 900, 901, 2999]] = 5.0
    rows[9, [3, 70, 2000]] = rows[9].max() + 1  # k = 1 and small p: the first of a tie at the top
    rows[10, :8] = torch.tensor([3e38, -3e38, 1e-40, -1e-40, 0.0, -0.0, float("nan"), float("inf")])
    rows[10, 8:16] = torch.tensor([1e30, 1e30, -1e30, 1e-30, 1e-30, -0.0, 0.0, -0.0])
    rows[11] = torch.round(rows[11]) * 1e-3  # ties at small magnitudes
    return rows


TEMPERATURE = torch.tensor([0.7, 1.0, 1.3, 0.7, 1.0, 0.9, 0.7, 1.0, 1.0, 0.5, 1.0, 0.02])
CONFIGS = {  # (top_k, top_p) per row
    "top_k": (torch.tensor([50, 50, 5, 200, 5, 1200, 50, 50, 3, 1, 10, 300]), None),
    "top_p": (None, torch.tensor([0.9, 0.5, 0.3077, 0.9, 0.9, 0.2, 0.8, 0.95, 0.35, 0.05, 0.7, 0.6])),
    "both": (torch.tensor([50, 50, 1999, 200, 5, 1200, VOCAB, 50, 3, 1, 10, 300]),
             torch.tensor([0.9, 0.5, 0.3, 0.9, 0.9, 0.2077, 0.8, 0.95, 0.6, 0.05, 0.7, 0.6])),
}


def kernel_keep(logits, temperature, top_k, top_p):
    """The kernel's kept set, each row its own request with one draft row (unpacked layout)."""
    rows, vocab = logits.shape
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    cu = torch.arange(1, rows + 1, dtype=torch.int32, device=DEVICE)
    thr, last = top_k_top_p_thresholds(dev(logits), cu, dev(temperature), dev(top_k), dev(top_p), 1, False,
                                       block_size=4096 if DEVICE == "cpu" else 512, num_warps=8)
    thr, last = thr.cpu(), last.cpu()
    s = sanitize_logits(logits.float() / temperature[:, None]) + 0.0
    index = torch.arange(vocab)
    return (s > thr[:, None]) | ((s == thr[:, None]) & (index[None, :] <= last[:, None]))


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_kernel_keeps_the_definitions_set(config):
    top_k, top_p = CONFIGS[config]
    logits = awkward_rows()
    got = kernel_keep(logits, TEMPERATURE, top_k, top_p)
    want = top_k_top_p_keep(logits / TEMPERATURE[:, None], top_k, top_p)
    for row in range(len(logits)):
        assert torch.equal(got[row], want[row]), (config, row, int(got[row].sum()), int(want[row].sum()))


def test_definition_on_hand_checked_rows():
    """The definition itself, on rows whose kept sets are counted by hand."""
    logits = awkward_rows()
    scaled = logits / TEMPERATURE[:, None]
    keep_k = top_k_top_p_keep(scaled, CONFIGS["top_k"][0], None)
    finite = logits > float("-inf")
    assert keep_k[0].sum() == 50 and keep_k[2].sum() == 5 and keep_k[2, :5].all()  # one value: the first 5
    assert keep_k[3].sum() == VOCAB and keep_k[4].all()  # fewer finite tokens than k: nothing is dropped
    assert keep_k[5].sum() == 1200 and keep_k[5, :1200].all()  # the first 1200 of the 1500-wide tie
    ties = (logits[7] == 5.0).nonzero().squeeze(1)
    assert keep_k[7, :40].all() and keep_k[7, ties[:10]].all() and not keep_k[7, ties[10:]].any()
    assert keep_k[9].nonzero().squeeze(1).tolist() == [3]  # k = 1: the first of the tie at the top
    keep_p = top_k_top_p_keep(scaled, None, torch.full((12,), 0.35))
    assert keep_p[8].nonzero().squeeze(1).tolist() == [17, 900]  # 0.1998 + 0.1998 reaches 0.35
    keep_p = top_k_top_p_keep(scaled, None, torch.full((12,), 0.5))
    assert keep_p[8].nonzero().squeeze(1).tolist() == [17, 900, 901]
    assert keep_p[9].nonzero().squeeze(1).tolist()[:2] == [3, 70]  # a tie at the top: in index order
    assert top_k_top_p_keep(scaled, None, torch.full((12,), 0.05))[9].nonzero().squeeze(1).tolist() == [3]
    # -inf tokens are kept only in the all -inf row (nothing to truncate); the +inf token (7) is row 10's maximum.
    assert keep_p[4].all() and (keep_p[torch.arange(12) != 4] & ~finite[torch.arange(12) != 4]).sum() == 0
    assert keep_p[10].nonzero().squeeze(1).tolist() == [7]


def test_greedy_and_untruncated_rows_keep_every_token():
    logits = awkward_rows()[:4]
    temperature = torch.tensor([0.0, 1.0, 0.0, 1.0])
    keep = kernel_keep(logits, temperature, torch.tensor([1, VOCAB, 5, VOCAB + 7]), torch.tensor([0.1, 1.0, 1.0, 1.0]))
    assert keep.all()


@pytest.mark.parametrize("seed,shape,opts", [
    (11, (5, 4, 37), dict(draft_probs=False, alpha=0.3, packed=True)),
    (12, (4, 3, 1271), dict(draft_probs=True, per_request_alpha=True, packed=True, placeholder_frac=0.5)),
    (13, (3, 2, 1500), dict(draft_probs=False, alpha=0.5, greedy_frac=0.3)),
])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_backends_agree_with_truncation(seed, shape, opts, backend):
    """Identical tokens, uncertainty and TV cost with top-k / top-p on every backend: the Triton kernel
    truncates as it reads, the others mask a copy by the definition."""
    batch, k, vocab = shape
    args = make_case(seed, batch=batch, max_spec_len=k, vocab=vocab, device=backend_device(backend), **opts)
    logits = args[2]
    logits.copy_(torch.round(logits * 2) / 2)  # ties at the boundaries
    g = torch.Generator().manual_seed(seed)
    top_k = torch.randint(1, vocab + 5, (batch,), generator=g)
    top_k[0] = 3
    top_p = torch.rand(batch, generator=g) * 0.8 + 0.15
    top_p[-1] = 1.0
    dev = backend_device(backend)
    got = ears_rejection_sample(*args, backend=backend, request_stats=True, top_k=top_k.to(dev), top_p=top_p.to(dev))
    ref = ears_rejection_sample(*[a.cpu() if isinstance(a, torch.Tensor) else a for a in args], backend="reference",
                                request_stats=True, top_k=top_k, top_p=top_p)
    assert torch.equal(got.output_token_ids.cpu(), ref.output_token_ids)
    assert torch.equal(got.num_accepted.cpu(), ref.num_accepted)
    torch.testing.assert_close(got.uncertainty.cpu(), ref.uncertainty, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(got.tv_cost.cpu(), ref.tv_cost, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(got.request_stats.cpu(), ref.request_stats, atol=1e-5, rtol=1e-5)


def test_truncation_is_the_masked_copy():
    """``top_k`` / ``top_p`` are exactly ``-inf`` outside the set: the reference on a masked copy gives the same
    output as the reference with the arguments (and the random requests' emitted tokens lie in the set)."""
    args = make_case(21, batch=6, max_spec_len=3, vocab=200, packed=True, greedy_frac=0.0)
    top_k, top_p = torch.tensor([1, 5, 20, 200, 50, 7]), torch.tensor([1.0, 0.5, 0.9, 0.3, 1.0, 0.99])
    masked = truncate_logits(args[2], args[1], args[4], top_k, top_p, packed=True)
    a = ears_rejection_sample(*args, backend="reference", top_k=top_k, top_p=top_p)
    b = ears_rejection_sample(*args[:2], masked, *args[3:], backend="reference")
    assert torch.equal(a.output_token_ids, b.output_token_ids)
    # Every emitted token is one the truncated target allows at its position.
    cu = args[1].tolist()
    starts = [0] + cu[:-1]
    for r, start in enumerate(starts):
        for j, token in enumerate(a.output_token_ids[r].tolist()):
            if token >= 0:
                assert masked[start + r + j, token] > float("-inf")


@pytest.mark.parametrize("name,value,message", [
    ("top_k", torch.tensor([0, 3]), "`top_k` must be >= 1"),
    ("top_k", torch.tensor([1.0, 3.0]), "`top_k` must have an integer dtype"),
    ("top_p", torch.tensor([0.0, 0.5]), "`top_p` must lie in (0, 1]"),
    ("top_p", torch.tensor([0.5, 1.5]), "`top_p` must lie in (0, 1]"),
    ("top_p", torch.tensor([0.5]), "`top_p` must have shape (2,)"),
])
def test_bad_truncation_arguments_are_one_line_errors(name, value, message):
    args = make_case(0, batch=2, max_spec_len=2, vocab=11)
    with pytest.raises(ValueError, match=r"^ears_rejection_sample: " + message.replace("(", r"\(").replace(
            ")", r"\)").replace("[", r"\[")):
        ears_rejection_sample(*args, **{name: value})


def test_awkward_rows_reach_the_kernels_wide_paths():
    """The rows above exercise the selection's levels and its tie pass only while the vocabulary and the tie at the
    top of row 5 are wider than the kernel's buffer (a guard for when BUFFER_SIZE changes)."""
    assert BUFFER_SIZE < int((awkward_rows()[5] == 7.0).sum()) < VOCAB

"""Bad input gets a ValueError naming the argument; non-finite logits have a defined, tested behaviour."""

import math

import pytest
import torch
from ears_cases import backend_device, make_case

from ears_vllm import ears_rejection_sample

ARG_INDEX = {name: i for i, name in enumerate(
    ["draft_token_ids", "cu_num_draft_tokens", "target_logits", "bonus_token_ids", "temperature", "alpha",
     "max_spec_len", "draft_probs", "uniform_probs", "recovery_noise"])}


def _call_with(name, value, **kw):
    args = list(make_case(0, batch=4, max_spec_len=3, vocab=11, draft_probs=True, zero_drafts=False))
    args[ARG_INDEX[name]] = value(args) if callable(value) else value
    return ears_rejection_sample(*args, **kw)


BAD = [
    ("alpha", -0.1), ("alpha", 1.5), ("alpha", float("nan")), ("alpha", "0.3"), ("alpha", None), ("alpha", True),
    ("alpha", torch.tensor([0.1, 0.2, float("nan"), 0.3])), ("alpha", torch.tensor([0.1, 2.0, 0.1, 0.1])),
    ("alpha", torch.tensor([0.1, 0.2])),
    ("target_logits", lambda a: a[2][0]), ("target_logits", lambda a: a[2].long()),
    ("target_logits", lambda a: a[2][:, :0]),
    ("draft_token_ids", lambda a: a[0].float()), ("draft_token_ids", lambda a: a[0] + 100),
    ("draft_token_ids", lambda a: a[0][None]), ("draft_token_ids", lambda a: a[0] - 100),
    ("cu_num_draft_tokens", lambda a: a[1] + 1), ("cu_num_draft_tokens", lambda a: a[1].flip(0)),
    ("bonus_token_ids", lambda a: a[3][:2]), ("temperature", lambda a: a[4][:1]),
    ("temperature", lambda a: torch.full_like(a[4], float("nan"))),
    ("max_spec_len", 1), ("max_spec_len", -1), ("max_spec_len", 2.0),
    ("draft_probs", lambda a: a[7][:, :5]), ("uniform_probs", lambda a: a[8][:2]),
    ("recovery_noise", lambda a: a[9].T),
]


@pytest.mark.parametrize("name,value", BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_bad_input_names_the_argument(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        _call_with(name, value)


def test_placeholder_drafts_are_valid_input():
    """-1 means "no draft" (vLLM's padding of grammar-rejected drafts): accepted as input, never as a token."""
    out = _call_with("draft_token_ids", lambda a: torch.full_like(a[0], -1))
    assert int(out.num_accepted.sum()) == 0 and bool((out.output_token_ids[:, 0] >= 0).all())


def test_bonus_rows_must_be_present_without_bonus_ids():
    with pytest.raises(ValueError, match="`target_logits` must have num_tokens \\+ batch"):
        _call_with("bonus_token_ids", None)


def test_unknown_backend():
    with pytest.raises(ValueError, match="`backend`"):
        _call_with("alpha", 0.3, backend="cuda")


def _nonfinite_case(device):
    v = 8
    logits = torch.zeros(5, v)
    logits[0, 3] = float("nan")  # NaN counts as -inf: token 3 is never emitted
    logits[1, 2] = float("inf")  # +inf takes all the mass (p = 1 on token 2; h = 0)
    logits[1, 5] = float("inf")  # two +inf share it: p = 1/2 each
    logits[2] = float("-inf")  # nothing allowed: treated as uniform
    logits[3] = float("nan")
    logits[4, :4] = float("-inf")
    draft = torch.tensor([3, 2, 1, 0, 1])
    cu = torch.tensor([1, 2, 3, 4, 5], dtype=torch.int32)
    args = [draft, cu, logits, torch.zeros(5, dtype=torch.long), torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]),
            0.5, 1, None, torch.full((5,), 0.999, dtype=torch.float64), torch.ones(5, v)]
    return [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
def test_nonfinite_logits_have_defined_behaviour(backend):
    out = ears_rejection_sample(*_nonfinite_case(backend_device(backend)), backend=backend)
    tok = out.output_token_ids.cpu()
    h = out.uncertainty.cpu()
    assert tok[0, 0] == 0  # the NaN token 3 has p = 0: rejected; recovered from the 7 others (noise 1: first max)
    assert math.isclose(float(h[1]), 0.5, abs_tol=1e-6)  # two +inf tokens share the mass
    assert tok[1, 0] == 5  # p(2) = 1/2 + alpha*h = 0.75 < u = 0.999: rejected, residual mass all on token 5
    assert math.isclose(float(h[2]), 1 - 1 / 8, abs_tol=1e-6)  # all -inf: uniform
    assert tok[2, 0] == 0
    assert math.isclose(float(h[3]), 1 - 1 / 8, abs_tol=1e-6)  # all NaN: uniform
    assert tok[4, 0] == 4 and float(h[4]) == 0.0  # greedy: first argmax among the allowed tokens 4..7


def test_triton_needs_exponential_noise():
    with pytest.raises(ValueError, match="`recovery_noise`"):
        _call_with("recovery_noise", lambda a: torch.rand(4, dtype=torch.float64), backend="triton")


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
def test_nonfinite_bonus_rows_have_defined_behaviour(backend):
    """Bonus rows sampled in the step (vLLM's layout) follow the same non-finite rules as draft rows."""
    v = 8
    bonus_rows = torch.zeros(4, v)
    bonus_rows[0, 3] = float("nan")  # never emitted; the race with noise 1 takes the first of the 7 others
    bonus_rows[1, [2, 5]] = float("inf")  # the two +inf tokens share the mass: the first wins the race
    bonus_rows[2] = float("-inf")  # nothing allowed: uniform
    bonus_rows[3] = float("nan")  # greedy, nothing allowed: argmax of all -inf is token 0
    bonus_rows[0, 0] = bonus_rows[1, 0] = -1.0
    args = [torch.zeros(0, dtype=torch.long), torch.zeros(4, dtype=torch.int32), bonus_rows, None,
            torch.tensor([1.0, 1.0, 1.0, 0.0]), 0.5, 0, None, torch.zeros(0, dtype=torch.float64), torch.ones(4, v)]
    device = backend_device(backend)
    out = ears_rejection_sample(*[a.to(device) if isinstance(a, torch.Tensor) else a for a in args], backend=backend)
    assert out.output_token_ids.cpu()[:, 0].tolist() == [1, 2, 0, 0]

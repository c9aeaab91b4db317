"""Stateless randomness keyed by (seed, token position): Triton's Philox, drawn in the kernel or here in torch.

With ``seeds`` and ``positions`` (``ears_vllm.ears_rejection_sample``), a step's randomness is a pure function of
each request's seed and the token positions of its rows, as Model Runner V2 draws it: nothing is read from a
generator, so no ``[batch, vocab]`` noise tensor is written and seeded requests need no per-request host loop, and a
seeded request draws the same numbers at the same position whatever its batch and its place in it. A request with
``n`` drafts whose last (bonus) row sits at token position ``P`` has its first row at ``F = P - n``:

- the uniform of draft ``j``: ``rand(seed, ((2 * (F + j)) << 32) + 0)``;
- the ``Exp(1)`` race noise of its one sampled token (recovered or bonus) at vocabulary index ``v``:
  ``-log(rand(seed, ((2 * F + 1) << 32) + v))``.

``rand(seed, offset)`` is ``max(tl.rand(seed, offset), 2**-31)``: Triton's Philox 4x32-10 (``tl.randint``'s first
word, ``tl.uint_to_uniform_float``), floored as MRV2's ``tl_rand32(..., includes_zero=False)`` so that it is never 0
(a uniform of 0 would accept any decidable draft; a race noise of ``inf`` would silence a token).

Why these keys never repeat a draw that mattered: a step decides drafts ``F .. F + a`` (``a`` accepted, then the
first rejection) and emits ``a + 1`` tokens, so the next step's first row is at ``F' >= F + a + 1``: its uniforms
(streams ``2 * position``) start past the ones this step used, and its race (stream ``2 * F' + 1``) is new. Rows of a
step whose output is discarded (a partial prefill) may be drawn again later; what they drew never reached an
output. Positions must stay below ``2**31``.

``stateless_rand`` is the torch copy of the kernel's draw, bit for bit (``tests/test_stateless.py`` holds the two
against each other under Triton's interpreter): it gives the torch and reference backends the same numbers. On a GPU
the kernel's ``-log`` may round differently from torch's in the last bit, which changes a race only between two
scores within that rounding of each other.
"""

from __future__ import annotations

import torch

# tl.uint_to_uniform_float's scale for 32-bit words, and MRV2's floor (the smallest positive value of that map).
_SCALE = 4.6566127342e-10
RAND_MIN = 4.6566127342e-10
_M32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_ROUNDS = 10


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` (``a`` a 32-bit constant, ``b`` int64 holding uint32 values), in int64
    arithmetic: ``a`` in 16-bit halves keeps every partial product below 2**48."""
    lo_part = b * (a & 0xFFFF)
    hi_part = b * (a >> 16)
    low = (((hi_part & 0xFFFF) << 16) + lo_part) & _M32
    high = (hi_part + (lo_part >> 16)) >> 16
    return high, low


def stateless_rand(seed: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``max(tl.rand(seed, offset), 2**-31)`` elementwise (``seed``, ``offset``: int64, broadcast); float32."""
    seed, offset = torch.broadcast_tensors(seed.to(torch.int64), offset.to(torch.int64))
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    c0, c1 = offset & _M32, (offset >> 32) & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(_ROUNDS):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    signed = torch.where(c0 >= 1 << 31, c0 - (1 << 32), c0)  # the word as int32
    folded = torch.where(signed < 0, -signed - 1, signed)
    u = folded.to(torch.float32) * torch.tensor(_SCALE, dtype=torch.float32)
    return u.clamp_(min=RAND_MIN)


def stateless_inputs(seeds: torch.Tensor, positions: torch.Tensor, cu_num_draft_tokens: torch.Tensor,
                     vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The draws the kernel makes, materialised: ``uniform_probs`` ``[num_tokens]`` float64 and the race noise
    ``[batch, vocab_size]`` float32 Exp(1), for the torch and reference backends."""
    cu = cu_num_draft_tokens.to(torch.int64)
    num_draft = torch.diff(cu, prepend=cu.new_zeros(1))
    batch, device = cu.numel(), cu.device
    first = positions.to(torch.int64) - num_draft
    seeds = seeds.to(torch.int64)
    num_tokens = int(cu[-1]) if batch else 0
    req = torch.repeat_interleave(torch.arange(batch, device=device), num_draft, output_size=num_tokens)
    j = torch.arange(num_tokens, device=device) - (cu - num_draft)[req]
    uniform = stateless_rand(seeds[req], (2 * (first[req] + j)) << 32).to(torch.float64)
    vocab = torch.arange(vocab_size, dtype=torch.int64, device=device)
    noise = stateless_rand(seeds[:, None], ((2 * first + 1) << 32)[:, None] + vocab).log_().neg_()
    return uniform, noise

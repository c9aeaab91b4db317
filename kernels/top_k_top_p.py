"""Top-k / top-p thresholds in Triton, found on the raw logits without a sort and without a float32 copy.

vLLM's kept set (its Triton top-k / top-p kernel, ``vllm/v1/sample/ops/topk_topp_triton.py``), on the logits
divided by the temperature: top-k keeps exactly ``k`` tokens, the largest, ties at the boundary in index order
(every finite token when there are at most ``k``); top-p then keeps, of what top-k kept, the fewest largest tokens
whose probability reaches ``p``, ties again in index order. Ranking tokens by (scaled logit descending, index
ascending), both are a prefix of that order, so a row's kept set is two numbers: the scaled logit ``thr`` of its
last kept token and that token's index ``last``. A token is kept iff ``s > thr`` or ``s == thr and index <= last``;
the verification kernels apply that test while they read the row (``ears_verify.py``), so nothing is masked in
memory and no copy is made.

One program per logits row finds them (``_top_k_top_p_kernel``, grid ``(batch, max_spec_len + 1)``):

1. one pass: the max ``M``, the smallest finite logit, the number of finite logits, ``sum exp(s - M)``;
2. a selection (top-k: by count, target ``k``; then top-p: by mass ``exp(s - M)``, target ``p`` times the mass
   top-k kept, over top-k's set only). Each token's key is ``u = key(M) - key(s)``, where ``key`` maps a float32
   to an integer ordered as the floats are: distinct logits, distinct keys; equal logits, equal keys. A level
   splits the key range that holds the target into bins (the first by the keys' bit length, the next into ``NB``
   equal bins), one pass sums each bin's count and mass, and the range narrows to the first non-empty bin where
   the running total reaches the target. Once the range holds at most
   ``BUF`` tokens they are gathered (their indices) and sorted by (key, index) in registers: the target's rank
   gives ``thr`` and ``last``. A range of one key holding more than ``BUF`` tokens (a wide tie) is resolved by a
   pass that counts the tied tokens in index order.

Every count is exact; masses are float32 sums, so a top-p boundary decided by less than float32 rounding of the
cumulative probability can differ from vLLM's (whose sums run in another order). vLLM's own kernel finds its
pivots by a bounded search with 1e-9 tolerances; where that is not exact its kept set is not the one above
(``docs/vllm.md``, "Top-k / top-p on CUDA", has the cases seen).
"""

import triton
import triton.language as tl

from .ears_verify import FLOAT32_MAX, GREEDY_TEMPERATURE_EPS, _request_span, _scaled_logits

# Globals a jit function reads must be tl.constexpr objects (an annotation is not enough for the compiler).
INT64_MAX = tl.constexpr(0x7FFFFFFFFFFFFFFF)
INDEX_BITS = tl.constexpr(31)  # vocabulary indices < 2**31: (key << 31) | index orders by key, then index
INDEX_MASK = tl.constexpr((1 << 31) - 1)
BUFFER_SIZE = 1024  # tokens sorted in registers at the end of a selection
SMALL_BUFFER_SIZE = tl.constexpr(64)  # ... sorted in a smaller sort when they are this few
NUM_BINS = 16  # bins per level of a selection (the first level: LOG_BINS, by bit length)
LOG_BINS = tl.constexpr(64)  # >= 33 bit lengths of keys below 2**32


@triton.jit
def _order_key(s):
    # float32 -> int64 ordered as the floats are (-0.0 must be folded into +0.0 first: s + 0.0)
    b = s.to(tl.int32, bitcast=True)
    return (b ^ ((b >> 31) & 0x7FFFFFFF)).to(tl.int64)


@triton.jit
def _bit_length(u):
    # floor(log2(u)) + 1 for 0 < u < 2**32, 0 for u == 0; exact (the float conversion may round up to a power of 2)
    e = ((u.to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 126).to(tl.int64)
    e = tl.where(u > 0, e, 0)
    return tl.where((e > 0) & (u < (tl.full((), 1, dtype=tl.int64) << tl.maximum(e - 1, 0))), e - 1, e)


@triton.jit
def _candidates(row_ptr, offs, mask, temp, key_m, lo, hi, lim_u, lim_idx):
    # The tokens of a block whose key lies in [lo, hi] and that belong to the set searched: key < lim_u, or
    # key == lim_u and index <= lim_idx (top-k's kept set for top-p; everything for top-k).
    s = _scaled_logits(row_ptr, offs, mask, temp) + 0.0
    u = key_m - _order_key(s)
    inside = (u < lim_u) | ((u == lim_u) & (offs <= lim_idx))
    return s, u, mask & (s > float("-inf")) & (u >= lo) & (u <= hi) & inside


@triton.jit
def _choose_bin(cnt, mass, bins, above_w, above_mass, target, NBINS: tl.constexpr, USE_MASS: tl.constexpr):
    # The first non-empty bin at or after the one where the running weight reaches the target (float rounding may
    # leave the target unreached: then the last non-empty bin). The weights before it are read off the same running
    # sums the choice was made on, so that a later level sees the target where this one did.
    w = mass if USE_MASS else cnt.to(tl.float32)
    running = above_w + tl.cumsum(w, axis=0)
    running_mass = above_mass + tl.cumsum(mass, axis=0)
    reach = tl.sum((running < target).to(tl.int32), axis=0)
    nonempty = cnt > 0
    b = tl.min(tl.where(nonempty & (bins >= reach), bins, NBINS), axis=0)
    b = tl.where(b == NBINS, tl.max(tl.where(nonempty, bins, 0), axis=0), b)
    before = bins == b - 1
    above_w = tl.where(b > 0, tl.sum(tl.where(before, running, 0.0), axis=0), above_w)
    above_mass = tl.where(b > 0, tl.sum(tl.where(before, running_mass, 0.0), axis=0), above_mass)
    return b, above_w, above_mass, tl.sum(tl.where(bins == b, cnt, 0), axis=0)


@triton.jit
def _rank_in_buffer(row_ptr, buf_ptr, temp, m, key_m, n_in, above_w, above_mass, target, USE_MASS: tl.constexpr,
                    SIZE: tl.constexpr):
    # The n_in (<= SIZE) gathered indices sorted by (key, index): the rank where the running weight reaches the
    # target, and (s, index, mass up to it) there.
    j = tl.arange(0, SIZE)
    valid = j < n_in
    idx = tl.load(buf_ptr + j, mask=valid, other=0)
    u = key_m - _order_key(_scaled_logits(row_ptr, idx, valid, temp) + 0.0)
    order = tl.sort(tl.where(valid, (u << INDEX_BITS) | idx.to(tl.int64), INT64_MAX))
    idx = (order & INDEX_MASK).to(tl.int32)
    s = _scaled_logits(row_ptr, idx, valid, temp)
    token_mass = tl.where(valid, tl.exp(s - m), 0.0)
    running = above_w + tl.cumsum(token_mass if USE_MASS else valid.to(tl.float32), axis=0)
    rank = tl.maximum(tl.minimum(tl.sum(((running < target) & valid).to(tl.int32), axis=0), n_in - 1), 0)
    at = j == rank
    thr = tl.sum(tl.where(at, s, 0.0), axis=0)
    last = tl.sum(tl.where(at, idx, 0), axis=0)
    kept_mass = above_mass + tl.sum(tl.where(j <= rank, token_mass, 0.0), axis=0)
    return thr, last, kept_mass


@triton.jit
def _select(row_ptr, buf_ptr, temp, vocab_size, m, key_m, n_cand, u_max, target, lim_u, lim_idx,
            USE_MASS: tl.constexpr, BUF: tl.constexpr, NB: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    # In rank order (s descending, index ascending) over the searched set: the first token at which the running
    # weight (1 per token, or exp(s - m) with USE_MASS) reaches `target`. Returns its s, its index, and the mass
    # exp(s - m) of it and of every token ranked before it, and the number of passes over the row it took.
    lo = tl.zeros((), dtype=tl.int64)
    hi = u_max
    above_w = 0.0  # weight of the searched tokens ranked before the range [lo, hi]
    above_mass = 0.0
    n_in = n_cand
    passes = 1
    if (n_in > BUF) & (lo < hi):
        # The first level's bins are the bit lengths of the keys: narrow near the top of the row, where top-k and
        # top-p boundaries lie, wide below (a linear split of a range that crosses 0 would put most tokens in bin 0).
        passes += 1
        log_bins = tl.arange(0, LOG_BINS)
        cnt = tl.zeros([LOG_BINS], dtype=tl.int32)
        mass = tl.zeros([LOG_BINS], dtype=tl.float32)
        for off in range(0, vocab_size, BLOCK_SIZE):
            offs = off + tl.arange(0, BLOCK_SIZE)
            s, u, cand = _candidates(row_ptr, offs, offs < vocab_size, temp, key_m, lo, hi, lim_u, lim_idx)
            hit = tl.where(cand, _bit_length(u), LOG_BINS)[:, None] == log_bins[None, :]
            cnt += tl.sum(hit.to(tl.int32), axis=0)
            mass += tl.sum(tl.where(hit, tl.exp(s - m)[:, None], 0.0), axis=0)
        b, above_w, above_mass, n_in = _choose_bin(cnt, mass, log_bins, above_w, above_mass, target, LOG_BINS,
                                                   USE_MASS)
        b = b.to(tl.int64)
        one = tl.full((), 1, dtype=tl.int64)
        lo = tl.where(b > 0, one << tl.maximum(b - 1, 0), 0)  # bit length b: [2**(b-1), 2**b - 1]
        hi = tl.minimum((one << b) - 1, hi)
    bins = tl.arange(0, NB)
    while (n_in > BUF) & (lo < hi):
        passes += 1
        width = (hi - lo) // NB + 1
        cnt = tl.zeros([NB], dtype=tl.int32)
        mass = tl.zeros([NB], dtype=tl.float32)
        for off in range(0, vocab_size, BLOCK_SIZE):
            offs = off + tl.arange(0, BLOCK_SIZE)
            s, u, cand = _candidates(row_ptr, offs, offs < vocab_size, temp, key_m, lo, hi, lim_u, lim_idx)
            hit = tl.where(cand, (u - lo) // width, NB)[:, None] == bins[None, :]
            cnt += tl.sum(hit.to(tl.int32), axis=0)
            mass += tl.sum(tl.where(hit, tl.exp(s - m)[:, None], 0.0), axis=0)
        b, above_w, above_mass, n_in = _choose_bin(cnt, mass, bins, above_w, above_mass, target, NB, USE_MASS)
        lo = lo + b * width
        hi = tl.minimum(lo + width - 1, hi)

    thr = 0.0
    last = 0
    kept_mass = 0.0
    if n_in <= BUF:  # gather the range's indices, sort them by (key, index), read the target's rank
        n_gathered = 0
        for off in range(0, vocab_size, BLOCK_SIZE):
            offs = off + tl.arange(0, BLOCK_SIZE)
            s, u, cand = _candidates(row_ptr, offs, offs < vocab_size, temp, key_m, lo, hi, lim_u, lim_idx)
            slot = n_gathered + tl.cumsum(cand.to(tl.int32), axis=0) - 1
            tl.store(buf_ptr + slot, offs, mask=cand & (slot < BUF))
            n_gathered += tl.sum(cand.to(tl.int32), axis=0)
        tl.debug_barrier()  # the stores above, by every thread, before the loads below
        if n_in <= SMALL_BUFFER_SIZE:  # the usual case (top-k 50, a nucleus of tens): a small sort
            thr, last, kept_mass = _rank_in_buffer(row_ptr, buf_ptr, temp, m, key_m, n_in, above_w, above_mass,
                                                   target, USE_MASS, SMALL_BUFFER_SIZE)
        else:
            thr, last, kept_mass = _rank_in_buffer(row_ptr, buf_ptr, temp, m, key_m, n_in, above_w, above_mass,
                                                   target, USE_MASS, BUF)
    else:  # one key, more than BUF tokens: the needed number of them, in index order
        seen = 0
        tie = float("-inf")
        for off in range(0, vocab_size, BLOCK_SIZE):
            offs = off + tl.arange(0, BLOCK_SIZE)
            s, u, cand = _candidates(row_ptr, offs, offs < vocab_size, temp, key_m, lo, hi, lim_u, lim_idx)
            tie = tl.maximum(tie, tl.max(tl.where(cand, s, float("-inf")), axis=0))
            seen += tl.sum(cand.to(tl.int32), axis=0)
        each = tl.exp(tie - m)
        if USE_MASS:  # (tied tokens of mass 0: rounding left the target unreached; take the first)
            need = tl.where(each > 0, tl.ceil((target - above_w) / each), 1.0)
        else:
            need = target - above_w
        need = tl.minimum(tl.maximum(need, 1.0), seen.to(tl.float32)).to(tl.int32)
        count = 0
        last = -1
        for off in range(0, vocab_size, BLOCK_SIZE):
            offs = off + tl.arange(0, BLOCK_SIZE)
            s, u, cand = _candidates(row_ptr, offs, offs < vocab_size, temp, key_m, lo, hi, lim_u, lim_idx)
            running = count + tl.cumsum(cand.to(tl.int32), axis=0)
            last = tl.maximum(last, tl.max(tl.where(cand & (running == need), offs, -1), axis=0))
            count += tl.sum(cand.to(tl.int32), axis=0)
        thr = tie
        kept_mass = above_mass + need.to(tl.float32) * each
        passes += 1
    return thr, last, kept_mass, passes


@triton.jit
def _top_k_top_p_kernel(
    logits_ptr,  # [rows, vocab_size], raw (not divided by the temperature)
    logits_stride,
    cu_num_draft_tokens_ptr,  # [batch]
    temperature_ptr,  # [batch]
    top_k_ptr,  # [batch] int (read when HAS_TOP_K; >= vocab_size: none)
    top_p_ptr,  # [batch] float (read when HAS_TOP_P; >= 1: none)
    thr_ptr,  # [rows] float32 out: scaled logit of the last kept token (-inf: keep every token)
    last_ptr,  # [rows] int32 out: index of the last kept token (vocab_size: keep every token)
    buf_ptr,  # [rows, BUF] int32 scratch
    passes_ptr,  # [rows] int32 out (written when COUNT_PASSES): full passes over the row (benchmarks)
    vocab_size,
    PACKED: tl.constexpr,
    HAS_TOP_K: tl.constexpr,
    HAS_TOP_P: tl.constexpr,
    BUF: tl.constexpr,
    NB: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    COUNT_PASSES: tl.constexpr,
):
    req = tl.program_id(0)
    pos = tl.program_id(1)
    start, num_draft = _request_span(cu_num_draft_tokens_ptr, req)
    if pos < num_draft + PACKED:
        row = (start + pos + req * PACKED).to(tl.int64)
        row_ptr = logits_ptr + row * logits_stride
        temp = tl.load(temperature_ptr + req).to(tl.float32)
        k = vocab_size
        if HAS_TOP_K:
            k = tl.minimum(tl.load(top_k_ptr + req), vocab_size).to(tl.int32)
        p = 1.0
        if HAS_TOP_P:
            p = tl.load(top_p_ptr + req).to(tl.float32)
        thr = float("-inf")
        last = vocab_size
        passes = 0
        # Greedy rows keep everything: top-k / top-p never drop the first maximum, which is all they take.
        if (temp >= GREEDY_TEMPERATURE_EPS) & ((k < vocab_size) | (p < 1.0)):
            passes = 1
            m = -FLOAT32_MAX
            z = 0.0
            low = float("inf")
            n_finite = 0
            for off in range(0, vocab_size, BLOCK_SIZE):
                offs = off + tl.arange(0, BLOCK_SIZE)
                s = _scaled_logits(row_ptr, offs, offs < vocab_size, temp)
                finite = s > float("-inf")
                new_m = tl.maximum(m, tl.max(s, axis=0))
                z = z * tl.exp(m - new_m) + tl.sum(tl.exp(s - new_m), axis=0)
                m = new_m
                low = tl.minimum(low, tl.min(tl.where(finite, s, float("inf")), axis=0))
                n_finite += tl.sum(finite.to(tl.int32), axis=0)
            if n_finite > 0:
                m = m + 0.0
                key_m = _order_key(m)
                u_low = key_m - _order_key(low + 0.0)
                buf = buf_ptr + row * BUF
                lim_u = u_low
                lim_idx = vocab_size
                kept = n_finite
                kept_mass = z
                if k < n_finite:  # top-k: the k-th token in rank order
                    thr, last, kept_mass, n = _select(row_ptr, buf, temp, vocab_size, m, key_m, n_finite, u_low,
                                                      k.to(tl.float32), lim_u, lim_idx, False, BUF, NB, BLOCK_SIZE)
                    passes += n
                    lim_u = key_m - _order_key(thr + 0.0)
                    lim_idx = last
                    kept = k
                if p < 1.0:  # top-p over what top-k kept
                    thr, last, _, n = _select(row_ptr, buf, temp, vocab_size, m, key_m, kept, lim_u, p * kept_mass,
                                              lim_u, lim_idx, True, BUF, NB, BLOCK_SIZE)
                    passes += n
        tl.store(thr_ptr + row, thr)
        tl.store(last_ptr + row, last)
        if COUNT_PASSES:
            tl.store(passes_ptr + row, passes)


def top_k_top_p_thresholds(logits, cu_num_draft_tokens, temperature, top_k, top_p, max_spec_len: int, packed: bool,
                           block_size: int, num_warps: int, passes=None):
    """``(thr, last)`` ``[rows]`` for every row of ``logits`` (see the module docstring); ``top_k`` / ``top_p``
    ``[batch]`` or None. Rows of greedy requests, and rows without top-k / top-p, keep every token. ``passes``
    (``[rows]`` int32, optional) receives how many times each row was read (0 for a row left whole)."""
    import torch

    rows, vocab_size = logits.shape
    batch = cu_num_draft_tokens.numel()
    thr = torch.empty(rows, dtype=torch.float32, device=logits.device)
    last = torch.empty(rows, dtype=torch.int32, device=logits.device)
    buf = torch.empty((rows, BUFFER_SIZE), dtype=torch.int32, device=logits.device)
    if rows:
        _top_k_top_p_kernel[(batch, max_spec_len + int(packed))](
            logits, logits.stride(0), cu_num_draft_tokens, temperature,
            top_k if top_k is not None else cu_num_draft_tokens, top_p if top_p is not None else temperature,
            thr, last, buf, thr if passes is None else passes, vocab_size, PACKED=packed,
            HAS_TOP_K=top_k is not None, HAS_TOP_P=top_p is not None, BUF=BUFFER_SIZE, NB=NUM_BINS,
            BLOCK_SIZE=block_size, COUNT_PASSES=passes is not None, num_warps=num_warps,
        )
    return thr, last

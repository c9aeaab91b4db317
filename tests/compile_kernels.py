"""Compile the package's Triton kernels for an NVIDIA GPU (sm_90 by default) on any machine, GPU or not.

Triton's interpreter, which runs the kernel tests without a GPU, does not apply the compiler's rules (constexpr
globals, one type per loop-carried variable, ...): a kernel can pass every interpreted test and fail to compile.
This compiles each kernel in the variants the library and the plugin launch (``triton.compile`` on an ``ASTSource``
for a ``GPUTarget``, down to a cubin with Triton's own ptxas), without running it. Prints one line per variant and
exits 1 if any fails. ``tests/test_kernels_compile.py`` runs it in a process of its own (the kernels must be
imported without TRITON_INTERPRET).

    python tests/compile_kernels.py [--arch 90]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("compile_kernels.py: unset TRITON_INTERPRET (the kernels must be real JIT functions)")

import triton  # noqa: E402
from ears_vllm.kernels import ears_verify, top_k_top_p  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

# Pointer types by parameter name (every other pointer float32, every other runtime scalar int32).
POINTERS = {"split_argmax_ptr": "*i32", "counter_ptr": "*i32", "trunc_last_ptr": "*i32", "last_ptr": "*i32",
            "buf_ptr": "*i32", "passes_ptr": "*i32", "cu_num_draft_tokens_ptr": "*i32", "stats_ptr": "*fp64",
            "uniform_probs_ptr": "*fp64", "tv_budget_ptr": "*fp64", "draft_token_ids_ptr": "*i64",
            "bonus_token_ids_ptr": "*i64", "seeds_ptr": "*i64", "positions_ptr": "*i64", "top_k_ptr": "*i64",
            "output_token_ids_ptr": "*i32", "num_accepted_ptr": "*i32", "num_tolerance_ptr": "*i32",
            "part_idx_ptr": "*i32", "part_idx_p_ptr": "*i32"}


def signature(fn, logits_dtype: str) -> dict:
    sig = {}
    for p in fn.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name == "logits_ptr":
            sig[p.name] = logits_dtype
        elif p.name.endswith("_ptr"):
            sig[p.name] = POINTERS.get(p.name, "*fp32")
        elif p.name == "alpha_scalar":
            sig[p.name] = "fp32"
        else:
            sig[p.name] = "i32"
    return sig


def variants():
    """(name, kernel, logits dtype, constexprs, num_warps): what ears_rejection_sample_triton and
    top_k_top_p_thresholds launch on a GPU (block sizes as the launchers pick them)."""
    block = ears_verify.MAX_FUSED_SIZE
    for has_k, has_p, counted in ((True, False, False), (False, True, False), (True, True, True)):
        yield (f"top_k_top_p top_k={has_k} top_p={has_p}", top_k_top_p._top_k_top_p_kernel, "*bf16",
               dict(PACKED=True, HAS_TOP_K=has_k, HAS_TOP_P=has_p, BUF=top_k_top_p.BUFFER_SIZE,
                    NB=top_k_top_p.NUM_BINS, BLOCK_SIZE=512, COUNT_PASSES=counted), 8)
    for packed, trunc, dtype in ((False, False, "*fp32"), (True, False, "*bf16"), (True, True, "*bf16")):
        yield (f"row_stats packed={packed} trunc={trunc} {dtype[1:]}", ears_verify._ears_row_stats_kernel, dtype,
               dict(PACKED=packed, HAS_TRUNC=trunc, NUM_SPLITS=4, BLOCK_SIZE=block), 8)
    flags = ("HAS_DRAFT_PROBS", "SCALAR_ALPHA", "HAS_BUDGET", "PACKED", "STATELESS", "HAS_TRUNC", "HAS_STATS")
    for values in ((False,) * 7, (True,) * 7,
                   (False, False, False, True, True, True, True),  # the plugin on CUDA: per-request alpha, truncation
                   (True, False, True, True, True, False, True),
                   (False, True, False, False, False, False, True)):
        const = dict(zip(flags, values), STAT_SPLITS=4, REC_SPLITS=4, BLOCK_SIZE=block)
        on = ",".join(f for f, v in zip(flags, values) if v) or "none"
        yield f"verify {on}", ears_verify._ears_verify_kernel, "*bf16", const, 8


MRV2_POINTERS = {"sampled_ptr": "*i64", "num_accepted_ptr": "*i32", "target_local_argmax_ptr": "*i64",
                 "draft_sampled_ptr": "*i64", "cu_num_logits_ptr": "*i32", "idx_mapping_ptr": "*i32",
                 "seed_ptr": "*i64", "pos_ptr": "*i64", "counters_ptr": "*fp64", "tv_spent_ptr": "*fp64",
                 "tv_spent_slot_ptr": "*i32"}


def mrv2_variants():
    """The plugin's MRV2 rejection kernel (``ears_vllm/vllm_plugin/mrv2_rejection.py``), which calls MRV2's own
    Triton helpers: importable only with vLLM, whose ``triton_utils`` must hand out the real Triton here (it hands
    out a placeholder without a GPU driver; this process imports nothing else of vLLM's)."""
    try:
        import vllm.triton_utils as triton_utils
    except ImportError:
        return
    import triton.language as tl
    import triton.language.extra.libdevice as libdevice

    triton_utils.triton, triton_utils.tl, triton_utils.tldevice, triton_utils.HAS_TRITON = triton, tl, libdevice, True
    from ears_vllm.vllm_plugin import mrv2_rejection

    fn = mrv2_rejection._ears_rejection_kernel
    sig = {p.name: "constexpr" if p.is_constexpr else MRV2_POINTERS.get(p.name, "*fp32") if p.name.endswith("_ptr")
           else "i32" for p in fn.params}
    for draft, record, per_request, budget in ((False, False, False, False), (True, True, True, True),
                                               (False, True, True, True)):
        const = dict(PADDED_VOCAB_NUM_BLOCKS=32, HAS_DRAFT_LOGITS=draft, RECORD=record, PER_REQUEST=per_request,
                     HAS_BUDGET=budget)
        yield f"mrv2 draft_logits={draft} record={record} per_request={per_request} budget={budget}", fn, sig, const


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability (90: H100 / H200)")
    args = ap.parse_args(argv)
    target = GPUTarget("cuda", args.arch, 32)
    failed = 0
    jobs = [(name, fn, signature(fn, dtype), const, warps) for name, fn, dtype, const, warps in variants()]
    jobs += [(name, fn, sig, const, 4) for name, fn, sig, const in mrv2_variants()]
    for name, fn, sig, const, warps in jobs:
        try:
            start = time.perf_counter()
            compiled = triton.compile(ASTSource(fn, sig, const), target=target, options=dict(num_warps=warps))
            print(f"ok    {name}: {len(compiled.asm['cubin'])} bytes of cubin, {compiled.metadata.shared} bytes "
                  f"of shared memory ({time.perf_counter() - start:.1f} s)", flush=True)
        except Exception as error:  # report every variant, then fail
            failed += 1
            print(f"FAIL  {name}: {type(error).__name__}: {str(error)[:1500]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

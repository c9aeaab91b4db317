"""vLLM's own Triton top-k / top-p kernel (``vllm/v1/sample/ops/topk_topp_triton.py``, ``_topk_topp_kernel``),
callable on a GPU as it is and on CPU under Triton's interpreter: the comparison point of the EARS kernel's
top-k / top-p (``tests/e2e/test_top_k_top_p_vllm.py``, ``scripts/bench/top_k_top_p.py``).

On CPU two things stand between vLLM's kernel and the interpreter, both handled here for the call only:
``vllm.triton_utils`` hands out a placeholder Triton without a GPU driver (``tests/e2e/mrv2_setup.py``'s
``vllm_triton_is_real`` swaps the real one in while the module is imported), and the interpreter runs ``tl.range``
as Python's ``range`` (plain ints) while vLLM's kernel calls ``.to()`` on its loop variable, as compiled Triton
allows (``tensor_range_under_interpreter``). The kernel is launched directly, one program per row, with its CPU
tile sizes: vLLM's dispatcher (JIT warm-up, the split top-p pipeline for small batches) is not used.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

import torch

MODULE = "vllm.v1.sample.ops.topk_topp_triton"


@contextlib.contextmanager
def tensor_range_under_interpreter():
    """While it lasts, Triton's interpreter yields Triton tensors from ``tl.range``. A no-op when not interpreting."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter._patch_lang

    def patch_lang(fn):
        scope = original(fn)

        def tensor_range(arg1, arg2=None, step=None, **kwargs):
            start, end = (0, arg1) if arg2 is None else (arg1, arg2)
            return (interpreter._implicit_cvt(i) for i in range(int(start), int(end), int(step or 1)))

        scope.set_attr(tl, "range", tensor_range)
        return scope

    interpreter._patch_lang = patch_lang
    try:
        yield
    finally:
        interpreter._patch_lang = original


def load():
    """vLLM's top-k / top-p module, with working kernels (on CPU: needs TRITON_INTERPRET=1 before triton's import)."""
    from tests.e2e.mrv2_setup import vllm_triton_is_real

    with vllm_triton_is_real():
        sys.modules.pop(MODULE, None)
        return importlib.import_module(MODULE)


def vllm_keep(module, scaled: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None,
              device: str) -> torch.Tensor:
    """vLLM's kept set (bool ``[rows, vocab]``, on CPU): its kernel on the float32 logits already divided by the
    temperature, as its sampler calls it; ``top_k`` / ``top_p`` per row or None."""
    logits = scaled.to(device, torch.float32, copy=True).contiguous()  # masked in place
    rows, vocab = logits.shape
    tables = [logits.new_tensor(module._PERCENTILE_TO_STD_TABLE), logits.new_tensor(module._NORMAL_CDF_TO_SIGMA_TABLE)]
    with tensor_range_under_interpreter():
        module._topk_topp_kernel[(rows,)](
            logits, logits.stride(0), logits.new_empty((rows, vocab)), *tables,
            logits if top_k is None else top_k.int().to(device), logits if top_p is None else top_p.float().to(device),
            rows, VOCAB_SIZE=vocab, MASK_VALUE=float("-inf"), BLOCK_SIZE=256, BLOCK_SIZE_TRUNC=128,
            TOPK_ENABLED=top_k is not None, TOPP_ENABLED=top_p is not None, SPLIT_COVERS_PONLY=False)
    return (logits > float("-inf")).cpu()

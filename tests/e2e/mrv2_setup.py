"""Model Runner V2's sampling modules, importable in a test: on CUDA as they are; on CPU under Triton's interpreter.

vLLM's MRV2 kernels are Triton kernels written against ``vllm.triton_utils``, which swaps ``triton`` for a
placeholder when Triton has no active GPU driver (here). Under ``TRITON_INTERPRET=1`` (set by the root conftest)
they run on CPU tensors when ``vllm.triton_utils``'s ``triton``, ``tl`` and ``HAS_TRITON`` are the real ones while
the MRV2 modules are imported, and its ``tldevice`` offers a ``log1p`` the interpreter can run (libdevice's cannot
be interpreted). The swap lasts for those imports only; the modules that read ``HAS_TRITON`` at import time are
imported before it, so the rest of the session sees this CPU as it is. This is the tests' set-up only: the plugin
never runs MRV2 on CPU (vLLM uses the V1 runner there).
"""

from __future__ import annotations

import contextlib
import os
import sys
import types

import torch
import triton
import triton.language as tl

MRV2_UTILS = "vllm.v1.worker.gpu.spec_decode.rejection_sampler_utils"
# Modules whose kernels the tests run: imported with the placeholder, they would stay unusable.
KERNEL_MODULES = (MRV2_UTILS, "vllm.v1.worker.gpu.sample.gumbel", "vllm.v1.worker.gpu.input_batch",
                  "vllm.v1.worker.gpu.sample.states", "vllm.v1.worker.gpu.sample.sampler",
                  "vllm.v1.worker.gpu.spec_decode.rejection_sampler")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _log1p():
    # Defined at module level of a module that imports `tl` (the interpreter looks `tl` up in the globals).
    return triton.jit(_log1p_impl)


def _log1p_impl(x):
    return tl.log(1.0 + x)


# Modules that read ``HAS_TRITON`` when imported (the engine config, V1's top-k / top-p): imported before the swap,
# so that they keep this machine's truth for the rest of the test session.
CPU_TRUTH_MODULES = ("vllm.config", "vllm.engine.arg_utils", "vllm.v1.sample.sampler",
                     "vllm.v1.sample.rejection_sampler", "vllm.v1.outputs")


@contextlib.contextmanager
def vllm_triton_is_real():
    """While it lasts, ``vllm.triton_utils`` offers the real Triton (under the interpreter on CPU): modules imported
    inside define working kernels. The modules that read ``HAS_TRITON`` at import are imported before."""
    import importlib

    import vllm.triton_utils as triton_utils

    if triton_utils.HAS_TRITON:
        yield
        return
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("vLLM's kernels need a GPU or TRITON_INTERPRET=1 before triton is imported")
    for name in CPU_TRUTH_MODULES:
        importlib.import_module(name)
    saved = {name: getattr(triton_utils, name) for name in ("triton", "tl", "HAS_TRITON", "tldevice")}
    triton_utils.triton, triton_utils.tl, triton_utils.HAS_TRITON = triton, tl, True
    triton_utils.tldevice = types.SimpleNamespace(log1p=_log1p())
    try:
        yield
    finally:  # what imports later sees this CPU as it is
        for name, value in saved.items():
            setattr(triton_utils, name, value)


def _import_mrv2_interpreted() -> None:
    import importlib

    import vllm.triton_utils as triton_utils

    if triton_utils.HAS_TRITON:
        return
    stale = [name for name in KERNEL_MODULES if name in sys.modules]
    if stale:
        raise RuntimeError(f"MRV2 modules were imported before the interpreter set-up: {stale[:3]}")
    with vllm_triton_is_real():
        for name in KERNEL_MODULES:
            importlib.import_module(name)


tl_rand32 = None  # MRV2's Philox uniform (vllm/v1/worker/gpu/sample/gumbel.py), set by import_mrv2()


@triton.jit
def _uniforms_kernel(out_ptr, seed_ptr, expanded_idx_mapping_ptr, pos_ptr):
    row = tl.program_id(0)
    seed = tl.load(seed_ptr + tl.load(expanded_idx_mapping_ptr + row))
    tl.store(out_ptr + row, tl_rand32(seed, tl.load(pos_ptr + row), includes_zero=False))


def kernel_uniforms(seed, expanded_idx_mapping, pos) -> torch.Tensor:
    """The uniform MRV2's rejection kernels draw at each logits row, ``tl_rand32(seed, pos)``, as float64 on CPU."""
    out = torch.empty(pos.shape[0], dtype=torch.float32, device=pos.device)
    _uniforms_kernel[(out.numel(),)](out, seed, expanded_idx_mapping, pos)
    return out.cpu().double()


def import_mrv2() -> types.SimpleNamespace:
    """MRV2's ``rejection_sampler_utils`` and ``RejectionSampler``, and the plugin's MRV2 modules."""
    if not torch.cuda.is_available():
        _import_mrv2_interpreted()
    import importlib

    from vllm.v1.worker.gpu.sample import gumbel

    from ears_vllm.vllm_plugin import mrv2_rejection, mrv2_sampler

    global tl_rand32
    tl_rand32 = gumbel.tl_rand32

    return types.SimpleNamespace(
        utils=importlib.import_module(MRV2_UTILS),
        rejection_sampler=importlib.import_module("vllm.v1.worker.gpu.spec_decode.rejection_sampler"),
        ears=mrv2_rejection,
        sampler=mrv2_sampler,
    )

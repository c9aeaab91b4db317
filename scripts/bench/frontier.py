"""EARS on one speed-versus-quality curve with the other lossy verifiers, measured the same way.

Workloads: ``creative`` (the real pair, EAGLE-3 head with probabilistic drafting, k=3, T=0.9,
``data/prompts_creative.jsonl``), ``grounded`` (the real pair, ngram k=4, T=0.7, ``data/prompts_grounded.jsonl``),
``gsm`` (the bundled pair, draft_model k=3, T=1.0, the GSM-format task: accuracy). At each concurrency (the engine's
``max_num_seqs``, every prompt submitted at once), the arms on the same prompts and per-prompt seeds:

- ``standard`` (vLLM's sampler), the reference every other arm is paired with; ``standard seed+1`` (the same engine,
  other per-prompt seeds): the noise floor, what two lossless samples differ by on these prompts; ``ears`` at each
  alpha (``ears a=0.0``: the lossless control, the standard rule on the plugin's code path: its speed ratio is the
  plugin's own cost; its outputs are another lossless sample, since the plugin draws recovered and bonus tokens with
  other random numbers than vLLM's sampler), and with TV budgets (``ears_tv_budget`` per request;
  one engine, per-request settings); ``fly`` (vLLM 0.33's FLy, the plugin's experimental port) and ``typical``
  (typical acceptance) over their knobs, one engine each.

Measured per arm: output tokens/s (median of passes) and its ratio to standard, TPOT ratio to standard with a 95%
interval over prompts (concurrency 1), mean acceptance length; quality against standard with paired 95% intervals
over prompts: the target's log-likelihood per output token (T = 1, scored by the target), distinct-2, output
length, and task accuracy (gsm); the TV cost per output token where it is exact (EARS, typical; from the plugin's
counters; FLy's is not a per-token quantity). ``on_frontier``: no other arm of the same workload and concurrency is
at least as fast and at least as good (the size of the log-likelihood shift, or the accuracy change for gsm) and
better in one. ``in_noise``: every quality interval contains 0.

One CSV in the results schema (``scripts/harness/results.py``; benchmark ``frontier``, a run appended to
``results/frontier.csv``), one plot per workload (``results/frontier_<workload>.png``, named after the CSV).
``--arms`` runs a subset (the reference always runs). ``--replot`` recomputes the flags of every run of the CSV and
redraws the plots of one (``--run``; the file's first run by default).

Usage::

    python -m scripts.bench.frontier                                   # every workload, concurrency 1 and 4
    python -m scripts.bench.frontier --workloads creative --concurrency 1 --n 8 --max-tokens 48   # a quick look
    python -m scripts.bench.frontier --arms "standard seed+1,ears a=0.0"  # only the controls (and the reference)
    python -m scripts.bench.frontier --replot                          # redraw results/frontier_*.png
"""

from __future__ import annotations

import argparse
import math
import os
import statistics

from scripts import harness
from scripts.bench.bench_e2e_text import distinct2, load_prompts
from scripts.harness import engine, intervals, real_pair, results, task, timing

ROOT = harness.ROOT
WORKLOADS = {
    "creative": dict(data="data/prompts_creative.jsonl", method="eagle3", k=3, temperature=0.9, real=True),
    "grounded": dict(data="data/prompts_grounded.jsonl", method="ngram", k=4, temperature=0.7, real=True),
    "gsm": dict(data="data/gsm_synth_test.jsonl", method="draft_model", k=3, temperature=1.0, real=False),
}
EARS_ALPHAS = (0.0, 0.1, 0.3, 0.5, 1.0)
EARS_BUDGETS = ((1.0, 0.25), (1.0, 1.0), (1.0, 4.0), (0.5, 1.0))  # (alpha, TV budget per request)
FLY = ((1, 0.3), (2, 0.3), (1, 0.6))  # (window, entropy threshold); top-k 3, vLLM's default
TYPICAL = (0.2, 0.4, 1.0)  # posterior_alpha; posterior_threshold 0.95
NOISE_SEED_OFFSET = 7919  # the noise-floor arm's per-prompt seeds: seed + offset + i, disjoint from the reference's
REFERENCE = "standard"
COLUMNS = ["timestamp", "device", "load1", "workload", "concurrency", "method", "k", "temperature", "n_prompts",
           "max_tokens", "passes", "arm", "rule", "alpha", "tv_budget", "fly_window", "fly_threshold",
           "posterior_alpha", "output_tokens", "tokens_per_s", "speedup_vs_standard", "tpot_ratio_vs_standard",
           "tpot_ratio_lo", "tpot_ratio_hi", "mean_accept_len", "accept_rate", "tv_per_token", "tv_exact",
           "d_loglik", "d_loglik_lo", "d_loglik_hi", "d_distinct2", "d_distinct2_lo", "d_distinct2_hi", "d_len",
           "d_len_lo", "d_len_hi", "accuracy", "d_acc_pts", "d_acc_lo", "d_acc_hi", "on_frontier", "in_noise"]
METRICS = [c for c in COLUMNS[COLUMNS.index("output_tokens"):] if c != "tv_exact"]  # the rest: fixed or configuration


def engines(k: int, only: set[str] | None = None) -> list[dict]:
    """Every engine of a workload: its rule, knobs and runs (name, per-request settings, seed offset); ``only``: the
    arms to run besides the reference."""
    ears_runs = [dict(name=f"ears a={a}", alpha=a, xargs={}) for a in EARS_ALPHAS]
    ears_runs += [dict(name=f"ears a={a} B={b}", alpha=a, xargs={"ears_tv_budget": b}) for a, b in EARS_BUDGETS]
    out = [dict(rule="standard", knobs={}, runs=[dict(name=REFERENCE, alpha=None, xargs={}),
                                                  dict(name="standard seed+1", alpha=None, xargs={},
                                                       seed_offset=NOISE_SEED_OFFSET)]),
           dict(rule="ears", knobs={}, runs=ears_runs)]
    out += [dict(rule="fly", knobs={"fly_window_size": w, "fly_entropy_threshold": t},
                 runs=[dict(name=f"fly W={w} t={t}", alpha=None, xargs={})]) for w, t in FLY if w < k]
    out += [dict(rule="typical", knobs={"posterior_alpha": a},
                 runs=[dict(name=f"typical a={a}", alpha=None, xargs={})]) for a in TYPICAL]
    if only is not None:
        for eng in out:
            eng["runs"] = [r for r in eng["runs"] if r["name"] == REFERENCE or r["name"] in only]
        out = [eng for eng in out if eng["runs"]]
    return out


def run_workload(name: str, concurrency: int, args, csv_out) -> list[dict]:
    wl = WORKLOADS[name]
    k, temperature = wl["k"], wl["temperature"]
    if wl["real"]:
        target, draft, dtype, max_model_len = real_pair.TARGET, real_pair.DRAFT, real_pair.DTYPE, 1536
        prompts, golds, chat = load_prompts(os.path.join(ROOT, wl["data"]), args.n), None, True
    else:
        target, draft, dtype, max_model_len = (os.path.join(ROOT, "models", "target"),
                                               os.path.join(ROOT, "models", "draft"), "float32", 512)
        items = task.load_jsonl(os.path.join(ROOT, wl["data"]))[: args.n_gsm]
        prompts, golds, chat = [task.format_prompt(r["question"]) for r in items], [r["answer"] for r in items], False
    arms = []
    only = None if args.arms is None else set(args.arms.split(","))
    for eng in timing.progress(engines(k, only), desc=f"{name} c={concurrency}"):
        runs = [dict(r, temperature=temperature, seed=args.seed + r.get("seed_offset", 0), pass_idx=p)
                for p in range(args.passes) for r in eng["runs"]]
        spec = engine.speculative_config(wl["method"], eng["rule"], draft, k, knobs=eng["knobs"],
                                         draft_sample_method="probabilistic" if wl["method"] != "ngram" else None)
        job = dict(target=target, prompts=prompts, max_tokens=args.max_tokens, dtype=dtype, chat=chat,
                   return_ids=True, max_model_len=max_model_len, runs=runs, speculative_config=spec,
                   engine_kwargs=dict(max_num_seqs=concurrency))
        log = args.log and f"{args.log}.{name}.c{concurrency}.{eng['rule']}.{len(arms)}.log"
        res = engine.run_engine_job(job, log_path=log)
        for r in eng["runs"]:
            passes = [x for x in res["results"] if x["name"] == r["name"]]
            arms.append(dict(r, rule=eng["rule"], knobs=eng["knobs"], passes=passes))
    if wl["real"]:  # the target scores every arm's first-pass outputs (its log-likelihood per token, T = 1)
        pairs = [[p, o] for a in arms for p, o in zip(a["passes"][0]["prompt_ids"], a["passes"][0]["output_ids"])]
        scores = engine.run_engine_job(dict(target=target, prompts=[], max_tokens=1, runs=[], dtype=dtype,
                                            max_model_len=max_model_len, speculative_config=None, score=pairs),
                                       log_path=args.log and f"{args.log}.{name}.c{concurrency}.score.log")["scores"]
    for a in arms:
        first = a["passes"][0]
        n = len(prompts)
        if wl["real"]:
            a["loglik"] = [s / max(len(o), 1) for s, o in zip(scores[:n], first["output_ids"])]
            scores = scores[n:]
        else:
            a["correct"] = [float(task.score(t, g)) for t, g in zip(first["texts"], golds)]
        a["distinct2"] = [distinct2(o) for o in first["output_ids"]]
        a["length"] = [len(o) for o in first["output_ids"]]
        a["tpot"] = [statistics.fmean(p["tpot_s"][i] for p in a["passes"]) for i in range(n)]
        a["tps"] = statistics.median(sum(p["output_tokens"]) / p["wall_s"] for p in a["passes"])
        spec = {}
        for p in a["passes"]:
            for key, val in p["spec"].items():
                if not isinstance(val, list):
                    spec[key] = spec.get(key, 0) + val
        a["spec"], a["tokens"] = spec, sum(sum(p["output_tokens"]) for p in a["passes"])
    std = next(a for a in arms if a["name"] == REFERENCE)
    rows = []
    for a in arms:
        rows.append(row_of(a, std, name, concurrency, wl, args, prompts))
    mark_frontier(rows)
    for r in rows:
        csv_out.write(r)
    return rows


def row_of(a, std, name, concurrency, wl, args, prompts) -> dict:
    def paired(key):
        if key not in a:
            return float("nan"), float("nan"), float("nan")
        return intervals.mean_ci([x - y for x, y in zip(a[key], std[key])])

    logs = [math.log(b / x) for b, x in zip(std["tpot"], a["tpot"]) if b > 0 and x > 0]
    ratio = [math.exp(v) for v in intervals.mean_ci(logs)] if logs else [float("nan")] * 3
    ss = engine.spec_summary(a["spec"], wl["k"])
    tv_exact = a["rule"] in ("ears", "typical")
    d_ll, d_d2, d_len = paired("loglik"), paired("distinct2"), paired("length")
    acc, d_acc = float("nan"), (float("nan"),) * 3
    if "correct" in a:
        acc = statistics.fmean(a["correct"])
        d_acc = [100 * v for v in intervals.paired_diff_ci(a["correct"], std["correct"])]
    quality = [d for d in (d_ll, d_d2, d_len, d_acc) if d[0] == d[0]]
    return dict(
        timestamp=timing.timestamp(), device=timing.device_name("cpu"),
        load1=max(p["load1"] for p in a["passes"]), workload=name, concurrency=concurrency, method=wl["method"],
        k=wl["k"], temperature=wl["temperature"], n_prompts=len(prompts), max_tokens=args.max_tokens,
        passes=args.passes, arm=a["name"], rule=a["rule"], alpha="" if a.get("alpha") is None else a["alpha"],
        tv_budget=a["xargs"].get("ears_tv_budget", ""), fly_window=a["knobs"].get("fly_window_size", ""),
        fly_threshold=a["knobs"].get("fly_entropy_threshold", ""),
        posterior_alpha=a["knobs"].get("posterior_alpha", ""),
        output_tokens=a["tokens"], tokens_per_s=a["tps"], speedup_vs_standard=a["tps"] / std["tps"],
        tpot_ratio_vs_standard=ratio[0], tpot_ratio_lo=ratio[1], tpot_ratio_hi=ratio[2],
        mean_accept_len=ss["mean_accept_len"], accept_rate=ss["accept_rate"],
        tv_per_token=a["spec"].get(engine.EARS_TV_SUM, 0.0) / a["tokens"] if tv_exact else float("nan"),
        tv_exact=tv_exact, d_loglik=d_ll[0], d_loglik_lo=d_ll[1], d_loglik_hi=d_ll[2], d_distinct2=d_d2[0],
        d_distinct2_lo=d_d2[1], d_distinct2_hi=d_d2[2], d_len=d_len[0], d_len_lo=d_len[1], d_len_hi=d_len[2],
        accuracy=acc, d_acc_pts=d_acc[0], d_acc_lo=d_acc[1], d_acc_hi=d_acc[2], on_frontier=False,
        in_noise=all(lo <= 0 <= hi for _, lo, hi in quality) if a["name"] != REFERENCE else True)


def quality(r) -> float:
    """Higher is better. gsm: the accuracy change (points). Text: minus the size of the target log-likelihood shift:
    a lossy rule moves the outputs away from the target's own samples in either direction (with ngram drafts copied
    from the prompt, accepting more makes text the target finds *more* likely, and less diverse)."""
    if r["arm"] == REFERENCE:
        return 0.0
    return r["d_acc_pts"] if r["workload"] == "gsm" else -abs(r["d_loglik"])


def mark_frontier(rows) -> None:
    """Pareto front in (speed ratio up, ``quality`` up), within one workload and concurrency; standard is (1, 0)."""
    q = quality
    for r in rows:
        r["on_frontier"] = not any(
            o is not r and o["speedup_vs_standard"] >= r["speedup_vs_standard"] and q(o) >= q(r)
            and (o["speedup_vs_standard"] > r["speedup_vs_standard"] or q(o) > q(r)) for o in rows)


def plot(rows, path) -> None:
    plt = timing.pyplot()
    concs = sorted({r["concurrency"] for r in rows})
    fig, axes = plt.subplots(1, len(concs), figsize=(6 * len(concs), 4.5), squeeze=False)
    key, lo, hi = (("d_acc_pts", "d_acc_lo", "d_acc_hi") if rows[0]["workload"] == "gsm"
                   else ("d_loglik", "d_loglik_lo", "d_loglik_hi"))
    markers = {"standard": "s", "ears": "o", "fly": "^", "typical": "D"}
    for ax, c in zip(axes[0], concs):
        for rule, marker in markers.items():
            pts = [r for r in rows if r["concurrency"] == c and r["rule"] == rule]
            if not pts:
                continue
            xs = [0.0 if r["arm"] == REFERENCE else r[key] for r in pts]
            err = [[0.0 if r["arm"] == REFERENCE else r[key] - r[lo] for r in pts],
                   [0.0 if r["arm"] == REFERENCE else r[hi] - r[key] for r in pts]]
            ax.errorbar(xs, [r["speedup_vs_standard"] for r in pts], xerr=err, fmt=marker, capsize=2, label=rule,
                        alpha=0.8)
            for x, r in zip(xs, pts):
                ax.annotate(r["arm"].replace(rule, "").strip(), (x, r["speedup_vs_standard"]), fontsize=6)
        front = sorted((0.0 if r["arm"] == REFERENCE else r[key], r["speedup_vs_standard"])
                       for r in rows if r["concurrency"] == c and r["on_frontier"])
        ax.plot(*zip(*front), "k--", lw=0.8, label="frontier")
        ax.axvline(0, color="grey", lw=0.5)
        ax.axhline(1, color="grey", lw=0.5)
        ax.set_xlabel("accuracy change vs standard (pts)" if key == "d_acc_pts"
                      else "target log-lik. per token vs standard (nats)")
        ax.set_ylabel("output tokens/s vs standard")
        ax.set_title(f"{rows[0]['workload']}, concurrency {c}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{rows[0]['device']} | {rows[0]['method']} k={rows[0]['k']} T={rows[0]['temperature']}", fontsize=8)
    timing.save_figure(fig, path)


def plot_path(csv_path: str, workload: str) -> str:
    return f"{os.path.splitext(csv_path)[0]}_{workload}.png"


def replot(path: str, run: str | None = None) -> None:
    rows = results.read(path)
    run = run or (rows[0]["run"] if rows else None)
    for r in rows:
        for key in COLUMNS:
            v = r.get(key, "")
            if key in ("concurrency", "k", "n_prompts", "max_tokens", "passes", "output_tokens"):
                r[key] = int(v)
            elif key in ("tv_exact", "on_frontier", "in_noise"):
                r[key] = v == "True"
            elif key not in ("timestamp", "device", "workload", "method", "arm", "rule", "benchmark", "run") \
                    and v != "":
                r[key] = float(v)
            elif v == "" and key.startswith("d_"):
                r[key] = float("nan")
    groups = {}
    for r in rows:
        groups.setdefault((r["benchmark"], r["run"], r["workload"], r["concurrency"]), []).append(r)
    for group in groups.values():
        mark_frontier(group)
    results.write_records(path, rows, COLUMNS, METRICS)
    drawn = [r for r in rows if r["run"] == run]
    for name in dict.fromkeys(r["workload"] for r in drawn):
        plot([r for r in drawn if r["workload"] == name], plot_path(path, name))
    print(f"[frontier] rewrote {path} and the plots of run {run}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="creative,grounded,gsm")
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--n", type=int, default=16, help="prompts per real-pair workload")
    ap.add_argument("--n-gsm", type=int, default=250, help="problems of the gsm workload")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "frontier.csv"))
    ap.add_argument("--append", action="store_true", help="no effect: a run is always appended (old command lines)")
    ap.add_argument("--log", default=None, help="prefix for engine logs")
    ap.add_argument("--arms", default=None, help="comma-separated arm names to run besides the reference")
    ap.add_argument("--replot", action="store_true", help="recompute the frontier flags of --out and redraw its plots")
    ap.add_argument("--run", help="--replot: the run whose plots to draw (default: the file's first)")
    args = ap.parse_args(argv)
    if args.replot:
        return replot(args.out, args.run and results.one_run(args.out, args.run, "frontier"))
    csv_out = results.Writer(args.out, "frontier", COLUMNS, METRICS)
    for name in args.workloads.split(","):
        rows = []
        for c in (int(x) for x in args.concurrency.split(",")):
            new = run_workload(name, c, args, csv_out)
            rows += new
            for r in new:
                print(f"{name} c={c} {r['arm']:>20}: {r['speedup_vs_standard']:.2f}x, acc len "
                      f"{r['mean_accept_len']:.2f}, TV/tok {r['tv_per_token']:.3f}, d loglik {r['d_loglik']:+.3f} "
                      f"[{r['d_loglik_lo']:+.3f}, {r['d_loglik_hi']:+.3f}], d acc {r['d_acc_pts']:+.1f}, "
                      f"frontier {r['on_frontier']}, in noise {r['in_noise']}", flush=True)
        plot(rows, plot_path(args.out, name))
    print(f"[frontier] wrote {args.out}")


if __name__ == "__main__":
    main()

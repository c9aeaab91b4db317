"""End-to-end throughput and quality of EARS in the real vLLM engine (offline ``LLM``), against standard and none.

Arms, all on the same prompts (the task's held-out split, ``scripts.harness.task.format_prompt``) with the same
per-prompt seeds: no speculation; for each method (ngram, draft_model): vLLM's standard rejection sampler, and
EARS at each alpha (one engine per (method, sampler); EARS alphas are set per request through
``SamplingParams.extra_args["ears_alpha"]``); at each temperature. Engines run one at a time, each in its own
process (``scripts.harness.engine.run_engine_job``), with a warm-up pass excluded from the timings.

Measured per arm: output tokens/s (output tokens / wall time of the pass; with ``--passes P`` the median of P
passes run round-robin over the arms of an engine, min/max kept; ``wall_s`` is the first pass's), mean acceptance length
(1 + accepted / drafts, vLLM's definition, from the engine's spec-decode counters) and per-position acceptance
rates, accuracy on the task (``scripts.harness.task.score``) and its change in points vs the standard arm of the same
method and temperature (paired 95% interval) -- the quality cost -- and, for EARS arms, the share of accepted draft
tokens that only the tolerance accepted (the plugin's ``vllm:ears_num_tolerance_accepted_tokens``) and the mean target
uncertainty h; ``speedup_vs_ears_alpha0`` is the same-engine control (alpha 0 = the standard rule on EARS's path).

Usage::

    python -m scripts.bench.bench_e2e --quick                      # draft_model, T=1, alpha 0.3: 3 engines
    python -m scripts.bench.bench_e2e --n 64                       # the full matrix: 5 engines
    python -m scripts.bench.bench_e2e --target DIR --draft DIR --data my_gsm.jsonl

CSV: one record per arm in the results schema (``scripts/harness/results.py``), a run appended to
``results/bench_e2e.csv`` (benchmark ``bench_e2e``; the creative / grounded workloads write ``bench_e2e_text``
records to the same file). ``--quick`` writes to ``results/quick/`` (ignored by git, replaced) unless ``--out`` is
given.
"""

import argparse
import os
import sys

from scripts import harness
from scripts.harness import engine, intervals, results, task, timing

ROOT = harness.ROOT

MAX_K = 8
COLUMNS = (["timestamp", "device", "load1", "target", "draft", "data", "n_prompts", "max_tokens", "k", "method",
            "sampler", "alpha", "temperature", "output_tokens", "wall_s", "tokens_per_s", "tokens_per_s_min",
            "tokens_per_s_max", "passes", "speedup_vs_standard",
            "speedup_vs_nospec", "mean_accept_len", "accept_rate", "num_drafts"]
           + [f"accept_pos{i}" for i in range(1, MAX_K + 1)]
           + ["tolerance_accepted", "tolerance_share", "mean_uncertainty", "mean_tv_cost",
              "speedup_vs_ears_alpha0",
              "accuracy", "delta_pts_vs_standard", "delta_lo", "delta_hi", "startup_s"])
METRICS = COLUMNS[COLUMNS.index("output_tokens"):]  # but passes; the rest: fixed or configuration (results.py)
METRICS.remove("passes")


def main(argv=None):
    ap = argparse.ArgumentParser(description="EARS end-to-end benchmark in vLLM (see module docstring)")
    ap.add_argument("--workload", choices=("gsm", "creative", "grounded"), default="gsm",
                    help="gsm: the bundled pair on the GSM-format task (accuracy); creative / grounded: the real "
                         "pair (bench_e2e_text.py)")
    ap.add_argument("--target", default=None, help="default models/target (gsm) or the real target")
    ap.add_argument("--draft", default=None, help="default models/draft (gsm) or models/smollm2-eagle3")
    ap.add_argument("--concurrency", default="1,4,16", help="creative / grounded: engine max_num_seqs values")
    ap.add_argument("--n-per-concurrency", default="16,32,48", help="creative / grounded: prompts per concurrency")
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "gsm_synth_test.jsonl"))
    ap.add_argument("--n", type=int, default=64, help="prompts (first N problems)")
    ap.add_argument("--methods", default=None, help="default ngram,draft_model (--quick: draft_model)")
    ap.add_argument("--samplers", default="none,standard,ears", help="subset of none,standard,ears")
    ap.add_argument("--alphas", default=None, help="default 0,0.1,0.2,0.3,0.5 (--quick: 0.3)")
    ap.add_argument("--temperatures", default=None, help="default 0,0.7,1.0 (--quick: 1.0)")
    ap.add_argument("--k", type=int, default=None, help="num_speculative_tokens (default 3 gsm, 4 otherwise)")
    ap.add_argument("--draft-sample-method", choices=("greedy", "probabilistic"), default=None)
    ap.add_argument("--max-tokens", type=int, default=None, help="default 160 (gsm), 128 otherwise")
    ap.add_argument("--max-model-len", type=int, default=None, help="default 512 (gsm), 1536 otherwise")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="creative / grounded: the engines' dtype (default: the real pair's, float32)")
    ap.add_argument("--compile", action="store_true",
                    help="creative / grounded: let vLLM compile the model (its CPU default, torch.compile with "
                         "inductor) instead of enforce_eager")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=1,
                    help="timed passes per arm inside each engine, round-robin over the arms (same prompts and "
                         "seeds every pass); tokens/s = median over passes, accuracy and texts from the first")
    ap.add_argument("--quick", action="store_true",
                    help="draft_model, T=1.0, alpha 0.3, 8 prompts (explicit --methods/--alphas/--temperatures win)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--log", default=None, help="prefix for engine logs")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    if args.workload != "gsm":
        from scripts.bench import bench_e2e_text

        args.max_tokens = args.max_tokens or 128
        args.max_model_len = args.max_model_len or 1536
        if args.quick:
            args.concurrency, args.n_per_concurrency, args.passes = "1", "4", 1
            args.max_tokens, args.alphas = min(args.max_tokens, 32), args.alphas or "0.3"
        return bench_e2e_text.run(args)
    args.target = args.target or os.path.join(ROOT, "models", "target")
    args.draft = args.draft or os.path.join(ROOT, "models", "draft")
    args.k = args.k or 3
    args.max_tokens = args.max_tokens or 160
    args.max_model_len = args.max_model_len or 512
    defaults = ("draft_model", "0.3", "1.0") if args.quick else ("ngram,draft_model", "0,0.1,0.2,0.3,0.5", "0,0.7,1.0")
    args.methods, args.alphas, args.temperatures = (given or default for given, default in zip(
        (args.methods, args.alphas, args.temperatures), defaults))
    if args.quick:
        args.n, args.max_tokens = min(args.n, 8), min(args.max_tokens, 96)
    if args.out is None:
        args.out = os.path.join(ROOT, "results", "quick" if args.quick else "", "bench_e2e.csv")
    methods = args.methods.split(",")
    samplers = args.samplers.split(",")
    alphas = [float(a) for a in args.alphas.split(",")]
    temps = [float(t) for t in args.temperatures.split(",")]
    items = task.load_jsonl(args.data)[: args.n]
    prompts = [task.format_prompt(r["question"]) for r in items]
    golds = [r["answer"] for r in items]

    def repeat(runs):  # round-robin: pass 0 of every arm, then pass 1, ... (slow drifts in load hit all arms)
        return [dict(r, pass_idx=p) for p in range(args.passes) for r in runs]

    engines = []
    if "none" in samplers:
        engines.append(("none", "none", [dict(temperature=t, alpha=None, seed=args.seed) for t in temps]))
    for m in methods:
        if "standard" in samplers:
            engines.append((m, "standard", [dict(temperature=t, alpha=None, seed=args.seed) for t in temps]))
        if "ears" in samplers:
            engines.append((m, "ears", [dict(temperature=t, alpha=a, seed=args.seed) for t in temps for a in alphas]))
    arm_results = []
    for method, sampler, runs in timing.progress(engines, desc="engines"):
        job = dict(target=args.target, prompts=prompts, max_tokens=args.max_tokens, runs=repeat(runs),
                   max_model_len=args.max_model_len,
                   speculative_config=engine.speculative_config(method, sampler, args.draft, args.k,
                                                                draft_sample_method=args.draft_sample_method))
        res = engine.run_engine_job(job, log_path=args.log and f"{args.log}.{method}.{sampler}.log")
        for run in runs:
            same = [r for r in res["results"]
                    if r["temperature"] == run["temperature"] and r["alpha"] == run["alpha"]]
            tps = sorted(sum(r["output_tokens"]) / r["wall_s"] for r in same)
            first = next(r for r in same if r.get("pass_idx", 0) == 0)
            spec = {}
            for r in same:  # counters summed over passes (rates and means are ratios of sums)
                for key, val in r["spec"].items():
                    if isinstance(val, list):
                        acc = spec.setdefault(key, [0] * len(val))
                        spec[key] = [a + b for a, b in zip(acc + [0] * (len(val) - len(acc)), val)]
                    else:
                        spec[key] = spec.get(key, 0) + val
            med = tps[len(tps) // 2] if len(tps) % 2 else (tps[len(tps) // 2 - 1] + tps[len(tps) // 2]) / 2
            arm_results.append(dict(first, method=method, sampler=sampler, startup_s=res["startup_s"], spec=spec,
                                    tps_median=med, tps_min=tps[0], tps_max=tps[-1], passes=len(tps),
                                    load1=max(r["load1"] for r in same)))

    def find(method, sampler, t, alpha=None):
        return next((r for r in arm_results if r["method"] == method and r["sampler"] == sampler
                     and r["temperature"] == t and (alpha is None or r["alpha"] == alpha)), None)

    device = timing.device_name("cpu")
    csv_out = results.Writer(args.out, "bench_e2e", COLUMNS, METRICS, replace=args.quick)
    rows = []
    for r in arm_results:
        ok = [task.score(x, g) for x, g in zip(r["texts"], golds)]
        tps = r["tps_median"]
        std, nos = find(r["method"], "standard", r["temperature"]), find("none", "none", r["temperature"])
        # same-engine control: EARS alpha 0 (the standard rule on EARS's code path, same process, same prompts)
        a0 = find(r["method"], "ears", r["temperature"], 0.0) if r["sampler"] == "ears" else None
        std_ok = [task.score(x, g) for x, g in zip(std["texts"], golds)] if std else None
        d, dlo, dhi = intervals.paired_diff_ci(ok, std_ok) if std else (float("nan"),) * 3
        ss = engine.spec_summary(r["spec"], args.k) if r["sampler"] != "none" else engine.spec_summary({}, args.k)
        row = dict(timestamp=timing.timestamp(), device=device, load1=r["load1"], target=args.target,
                   draft=args.draft if r["method"] == "draft_model" else "", data=args.data, n_prompts=len(prompts),
                   max_tokens=args.max_tokens, k=args.k, method=r["method"], sampler=r["sampler"],
                   alpha=r["alpha"] if r["alpha"] is not None else "", temperature=r["temperature"],
                   output_tokens=sum(r["output_tokens"]), wall_s=r["wall_s"], tokens_per_s=tps,
                   speedup_vs_standard=tps / std["tps_median"] if std else float("nan"),
                   speedup_vs_nospec=tps / nos["tps_median"] if nos else float("nan"),
                   speedup_vs_ears_alpha0=tps / a0["tps_median"] if a0 else float("nan"),
                   tokens_per_s_min=r["tps_min"], tokens_per_s_max=r["tps_max"], passes=r["passes"],
                   mean_accept_len=ss["mean_accept_len"], accept_rate=ss["accept_rate"], num_drafts=ss["num_drafts"],
                   tolerance_accepted=ss["tolerance_accepted"] if r["sampler"] == "ears" else float("nan"),
                   tolerance_share=ss["tolerance_share"], mean_uncertainty=ss["mean_uncertainty"],
                   mean_tv_cost=ss["mean_tv_cost"],
                   accuracy=sum(ok) / len(ok), delta_pts_vs_standard=100 * d, delta_lo=100 * dlo,
                   delta_hi=100 * dhi, startup_s=r["startup_s"])
        for j in range(MAX_K):
            row[f"accept_pos{j + 1}"] = ss["per_pos"][j] if j < len(ss["per_pos"]) else float("nan")
        csv_out.write(row)
        rows.append(row)
    print_table(rows)
    if not args.no_plots:
        for path in plot(rows, args.out):
            print(f"[bench_e2e] wrote {path}", file=sys.stderr)
    print(f"[bench_e2e] wrote {args.out} ({len(rows)} rows)", file=sys.stderr)
    return rows


def print_table(rows):
    print(f"{'method':>11} {'sampler':>8} {'alpha':>5} {'T':>4} | {'tok/s':>7} | {'x std':>6} | {'x none':>6} | "
          f"{'acc len':>7} | {'tol %':>5} | {'load':>4} | {'accuracy':>8} | {'d pts vs std (95% CI)':>24}")
    for r in rows:
        print(f"{r['method']:>11} {r['sampler']:>8} {str(r['alpha']):>5} {r['temperature']:>4} | "
              f"{r['tokens_per_s']:7.1f} | {r['speedup_vs_standard']:6.3f} | {r['speedup_vs_nospec']:6.3f} | "
              f"{r['mean_accept_len']:7.3f} | {100 * r['tolerance_share']:5.1f} | {r['load1']:4.1f} | "
              f"{100 * r['accuracy']:7.1f}% | "
              f"{r['delta_pts_vs_standard']:+6.2f} [{r['delta_lo']:+6.2f}, {r['delta_hi']:+6.2f}]")


def plot(rows, out_csv):
    """Per method: tokens/s, acceptance length and accuracy change vs alpha, one line per temperature."""
    ears = [r for r in rows if r["sampler"] == "ears"]
    if not ears:
        return []
    plt = timing.pyplot()
    methods = sorted({r["method"] for r in ears})
    temps = sorted({r["temperature"] for r in ears})
    fig, axes = plt.subplots(len(methods), 3, figsize=(13, 3.6 * len(methods)), squeeze=False)
    for mi, m in enumerate(methods):
        for ti, t in enumerate(temps):
            pts = sorted((r["alpha"], r) for r in ears if r["method"] == m and r["temperature"] == t)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            color = f"C{ti}"
            axes[mi][0].plot(xs, [p[1]["tokens_per_s"] for p in pts], "o-", color=color, label=f"EARS T={t}")
            axes[mi][1].plot(xs, [p[1]["mean_accept_len"] for p in pts], "o-", color=color, label=f"EARS T={t}")
            axes[mi][2].errorbar(xs, [p[1]["delta_pts_vs_standard"] for p in pts],
                                 yerr=[[p[1]["delta_pts_vs_standard"] - p[1]["delta_lo"] for p in pts],
                                       [p[1]["delta_hi"] - p[1]["delta_pts_vs_standard"] for p in pts]],
                                 fmt="o-", color=color, capsize=3, label=f"T={t}")
            for r in rows:
                if r["temperature"] != t:
                    continue
                if r["method"] == m and r["sampler"] == "standard":
                    axes[mi][0].axhline(r["tokens_per_s"], color=color, ls="--", lw=0.8)
                    axes[mi][1].axhline(r["mean_accept_len"], color=color, ls="--", lw=0.8)
                if r["sampler"] == "none":
                    axes[mi][0].axhline(r["tokens_per_s"], color=color, ls=":", lw=0.8)
        axes[mi][2].axhline(-0.5, color="k", ls="--", lw=0.8, label="-0.5 pt bound")
        axes[mi][2].axhline(0, color="k", lw=0.5)
        for ax, yl in zip(axes[mi], ("output tokens/s", "mean acceptance length", "accuracy change (pts)")):
            ax.set_xlabel("alpha")
            ax.set_ylabel(yl)
            ax.set_title(f"{m} (dashed: standard, dotted: no spec)" if yl.startswith("output") else m, fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"{rows[0]['device']} | {os.path.basename(str(rows[0]['target']))} | "
                 f"{rows[0]['n_prompts']} prompts, k={rows[0]['k']}", fontsize=9)
    return [timing.save_figure(fig, os.path.splitext(out_csv)[0] + ".png")]


if __name__ == "__main__":
    main()

"""End to end on the real pair (SmolLM2-135M-Instruct + its distilled draft): speed and quality cost of EARS on the
workloads it exists for. Run through ``python -m scripts.bench.bench_e2e --workload creative|grounded`` (this module
holds that job).

Workloads (versioned prompt files, chat template applied):

- ``creative``: ``data/prompts_creative.jsonl`` (held-out open-ended chat / creative prompts), T = 0.9, the
  EAGLE-3 draft ``models/smollm2-eagle3`` with probabilistic drafting.
- ``grounded``: ``data/prompts_grounded.jsonl`` (rewrite / summarise / explain a passage given in the prompt), T = 0.7,
  ngram drafting (prompt lookup 2-4).

Arms, at each concurrency (the engine's ``max_num_seqs``; every prompt submitted at once, so the engine keeps that
many requests running): no speculation; vLLM's standard rejection sampler; EARS at each alpha (one engine,
per-request alpha). Same prompts and per-prompt seeds in every arm; ``--passes`` timed passes per arm, round-robin
inside each engine; engines one at a time, each in its own process, warm-up excluded.

Speed: output tokens/s (median of passes; min-max), TPOT (per request, engine timestamps; mean), mean acceptance
length. At concurrency 1 every request runs alone, so the per-prompt ratio of TPOTs (mean over passes) gives the
speed ratio with a 95% interval over prompts (geometric mean): ``tpot_ratio_vs_*``.

Quality, each against the standard arm on the same prompts and seeds, with paired 95% intervals over prompts: the
target's mean log-likelihood per output token (T = 1, scored by the target itself from prompt logprobs, one extra
engine), distinct-2 (unique / total bigrams of an output), output length; and the exact expected per-token TV cost
of the EARS step from the plugin's counters (per decided draft and per output token).

CSV: one record per arm (benchmark ``bench_e2e_text``, results schema: ``scripts/harness/results.py``), a run
appended to ``results/bench_e2e.csv`` (``--quick``: ``results/quick/``, replaced); the plot goes next to it,
``<csv stem>_<workload>.png``.
"""

from __future__ import annotations

import math
import os
import statistics

from scripts import harness
from scripts.harness import engine, intervals, real_pair, results, timing

ROOT = harness.ROOT
WORKLOADS = {
    "creative": dict(data="data/prompts_creative.jsonl", method="eagle3", temperature=0.9),
    "grounded": dict(data="data/prompts_grounded.jsonl", method="ngram", temperature=0.7),
}
REAL_TARGET, REAL_DRAFT, DTYPE = real_pair.TARGET, real_pair.DRAFT, real_pair.DTYPE
COLUMNS = ["timestamp", "device", "load1", "workload", "target", "draft", "method", "k", "temperature",
           "concurrency", "n_prompts", "max_tokens", "passes", "sampler", "alpha", "output_tokens",
           "tokens_per_s", "tokens_per_s_min", "tokens_per_s_max", "speedup_vs_standard", "speedup_vs_nospec",
           "tpot_ms", "tpot_ratio_vs_standard", "tpot_ratio_lo", "tpot_ratio_hi", "tpot_ratio_vs_nospec",
           "mean_accept_len", "accept_rate", "tolerance_share", "mean_uncertainty", "tv_cost_per_draft",
           "tv_cost_per_token", "loglik_per_token", "d_loglik", "d_loglik_lo", "d_loglik_hi", "distinct2",
           "d_distinct2", "d_distinct2_lo", "d_distinct2_hi", "mean_len", "d_len", "d_len_lo", "d_len_hi",
           "startup_s", "dtype", "compiled"]
METRICS = COLUMNS[COLUMNS.index("output_tokens"):COLUMNS.index("dtype")]  # the rest: fixed or configuration


def distinct2(ids: list[int]) -> float:
    pairs = list(zip(ids, ids[1:]))
    return len(set(pairs)) / len(pairs) if pairs else float("nan")


def load_prompts(path: str, n: int) -> list[str]:
    import json

    with open(path) as f:
        return [json.loads(line)["prompt"] for line in f if line.strip()][:n]


def run(args) -> list[dict]:
    wl = WORKLOADS[args.workload]
    target = args.target or REAL_TARGET
    draft = args.draft or REAL_DRAFT
    temperature = float(args.temperatures) if args.temperatures else wl["temperature"]
    alphas = [float(a) for a in (args.alphas or "0.1,0.2,0.3,0.5").split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    n_per = [int(n) for n in args.n_per_concurrency.split(",")]
    if len(n_per) != len(concurrencies):
        raise SystemExit("bench_e2e: --n-per-concurrency needs one count per --concurrency value")
    method = args.methods or wl["method"]
    samplers = args.samplers.split(",")
    k = args.k if args.k is not None else 4
    dtype = args.dtype or DTYPE
    eager = not args.compile
    out_csv = args.out or os.path.join(ROOT, "results", "quick" if args.quick else "", "bench_e2e.csv")
    csv_out = results.Writer(out_csv, "bench_e2e_text", COLUMNS, METRICS, replace=args.quick)
    device = timing.device_name("cpu")
    rows = []
    for conc, n in zip(concurrencies, n_per):
        prompts = load_prompts(os.path.join(ROOT, wl["data"]), n)
        arms = []  # (sampler, [runs])
        if "none" in samplers:
            arms.append(("none", [dict(temperature=temperature, alpha=None, seed=args.seed)]))
        if "standard" in samplers:
            arms.append(("standard", [dict(temperature=temperature, alpha=None, seed=args.seed)]))
        if "ears" in samplers:
            arms.append(("ears", [dict(temperature=temperature, alpha=a, seed=args.seed) for a in alphas]))
        arm_results = []
        for sampler, runs in timing.progress(arms, desc=f"{args.workload} c={conc}"):
            job = dict(target=target, prompts=prompts, max_tokens=args.max_tokens, dtype=dtype, chat=True,
                       enforce_eager=eager,
                       return_ids=True, max_model_len=args.max_model_len,
                       runs=[dict(r, pass_idx=p) for p in range(args.passes) for r in runs],
                       engine_kwargs=dict(max_num_seqs=conc),
                       speculative_config=engine.speculative_config(method, sampler, draft, k,
                                                                    draft_sample_method="probabilistic"
                                                                    if method != "ngram" else None))
            res = engine.run_engine_job(job, log_path=args.log and f"{args.log}.{args.workload}.c{conc}.{sampler}.log")
            for r in runs:
                same = [x for x in res["results"] if x["alpha"] == r["alpha"]]
                arm_results.append(dict(sampler=sampler, alpha=r["alpha"], passes=same, startup_s=res["startup_s"]))
        # The target scores every arm's first-pass outputs (its log-likelihood of each output token, T = 1).
        pairs = [[p, o] for a in arm_results
                 for p, o in zip(a["passes"][0]["prompt_ids"], a["passes"][0]["output_ids"])]
        scores = engine.run_engine_job(dict(target=target, prompts=[], max_tokens=1, runs=[], dtype=DTYPE,
                                            max_model_len=args.max_model_len, speculative_config=None, score=pairs),
                                       log_path=args.log and f"{args.log}.{args.workload}.c{conc}.score.log")["scores"]
        for a in arm_results:
            first = a["passes"][0]
            a["loglik"] = [s / max(len(o), 1) for s, o in zip(scores[:len(prompts)], first["output_ids"])]
            scores = scores[len(prompts):]
            a["distinct2"] = [distinct2(o) for o in first["output_ids"]]
            a["length"] = [len(o) for o in first["output_ids"]]
            # per prompt: TPOT averaged over passes
            a["tpot"] = [statistics.fmean(p["tpot_s"][i] for p in a["passes"]) for i in range(len(prompts))]
            tps = sorted(sum(p["output_tokens"]) / p["wall_s"] for p in a["passes"])
            a["tps"] = statistics.median(tps), tps[0], tps[-1]
            spec = {}
            for p in a["passes"]:
                for key, val in p["spec"].items():
                    if not isinstance(val, list):
                        spec[key] = spec.get(key, 0) + val
            a["spec"] = spec
            a["tokens"] = sum(sum(p["output_tokens"]) for p in a["passes"])
        std = next((a for a in arm_results if a["sampler"] == "standard"), None)
        nos = next((a for a in arm_results if a["sampler"] == "none"), None)

        def tpot_ratio(base, arm):  # geometric mean over prompts of base TPOT / arm TPOT, 95% interval
            if base is None:
                return float("nan"), float("nan"), float("nan")
            logs = [math.log(b / x) for b, x in zip(base["tpot"], arm["tpot"]) if b > 0 and x > 0]
            m, lo, hi = intervals.mean_ci(logs)
            return math.exp(m), math.exp(lo), math.exp(hi)

        def paired(key, arm, base):  # mean paired difference arm - base over prompts, 95% interval
            if base is None:
                return float("nan"), float("nan"), float("nan")
            return intervals.mean_ci([x - y for x, y in zip(arm[key], base[key])])

        for a in arm_results:
            ss = engine.spec_summary(a["spec"], k) if a["sampler"] != "none" else engine.spec_summary({}, k)
            verified = a["spec"].get(engine.EARS_VERIFIED, 0)
            tv_sum = a["spec"].get(engine.EARS_TV_SUM, 0.0)
            r_std, r_lo, r_hi = tpot_ratio(std, a)
            d_ll, d_distinct, d_len = (paired(key, a, std) for key in ("loglik", "distinct2", "length"))
            row = dict(timestamp=timing.timestamp(), device=device, load1=max(p["load1"] for p in a["passes"]),
                       workload=args.workload, target=os.path.relpath(target, ROOT),
                       draft=os.path.relpath(draft, ROOT) if method != "ngram" else "", method=method, k=k,
                       temperature=temperature, concurrency=conc, n_prompts=len(prompts), max_tokens=args.max_tokens,
                       passes=args.passes, sampler=a["sampler"], alpha="" if a["alpha"] is None else a["alpha"],
                       output_tokens=a["tokens"], tokens_per_s=a["tps"][0], tokens_per_s_min=a["tps"][1],
                       tokens_per_s_max=a["tps"][2],
                       speedup_vs_standard=a["tps"][0] / std["tps"][0] if std else float("nan"),
                       speedup_vs_nospec=a["tps"][0] / nos["tps"][0] if nos else float("nan"),
                       tpot_ms=1e3 * statistics.fmean(a["tpot"]), tpot_ratio_vs_standard=r_std,
                       tpot_ratio_lo=r_lo, tpot_ratio_hi=r_hi, tpot_ratio_vs_nospec=tpot_ratio(nos, a)[0],
                       mean_accept_len=ss["mean_accept_len"], accept_rate=ss["accept_rate"],
                       tolerance_share=ss["tolerance_share"] if a["sampler"] == "ears" else float("nan"),
                       mean_uncertainty=ss["mean_uncertainty"],
                       tv_cost_per_draft=tv_sum / verified if verified else float("nan"),
                       tv_cost_per_token=tv_sum / a["tokens"] if a["sampler"] == "ears" else float("nan"),
                       loglik_per_token=statistics.fmean(a["loglik"]), d_loglik=d_ll[0], d_loglik_lo=d_ll[1],
                       d_loglik_hi=d_ll[2], distinct2=statistics.fmean(a["distinct2"]), d_distinct2=d_distinct[0],
                       d_distinct2_lo=d_distinct[1], d_distinct2_hi=d_distinct[2],
                       mean_len=statistics.fmean(a["length"]), d_len=d_len[0], d_len_lo=d_len[1], d_len_hi=d_len[2],
                       startup_s=a["startup_s"], dtype=dtype, compiled=not eager)
            csv_out.write(row)
            rows.append(row)
        print_table([r for r in rows if r["concurrency"] == conc])
    if not args.no_plots:
        print(f"[bench_e2e] wrote {plot(rows, out_csv)}")
    print(f"[bench_e2e] wrote {out_csv} ({len(rows)} rows)")
    return rows


def print_table(rows):
    print(f"{'c':>3} {'sampler':>8} {'alpha':>5} | {'tok/s':>7} | {'x std':>5} | {'x none':>6} | "
          f"{'TPOT x std (95% CI)':>21} | {'acc len':>7} | {'TV/draft':>8} | {'d loglik/tok (95% CI)':>25} | "
          f"{'d distinct-2':>12} | {'load':>4}")
    for r in rows:
        print(f"{r['concurrency']:>3} {r['sampler']:>8} {str(r['alpha']):>5} | {r['tokens_per_s']:7.1f} | "
              f"{r['speedup_vs_standard']:5.2f} | {r['speedup_vs_nospec']:6.2f} | "
              f"{r['tpot_ratio_vs_standard']:5.2f} [{r['tpot_ratio_lo']:5.2f}, {r['tpot_ratio_hi']:5.2f}] | "
              f"{r['mean_accept_len']:7.3f} | {r['tv_cost_per_draft']:8.4f} | "
              f"{r['d_loglik']:+7.3f} [{r['d_loglik_lo']:+7.3f}, {r['d_loglik_hi']:+7.3f}] | "
              f"{r['d_distinct2']:+12.3f} | {r['load1']:4.1f}")


def plot(rows, out_csv) -> str:
    """Per concurrency: tokens/s, acceptance length and log-likelihood shift vs alpha (standard and none dashed)."""
    plt = timing.pyplot()
    concs = sorted({r["concurrency"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ci, c in enumerate(concs):
        color = f"C{ci}"
        ears = sorted((float(r["alpha"]), r) for r in rows if r["concurrency"] == c and r["sampler"] == "ears")
        xs = [a for a, _ in ears]
        axes[0].plot(xs, [r["tokens_per_s"] for _, r in ears], "o-", color=color, label=f"EARS c={c}")
        axes[1].plot(xs, [r["mean_accept_len"] for _, r in ears], "o-", color=color, label=f"EARS c={c}")
        axes[2].errorbar(xs, [r["d_loglik"] for _, r in ears],
                         yerr=[[r["d_loglik"] - r["d_loglik_lo"] for _, r in ears],
                               [r["d_loglik_hi"] - r["d_loglik"] for _, r in ears]],
                         fmt="o-", color=color, capsize=3, label=f"c={c}")
        for r in rows:
            if r["concurrency"] == c and r["sampler"] == "standard":
                axes[0].axhline(r["tokens_per_s"], color=color, ls="--", lw=0.8)
                axes[1].axhline(r["mean_accept_len"], color=color, ls="--", lw=0.8)
            if r["concurrency"] == c and r["sampler"] == "none":
                axes[0].axhline(r["tokens_per_s"], color=color, ls=":", lw=0.8)
    axes[2].axhline(0, color="k", lw=0.5)
    for ax, yl in zip(axes, ("output tokens/s (dashed: standard, dotted: none)", "mean acceptance length",
                             "target log-lik./token vs standard")):
        ax.set_xlabel("alpha")
        ax.set_ylabel(yl, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{rows[0]['workload']} | {rows[0]['device']} | {rows[0]['target']} | {rows[0]['method']} k="
                 f"{rows[0]['k']} T={rows[0]['temperature']}", fontsize=9)
    return timing.save_figure(fig, f"{os.path.splitext(out_csv)[0]}_{rows[0]['workload']}.png")

"""Accuracy against alpha on a checkable task (GSM8K-format JSONL: {"question", "answer" ending "#### N"}).

Arms: vLLM's standard rejection sampler, and EARS at each alpha; the same problems, prompts
(``scripts.harness.task.format_prompt``) and per-problem seeds in every arm, ``--repeats`` samples per problem.
Scoring: ``scripts.harness.task.score`` (exact match of the number after ``####``).

Offline (default): two engines, each in its own process (``scripts.harness.engine.run_engine_job``): one with
``rejection_sampler: standard``, one with ``rejection_sampler: ears`` whose alphas are set per request
(``SamplingParams.extra_args["ears_alpha"]``), so all EARS arms share one engine.
Server: ``--server URL`` is an OpenAI-compatible vLLM server started with ``"rejection_sampler": "ears"``;
alphas go per request (``extra_body={"vllm_xargs": {"ears_alpha": a}}``); ``--standard-server URL`` is the
baseline; without it the baseline is alpha = 0 on the EARS server (the same rule, EARS's code path).

Printed: the paper-style table: throughput change % vs standard (output tokens / wall time of the pass), accuracy
with a 95% Wilson interval, accuracy change in points vs standard with a paired 95% interval (same items and seeds;
with ``--repeats`` > 1 the differences are averaged per problem first, so the interval is over problems).
CSV: one record per arm in the results schema (``scripts/harness/results.py``), a run appended to
``results/eval_accuracy.csv`` (``--quick``: ``results/quick/``, replaced, ignored by git).

Usage::

    python -m scripts.bench.eval_accuracy --quick
    python -m scripts.bench.eval_accuracy --data data/gsm_synth_test.jsonl --n 500 --repeats 2 --temperature 1.0
    python -m scripts.bench.eval_accuracy --server http://127.0.0.1:8000 --model models/target --data my_gsm.jsonl
"""

import argparse
import os
import sys
import time

from scripts import harness
from scripts.harness import engine, intervals, results, task, timing

ROOT = harness.ROOT

COLUMNS = ["timestamp", "device", "threads", "load1", "target", "draft", "method", "k", "data", "n_items",
           "temperature", "sampler", "alpha", "accuracy", "acc_lo", "acc_hi", "delta_pts", "delta_lo", "delta_hi",
           "output_tokens", "wall_s", "tokens_per_s", "throughput_change_pct", "mean_accept_len", "accept_rate",
           "tolerance_share", "mean_uncertainty", "mean_tv_cost", "delta_a0_pts", "delta_a0_lo", "delta_a0_hi",
           "seed", "mode"]
METRICS = COLUMNS[COLUMNS.index("accuracy"):COLUMNS.index("seed")]  # the rest: fixed or configuration (results.py)


def load_items(path: str, n: int, repeats: int):
    rows = task.load_jsonl(path)[:n] if n else task.load_jsonl(path)
    return [(r["question"], r["answer"]) for r in rows for _ in range(repeats)]


def offline_arms(args, prompts, alphas):
    """{(sampler, alpha): result dict} from two engines (standard; EARS with per-request alpha)."""
    runs_std = [dict(temperature=args.temperature, alpha=None, seed=args.seed)]
    runs_ears = [dict(temperature=args.temperature, alpha=a, seed=args.seed) for a in alphas]
    out = {}
    for sampler, runs in (("standard", runs_std), ("ears", runs_ears)):
        if sampler == "standard" and args.no_standard:
            continue
        job = dict(target=args.target, prompts=prompts, max_tokens=args.max_tokens, runs=runs,
                   speculative_config=engine.speculative_config(args.method, sampler, args.draft, args.k,
                                                                draft_sample_method=args.draft_sample_method),
                   max_model_len=args.max_model_len)
        print(f"[eval_accuracy] engine: {sampler} ({len(runs)} pass(es) x {len(prompts)} prompts)", file=sys.stderr)
        res = engine.run_engine_job(job, log_path=args.log and f"{args.log}.{sampler}.log")
        for r in res["results"]:
            r["spec_summary"] = engine.spec_summary(r["spec"], args.k)
            out[(sampler, r["alpha"] if sampler == "ears" else None)] = r
    return out


def server_arms(args, prompts, alphas):
    """Same, against running OpenAI-compatible servers (concurrent requests, --concurrency at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    def run(url, alpha):
        client = OpenAI(base_url=url.rstrip("/") + "/v1", api_key="EMPTY")
        model = args.model or client.models.list().data[0].id

        def one(i):
            extra = {"seed": args.seed + i}
            if alpha is not None:
                extra["vllm_xargs"] = {"ears_alpha": alpha}
            r = client.completions.create(model=model, prompt=prompts[i], max_tokens=args.max_tokens,
                                          temperature=args.temperature, extra_body=extra)
            return r.choices[0].text, r.usage.completion_tokens

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as ex:
            outs = list(ex.map(one, range(len(prompts))))
        wall = time.perf_counter() - t0
        return dict(temperature=args.temperature, alpha=alpha, wall_s=wall, load1=timing.load1(),
                    texts=[o[0] for o in outs], output_tokens=[o[1] for o in outs],
                    spec_summary=engine.spec_summary({}, args.k))

    out = {}
    if args.standard_server:
        out[("standard", None)] = run(args.standard_server, None)
    for a in alphas:
        out[("ears", a)] = run(args.server, a)
    if ("standard", None) not in out:
        out[("standard", None)] = dict(out.get(("ears", 0.0)) or run(args.server, 0.0), baseline="ears alpha=0")
    return out


def table(arms, golds, args, device):
    base = arms[("standard", None)]
    base_ok = [task.score(t, g) for t, g in zip(base["texts"], golds)]
    base_tps = sum(base["output_tokens"]) / base["wall_s"]
    clusters = [i // args.repeats for i in range(len(base_ok))]
    # Same-engine control: EARS at alpha 0 (the standard rule on EARS's code path and random stream). With the same
    # per-request seeds an EARS run only departs from it after a tolerance-accepted token, so this pairing is tighter.
    a0 = arms.get(("ears", 0.0))
    a0_ok = [task.score(t, g) for t, g in zip(a0["texts"], golds)] if a0 else None
    rows = []
    for (sampler, alpha), r in sorted(arms.items(), key=lambda kv: (kv[0][0] != "standard", kv[0][1] or 0)):
        ok = [task.score(t, g) for t, g in zip(r["texts"], golds)]
        lo, hi = intervals.wilson_ci(sum(ok), len(ok))
        d, dlo, dhi = intervals.paired_diff_ci(ok, base_ok, clusters=clusters)
        a, alo, ahi = (intervals.paired_diff_ci(ok, a0_ok, clusters=clusters) if a0_ok and sampler == "ears"
                       else (float("nan"),) * 3)
        tps = sum(r["output_tokens"]) / r["wall_s"]
        ss = r["spec_summary"]
        rows.append(dict(timestamp=timing.timestamp(), device=device, threads=timing.env_columns("cpu")["threads"],
                         load1=r.get("load1", float("nan")), target=args.target,
                         draft=args.draft if args.method == "draft_model" else "", method=args.method, k=args.k,
                         data=args.data, n_items=len(ok), temperature=args.temperature, sampler=sampler,
                         alpha=alpha if alpha is not None else "", accuracy=sum(ok) / len(ok), acc_lo=lo,
                         acc_hi=hi, delta_pts=100 * d, delta_lo=100 * dlo, delta_hi=100 * dhi,
                         output_tokens=sum(r["output_tokens"]), wall_s=r["wall_s"], tokens_per_s=tps,
                         throughput_change_pct=100 * (tps / base_tps - 1), mean_accept_len=ss["mean_accept_len"],
                         accept_rate=ss["accept_rate"],
                         tolerance_share=ss["tolerance_share"] if sampler == "ears" else float("nan"),
                         delta_a0_pts=100 * a, delta_a0_lo=100 * alo, delta_a0_hi=100 * ahi,
                         mean_uncertainty=ss["mean_uncertainty"], mean_tv_cost=ss["mean_tv_cost"],
                         seed=args.seed,
                         mode="server" if args.server else "offline"))
    return rows


def print_table(rows):
    print(f"{'arm':>16} | {'tok/s':>8} | {'thr. change':>11} | {'accuracy (95% CI)':>22} | "
          f"{'acc. change pts (95% CI)':>26} | {'vs EARS a=0 pts (95% CI)':>26} | {'accept len':>10} | "
          f"{'tol. share':>10}")
    for r in rows:
        arm = r["sampler"] + (f" a={r['alpha']}" if r["alpha"] != "" else "")
        print(f"{arm:>16} | {r['tokens_per_s']:8.1f} | {r['throughput_change_pct']:+10.1f}% | "
              f"{100 * r['accuracy']:5.1f}% [{100 * r['acc_lo']:5.1f}, {100 * r['acc_hi']:5.1f}] | "
              f"{r['delta_pts']:+6.2f} [{r['delta_lo']:+6.2f}, {r['delta_hi']:+6.2f}] | "
              f"{r['delta_a0_pts']:+6.2f} [{r['delta_a0_lo']:+6.2f}, {r['delta_a0_hi']:+6.2f}] | "
              f"{r['mean_accept_len']:10.3f} | {100 * r['tolerance_share']:9.1f}%")


def main(argv=None):
    ap = argparse.ArgumentParser(description="EARS accuracy vs alpha on a GSM8K-format task (see docstring)")
    ap.add_argument("--target", default=os.path.join(ROOT, "models", "target"))
    ap.add_argument("--draft", default=os.path.join(ROOT, "models", "draft"))
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "gsm_synth_test.jsonl"))
    ap.add_argument("--n", type=int, default=0, help="first N problems (0: all)")
    ap.add_argument("--repeats", type=int, default=1, help="samples per problem (different seeds)")
    ap.add_argument("--alphas", default="0,0.1,0.2,0.3,0.5")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--method", choices=("draft_model", "ngram"), default="draft_model")
    ap.add_argument("--draft-sample-method", choices=("greedy", "probabilistic"), default=None)
    ap.add_argument("--k", type=int, default=3, help="num_speculative_tokens")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--server", help="OpenAI-compatible URL of a vLLM server running EARS")
    ap.add_argument("--standard-server", help="URL of a server running the standard sampler (baseline)")
    ap.add_argument("--model", help="model name on the server (default: the first listed)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--no-standard", action="store_true", help="offline: baseline = EARS alpha 0 (one engine)")
    ap.add_argument("--quick", action="store_true", help="8 problems, alphas 0 and 0.3")
    ap.add_argument("--out", default=None)
    ap.add_argument("--log", default=None, help="prefix for engine logs")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.alphas = args.n or 8, "0,0.3"
        args.max_tokens = min(args.max_tokens, 96)
    alphas = [float(a) for a in args.alphas.split(",")]
    if args.no_standard and 0.0 not in alphas:
        alphas = [0.0] + alphas
    if args.out is None:
        args.out = os.path.join(ROOT, "results", "quick" if args.quick else "", "eval_accuracy.csv")
    items = load_items(args.data, args.n, args.repeats)
    prompts = [task.format_prompt(q) for q, _ in items]
    golds = [a for _, a in items]
    arms = server_arms(args, prompts, alphas) if args.server else offline_arms(args, prompts, alphas)
    if ("standard", None) not in arms:
        arms[("standard", None)] = dict(arms[("ears", 0.0)], baseline="ears alpha=0")
    rows = table(arms, golds, args, timing.device_name("cpu"))
    csv_out = results.Writer(args.out, "eval_accuracy", COLUMNS, METRICS, replace=args.quick)
    for r in rows:
        csv_out.write(r)
    print(f"{args.data}: {len(items)} items, T={args.temperature}, {args.method} k={args.k}")
    print_table(rows)
    print(f"[eval_accuracy] wrote {args.out}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()

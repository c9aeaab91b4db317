"""Do seeded requests give the same tokens at concurrency 1 and at a higher one, on the real pair?

One engine per concurrency (``scripts.harness.engine.run_engine_job``: the benchmark's settings), the same prompts
and seeds (``--seed + i``), every arm's output token ids compared prompt by prompt. Prints, per arm, how many prompts
differ and where (prompt, first differing output position). Exit status 1 if any differ.

    python -m scripts.bench.check_seeded_batch --workload grounded --n 41 --alphas 0.1,0.2,0.3,0.5
    python -m scripts.bench.check_seeded_batch --workload creative --n 16 --sampler standard
"""

from __future__ import annotations

import argparse
import os
import sys

from scripts.bench import bench_e2e_text as bt
from scripts.harness import engine, real_pair

WORKLOADS = {"grounded": dict(method="ngram", k=4, temperature=0.7, draft_sample_method=None),
             "creative": dict(method="eagle3", k=3, temperature=0.9, draft_sample_method="probabilistic")}


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=tuple(WORKLOADS), default="grounded")
    ap.add_argument("--n", type=int, default=16, help="prompts (the first N of the workload's file)")
    ap.add_argument("--sampler", choices=("ears", "standard"), default="ears")
    ap.add_argument("--alphas", default="0.3", help="EARS: per-request alphas, one run each in the same engine")
    ap.add_argument("--concurrency", type=int, default=16, help="compared with concurrency 1")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    w = WORKLOADS[args.workload]
    prompts = bt.load_prompts(os.path.join(bt.ROOT, f"data/prompts_{args.workload}.jsonl"), args.n)
    alphas = [float(a) for a in args.alphas.split(",")] if args.sampler == "ears" else [None]
    outputs = {}
    for conc in (1, args.concurrency):
        job = dict(target=real_pair.TARGET, prompts=prompts, max_tokens=args.max_tokens, dtype="float32", chat=True,
                   enforce_eager=True, return_ids=True, max_model_len=1536,
                   runs=[dict(temperature=w["temperature"], alpha=a, seed=args.seed, pass_idx=0) for a in alphas],
                   engine_kwargs=dict(max_num_seqs=conc),
                   speculative_config=engine.speculative_config(w["method"], args.sampler, real_pair.DRAFT, w["k"],
                                                                draft_sample_method=w["draft_sample_method"]))
        for r in engine.run_engine_job(job)["results"]:
            outputs[(conc, r["alpha"])] = r["output_ids"]
    differ = 0
    for a in alphas:
        one, many = outputs[(1, a)], outputs[(args.concurrency, a)]
        diffs = [(i, first_difference(x, y)) for i, (x, y) in enumerate(zip(one, many)) if x != y]
        differ += len(diffs)
        arm = f"{args.sampler}" + (f" alpha={a}" if a is not None else "")
        print(f"{args.workload} {arm}: c=1 vs c={args.concurrency}: {len(diffs)} of {len(one)} prompts differ"
              + (f" (prompt, first differing position): {diffs}" if diffs else ""), flush=True)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())

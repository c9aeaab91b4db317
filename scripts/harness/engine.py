"""vLLM engine arms for the end-to-end benchmarks and evaluations (bench_e2e, bench_e2e_text, eval_accuracy).

One engine per process: vLLM spawns workers, and a second ``LLM(...)`` in the same process is not reliably freed on
CPU. The parent (``run_engine_job``) writes a job JSON and runs ``python -m scripts.harness.engine --engine-worker
JOB OUT`` from the repository root; the worker starts one engine, warms it up, then runs each (temperature, alpha)
pass on the same prompts with the same per-prompt seeds and records wall time, output tokens, texts and
spec-decode counter deltas.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from scripts.harness import ROOT
from scripts.harness.timing import load1

SPEC_COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens")
PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"
# EARS plugin counters (engines whose rejection_sampler is the plugin's; /metrics adds the "_total" suffix).
EARS_TOLERANCE = "vllm:ears_num_tolerance_accepted_tokens"
EARS_VERIFIED = "vllm:ears_num_verified_draft_tokens"
EARS_H_SUM = "vllm:ears_uncertainty_sum"
EARS_TV_SUM = "vllm:ears_tv_cost_sum"
SPEC_COUNTERS = SPEC_COUNTERS + (EARS_TOLERANCE, EARS_VERIFIED, EARS_H_SUM, EARS_TV_SUM)


def speculative_config(method: str, sampler: str, draft: str, k: int, alpha: float = None,
                       draft_sample_method: str = None, knobs: dict = None):
    """The --speculative-config dict of an arm (None for no speculation). EARS keys come from the plugin; ``knobs``:
    an experimental rule's (``sampler`` "fly" or "typical")."""
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
    spec.update(knobs or {})
    return spec


def spec_snapshot(llm) -> dict:
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


def spec_delta(after: dict, before: dict) -> dict:
    d = {name: after.get(name, 0) - before.get(name, 0) for name in SPEC_COUNTERS}
    a, b = after.get(PER_POS, []), before.get(PER_POS, [])
    d[PER_POS] = [x - (b[i] if i < len(b) else 0) for i, x in enumerate(a)]
    return d


def tpot_s(out) -> float:
    """Time per output token after the first (engine-core timestamps), or NaN when vLLM kept no stats."""
    m = getattr(out, "metrics", None)
    n = getattr(m, "num_generation_tokens", 0) if m is not None else 0
    if m is None or n < 2 or not m.first_token_ts or not m.last_token_ts:
        return float("nan")
    return (m.last_token_ts - m.first_token_ts) / (n - 1)


def engine_worker(job_path: str, out_path: str) -> None:
    """Job keys: target, prompts, max_tokens, runs, speculative_config; optional max_model_len, dtype (float32),
    enforce_eager (True; False lets vLLM compile the model), engine_kwargs, chat (apply the chat template to each
    prompt), return_ids (prompt and output token ids per request), score (instead of runs: [[prompt_ids,
    output_ids], ...] -> the target's log-likelihood of each output, from prompt logprobs)."""
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
    llm = LLM(job["target"], speculative_config=job["speculative_config"], enforce_eager=job.get("enforce_eager", True),
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
        # Per-request settings of the plugin: alpha, and any other extra_args of the run (e.g. ears_tv_budget).
        extra = {**({"ears_alpha": run["alpha"]} if run.get("alpha") is not None else {}), **(run.get("xargs") or {})}
        extra = extra or None
        params = [SamplingParams(temperature=run["temperature"], max_tokens=job["max_tokens"],
                                 seed=run["seed"] + i, extra_args=extra) for i in range(len(prompts))]
        before = spec_snapshot(llm)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - t0
        delta = spec_delta(spec_snapshot(llm), before)
        res = dict(run, wall_s=wall, load1=load1(), spec=delta, texts=[o.outputs[0].text for o in outs],
                   output_tokens=[len(o.outputs[0].token_ids) for o in outs], tpot_s=[tpot_s(o) for o in outs])
        if job.get("return_ids"):
            res["prompt_ids"] = [list(o.prompt_token_ids) for o in outs]
            res["output_ids"] = [list(o.outputs[0].token_ids) for o in outs]
        results.append(res)
    with open(out_path, "w") as f:
        json.dump({"startup_s": startup_s, "results": results}, f)


def run_engine_job(job: dict, timeout_s: float = 3600, log_path: str = None) -> dict:
    """Run one engine job in a fresh process (``python -m scripts.harness.engine``); returns its results dict."""
    with tempfile.TemporaryDirectory() as tmp:
        jp, op = os.path.join(tmp, "job.json"), os.path.join(tmp, "out.json")
        with open(jp, "w") as f:
            json.dump(job, f)
        env = dict(os.environ)
        env.pop("TRITON_INTERPRET", None)
        log = open(log_path, "w") if log_path else subprocess.DEVNULL
        try:
            proc = subprocess.run([sys.executable, "-m", "scripts.harness.engine", "--engine-worker", jp, op],
                                  cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT if log_path else subprocess.PIPE, timeout=timeout_s,
                                  text=True)
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


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m scripts.harness.engine", description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine-worker", nargs=2, metavar=("JOB", "OUT"), required=True,
                    help="run the job JSON written by run_engine_job, write its results JSON to OUT")
    args = ap.parse_args(argv)
    engine_worker(*args.engine_worker)


if __name__ == "__main__":
    main()

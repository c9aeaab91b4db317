"""Where the time of a decoding step goes in vLLM's CPU worker, for one arm of the real pair at concurrency 1.

Runs one engine (SmolLM2-135M-Instruct, float32, ``enforce_eager``, one request at a time, the first 4 creative
prompts at T = 0.9, 128 tokens each, seeded, ``ignore_eos``) in a child process for ``--seconds``, samples its
worker with py-spy (not a dependency: ``pip install py-spy``) and prints the share of the worker's samples spent in
each part of the step (inclusive, so nested parts overlap), and the engine's tokens/s (slowed a little by the
sampling). Arms: ``none``; ``standard`` and ``ears`` (alpha 0.3) with the EAGLE-3 head, k = 3, probabilistic
drafting.

    python -m scripts.bench.profile_step --arm standard [--seconds 30] [--raw out.txt]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from scripts import harness
from scripts.harness import real_pair

ROOT = harness.ROOT
PROMPTS = os.path.join(ROOT, "data", "prompts_creative.jsonl")
# (label, function name as py-spy prints it, file suffix)
PARTS = [
    ("target forward", "GPUModelRunner._model_forward", "gpu_model_runner.py"),
    ("target logits (lm_head)", "LlamaForCausalLM.compute_logits", "models/llama.py"),
    ("drafting (all)", "SpecDecodeBaseProposer.propose", "llm_base_proposer.py"),
    ("  draft model forward", "Eagle3LlamaForCausalLM.forward", "llama_eagle3.py"),
    ("  draft logits", "Eagle3LlamaForCausalLM.compute_logits", "llama_eagle3.py"),
    ("  draft sampling (vLLM's function)", "compute_probs_and_sample_next_token", ""),
    ("  draft sampling + seeded redraw", "_sample_from_logits", "spec_decode_base_proposer.py"),
    ("rejection sampler (vLLM)", "RejectionSampler.forward", "rejection_sampler.py"),
    ("rejection sampler (EARS)", "EarsRejectionSampler.forward", "sampler.py"),
    ("waiting for the scheduler", "MessageQueue.dequeue", "shm_broadcast.py"),
]

CHILD = r"""
import json, os, sys, time
def main():
    from vllm import LLM, SamplingParams
    arm, target, draft, seconds, prompts_path = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
    spec = None
    if arm != "none":
        spec = {"method": "eagle3", "model": draft, "num_speculative_tokens": 3, "rejection_sampler": arm,
                "draft_sample_method": "probabilistic", **({"alpha": 0.3} if arm == "ears" else {})}
    llm = LLM(target, speculative_config=spec, enforce_eager=True, dtype="float32", max_model_len=1536,
              enable_chunked_prefill=False, max_num_batched_tokens=32768, max_num_seqs=1, seed=0)
    prompts = [json.loads(line)["prompt"] for line in open(prompts_path)][:4]
    tok = llm.get_tokenizer()
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
               for p in prompts]
    llm.generate(prompts, SamplingParams(temperature=0.9, max_tokens=16, seed=0), use_tqdm=False)
    print("READY", flush=True)
    n, t0 = 0, time.time()
    while time.time() - t0 < seconds:
        params = [SamplingParams(temperature=0.9, max_tokens=128, seed=i, ignore_eos=True) for i in range(4)]
        n += sum(len(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False))
    print(f"TOKENS_PER_S {n / (time.time() - t0):.2f}", flush=True)
if __name__ == "__main__":
    main()
"""


def shares(raw_path: str) -> tuple[int, dict[str, float]]:
    """Inclusive share of every part in py-spy's raw (collapsed-stack) output."""
    total, hits = 0, collections.Counter()
    for line in open(raw_path):
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for label, func, path in PARTS:
            if any(re.search(rf"(^|\.|\s){re.escape(func)} \(.*{re.escape(path)}", f) for f in frames):
                hits[label] += n
    return total, {label: hits[label] / total if total else float("nan") for label, _, _ in PARTS}


def worker_pid(parent: int) -> int | None:
    """The VLLM::Worker process among ``parent``'s descendants."""
    todo, seen = [parent], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        todo += [int(x) for x in out.split()]
    for pid in seen:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"VLLM::Worker" in f.read():
                    return pid
        except OSError:
            pass
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arm", choices=("none", "standard", "ears"), default="standard")
    ap.add_argument("--seconds", type=float, default=30.0, help="sampling time (the engine runs 15 s longer)")
    ap.add_argument("--raw", default=None, help="keep py-spy's raw output here")
    args = ap.parse_args(argv)
    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(pyspy):
        raise SystemExit("profile_step: py-spy not found (pip install py-spy)")
    with tempfile.TemporaryDirectory() as tmp:
        child = os.path.join(tmp, "child.py")
        with open(child, "w") as f:
            f.write(CHILD)
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
        env.pop("TRITON_INTERPRET", None)
        proc = subprocess.Popen([sys.executable, child, args.arm, real_pair.TARGET, real_pair.DRAFT,
                                 str(args.seconds + 15), PROMPTS], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        for line in proc.stdout:
            if line.startswith("READY"):
                break
        time.sleep(3)
        pid = worker_pid(proc.pid)
        if pid is None:
            proc.kill()
            raise SystemExit("profile_step: no VLLM::Worker process found")
        raw = args.raw or os.path.join(tmp, "raw.txt")
        subprocess.run([pyspy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)), "--rate", "200",
                        "--format", "raw", "--nonblocking", "-o", raw], check=True, capture_output=True)
        rest = proc.communicate()[0]
        tps = next((line.split()[1] for line in rest.splitlines() if line.startswith("TOKENS_PER_S")), "?")
        total, parts = shares(raw)
    print(f"arm {args.arm}: {tps} tokens/s, {total} samples of the worker")
    for label, share in parts.items():
        print(f"  {label:36s} {100 * share:5.1f}%")


if __name__ == "__main__":
    main()

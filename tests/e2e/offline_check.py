"""Offline `LLM(...)` run used by test_offline.py (a script: vLLM spawns workers, hence the __main__ guard).

Usage: python offline_check.py TARGET DRAFT SAMPLER DRAFT_SAMPLE_METHOD -> one JSON line with metrics and texts.
"""

import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def main():
    target, draft, sampler, draft_sample_method = sys.argv[1:5]
    from vllm import LLM, SamplingParams

    spec = {"method": "draft_model", "model": draft, "num_speculative_tokens": 3,
            "draft_sample_method": draft_sample_method, "rejection_sampler": sampler}
    llm = LLM(target, speculative_config=spec, enforce_eager=True, dtype="float32", max_model_len=512,
              disable_log_stats=False, seed=0)
    prompts = ["Once upon a time", "The weather today is", "In a small village", "She opened the door and"]
    outs = llm.generate(prompts * 2, SamplingParams(temperature=1.0, max_tokens=48, seed=7, ignore_eos=True))
    chat = llm.chat([{"role": "user", "content": "Tell me a story."}], SamplingParams(temperature=0, max_tokens=16))
    metrics = {}
    for m in llm.get_metrics():
        if m.name.startswith(("vllm:spec_decode", "vllm:ears")) and hasattr(m, "value"):
            metrics[m.name] = m.value
    print("RESULT " + json.dumps({"metrics": metrics, "texts": [o.outputs[0].text for o in outs],
                                   "chat": chat[0].outputs[0].text}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Check that the committed models are in place (``make models``); no training.

    .venv/bin/python -m scripts.models.check_models            # files + config sanity (fast)
    .venv/bin/python -m scripts.models.check_models --load     # also load + generate (transformers)
    .venv/bin/python -m scripts.models.check_models --vllm     # also start a vLLM CPU engine on each

Exit status 1 (with a hint to run ``make models-retrain``) if anything is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from scripts.harness import task
from scripts import harness

ROOT = Path(harness.ROOT)

REQUIRED = ["config.json", "model.safetensors", "generation_config.json",
            "tokenizer.json", "tokenizer_config.json"]


def check_files(models: Path) -> list[str]:
    errs = []
    for name in ("target", "draft"):
        d = models / name
        for f in REQUIRED:
            p = d / f
            if not p.is_file() or p.stat().st_size == 0:
                errs.append(f"missing {p}")
            elif f == "model.safetensors" and p.read_bytes()[:40].startswith(b"version https://git-lfs"):
                errs.append(f"{p} is a git-lfs pointer, not weights")
        if (d / "config.json").is_file():
            cfg = json.loads((d / "config.json").read_text())
            if cfg.get("architectures") != ["LlamaForCausalLM"]:
                errs.append(f"{d}: unexpected architectures {cfg.get('architectures')}")
        if (d / "tokenizer_config.json").is_file():
            tc = json.loads((d / "tokenizer_config.json").read_text())
            if not tc.get("chat_template") and not (d / "chat_template.jinja").is_file():
                errs.append(f"{d}: no chat template")
    t, dr = models / "target" / "tokenizer.json", models / "draft" / "tokenizer.json"
    if t.is_file() and dr.is_file() and t.read_bytes() != dr.read_bytes():
        errs.append("target and draft tokenizers differ")
    if not (ROOT / "data" / "gsm_synth_test.jsonl").is_file():
        errs.append("missing data/gsm_synth_test.jsonl")
    return errs


def check_load(models: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(models / "target")
    q = task.load_jsonl(ROOT / "data" / "gsm_synth_test.jsonl")[0]
    enc = tok([task.format_prompt(q["question"])], return_tensors="pt")
    for name in ("target", "draft"):
        m = LlamaForCausalLM.from_pretrained(models / name, dtype=torch.float32).eval()
        out = m.generate(**enc, max_new_tokens=100, do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        n = sum(p.numel() for p in m.parameters())
        print(f"[transformers] {name}: {n:,} params, gold {task.extract_answer(q['answer'])}, "
              f"got {task.extract_answer(text)}")


def check_vllm(models: Path) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    rows = task.load_jsonl(ROOT / "data" / "gsm_synth_test.jsonl")[:8]
    prompts = [task.format_prompt(r["question"]) for r in rows]
    for name in ("target", "draft"):
        llm = LLM(model=str(models / name), enforce_eager=True, max_model_len=512,
                  dtype="float32")
        outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=128))
        texts = [o.outputs[0].text for o in outs]
        acc = task.accuracy(texts, [r["answer"] for r in rows])
        print(f"[vllm] {name}: loaded, {len(texts)} generations, acc {acc:.2f}; "
              f"sample: {texts[0]!r}")
        del llm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--load", action="store_true")
    ap.add_argument("--vllm", action="store_true")
    args = ap.parse_args()
    models = Path(args.models)
    errs = check_files(models)
    if errs:
        for e in errs:
            print("ERROR:", e, file=sys.stderr)
        print("Models are missing or incomplete; rebuild with `make models-retrain` "
              "(.venv/bin/python -m scripts.models.train_pair).", file=sys.stderr)
        return 1
    print(f"models OK: {models}/target, {models}/draft")
    if args.load:
        check_load(models)
    if args.vllm:
        check_vllm(models)
    return 0


if __name__ == "__main__":
    sys.exit(main())

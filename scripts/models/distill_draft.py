"""Train the draft of the real pair, an EAGLE-3 head for SmolLM2-135M-Instruct, by distillation, on this CPU.

Three stages, each deterministic (fixed seeds, fixed order, fixed thread count), each cached in ``.cache/distill/``
(ignored by git; SHA-256s recorded in ``training_info.json``):

1. ``generate``: the target (transformers, bfloat16, a KV-cached decode loop: ``sample_answers``) answers every
   prompt of ``data/prompts_distill.jsonl`` (chat template applied) ``--samples`` times at temperature
   ``--gen-temperature``, pure sampling, the generator reseeded per batch: the text the draft learns on (the
   target's own).
2. ``features``: one prefill pass of the target (bfloat16) over every prompt + answer keeps (a) the residual stream
   entering layers 2, 15 and 27: the "auxiliary hidden states" vLLM hands an EAGLE-3 drafter
   (``get_eagle3_default_aux_hidden_state_layers``: 2, L/2, L-3), and (b) the target's top-20 log-probabilities
   (temperature 1) at every answer position: the distillation labels. Labels from a prefill pass cost a fraction of
   a generated token (stage times in docs/models.md: 973 s to generate 314k tokens, 322 s to prefill them).
3. ``train``: the EAGLE-3 head exactly as vLLM runs it (``vllm/model_executor/models/llama_eagle3.py``): ``fc``
   maps the three features (3 x 576) to 576; one decoder layer takes the RMS-normalised embedding of the next token
   (the target's own embedding table, shared and frozen) concatenated with the normalised ``fc`` output (2 x 576)
   into a 9-head / 3-KV-head attention and a SwiGLU MLP; a final RMSNorm and an ``lm_head`` over a draft vocabulary
   of the ``--draft-vocab`` tokens carrying most of the target's probability in the generated answers
   (``d2t`` maps draft ids to target ids). Loss: cross-entropy against the target's top-20 probabilities (within
   the draft vocabulary) at each generated position, teacher-forced (the first draft step); with
   ``--ttt-steps N`` the head is also unrolled N-1 more steps on its own output hidden state, as vLLM feeds it
   at draft steps 2.. (EAGLE-3's training-time test; default 3 = the k it is served with). Matmuls in bfloat16
   (autocast), weights and optimiser in float32. After each epoch: the held-out loss and, per draft step, the
   expected acceptance sum_x min(p_T, q_T) at T = ``--gen-temperature`` on the held-out answers (teacher-forced
   tokens). Saved in vLLM's EAGLE-3 checkpoint layout, bfloat16, to ``models/smollm2-eagle3/`` (committed) with
   ``training_info.json``.

bfloat16 and the served float32: the target is served in float32 (``scripts/harness/real_pair.py``), but generating
and prefilling in bfloat16 is 1.5x and 5x faster on a CPU with AVX-512 BF16 (measured 2026-12-02), which is what
fits the pipeline in about half an hour (33.5 min, docs/models.md). So the draft is trained on bfloat16 features and
labels and served on float32 ones; the acceptance measured in vLLM (docs/models.md) is with the served float32
target, so it includes that mismatch. On a CPU without AVX-512 BF16 every stage is slower (not measured).

Why EAGLE-3 and not an independent small model: on this CPU the draft runs K times per verification step, so each
draft forward must cost a few % of a target forward. A small independent model (hidden 192, 2 layers, own
embeddings; 10.3M parameters) distilled on the same 200k tokens reached 10 % acceptance at T = 0.9 (a trial of
2026-11-25, not kept in ``results/``): it has to learn language from scratch. The EAGLE-3 head reads the target's own
features, so it only has to learn one step ahead; its cost per draft step is one layer plus an 8192 x 576 projection:
its 9.81M weights (``training_info.json``) against the target's 134.5M, about 7 % of the multiply-adds per token.

Usage::

    python -m scripts.models.distill_draft            # the missing stages, then train (cost measured: docs/models.md)
    python -m scripts.models.distill_draft --stage train
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

from scripts.models.build_real_target import sha256
from scripts.harness import real_pair
from scripts import harness

ROOT = harness.ROOT
TARGET, DRAFT = real_pair.TARGET, real_pair.DRAFT
PROMPTS = os.path.join(ROOT, "data", "prompts_distill.jsonl")
DATA = os.path.join(ROOT, ".cache", "distill", "data.pt")
FEATURES = os.path.join(ROOT, ".cache", "distill", "features.pt")
LABELS = os.path.join(ROOT, ".cache", "distill", "labels.pt")
TOP_K = 20


def load_prompts(path: str) -> list[str]:
    with open(path) as f:
        return [json.loads(line)["prompt"] for line in f if line.strip()]


def chat_prompt(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


# ---- stage 1: the target's answers --------------------------------------------------------------------------------
GEN_DTYPE = "bfloat16"  # see generate()


def sample_answers(model, ids, mask, max_new_tokens: int, temperature: float, eos: int, pad: int):
    """Pure sampling at ``temperature`` from ``model`` for a left-padded batch ``ids`` / ``mask``: [batch, <= max]
    new token ids, each row padded with ``pad`` after its eos; stops when every row has its eos.

    A plain KV-cached decode loop instead of ``model.generate``: on this CPU (transformers 5, bfloat16, batch 64,
    measured 2026-12-03) ``generate`` spent 24 % of its time in ``exponential_`` (its ``multinomial`` over 49152
    tokens per row) and 29 % in SDPA attention; the inverse-CDF draw from one uniform per row
    (``ears_vllm._common.sample_inverse_cdf``, exact) and eager attention (chosen by the caller) took 96-token answers
    from 248 to 585 tokens/s; over the whole stage (192-token answers, longer KV caches) 250 -> 323 tokens/s
    (docs/models.md). Draws come from the global generator, one float64 uniform per row and step."""
    import torch
    from transformers import DynamicCache

    from ears_vllm._common import sample_inverse_cdf

    batch = ids.shape[0]
    cache, out, done = DynamicCache(), [], torch.zeros(batch, dtype=torch.bool)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                   logits_to_keep=1).logits[:, -1]
    for _ in range(max_new_tokens):
        probs = torch.softmax(logits.float() / temperature, -1)
        tok = sample_inverse_cdf(probs, torch.rand(batch, dtype=torch.float64)).masked_fill(done, pad)
        out.append(tok)
        done |= tok == eos
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype)], -1)
        pos = pos[:, -1:] + 1
        logits = model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                       use_cache=True).logits[:, -1]
    return torch.stack(out, 1)


def generate(args) -> None:
    """Answers for samples 0 .. --samples - 1 of every prompt; samples already in DATA are kept, not redone.

    The target samples them (transformers, bfloat16, eager attention, ``--gen-batch`` prompts at a time sorted by
    length, left-padded, pure sampling at ``--gen-temperature`` by ``sample_answers``, the generator reseeded per
    batch from ``--seed``, the sample and the batch). Not vLLM: on a 2-core CPU its engine keeps one of the cores; it
    generated ~60 tokens/s (float32, 64 requests in flight, AVX2 machine, 2026-12-02). The draft only needs text the
    target writes; its labels and features come from one prefill pass (stage 2)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    records = torch.load(DATA) if os.path.exists(DATA) else []
    have = {r["sample"] for r in records}
    todo = [s for s in range(args.samples) if s not in have]
    if not todo:
        return
    tokenizer = AutoTokenizer.from_pretrained(TARGET)
    model = LlamaForCausalLM.from_pretrained(TARGET, dtype=getattr(torch, GEN_DTYPE), attn_implementation="eager")
    model.eval()
    prompts = [tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False).input_ids
               for p in load_prompts(PROMPTS)]
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    eos = tokenizer.eos_token_id
    t0, n_batches = time.time(), math.ceil(len(order) / args.gen_batch) * len(todo)
    done = 0
    for s in todo:
        for b0 in range(0, len(order), args.gen_batch):
            idx = order[b0:b0 + args.gen_batch]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(idx), width, dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, width - len(prompts[i]):], mask[r, width - len(prompts[i]):] = torch.tensor(prompts[i]), 1
            torch.manual_seed(args.seed * 1_000_003 + 1000 * s + b0)
            with torch.no_grad():
                out = sample_answers(model, ids, mask, args.gen_tokens, args.gen_temperature, eos,
                                     tokenizer.pad_token_id)
            for r, i in enumerate(idx):
                gen = out[r].tolist()
                if eos in gen:
                    gen = gen[: gen.index(eos) + 1]  # keep the eos: the target's decision to stop is a label too
                records.append(dict(prompt_index=i, sample=s, prompt_ids=torch.tensor(prompts[i], dtype=torch.int32),
                                    gen_ids=torch.tensor(gen, dtype=torch.int32)))
            done += 1
            if not args.no_progress:
                n = sum(len(r["gen_ids"]) for r in records)
                print(f"  generate: batch {done}/{n_batches}, {n} tokens ({time.time() - t0:.0f} s)", flush=True)
    records.sort(key=lambda r: (r["sample"], r["prompt_index"]))
    os.makedirs(os.path.dirname(DATA), exist_ok=True)
    torch.save(records, DATA)
    n = sum(len(r["gen_ids"]) for r in records)
    print(f"distill_draft: samples {todo} in {time.time() - t0:.0f} s; {len(records)} answers, {n} target tokens "
          f"-> {DATA} (sha256 {sha256(DATA)})")


# ---- stage 2: the target's features and distributions -------------------------------------------------------------
AUX_LAYERS = (2, 15, 27)  # vLLM's default for a 30-layer target: (2, L // 2, L - 3)


def features(args) -> None:
    """For every record, one prefill pass of the target over prompt + answer: the residual stream entering each
    AUX_LAYERS layer at every position (the drafter's input) and the target's top-20 log-probabilities (temperature
    1) at every answer position (the labels), both in bfloat16 compute (--feature-dtype)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(args.threads)
    records = torch.load(DATA)
    model = LlamaForCausalLM.from_pretrained(TARGET, dtype=getattr(torch, args.feature_dtype)).eval()
    assert model.config.num_hidden_layers == 30, "AUX_LAYERS assume the 30-layer SmolLM2-135M"
    t0 = time.time()
    order = sorted(range(len(records)), key=lambda i: len(records[i]["prompt_ids"]) + len(records[i]["gen_ids"]))
    out_f, out_l = [None] * len(records), [None] * len(records)
    with torch.no_grad():
        for i in range(0, len(order), 16):
            batch = order[i:i + 16]
            seqs = [torch.cat([records[j]["prompt_ids"], records[j]["gen_ids"]]).long() for j in batch]
            width = max(len(x) for x in seqs)
            ids = torch.zeros(len(seqs), width, dtype=torch.long)
            mask = torch.zeros(len(seqs), width, dtype=torch.long)
            for b, x in enumerate(seqs):
                ids[b, : len(x)], mask[b, : len(x)] = x, 1
            hs = model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            aux = torch.cat([hs[layer] for layer in AUX_LAYERS], dim=-1)  # hidden_states[i] enters layer i
            for b, (j, x) in enumerate(zip(batch, seqs)):
                n_prompt = len(records[j]["prompt_ids"])
                out_f[j] = aux[b, : len(x)].to(torch.bfloat16)
                # the distribution of answer token m comes from position n_prompt - 1 + m
                logits = model.lm_head(hs[-1][b, n_prompt - 1: len(x) - 1]).float()
                top = torch.log_softmax(logits, -1).topk(TOP_K, -1)
                out_l[j] = (top.indices.to(torch.int32), top.values)
            if not args.no_progress and (i // 16) % 20 == 0:
                print(f"  features: {i + len(batch)}/{len(records)} ({time.time() - t0:.0f} s)", flush=True)
    torch.save(out_f, FEATURES)
    torch.save(out_l, LABELS)
    print(f"distill_draft: features and labels of {len(out_f)} sequences in {time.time() - t0:.0f} s -> {FEATURES}")


def features_current() -> bool:
    """Whether FEATURES and LABELS hold one entry per record of DATA."""
    import torch

    return all(os.path.exists(p) and len(torch.load(p, mmap=True)) == len(torch.load(DATA)) for p in (FEATURES, LABELS))


# ---- stage 3: the EAGLE-3 head ------------------------------------------------------------------------------------
def rms_norm(x, weight, eps):
    import torch

    var = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(var + eps)).to(x.dtype) * weight


def rope(x, positions, theta: float):
    """Llama's rotary embedding (rotate-half / neox style), x [batch, heads, seq, head_dim]."""
    import torch

    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = positions[:, None, :, None].float() * inv  # [batch, 1, seq, d/2]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Eagle3Head:
    """The trainable tensors of vLLM's ``Eagle3LlamaForCausalLM`` (one layer), named as its checkpoint names them."""

    def __init__(self, target_cfg, draft_vocab: int, seed: int):
        import torch

        g = torch.Generator().manual_seed(seed)
        h, i = target_cfg.hidden_size, target_cfg.intermediate_size
        nh, kv, d = target_cfg.num_attention_heads, target_cfg.num_key_value_heads, target_cfg.head_dim
        self.cfg = dict(hidden=h, heads=nh, kv_heads=kv, head_dim=d, eps=target_cfg.rms_norm_eps,
                        theta=target_cfg.rope_parameters["rope_theta"])

        def lin(out_f, in_f):
            return (torch.randn(out_f, in_f, generator=g) / math.sqrt(in_f)).requires_grad_()

        def ones(n):
            return torch.ones(n).requires_grad_()

        self.p = {
            "fc.weight": lin(h, 3 * h),
            "midlayer.input_layernorm.weight": ones(h), "midlayer.hidden_norm.weight": ones(h),
            "midlayer.self_attn.q_proj.weight": lin(nh * d, 2 * h),
            "midlayer.self_attn.k_proj.weight": lin(kv * d, 2 * h),
            "midlayer.self_attn.v_proj.weight": lin(kv * d, 2 * h),
            "midlayer.self_attn.o_proj.weight": lin(h, nh * d),
            "midlayer.post_attention_layernorm.weight": ones(h),
            "midlayer.mlp.gate_proj.weight": lin(i, h), "midlayer.mlp.up_proj.weight": lin(i, h),
            "midlayer.mlp.down_proj.weight": lin(h, i),
            "norm.weight": ones(h), "lm_head.weight": lin(draft_vocab, h),
        }

    def layer(self, emb, hidden, positions, keys=None, values=None):
        """One pass of the decoder layer; returns (normed output, pre-norm output, own keys, own values).

        With ``keys`` / ``values`` of an earlier step ([batch, kv_heads, seq, head_dim]) the query at position t
        attends to their positions <= t and to its own key at t (how vLLM's cache looks at draft step 2..)."""
        import torch

        p, c = self.p, self.cfg
        b, n, _ = emb.shape
        x = torch.cat([rms_norm(emb, p["midlayer.input_layernorm.weight"], c["eps"]),
                       rms_norm(hidden, p["midlayer.hidden_norm.weight"], c["eps"])], -1)
        q = (x @ p["midlayer.self_attn.q_proj.weight"].T).view(b, n, c["heads"], c["head_dim"]).transpose(1, 2)
        k = (x @ p["midlayer.self_attn.k_proj.weight"].T).view(b, n, c["kv_heads"], c["head_dim"]).transpose(1, 2)
        v = (x @ p["midlayer.self_attn.v_proj.weight"].T).view(b, n, c["kv_heads"], c["head_dim"]).transpose(1, 2)
        q, k = rope(q, positions, c["theta"]), rope(k, positions, c["theta"])
        rep = c["heads"] // c["kv_heads"]
        scale = 1.0 / math.sqrt(c["head_dim"])
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        if keys is None:
            att = (q @ k.repeat_interleave(rep, 1).transpose(-1, -2)) * scale
            att = att.masked_fill(~causal, float("-inf")).softmax(-1)
            out = att @ v.repeat_interleave(rep, 1)
        else:  # earlier step's keys at positions <= t, plus this step's own key at t
            old = (q @ keys.repeat_interleave(rep, 1).transpose(-1, -2)) * scale
            old = old.masked_fill(~causal, float("-inf"))
            own = (q * k.repeat_interleave(rep, 1)).sum(-1, keepdim=True) * scale
            w = torch.cat([old, own], -1).softmax(-1)
            out = w[..., :n] @ values.repeat_interleave(rep, 1) + w[..., n:] * v.repeat_interleave(rep, 1)
        attn = out.transpose(1, 2).reshape(b, n, -1) @ p["midlayer.self_attn.o_proj.weight"].T
        resid = attn + hidden
        y = rms_norm(resid, p["midlayer.post_attention_layernorm.weight"], c["eps"])
        mlp = (torch.nn.functional.silu(y @ p["midlayer.mlp.gate_proj.weight"].T)
               * (y @ p["midlayer.mlp.up_proj.weight"].T)) @ p["midlayer.mlp.down_proj.weight"].T
        pre = mlp + resid
        return rms_norm(pre, p["norm.weight"], c["eps"]), pre, k, v


def draft_vocabulary(records, size: int):
    """The ``size`` target tokens with the most target probability over the generated answers (sorted ids)."""
    import torch

    mass = torch.zeros(49152, dtype=torch.float64)
    for r in records:
        mass.index_add_(0, r["top_ids"].long().flatten(), r["top_logprobs"].double().exp().flatten())
    return mass.topk(size).indices.sort().values, float(mass.topk(size).values.sum() / mass.sum())


def train(args) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    for path in (DATA, FEATURES, LABELS):
        if not os.path.exists(path):
            raise SystemExit(f"distill_draft: {path} missing: run the generate / features stages first")
    records, feats = torch.load(DATA), torch.load(FEATURES)
    for r, (top_ids, top_logprobs) in zip(records, torch.load(LABELS)):
        r["top_ids"], r["top_logprobs"] = top_ids, top_logprobs
    target_cfg = AutoConfig.from_pretrained(TARGET)
    embed = LlamaForCausalLM.from_pretrained(TARGET, dtype=torch.float32).get_input_embeddings().weight.detach()
    vocab, coverage = draft_vocabulary(records, args.draft_vocab)
    to_draft = torch.full((embed.shape[0],), -1, dtype=torch.long)
    to_draft[vocab] = torch.arange(len(vocab))
    head = Eagle3Head(target_cfg, len(vocab), args.seed)
    with torch.no_grad():  # start the output projection from the target's (tied) embedding rows
        head.p["lm_head.weight"].copy_(embed[vocab])
    params = list(head.p.values())
    rng = random.Random(args.seed)
    prompts = sorted({r["prompt_index"] for r in records})
    held_prompts = set(rng.sample(prompts, max(1, len(prompts) // 20)))  # 5 % of the prompts, all their answers
    held = {i for i, r in enumerate(records) if r["prompt_index"] in held_prompts}
    train_idx = [i for i in range(len(records)) if i not in held]
    total_steps = math.ceil(len(train_idx) / args.batch) * args.epochs
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))))
    n_params = sum(p.numel() for p in params)
    print(f"distill_draft: EAGLE-3 head, {n_params / 1e6:.2f}M parameters, draft vocabulary {len(vocab)} "
          f"({100 * coverage:.1f}% of the target's top-20 mass), {len(train_idx)} answers x {args.epochs} epochs, "
          f"{total_steps} steps, {args.ttt_steps} unrolled step(s)")

    def batch_tensors(idx):
        """Per batch: features, next-token ids, positions, and per generated position its row/column + labels."""
        rs = [records[i] for i in idx]
        width = max(len(feats[i]) for i in idx) - 1
        aux = torch.zeros(len(idx), width, feats[idx[0]].shape[-1])
        nxt = torch.zeros(len(idx), width + args.ttt_steps, dtype=torch.long)
        rows, cols, lab_ids, lab_p = [], [], [], []
        for b, (i, r) in enumerate(zip(idx, rs)):
            seq = torch.cat([r["prompt_ids"], r["gen_ids"]]).long()
            n, n_prompt = len(seq), len(r["prompt_ids"])
            aux[b, : n - 1] = feats[i][: n - 1].float()
            nxt[b, : n - 1] = seq[1:]  # input index t holds token t + 1
            # index t = n_prompt - 2 + j predicts the target's distribution at generated row j
            rows.append(torch.full((len(r["gen_ids"]),), b))
            cols.append(torch.arange(n_prompt - 2, n_prompt - 2 + len(r["gen_ids"])))
            d = to_draft[r["top_ids"].long()]
            p = torch.softmax(r["top_logprobs"], -1) * (d >= 0)
            lab_ids.append(d.clamp(min=0))
            lab_p.append(p)
        return aux, nxt, torch.cat(rows), torch.cat(cols), torch.cat(lab_ids), torch.cat(lab_p)

    def loss_of(idx, temperature=None):
        """The mean over draft steps of the cross-entropy against the target's top-20 distribution; with
        ``temperature`` also, per draft step, the summed expected acceptance sum_x min(p_T(x), q_T(x)) of a draft
        sampled from q_T (the target's top-20 renormalised, both at that temperature) and the number of positions."""
        aux, nxt, rows, cols, lab_ids, lab_p = batch_tensors(idx)
        b, n, _ = aux.shape
        pos = torch.arange(n).expand(b, n)
        total, keys, values, accept = 0.0, None, None, []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.train_dtype == "bfloat16"):
            hidden = aux @ head.p["fc.weight"].T
            for step in range(args.ttt_steps):
                # Step s at input index t: token t + 1 + s and (s > 0) the pre-norm output of step s - 1 at t, at
                # position t + s; it predicts the distribution of generated row j + s (index t predicts row j at
                # s = 0).
                normed, hidden, k, v = head.layer(embed[nxt[:, step:step + n]], hidden, pos + step, keys, values)
                if keys is None:  # later steps see the first pass's keys (vLLM's cache) plus their own
                    keys, values = k, v
                label = torch.arange(len(cols)) + step
                valid = label < len(cols)
                label = label.clamp(max=len(cols) - 1)
                valid &= rows[label] == rows  # the answer is long enough
                logits = (normed[rows[valid], cols[valid]] @ head.p["lm_head.weight"].T).float()
                ids_, p_ = lab_ids[label[valid]], lab_p[label[valid]]
                nll = -(p_ * torch.log_softmax(logits, -1).gather(1, ids_)).sum(-1)
                total = total + nll.mean()
                if temperature is not None:
                    q_t = torch.softmax(logits / temperature, -1).gather(1, ids_)
                    p_t = p_.clamp(min=1e-30).pow(1 / temperature) * (p_ > 0)
                    p_t = p_t / p_t.sum(-1, keepdim=True)
                    accept.append((float(torch.minimum(p_t, q_t).sum()), int(valid.sum())))
        return total / args.ttt_steps, accept

    def evaluate():
        """Held-out loss and expected acceptance per draft step at the serving temperature."""
        with torch.no_grad():
            held_idx = sorted(held)
            losses, acc = [], [[0.0, 0] for _ in range(args.ttt_steps)]
            for i in range(0, len(held_idx), args.batch):
                loss, accept = loss_of(held_idx[i:i + args.batch], args.gen_temperature)
                losses.append(float(loss))
                for a_, (s_, n_) in zip(acc, accept):
                    a_[0] += s_
                    a_[1] += n_
            return sum(losses) / len(losses), [round(s_ / max(n_, 1), 4) for s_, n_ in acc]

    t0, step, history = time.time(), 0, []
    for epoch in range(args.epochs):
        order = train_idx[:]
        rng.shuffle(order)
        for i in range(0, len(order), args.batch):
            loss, _ = loss_of(order[i:i + args.batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % 20 == 0 and not args.no_progress:
                print(f"  step {step}/{total_steps} loss {float(loss):.3f} ({time.time() - t0:.0f} s)", flush=True)
        v_loss, v_accept = evaluate()
        history.append(dict(epoch=epoch + 1, valid_loss=round(v_loss, 4), valid_accept_per_step=v_accept,
                            seconds=round(time.time() - t0)))
        print(f"distill_draft: epoch {epoch + 1}: held-out loss {v_loss:.3f}, expected acceptance per draft step "
              f"at T={args.gen_temperature} {v_accept} ({history[-1]['seconds']} s)", flush=True)
    train_s = time.time() - t0
    os.makedirs(DRAFT, exist_ok=True)
    weights = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in head.p.items()}
    weights["d2t"] = vocab - torch.arange(len(vocab))  # draft id i -> target id i + d2t[i]
    save_file(weights, os.path.join(DRAFT, "model.safetensors"))
    config = dict(architectures=["LlamaForCausalLMEagle3"], model_type="llama", hidden_size=target_cfg.hidden_size,
                  intermediate_size=target_cfg.intermediate_size, num_attention_heads=target_cfg.num_attention_heads,
                  num_key_value_heads=target_cfg.num_key_value_heads, head_dim=target_cfg.head_dim,
                  num_hidden_layers=1, vocab_size=target_cfg.vocab_size, draft_vocab_size=len(vocab),
                  target_hidden_size=target_cfg.hidden_size, rms_norm_eps=target_cfg.rms_norm_eps,
                  rope_parameters=target_cfg.rope_parameters,
                  max_position_embeddings=target_cfg.max_position_embeddings, tie_word_embeddings=False,
                  hidden_act="silu", bos_token_id=target_cfg.bos_token_id, eos_token_id=target_cfg.eos_token_id,
                  eagle_config=dict(eagle_aux_hidden_state_layer_ids=list(AUX_LAYERS)), torch_dtype="bfloat16")
    with open(os.path.join(DRAFT, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
        f.write("\n")
    info = dict(kind="EAGLE-3 head", target=os.path.relpath(TARGET, ROOT), parameters=n_params,
                draft_vocab=len(vocab), draft_vocab_coverage=round(coverage, 4), aux_layers=list(AUX_LAYERS),
                epochs=args.epochs, batch=args.batch, lr=args.lr, ttt_steps=args.ttt_steps, seed=args.seed,
                threads=args.threads, train_dtype=args.train_dtype,
                data=dict(generator=f"transformers, {GEN_DTYPE}",
                          sampler="sample_answers (eager attention, inverse CDF)", samples_per_prompt=args.samples,
                          temperature=args.gen_temperature, max_tokens=args.gen_tokens,
                          features_and_labels=f"one prefill pass, {args.feature_dtype}"),
                data_sha256=sha256(DATA), train_answers=len(train_idx),
                train_tokens=sum(len(records[i]["gen_ids"]) for i in train_idx), history=history,
                train_seconds=round(train_s), weights_sha256=sha256(os.path.join(DRAFT, "model.safetensors")))
    with open(os.path.join(DRAFT, "training_info.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    print(f"distill_draft: saved {DRAFT} ({train_s:.0f} s of training)")


def parser() -> argparse.ArgumentParser:
    """The command line; its defaults are the settings of the committed head (tests/test_models.py checks them
    against its training_info.json, so that ``make draft-retrain`` retrains that head)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", choices=("all", "generate", "features", "train"), default="all")
    ap.add_argument("--samples", type=int, default=3, help="answers per prompt (different seeds)")
    ap.add_argument("--gen-tokens", type=int, default=192)
    ap.add_argument("--gen-temperature", type=float, default=0.9)
    ap.add_argument("--gen-batch", type=int, default=64, help="prompts sampled together")
    ap.add_argument("--feature-dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--draft-vocab", type=int, default=8192)
    ap.add_argument("--train-dtype", default="bfloat16", choices=("bfloat16", "float32"),
                    help="matmul precision (autocast); the weights and the optimiser stay float32")
    ap.add_argument("--ttt-steps", type=int, default=3, help="draft steps unrolled in training (1: teacher forcing)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-progress", action="store_true")
    return ap


# oneDNN caches every bfloat16 matmul primitive it builds, one per distinct shape, up to 1024 of them (its default),
# and torch's ideep keeps its own LRU of them (LRU_CACHE_CAPACITY). Every batch here has its own lengths,
# so both caches filled with shapes that never recur: the train stage's resident memory grew by ~18 MB/s (3.0 ->
# 5.2 GB in its first 2 min, peak 20.7 GB for the pipeline). With both at 16 the train stage stays at ~3.0 GB, as
# fast, the pipeline peaks at 11.2 GB, and every artefact is the same byte for byte (a cache holds compiled kernels,
# not results; docs/models.md). Read by oneDNN when it first builds a primitive, so they are set before any stage
# runs; an explicit setting in the environment wins.
ONEDNN_CACHES = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16", "LRU_CACHE_CAPACITY": "16"}


def main(argv=None):
    args = parser().parse_args(argv)
    for name, value in ONEDNN_CACHES.items():
        os.environ.setdefault(name, value)
    if args.stage in ("all", "generate"):
        generate(args)
    if args.stage == "features" or (args.stage == "all" and not features_current()):
        features(args)
    if args.stage in ("all", "train"):
        train(args)


if __name__ == "__main__":
    sys.exit(main())

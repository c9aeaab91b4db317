"""Top-k / top-p: the EARS kernel's kept sets and passes, and vLLM's own kernel against the definition, on real rows.

Rows: (1) the real pair's target (SmolLM2-135M-Instruct, float32 weights) at every third position of seeded
continuations (T = 0.7) of the first ``--prompts`` creative prompts, vocabulary 49152, its logits as they are
(float32) and rounded to bfloat16 (the logits' dtype of a bf16 model on a GPU); (2) ``--synthetic`` rows, the GPU
benchmark's inputs (``randn * 3`` in bfloat16, vocabulary 151936). All at temperature 0.7, under top-k 50, top-p 0.9,
top-p 0.95 and top-k 50 with top-p 0.9.

Per row set and configuration (``results/top_k_top_p.csv``):
- ``ears_equal_rows``: rows where the EARS kernel (``kernels/top_k_top_p.py``) keeps exactly the definition's set
  (``ears_vllm/top_k_top_p.py``), and ``passes_p50`` / ``passes_max``: how many times it read a row to find it
  (by construction, not a timing: the GPU's cost is about that many reads of the row);
- vLLM's kernel (``scripts/harness/vllm_top_k_top_p.py``; synthetic rows only on a GPU): ``vllm_rows_differing``,
  ``vllm_tokens_differing_max``, ``vllm_tv_max`` / ``vllm_tv_mean`` (the total-variation distance between the
  truncated distributions, i.e. what sampling from one instead of the other changes) and
  ``vllm_extra_ties_only`` (every difference is vLLM keeping tokens tied with the definition's last kept one).

On CPU everything runs under Triton's interpreter (TRITON_INTERPRET=1 is set here without a GPU), so this takes
minutes; nothing here is timed.

    python -m scripts.bench.top_k_top_p                 # --prompts 8, writes results/top_k_top_p.csv
    python -m scripts.bench.top_k_top_p --quick         # 1 prompt, 1 synthetic row, no vLLM, results/quick/
"""

from __future__ import annotations

import argparse
import os

import torch

if not torch.cuda.is_available():  # before triton is imported (torch does not import it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from scripts.harness import real_pair, results, timing  # noqa: E402

TEMPERATURE = 0.7
CONFIGS = {"k50": (50, None), "p0.9": (None, 0.9), "p0.95": (None, 0.95), "k50_p0.9": (50, 0.9)}
COLUMNS = ["timestamp", "device", "device_type", "python", "torch", "triton", "vllm", "rows_from", "dtype", "vocab",
           "config", "top_k", "top_p", "temperature", "rows", "ears_equal_rows", "passes_p50", "passes_max",
           "kept_mean", "vllm_rows_differing", "vllm_tokens_differing_max", "vllm_tv_max", "vllm_tv_mean",
           "vllm_extra_ties_only"]
METRICS = ["rows", "ears_equal_rows", "passes_p50", "passes_max", "kept_mean", "vllm_rows_differing",
           "vllm_tokens_differing_max", "vllm_tv_max", "vllm_tv_mean", "vllm_extra_ties_only"]


def real_rows(prompts: int, seed: int = 0) -> torch.Tensor:
    """The target's raw logits at every third generated position of seeded continuations of creative prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scripts.bench.bench_e2e_text import load_prompts

    tok = AutoTokenizer.from_pretrained(real_pair.TARGET)
    model = AutoModelForCausalLM.from_pretrained(real_pair.TARGET, dtype=torch.float32)
    rows = []
    for i, prompt in enumerate(load_prompts(os.path.join(real_pair.ROOT, "data/prompts_creative.jsonl"), prompts)):
        torch.manual_seed(seed + i)
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=False)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=24, do_sample=True, temperature=TEMPERATURE, top_k=0,
                                 output_logits=True, return_dict_in_generate=True)
        rows += [logits[0] for logits in out.logits[::3]]
    return torch.stack(rows)


def ears_keep(scaled_from: torch.Tensor, top_k, top_p, device: str):
    """The EARS kernel's kept set on raw logits ``scaled_from`` (one request per row) and its passes per row."""
    from ears_vllm.kernels.top_k_top_p import top_k_top_p_thresholds

    rows, vocab = scaled_from.shape
    x = scaled_from.to(device)
    cu = torch.arange(1, rows + 1, dtype=torch.int32, device=device)
    temp = torch.full((rows,), TEMPERATURE, device=device)
    full = lambda v, dt: None if v is None else torch.full((rows,), v, dtype=dt, device=device)  # noqa: E731
    passes = torch.zeros(rows, dtype=torch.int32, device=device)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    thr, last = top_k_top_p_thresholds(x, cu, temp, full(top_k, torch.int64), full(top_p, torch.float32), 1, False,
                                       block_size=16384 if interpret else 512, num_warps=8, passes=passes)
    s = x.float() / temp[:, None]
    keep = (s > thr[:, None]) | ((s == thr[:, None]) & (torch.arange(vocab, device=device) <= last[:, None]))
    return keep.cpu(), passes.cpu()


def compare(name: str, raw: torch.Tensor, dtype: torch.dtype, device: str, vllm_module, out) -> None:
    from ears_vllm.top_k_top_p import top_k_top_p_keep
    from scripts.harness.vllm_top_k_top_p import vllm_keep

    x = raw.to(dtype)
    scaled = x.float() / TEMPERATURE
    rows, vocab = x.shape
    probs = torch.softmax(scaled.double(), dim=1)
    for config, (k, p) in CONFIGS.items():
        kt = None if k is None else torch.full((rows,), k)
        pt = None if p is None else torch.full((rows,), p)
        want = top_k_top_p_keep(scaled, kt, pt)
        got, passes = ears_keep(x, k, p, device)
        rec = dict(timing.env_columns(device), timestamp=timing.timestamp(), rows_from=name,
                   dtype=str(dtype).replace("torch.", ""), vocab=vocab, config=config, top_k=k, top_p=p,
                   temperature=TEMPERATURE, rows=rows, ears_equal_rows=int((got == want).all(dim=1).sum()),
                   passes_p50=float(passes.float().median()), passes_max=int(passes.max()),
                   kept_mean=float(want.sum(1).float().mean()), vllm_rows_differing=None,
                   vllm_tokens_differing_max=None, vllm_tv_max=None, vllm_tv_mean=None, vllm_extra_ties_only=None)
        line = f"{name:9s} {rec['dtype']:8s} {config:9s} EARS = definition on {rec['ears_equal_rows']}/{rows} rows, " \
               f"passes p50 {rec['passes_p50']:.0f} max {rec['passes_max']}"
        if vllm_module is not None:
            theirs = vllm_keep(vllm_module, scaled, kt, pt, device)
            differ = (theirs != want).any(dim=1)

            def truncated(keep):
                w = torch.where(keep, probs, 0.0)
                return w / w.sum(dim=1, keepdim=True)

            tv = 0.5 * (truncated(theirs) - truncated(want)).abs().sum(dim=1)
            extra_ties = True
            for r in differ.nonzero().squeeze(1).tolist():
                boundary = scaled[r][want[r]].min()
                extra = theirs[r] & ~want[r]
                extra_ties &= bool(not (want[r] & ~theirs[r]).any() and (scaled[r][extra] == boundary).all())
            rec.update(vllm_rows_differing=int(differ.sum()),
                       vllm_tokens_differing_max=int((theirs != want).sum(1).max()),
                       vllm_tv_max=float(tv.max()), vllm_tv_mean=float(tv.mean()), vllm_extra_ties_only=extra_ties)
            line += f"; vLLM differs on {rec['vllm_rows_differing']} rows (<= {rec['vllm_tokens_differing_max']} " \
                    f"tokens, TV max {rec['vllm_tv_max']:.2e} mean {rec['vllm_tv_mean']:.2e}, extra ties only: " \
                    f"{extra_ties})"
        print(line, flush=True)
        out.write(rec)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8, help="creative prompts (8 rows each; 0: none, e.g. on a GPU "
                    "machine without transformers or the model)")
    ap.add_argument("--synthetic", type=int, default=8, help="rows of randn * 3 (bf16, V=151936); 0: none")
    ap.add_argument("--no-vllm", action="store_true", help="skip vLLM's kernel (slow under the interpreter)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="1 prompt, 1 synthetic row, no vLLM; results/quick/")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.synthetic, args.no_vllm = 1, 1, True
    path = args.out or os.path.join(real_pair.ROOT, "results", "quick" if args.quick else "", "top_k_top_p.csv")
    out = results.Writer(path, "top_k_top_p", COLUMNS, METRICS, replace=args.quick)
    vllm_module = None
    if not args.no_vllm:
        from scripts.harness.vllm_top_k_top_p import load

        vllm_module = load()
    if args.prompts:
        raw = real_rows(args.prompts)
        for dtype in (torch.float32, torch.bfloat16):
            compare("real_pair", raw, dtype, args.device, vllm_module, out)
    if args.synthetic:  # vLLM's kernel on these only when compiled (the interpreter takes minutes per row)
        g = torch.Generator().manual_seed(0)
        compare("synthetic", torch.randn(args.synthetic, 151936, generator=g) * 3, torch.bfloat16, args.device,
                vllm_module if args.device == "cuda" else None, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

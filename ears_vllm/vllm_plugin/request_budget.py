"""Per-request TV budgets in the worker: the budget of each request and what it has spent of it, on the device.

A request's budget B (``tv_budget`` in the speculative config, or ``extra_args["ears_tv_budget"]``) caps the sum of
the exact expected TV costs of the positions it verifies (``ears_vllm.ears_rejection_sample``'s ``tv_budget``).
What it has spent must outlive its place in the batch: vLLM's V1 runner takes a request out of its persistent
batch whenever a step does not schedule it (and puts it back later), and Model Runner V2 frees a preempted
request's state slot and adds the request again when it resumes. So the spent amounts live in a ``BudgetLedger``
keyed by the request itself (V1: its ``SamplingParams`` object, which the runner keeps for the request's lifetime;
MRV2: its request id), released only when the request finishes. Entry 0 is a sink for requests without a budget.
Nothing here synchronises with the device: spending is an ``index_add_`` (V1) or the MRV2 kernel's in-place add.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import numpy as np
import torch
from vllm.v1.sample.logits_processor.interface import BatchUpdate

from .config import request_tv_budget
from .request_alpha import PerRequestState, follow_batch_update

NO_BUDGET = math.inf


def budget_of(params, default: float | None) -> float:
    """The request's TV budget: its own ``ears_tv_budget``, else the configured one, else none (inf)."""
    own = request_tv_budget(getattr(params, "extra_args", None)) if params is not None else None
    if own is not None:
        return own
    return NO_BUDGET if default is None else default


class BudgetLedger:
    """What each budgeted request has spent, in a growable float64 device table; entry 0 is a sink."""

    def __init__(self, device: torch.device, capacity: int = 64):
        self.spent = torch.zeros(max(capacity, 2), dtype=torch.float64, device=device)
        self._entry: dict[Hashable, int] = {}
        self._kept: dict[Hashable, object] = {}
        self._free = list(range(self.spent.numel() - 1, 0, -1))

    def entry(self, key: Hashable, keep: object = None) -> int:
        """The request's entry (a new one, zeroed, the first time); ``keep`` is held while the entry lives."""
        index = self._entry.get(key)
        if index is None:
            if not self._free:
                old = self.spent
                self.spent = torch.zeros(2 * old.numel(), dtype=torch.float64, device=old.device)
                self.spent[: old.numel()] = old
                self._free = list(range(self.spent.numel() - 1, old.numel() - 1, -1))
            index = self._free.pop()
            self.spent[index] = 0.0
            self._entry[key] = index
            if keep is not None:
                self._kept[key] = keep
        return index

    def release(self, key: Hashable) -> None:
        index = self._entry.pop(key, None)
        self._kept.pop(key, None)
        if index is not None:
            self._free.append(index)

    def __len__(self) -> int:
        return len(self._entry)


class RequestBudgets(PerRequestState):
    """V1 runner: each batch slot's budget and ledger entry, kept up to date from vLLM's ``BatchUpdate``s (the way
    ``RequestAlphas`` keeps alpha); a no-op logits processor otherwise (argmax-invariant, ``apply`` returns the
    logits)."""

    def __init__(self, default_budget: float | None, max_num_reqs: int, device: torch.device):
        self.default = default_budget
        self.ledger = BudgetLedger(device)
        self._budget = np.full(max_num_reqs, NO_BUDGET)
        self._entry = np.zeros(max_num_reqs, dtype=np.int64)
        self._device = device
        self._current: tuple[torch.Tensor, torch.Tensor] | None = None  # [batch] budget, entry; None: no budget

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return

        def value_of(params):
            budget = budget_of(params, self.default)
            return budget, (self.ledger.entry(id(params), keep=params) if budget < NO_BUDGET else 0)

        # A removed request keeps its ledger entry (it may return).
        follow_batch_update(batch_update, (self._budget, self._entry), (NO_BUDGET, 0), value_of)
        size = batch_update.batch_size
        if bool(np.isfinite(self._budget[:size]).any()):
            budget = torch.from_numpy(self._budget[:size].copy()).to(self._device, non_blocking=True)
            entry = torch.from_numpy(self._entry[:size].copy()).to(self._device, non_blocking=True)
            self._current = (budget, entry)
        else:
            self._current = None

    def remaining(self, batch_size: int) -> torch.Tensor | None:
        """``[batch]`` float64 budget left per request, or None when no request of the step has a budget."""
        current = self._current
        if current is None or current[0].shape[0] != batch_size:
            return None
        budget, entry = current
        return (budget - self.ledger.spent[entry]).clamp_(min=0.0)

    def spend(self, tv_cost: torch.Tensor) -> None:
        """Add each request's ``tv_cost`` of the step (``[batch]``, in batch order) to its entry (a no-budget
        request's goes to the sink)."""
        if self._current is not None:
            self.ledger.spent.index_add_(0, self._current[1], tv_cost.to(torch.float64))

    def release(self, params) -> None:
        """The request finished: its entry is free again."""
        self.ledger.release(id(params))

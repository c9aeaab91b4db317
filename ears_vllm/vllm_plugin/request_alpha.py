"""Per-request EARS alpha, kept per slot of vLLM's persistent batch, as vLLM keeps temperature or min-p.

vLLM tells its logits processors which requests joined, left or moved between slots (``BatchUpdate``, once per
step before the forward pass); ``RequestAlphas`` listens to the same updates, so the sampler reads a ready
``[batch]`` tensor (or the configured scalar when no request overrides it) with no per-step loop over requests.
It is a ``LogitsProcessor`` only to receive those updates: ``apply`` returns the logits untouched, and it is
argmax-invariant, so vLLM calls it on random rows only (the bonus sampler), where it costs a function call.
"""

from __future__ import annotations

import torch
from vllm.utils.torch_utils import PIN_MEMORY
from vllm.v1.sample.logits_processor.interface import BatchUpdate, LogitsProcessor, MoveDirectionality

from .config import request_alpha


def follow_batch_update(update: BatchUpdate, columns, empty, value_of) -> None:
    """Keep per-slot ``columns`` (numpy arrays indexed by batch slot) in step with vLLM's ``BatchUpdate``, in vLLM's
    order: removed slots get ``empty``, added ones ``value_of(params)`` (one value per column), then moves (a swap
    exchanges two slots; a one-way move leaves ``empty`` behind)."""
    for index in update.removed:
        for column, value in zip(columns, empty):
            column[index] = value
    for index, params, _, _ in update.added:
        for column, value in zip(columns, value_of(params)):
            column[index] = value
    for a, b, direction in update.moved:
        for column, value in zip(columns, empty):
            moved = column[a]
            column[a] = column[b] if direction == MoveDirectionality.SWAP else value
            column[b] = moved


class PerRequestState(LogitsProcessor):
    """A logits processor that only listens to vLLM's batch updates: ``apply`` returns the logits, and it is
    argmax-invariant (vLLM calls it on random rows only, where it costs a function call)."""

    def is_argmax_invariant(self) -> bool:
        return True

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


class RequestAlphas(PerRequestState):
    def __init__(self, default_alpha: float, max_num_reqs: int, device: torch.device):
        self.default = float(default_alpha)
        pin = PIN_MEMORY and device.type != "cpu"
        self._cpu = torch.full((max_num_reqs,), self.default, dtype=torch.float32, pin_memory=pin)
        self._np = self._cpu.numpy()
        self._device = self._cpu if device.type == "cpu" else torch.empty(max_num_reqs, device=device)
        self._current: torch.Tensor | None = None  # [batch] when a request in the batch overrides the default

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return

        def value_of(params):
            alpha = request_alpha(params.extra_args) if params is not None else None
            return (self.default if alpha is None else alpha,)

        follow_batch_update(batch_update, (self._np,), (self.default,), value_of)
        size = batch_update.batch_size
        if bool((self._np[:size] != self.default).any()):
            self._current = self._device[:size]
            if self._device is not self._cpu:
                self._current.copy_(self._cpu[:size], non_blocking=True)
        else:
            self._current = None

    def alpha(self, batch_size: int) -> float | torch.Tensor:
        """The alpha of each request of a step of ``batch_size`` requests: a scalar when none overrides it."""
        current = self._current
        if current is None or current.shape[0] != batch_size:
            return self.default
        return current

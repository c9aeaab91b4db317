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


class RequestAlphas(LogitsProcessor):
    def __init__(self, default_alpha: float, max_num_reqs: int, device: torch.device):
        self.default = float(default_alpha)
        pin = PIN_MEMORY and device.type != "cpu"
        self._cpu = torch.full((max_num_reqs,), self.default, dtype=torch.float32, pin_memory=pin)
        self._np = self._cpu.numpy()
        self._device = self._cpu if device.type == "cpu" else torch.empty(max_num_reqs, device=device)
        self._current: torch.Tensor | None = None  # [batch] when a request in the batch overrides the default

    def is_argmax_invariant(self) -> bool:
        return True

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return
        # vLLM's order: removed, then added, then moved.
        for index in batch_update.removed:
            self._np[index] = self.default
        for index, params, _, _ in batch_update.added:
            alpha = request_alpha(params.extra_args) if params is not None else None
            self._np[index] = self.default if alpha is None else alpha
        for a, b, direction in batch_update.moved:
            alpha_a, alpha_b = self._np[a], self._np[b]
            self._np[b] = alpha_a
            self._np[a] = alpha_b if direction == MoveDirectionality.SWAP else self.default
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

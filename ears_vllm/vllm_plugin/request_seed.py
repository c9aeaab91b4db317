"""Each request's seed for the stateless randomness of the V1 runner on CUDA (``ears_vllm/stateless.py``).

A seeded request keys its draws with ``SamplingParams.seed``; any other request gets a random seed from numpy's
global state when it joins the batch, as Model Runner V2 gives one to each request state: vLLM seeds that state
alike in every worker (``set_random_seed``), so the tensor-parallel ranks, which each sample, draw the same seed
and the same tokens. With the token positions of the rows (the
runner's own ``positions`` buffer gathered at the step's ``logits_indices``), each draw is a function of (seed,
position): the kernel draws it, so seeded requests need no generator and no per-request host loop, and a seeded
request draws the same numbers whatever its batch. A request that leaves the batch and comes back unseeded gets a
new seed: its earlier draws are not repeated, they are replaced by independent ones.
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.utils.torch_utils import PIN_MEMORY
from vllm.v1.sample.logits_processor.interface import BatchUpdate

from .request_alpha import PerRequestState, follow_batch_update


class RequestSeeds(PerRequestState):
    def __init__(self, max_num_reqs: int, device: torch.device):
        pin = PIN_MEMORY and device.type != "cpu"
        self._cpu = torch.zeros(max_num_reqs, dtype=torch.int64, pin_memory=pin)
        self._np = self._cpu.numpy()
        self._device = self._cpu if device.type == "cpu" else torch.zeros(max_num_reqs, dtype=torch.int64,
                                                                          device=device)
        self._size = 0

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return

        def value_of(params):
            seed = getattr(params, "seed", None)
            if seed is None:  # numpy's global state: the same draw on every worker (not a private generator)
                return (int(np.random.randint(np.iinfo(np.int64).min, np.iinfo(np.int64).max, dtype=np.int64)),)
            return ((int(seed) + 2**63) % 2**64 - 2**63,)  # any int: its low 64 bits, as a signed int64

        follow_batch_update(batch_update, (self._np,), (0,), value_of)
        self._size = batch_update.batch_size
        if self._device is not self._cpu:
            self._device[: self._size].copy_(self._cpu[: self._size], non_blocking=True)

    def seeds(self, batch_size: int) -> torch.Tensor:
        """``[batch_size]`` int64 on the device: the seed of each request of the step, in batch order."""
        return self._device[:batch_size]

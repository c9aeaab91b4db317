"""Patch Model Runner V2's ``GPUModelRunner.__init__`` (``vllm.v1.worker.gpu.model_runner``): refuse EARS.

Why: MRV2 has its own rejection kernel and no EARS; the stock sampler must never run silently when EARS is
configured. ``vllm_config.py`` makes vLLM choose the V1 runner; this covers MRV2 forced anyway
(VLLM_USE_V2_MODEL_RUNNER=1, watermarking or HiSparse).
How: before the original ``__init__``, raise a one-line ``RuntimeError`` naming the switch when EARS verifies the
drafts.
Active without EARS: no.
Versions: vLLM 0.33.x (read, not run: CPU never builds MRV2); 0.32.x has the module too.
Remove when: EARS has an MRV2 rejection kernel.
"""

from __future__ import annotations

from ..config import EarsSettings
from ._patch import wrap


def apply(runner_v2_module) -> None:
    @wrap(runner_v2_module.GPUModelRunner, "__init__")
    def __init__(original, self, vllm_config, *args, **kwargs):
        if EarsSettings.of(vllm_config) is not None:
            raise RuntimeError(
                "EARS (rejection_sampler='ears') runs in vLLM's V1 model runner only, but Model Runner V2 was "
                "selected (VLLM_USE_V2_MODEL_RUNNER=1, watermarking or HiSparse): unset VLLM_USE_V2_MODEL_RUNNER "
                "or set it to 0"
            )
        original(self, vllm_config, *args, **kwargs)

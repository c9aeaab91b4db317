"""Patch ``VllmConfig._get_v2_model_runner_unsupported_features``: EARS runs in the V1 model runner only.

Why: Model Runner V2 (MRV2, vllm/v1/worker/gpu/, the GPU default in 0.33) has its own rejection kernel that draws
the uniforms inside the kernel; EARS is implemented for the V1 runner's ``RejectionSampler``. The stock sampler
must never run silently when EARS is configured.
How: when EARS verifies the drafts, add "the EARS rejection sampler" to the list of features MRV2 lacks; vLLM then
logs "Model Runner V2 does not yet support the EARS rejection sampler; using the V1 model runner instead." and
builds the V1 runner. If MRV2 is forced anyway (VLLM_USE_V2_MODEL_RUNNER=1, watermarking, HiSparse), the worker
refuses to start (``gpu_model_runner_v2.py``).
Active without EARS: no.
Versions: vLLM 0.32.x (run; CPU never uses MRV2; the method may be absent, then nothing is patched), 0.33.x (same
method, read, not run on a GPU here).
Remove when: EARS has an MRV2 rejection kernel.
"""

from __future__ import annotations

from ..config import EarsSettings
from ._patch import wrap

FEATURE = "the EARS rejection sampler (ears_vllm)"


def apply(vllm_config_module) -> None:
    cls = vllm_config_module.VllmConfig
    if "_get_v2_model_runner_unsupported_features" not in cls.__dict__:
        return

    @wrap(cls, "_get_v2_model_runner_unsupported_features")
    def _get_v2_model_runner_unsupported_features(original, self, *args, **kwargs):
        unsupported = original(self, *args, **kwargs)
        if EarsSettings.of(self) is not None:
            unsupported = [*unsupported, FEATURE]
        return unsupported

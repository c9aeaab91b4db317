"""Patch ``VllmConfig._get_v2_model_runner_unsupported_features``: EARS runs in the V1 model runner only.

Why: Model Runner V2 (MRV2, vllm/v1/worker/gpu/, the GPU default in 0.33) has its own rejection kernel that draws
the uniforms inside the kernel; EARS is implemented for the V1 runner's ``RejectionSampler``. The stock sampler
must never run silently when EARS is configured.
How: when ``additional_config["ears"]`` selects EARS, add "the EARS rejection sampler" to the list of features MRV2
lacks; vLLM then logs "Model Runner V2 does not yet support the EARS rejection sampler; using the V1 model runner
instead." and builds the V1 runner. If MRV2 is forced anyway (VLLM_USE_V2_MODEL_RUNNER=1, watermarking, HiSparse),
the worker refuses to start (see ``gpu_model_runner.py``) and ``check_runner`` raises in the front-end.
Versions: vLLM 0.32.x (run; CPU never uses MRV2), 0.33.x (same method, read, not run on a GPU here).
Remove when: EARS has an MRV2 rejection kernel.
"""

from __future__ import annotations

from ..config import ears_settings

FEATURE = "the EARS rejection sampler (ears_vllm)"


def apply(vllm_config_module) -> None:
    cls = vllm_config_module.VllmConfig
    original = getattr(cls, "_get_v2_model_runner_unsupported_features", None)
    if original is None or getattr(original, "_ears", False):
        return

    def _get_v2_model_runner_unsupported_features(self, *args, **kwargs):
        unsupported = original(self, *args, **kwargs)
        settings = ears_settings(getattr(self, "additional_config", None))
        if settings is not None and settings.enabled and self.speculative_config is not None:
            unsupported = [*unsupported, FEATURE]
        return unsupported

    _get_v2_model_runner_unsupported_features._ears = True
    _get_v2_model_runner_unsupported_features.__wrapped__ = original
    cls._get_v2_model_runner_unsupported_features = _get_v2_model_runner_unsupported_features

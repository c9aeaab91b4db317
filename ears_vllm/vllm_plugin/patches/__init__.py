"""Every monkeypatch of vLLM, one file per patched object; each file's docstring says why, how, for which vLLM
versions, and what upstream change would remove it. ``install()`` schedules them all, each when its module loads."""

from __future__ import annotations

from ._hooks import when_imported


def install() -> None:
    from . import (
        cpu_triton_utils_expand,
        engine_args_speculative_config,
        gpu_model_runner,
        gpu_model_runner_cpu_generator_rewind,
        gpu_model_runner_draft_seed_keys,
        llm_base_proposer_seeded_drafts,
        metrics_loggers,
        sampling_params_verify,
        scheduler_update_from_output,
        spec_decode_metrics_stats,
        vllm_config_v2_runner,
    )

    # Front-end: config keys, per-request alpha.
    when_imported("vllm.engine.arg_utils", engine_args_speculative_config.apply)
    when_imported("vllm.sampling_params", sampling_params_verify.apply)
    when_imported("vllm.config.vllm", vllm_config_v2_runner.apply)
    # Stats, front-end and engine core (fields first: msgspec must see them before the first message).
    when_imported("vllm.v1.spec_decode.metrics", spec_decode_metrics_stats.apply)
    when_imported("vllm.v1.spec_decode.metrics", metrics_loggers.apply_spec_decode)
    when_imported("vllm.v1.metrics.loggers", metrics_loggers.apply_prometheus)
    when_imported("vllm.v1.core.sched.scheduler", scheduler_update_from_output.apply)
    # Workers.
    when_imported("vllm.utils.cpu_triton_utils", cpu_triton_utils_expand.apply)
    when_imported("vllm.v1.worker.gpu_model_runner", gpu_model_runner.apply)
    when_imported("vllm.v1.worker.gpu_model_runner", gpu_model_runner_cpu_generator_rewind.apply)
    # Seeded requests' probabilistic drafts: whichever rejection sampler runs.
    when_imported("vllm.v1.spec_decode.llm_base_proposer", llm_base_proposer_seeded_drafts.apply)
    when_imported("vllm.v1.worker.gpu_model_runner", gpu_model_runner_draft_seed_keys.apply)
    when_imported("vllm.v1.worker.gpu.model_runner", gpu_model_runner.apply_v2)

"""Every monkeypatch of vLLM, one file per patched vLLM object, each applied with ``_patch.wrap`` / ``replace``
when vLLM imports the patched module. Each file's docstring says why, how, whether it is active without EARS, for
which vLLM versions, and what upstream change would remove it.

Active without EARS (they fix vLLM itself, whichever rejection sampler is configured): ``cpu_triton_utils``
(per-token sampling parameters on CPU), ``gpu_model_runner`` job 2 (seeded requests on CPU) and job 3 with
``spec_decode_base_proposer`` (seeded probabilistic drafts), ``draft_sampling_cpu`` (CPU draft tokens by inverse
CDF), ``spec_decoding_stats`` and ``request_spec_decode_metrics`` (extra fields, 0 / empty / None without EARS),
``sampling_params`` (for requests that set ``ears_alpha`` or ``ears_tv_budget``).
"""

from __future__ import annotations

from ._patch import when_imported


def install() -> None:
    from . import (
        cpu_triton_utils,
        draft_sampling_cpu,
        engine_args,
        gpu_model_runner,
        gpu_model_runner_v2,
        prometheus_stat_logger,
        request_spec_decode_metrics,
        sampling_params,
        scheduler,
        spec_decode_base_proposer,
        spec_decoding_logging,
        spec_decoding_prom,
        spec_decoding_stats,
    )

    # Front-end: config keys, per-request alpha.
    when_imported("vllm.engine.arg_utils", engine_args.apply)
    when_imported("vllm.sampling_params", sampling_params.apply)
    # Stats, front-end and engine core (fields first: msgspec must see them before the first message).
    when_imported("vllm.v1.spec_decode.metrics", spec_decoding_stats.apply)
    when_imported("vllm.v1.spec_decode.metrics", spec_decoding_prom.apply)
    when_imported("vllm.v1.spec_decode.metrics", spec_decoding_logging.apply)
    when_imported("vllm.v1.metrics.stats", request_spec_decode_metrics.apply)
    when_imported("vllm.v1.metrics.loggers", prometheus_stat_logger.apply)
    when_imported("vllm.v1.core.sched.scheduler", scheduler.apply)
    # Workers.
    when_imported("vllm.utils.cpu_triton_utils", cpu_triton_utils.apply)
    when_imported("vllm.v1.spec_decode.llm_base_proposer", spec_decode_base_proposer.apply)
    when_imported("vllm.v1.spec_decode.llm_base_proposer", draft_sampling_cpu.apply)
    when_imported("vllm.v1.worker.gpu_model_runner", gpu_model_runner.apply)  # V1 runner (and the CPU runner)
    when_imported("vllm.v1.worker.gpu.model_runner", gpu_model_runner_v2.apply)  # Model Runner V2

"""Every monkeypatch of vLLM, one file per patched vLLM object, each applied with ``_patch.wrap`` / ``replace``
when vLLM imports the patched module. Each file's docstring says why, how, whether it is active without EARS, for
which vLLM versions, and what upstream change would remove it.

Active without EARS (they fix vLLM itself, whichever rejection sampler is configured): ``cpu_triton_utils``
(per-token sampling parameters on CPU), ``gpu_model_runner`` job 2 (seeded requests on CPU) and job 3 with
``spec_decode_base_proposer`` (seeded probabilistic drafts), ``draft_sampling_cpu`` (CPU draft tokens by inverse
CDF), ``spec_decoding_stats`` and ``request_spec_decode_metrics`` (extra fields, 0 / empty / None without EARS),
``sampling_params`` (for requests that set ``ears_alpha`` or ``ears_tv_budget``).

``EARS_VLLM_FIXES=0`` in the environment turns those fixes off (``cpu_triton_utils``, ``draft_sampling_cpu``,
``spec_decode_base_proposer``, ``gpu_model_runner`` jobs 2 and 3): vLLM's own code paths then run as vLLM ships
them. An engine that runs EARS on CPU still applies ``cpu_triton_utils`` (EARS's sampler calls vLLM's expand);
the inert stats fields and the check of the two per-request keys stay.
"""

from __future__ import annotations

import os

from ..config import EarsConfigError
from ..top_k_top_p import top_k_top_p_choice
from ._patch import log_once, when_imported

FIXES_ENV = "EARS_VLLM_FIXES"
FIXES = ("cpu_triton_utils", "draft_sampling_cpu", "spec_decode_base_proposer",
         "gpu_model_runner (CPU generator rewind, seeded draft keys)")


def fixes_enabled() -> bool:
    """Whether the fixes of vLLM's own code paths are on: ``EARS_VLLM_FIXES`` unset or 1 (default), 0 off."""
    value = os.environ.get(FIXES_ENV, "1").strip()
    if value not in ("0", "1"):
        raise EarsConfigError(f"{FIXES_ENV}={value!r} is not allowed: use 1 (the default: vLLM fixes on) or 0 (off)")
    return value == "1"


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

    try:
        fixes = fixes_enabled()
        top_k_top_p_choice()
    except EarsConfigError:
        engine_args._install_one_line_excepthook()  # the CLI prints "Error: ..." rather than a traceback
        raise
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
    if fixes:
        when_imported("vllm.utils.cpu_triton_utils", cpu_triton_utils.apply)
        when_imported("vllm.v1.spec_decode.llm_base_proposer", spec_decode_base_proposer.apply)
        when_imported("vllm.v1.spec_decode.llm_base_proposer", draft_sampling_cpu.apply)
    else:
        log_once("fixes_off", "EARS plugin: %s=0: vLLM's own code paths unpatched (off: %s)", FIXES_ENV,
                 ", ".join(FIXES))
    when_imported("vllm.v1.worker.gpu_model_runner",  # V1 runner (and the CPU runner)
                  lambda module: gpu_model_runner.apply(module, fixes=fixes))
    when_imported("vllm.v1.worker.gpu.model_runner", gpu_model_runner_v2.apply)  # Model Runner V2

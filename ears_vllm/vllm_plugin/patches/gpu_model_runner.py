"""Patch the V1 ``GPUModelRunner`` (``CPUModelRunner`` subclasses it): EARS verifies the drafts.

Why: the runner builds ``self.rejection_sampler = RejectionSampler(...)`` in ``__init__``; vLLM has no hook to
choose another rejection sampler.
How: ``__init__``: call the original, then, when ``additional_config["ears"]`` selects EARS and speculative decoding
is on, replace ``self.rejection_sampler`` with ``EarsRejectionSampler`` (a subclass, same call signature), add
its per-slot alpha state (``RequestAlphas``) to the input batch's logits processors so that vLLM's batch updates
reach it, and log "EARS rejection sampler active: ...". ``sample_tokens``: mark the sampler as recording while real
requests are sampled (warm-up / profiling runs are not counted), then attach its counters to the
``ModelRunnerOutput`` as the attribute ``ears_stats`` (for an async output, when its ``get_output()`` runs). The MRV2 runner
(``vllm.v1.worker.gpu.model_runner``) refuses to start with EARS instead of running the stock sampler silently.
Versions: vLLM 0.32.x (run on CPU), 0.33.x (same names, read; GPU path not run here).
Remove when: vLLM lets a plugin provide the rejection sampler.
"""

from __future__ import annotations

from ..config import ears_settings
from ._hooks import log_once


def _settings(vllm_config):
    settings = ears_settings(getattr(vllm_config, "additional_config", None))
    if settings is None or not settings.enabled or vllm_config.speculative_config is None:
        return None
    return settings


def _attach(sampler, output):
    stats = sampler.drain_stats()
    if stats is not None and output is not None:
        try:
            output.ears_stats = stats
        except AttributeError:  # not a ModelRunnerOutput (e.g. IntermediateTensors on a non-last PP rank)
            pass


def apply(runner_module) -> None:
    cls = runner_module.GPUModelRunner
    if getattr(cls.__init__, "_ears", False):
        return
    original_init = cls.__init__
    original_sample_tokens = cls.sample_tokens

    def __init__(self, vllm_config, *args, **kwargs):
        original_init(self, vllm_config, *args, **kwargs)
        settings = _settings(vllm_config)
        # vLLM builds a rejection sampler on the last pipeline-parallel rank only: replace it where it exists.
        if settings is None or getattr(self, "rejection_sampler", None) is None:
            return
        from ..request_alpha import RequestAlphas
        from ..sampler import EarsRejectionSampler

        # Per-request alpha rides vLLM's per-slot updates of its logits processors (the input batch keeps this
        # LogitsProcessors object when it is rebuilt for the KV cache's block sizes).
        alphas = RequestAlphas(settings.alpha, self.max_num_reqs, self.device)
        self.input_batch.logitsprocs.argmax_invariant.append(alphas)
        self.rejection_sampler = EarsRejectionSampler(
            self.sampler, self.speculative_config, self.device, settings, alphas
        )
        backend = "triton (fused kernel, CUDA)" if self.device.type == "cuda" else f"torch ({self.device.type})"
        log_once(
            "active",
            "EARS rejection sampler active: alpha=%s, runner=V1 %s, backend=%s, method=%s",
            settings.alpha, type(self).__name__, backend, self.speculative_config.method,
        )

    def sample_tokens(self, *args, **kwargs):
        sampler = getattr(self, "rejection_sampler", None)
        if not hasattr(sampler, "drain_stats"):
            return original_sample_tokens(self, *args, **kwargs)
        sampler.recording = True
        try:
            output = original_sample_tokens(self, *args, **kwargs)
        finally:
            sampler.recording = False
        get_output = getattr(output, "get_output", None)
        if callable(get_output) and not hasattr(output, "sampled_token_ids"):
            pending = sampler.take_pending()

            def get_output_with_stats(_get=get_output, _pending=pending):
                result = _get()
                stats = sampler.sum_pending(_pending)  # waits for this step's counters only, like the tokens
                if stats is not None:
                    result.ears_stats = stats
                return result

            output.get_output = get_output_with_stats
        else:
            _attach(sampler, output)
        return output

    __init__._ears = True
    __init__.__wrapped__ = original_init
    sample_tokens.__wrapped__ = original_sample_tokens
    cls.__init__ = __init__
    cls.sample_tokens = sample_tokens


def apply_v2(runner_v2_module) -> None:
    """MRV2 has no EARS: refuse to start rather than verify with the stock sampler."""
    cls = runner_v2_module.GPUModelRunner
    if getattr(cls.__init__, "_ears", False):
        return
    original_init = cls.__init__

    def __init__(self, vllm_config, *args, **kwargs):
        if _settings(vllm_config) is not None:
            raise RuntimeError(
                "EARS (rejection_sampler='ears') runs in vLLM's V1 model runner only, but Model Runner V2 was "
                "selected (VLLM_USE_V2_MODEL_RUNNER=1, watermarking or HiSparse): unset VLLM_USE_V2_MODEL_RUNNER "
                "or set it to 0"
            )
        original_init(self, vllm_config, *args, **kwargs)

    __init__._ears = True
    __init__.__wrapped__ = original_init
    cls.__init__ = __init__

"""Patch Model Runner V2's ``GPUModelRunner`` (``vllm.v1.worker.gpu.model_runner``): EARS verifies the drafts.

Why: MRV2 builds ``self.rejection_sampler = RejectionSampler(...)`` in ``load_model``; vLLM has no hook to choose
another rejection sampler, nor a way for one to see each request's sampling parameters or report statistics.
How, four methods:
- ``load_model``: call the original, then, when EARS verifies the drafts, replace MRV2's ``RejectionSampler`` with
  ``EarsMrv2RejectionSampler`` (a subclass, same call; ``mrv2_sampler.py``) and log "EARS rejection sampler
  active". A model that brings its own rejection sampler (``model_state.custom_sampler``) is refused with a
  one-line error: EARS would silently not run.
- ``add_requests``: after the original, hand each new request's sampling parameters to the sampler (its alpha and
  TV budget, by request-state slot), as the runner does for MRV2's ``Sampler``, and publish them.
- ``finish_requests``: before the original, forget what the finished requests spent of their TV budgets (a
  preempted request, which MRV2 removes and adds again later, keeps it).
- ``sample_tokens``: after the original, attach the step's EARS counters and each request's TV cost in the step to
  the ``ModelRunnerOutput`` that the returned ``AsyncOutput.get_output()`` gives (attributes ``ears_stats`` and
  ``ears_request_tv``, read by ``scheduler.py``); reading them waits for that step's copy only, after the tokens'
  own copy.
Active without EARS: no.
Versions: vLLM 0.32.x and 0.33.x (same four methods; read against both sources, run on neither's GPU runner: the
sampler itself ran on CPU under Triton's interpreter, and on a GPU with 0.33's sources).
Remove when: vLLM lets a plugin provide MRV2's rejection sampler and its statistics.
"""

from __future__ import annotations

from ..config import EarsSettings
from ._patch import log_once, wrap


def install_ears(runner) -> bool:
    """Replace ``runner.rejection_sampler`` by the EARS sampler when EARS verifies the drafts; True if it did."""
    settings = EarsSettings.of(runner.vllm_config)
    stock = getattr(runner, "rejection_sampler", None)
    # MRV2 builds a rejection sampler on the last pipeline-parallel rank only: replace it where it exists.
    if settings is None or stock is None:
        return False
    from vllm.v1.worker.gpu.spec_decode.rejection_sampler import RejectionSampler

    from ..mrv2_sampler import EarsMrv2RejectionSampler

    if settings.rule != "ears":
        raise RuntimeError(
            f"rejection_sampler={settings.rule!r} is an experimental rule of the V1 model runner only, but Model "
            f"Runner V2 was selected: set VLLM_USE_V2_MODEL_RUNNER=0"
        )
    if type(stock) is not RejectionSampler:
        raise RuntimeError(
            f"EARS (rejection_sampler='ears') cannot replace {type(stock).__name__}, the rejection sampler this "
            f"model brings to Model Runner V2: remove rejection_sampler='ears' for this model"
        )
    runner.rejection_sampler = EarsMrv2RejectionSampler(
        runner.sampler, runner.speculative_config, runner.device, settings, runner.max_num_reqs,
        watermark_key=stock.watermark_key,
    )
    log_once(
        "active",
        "EARS rejection sampler active: alpha=%s, runner=Model Runner V2, backend=triton (MRV2 kernels + EARS "
        "rejection kernel), method=%s",
        settings.alpha, runner.speculative_config.method,
    )
    return True


def add_request_alphas(runner, scheduler_output) -> None:
    """Give the EARS sampler the sampling parameters of the step's new requests (their per-request alpha)."""
    sampler = runner.rejection_sampler
    added = False
    for new_req_data in scheduler_output.scheduled_new_reqs:
        if new_req_data.sampling_params is None:
            continue
        sampler.add_request(runner.req_states.req_id_to_index[new_req_data.req_id], new_req_data.sampling_params,
                            new_req_data.req_id)
        added = True
    if added:
        sampler.apply_staged_writes()


def attach_stats(sampler, output):
    """Make ``output.get_output()`` carry the step's EARS counters (``ears_stats``) and each request's TV cost in the
    step (``ears_request_tv``) when the sampler ran."""
    pending = sampler.take_pending()
    get_output = getattr(output, "get_output", None)
    if pending is None or not callable(get_output):
        return output

    def get_output_with_stats(_get=get_output, _pending=pending):
        result = _get()
        stats, costs = sampler.read_pending(_pending)
        if stats is not None:
            result.ears_stats = stats
            result.ears_request_tv = costs
        return result

    output.get_output = get_output_with_stats
    return output


def _ears_sampler(runner):
    from ..mrv2_sampler import EarsMrv2RejectionSampler

    sampler = getattr(runner, "rejection_sampler", None)
    return sampler if isinstance(sampler, EarsMrv2RejectionSampler) else None


def apply(runner_v2_module) -> None:
    cls = runner_v2_module.GPUModelRunner

    @wrap(cls, "load_model")
    def load_model(original, self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        install_ears(self)
        return result

    @wrap(cls, "add_requests")
    def add_requests(original, self, scheduler_output, *args, **kwargs):
        result = original(self, scheduler_output, *args, **kwargs)
        if _ears_sampler(self) is not None:
            add_request_alphas(self, scheduler_output)
        return result

    @wrap(cls, "finish_requests")
    def finish_requests(original, self, scheduler_output, *args, **kwargs):
        sampler = _ears_sampler(self)
        if sampler is not None:  # finished, not preempted: a preempted request keeps what it spent
            for req_id in scheduler_output.finished_req_ids:
                sampler.finish_request(req_id)
        return original(self, scheduler_output, *args, **kwargs)

    @wrap(cls, "sample_tokens")
    def sample_tokens(original, self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        sampler = _ears_sampler(self)
        return output if sampler is None else attach_stats(sampler, output)

"""Patch ``Scheduler.update_from_output``: move the worker's EARS counters into this step's ``SpecDecodingStats``,
and keep each request's total TV cost until it finishes.

Why: the scheduler builds the per-step ``SpecDecodingStats`` that travel to the front-end; the EARS counters come
from the worker's sampler, attached to ``ModelRunnerOutput`` as the attribute ``ears_stats`` (see
``gpu_model_runner.py``; the attribute survives the executor's pickling between worker and engine core).
How: call the original, then add the counters to the ``SpecDecodingStats`` of the outgoing ``EngineCoreOutputs``;
add the step's per-request costs (``ears_request_tv``) to each request's total, and when a request finishes, put
its total in the stats (``ears_request_tv_spent``, a histogram's samples) and in its per-request spec-decode
metrics (``request_spec_decode_metrics.py``).
A step for which vLLM counted no drafts (stats disabled, or every drafted request finished / preempted before its
output arrived) adds nothing either: the EARS counters stay a subset of vLLM's, and the log line never sees a
stats object with 0 drafts (its mean acceptance length would be 0/0).
Active without EARS: no (without EARS no output carries ``ears_stats``).
Versions: vLLM 0.32.x (run), 0.33.x (same method, read). ``AsyncScheduler`` inherits it.
Remove when: vLLM gives rejection samplers a way to report their own statistics.
"""

from __future__ import annotations

from ._patch import wrap
from .spec_decoding_stats import add


def _finished_spending(scheduler, outputs, model_runner_output) -> list[float]:
    """Add the step's per-request TV costs to each request's total; return the totals of the requests that finished
    in this step (and put each in its per-request metrics, when vLLM's are on)."""
    spent = scheduler.__dict__.setdefault("_ears_tv_spent", {})
    for req_id, cost in (getattr(model_runner_output, "ears_request_tv", None) or {}).items():
        spent[req_id] = spent.get(req_id, 0.0) + cost
    if not spent:
        return []
    finished = []
    for eco_batch in outputs.values():
        for eco in eco_batch.outputs:
            if eco.finish_reason is not None and eco.request_id in spent:
                value = spent.pop(eco.request_id)
                finished.append(value)
                if getattr(eco, "spec_decode_metrics", None) is not None:
                    eco.spec_decode_metrics.ears_tv_spent = value
    for req_id in [r for r in spent if r not in scheduler.requests]:  # aborted: no output will carry it
        del spent[req_id]
    return finished


def apply(scheduler_module) -> None:
    @wrap(scheduler_module.Scheduler, "update_from_output")
    def update_from_output(original, self, scheduler_output, model_runner_output, *args, **kwargs):
        outputs = original(self, scheduler_output, model_runner_output, *args, **kwargs)
        ears = getattr(model_runner_output, "ears_stats", None)
        finished = _finished_spending(self, outputs, model_runner_output)
        if ears or finished:
            for eco in outputs.values():
                stats = eco.scheduler_stats
                if stats is None:
                    continue
                if stats.spec_decoding_stats is not None:
                    add(stats.spec_decoding_stats, *(ears or (0, 0, 0.0, 0.0)), finished)
                break
        return outputs

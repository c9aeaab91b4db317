"""Patch ``Scheduler.update_from_output``: move the worker's EARS counters into this step's ``SpecDecodingStats``.

Why: the scheduler builds the per-step ``SpecDecodingStats`` that travel to the front-end; the EARS counters come
from the worker's sampler, attached to ``ModelRunnerOutput`` as the attribute ``ears_stats`` (see
``gpu_model_runner.py``; the attribute survives the executor's pickling between worker and engine core).
How: call the original, then add the counters to the ``SpecDecodingStats`` of the outgoing ``EngineCoreOutputs``.
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


def apply(scheduler_module) -> None:
    @wrap(scheduler_module.Scheduler, "update_from_output")
    def update_from_output(original, self, scheduler_output, model_runner_output, *args, **kwargs):
        outputs = original(self, scheduler_output, model_runner_output, *args, **kwargs)
        ears = getattr(model_runner_output, "ears_stats", None)
        if ears:
            for eco in outputs.values():
                stats = eco.scheduler_stats
                if stats is None:
                    continue
                if stats.spec_decoding_stats is not None:
                    add(stats.spec_decoding_stats, *ears)
                break
        return outputs

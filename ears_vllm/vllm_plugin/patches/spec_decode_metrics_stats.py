"""Patch ``vllm.v1.spec_decode.metrics.SpecDecodingStats``: four EARS counters ride along with vLLM's own.

Why: EARS counters are produced in the worker's sampler and must reach the front-end's stat loggers (periodic log
line, Prometheus /metrics). vLLM already carries ``SpecDecodingStats`` from the scheduler to the front-end inside
``EngineCoreOutputs.scheduler_stats`` (msgspec-encoded); it has no free-form field.
How: add four defaulted fields to the dataclass (``__dataclass_fields__``, ``__annotations__`` and a class-level
default), in every process (the plugin loads in the front-end and the engine core before the first message), so
msgspec encodes them in the engine core and decodes them in the front-end. Instances made by vLLM's constructor
read the class default (0) until the scheduler patch fills them.
Versions: vLLM 0.32.x (run), 0.33.x (same dataclass, read).
Remove when: vLLM gives rejection samplers a way to report their own statistics.
"""

from __future__ import annotations

import dataclasses

# name -> (type, default)
EARS_FIELDS = {
    "ears_num_tolerance_accepted": (int, 0),
    "ears_num_verified": (int, 0),
    "ears_uncertainty_sum": (float, 0.0),
    "ears_tv_cost_sum": (float, 0.0),
}


def apply(metrics_module) -> None:
    cls = metrics_module.SpecDecodingStats
    for name, (typ, default) in EARS_FIELDS.items():
        if name in cls.__dataclass_fields__:
            continue
        f = dataclasses.field(default=default)
        f.name, f.type, f._field_type = name, typ, dataclasses._FIELD
        cls.__dataclass_fields__[name] = f
        cls.__annotations__[name] = typ
        setattr(cls, name, default)


def add(stats, num_tolerance_accepted: int, num_verified: int, uncertainty_sum: float, tv_cost_sum: float) -> None:
    stats.ears_num_tolerance_accepted = getattr(stats, "ears_num_tolerance_accepted", 0) + num_tolerance_accepted
    stats.ears_num_verified = getattr(stats, "ears_num_verified", 0) + num_verified
    stats.ears_uncertainty_sum = getattr(stats, "ears_uncertainty_sum", 0.0) + uncertainty_sum
    stats.ears_tv_cost_sum = getattr(stats, "ears_tv_cost_sum", 0.0) + tv_cost_sum

"""Patch ``vllm.v1.spec_decode.metrics.SpecDecodingStats``: the EARS counters ride along with vLLM's own.

Why: EARS counters are produced in the worker's sampler and must reach the front-end's stat loggers (periodic log
line, Prometheus /metrics). vLLM already carries ``SpecDecodingStats`` from the scheduler to the front-end inside
``EngineCoreOutputs.scheduler_stats`` (msgspec-encoded); it has no free-form field.
How: add five defaulted fields to the dataclass in every process (four counters; the TV cost spent by each request
that finished in the step), before the first message (the plugin loads in the front-end and the engine core
first): msgspec encodes and decodes a dataclass by its ``__dataclass_fields__``, so the
fields are entered there, as ``dataclasses.Field`` objects made by ``dataclasses.make_dataclass`` (no private
``dataclasses`` names), with a class-level default that instances made by vLLM's constructor read (0) until the
scheduler patch fills them. Python has no public way to add a field to an existing dataclass; re-running
``@dataclass`` on it would keep its generated ``__init__`` (it never overwrites one) and drop the
``default_factory`` of its list fields.
Active without EARS: yes, the fields exist (0, empty) in every process; nothing reads them without EARS.
Versions: vLLM 0.32.x (run), 0.33.x (same dataclass, read).
Remove when: vLLM gives rejection samplers a way to report their own statistics.
"""

from __future__ import annotations

import dataclasses

# name -> (type, default, default factory)
EARS_FIELDS = {
    "ears_num_tolerance_accepted": (int, 0, None),
    "ears_num_verified": (int, 0, None),
    "ears_uncertainty_sum": (float, 0.0, None),
    "ears_tv_cost_sum": (float, 0.0, None),
    # The TV cost each request spent in total, for the requests that finished in this step (a histogram's samples).
    "ears_request_tv_spent": (list[float], None, list),
}


def add_fields(cls, fields: dict) -> None:
    """Enter defaulted fields into a dataclass's ``__dataclass_fields__`` (msgspec encodes and decodes by them),
    with a class-level default that instances made by the class's own ``__init__`` read (a list field reads ``()``:
    it is replaced, never appended to)."""
    missing = {name: spec for name, spec in fields.items() if name not in cls.__dataclass_fields__}
    if not missing:
        return
    donor = dataclasses.make_dataclass("EarsFields", [
        (name, typ, dataclasses.field(default_factory=factory) if factory else dataclasses.field(default=default))
        for name, (typ, default, factory) in missing.items()])
    for f in dataclasses.fields(donor):
        cls.__dataclass_fields__[f.name] = f
        cls.__annotations__[f.name] = f.type
        setattr(cls, f.name, () if f.default is dataclasses.MISSING else f.default)


def apply(metrics_module) -> None:
    add_fields(metrics_module.SpecDecodingStats, EARS_FIELDS)


def add(stats, num_tolerance_accepted: int, num_verified: int, uncertainty_sum: float, tv_cost_sum: float,
        finished_tv_spent=()) -> None:
    stats.ears_num_tolerance_accepted += num_tolerance_accepted
    stats.ears_num_verified += num_verified
    stats.ears_uncertainty_sum += uncertainty_sum
    stats.ears_tv_cost_sum += tv_cost_sum
    if finished_tv_spent:
        stats.ears_request_tv_spent = [*stats.ears_request_tv_spent, *finished_tv_spent]

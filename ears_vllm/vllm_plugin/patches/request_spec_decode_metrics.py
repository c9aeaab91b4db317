"""Patch ``vllm.v1.metrics.stats.RequestSpecDecodeMetrics``: a request's TV cost in its per-request metrics.

Why: with ``--per-request-spec-decode-metrics`` vLLM returns each request's acceptance figures with its output
(``RequestOutput.outputs[i].spec_decode_metrics``; the OpenAI response's ``metrics.speculative_decoding``); what
the request spent of its TV budget (its exact expected TV cost, budget or not) belongs there.
How: add a defaulted field ``ears_tv_spent`` (None) to the dataclass in every process, as ``spec_decoding_stats.py``
does for ``SpecDecodingStats`` (the scheduler patch fills it when the request finishes), and have ``to_dict`` add
``"ears_tv_spent"`` when it is set.
Active without EARS: the field exists (None) in every process; ``to_dict`` is unchanged while it is None.
Versions: vLLM 0.32.x (run), 0.33.x (same class, read).
Remove when: vLLM gives rejection samplers a way to report per-request statistics.
"""

from __future__ import annotations

from ._patch import wrap
from .spec_decoding_stats import add_fields

FIELD = "ears_tv_spent"


def apply(stats_module) -> None:
    cls = getattr(stats_module, "RequestSpecDecodeMetrics", None)
    if cls is None:  # a vLLM without per-request spec-decode metrics
        return
    add_fields(cls, {FIELD: (float | None, None, None)})

    @wrap(cls, "to_dict")
    def to_dict(original, self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        value = getattr(self, FIELD, None)
        if value is not None:
            result[FIELD] = value
        return result

"""Patch ``SpecDecodingProm.observe`` (``vllm.v1.spec_decode.metrics``): feed the EARS metrics of /metrics.

Why: vLLM's ``SpecDecodingProm`` observes only its own fields of ``SpecDecodingStats``.
How: after the original, pass the stats to the ``EarsProm`` that ``prometheus_stat_logger.py`` attached (none
without EARS: then nothing happens).
Active without EARS: no.
Versions: vLLM 0.32.x (run), 0.33.x (same class, read).
Remove when: vLLM gives rejection samplers a way to report their own statistics.
"""

from __future__ import annotations

from ._patch import wrap


def apply(metrics_module) -> None:
    @wrap(metrics_module.SpecDecodingProm, "observe")
    def observe(original, self, spec_decoding_stats, engine_idx=0, *args, **kwargs):
        original(self, spec_decoding_stats, engine_idx, *args, **kwargs)
        ears = getattr(self, "ears", None)
        if ears is not None:
            ears.observe(spec_decoding_stats, engine_idx)

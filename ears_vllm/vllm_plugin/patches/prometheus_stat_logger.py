"""Patch ``PrometheusStatLogger.__init__`` (``vllm.v1.metrics.loggers``): create the EARS metrics of /metrics.

Why: the EARS counters arrive in ``SpecDecodingStats`` (``spec_decoding_stats.py``); vLLM's Prometheus logger only
creates the metrics it knows.
How: after the original (which has unregistered old ``vllm:`` collectors), when EARS verifies the drafts and vLLM
records speculative-decoding metrics, create ``metrics.EarsProm`` and hang it on the logger's ``SpecDecodingProm``,
whose ``observe`` feeds it (``spec_decoding_prom.py``). (vLLM's ``vllm.stat_logger_plugins`` entry point was the
alternative: it would replace vLLM's Prometheus logger in every ``vllm serve`` and force stats on with
--disable-log-stats.)
Active without EARS: no.
Versions: vLLM 0.32.x (run), 0.33.x (same class, read).
Remove when: vLLM gives rejection samplers a way to report their own statistics.
"""

from __future__ import annotations

from ..config import EarsSettings
from ..metrics import EarsProm
from ._patch import wrap


def apply(loggers_module) -> None:
    @wrap(loggers_module.PrometheusStatLogger, "__init__")
    def __init__(original, self, vllm_config, *args, **kwargs):
        original(self, vllm_config, *args, **kwargs)
        settings = EarsSettings.of(vllm_config)
        prom = getattr(self, "spec_decoding_prom", None)
        if settings is None or prom is None or not prom.spec_decoding_enabled:
            return
        prom.ears = EarsProm(settings.tolerance_alpha, ["model_name", "engine"], self.per_engine_labelvalues)

"""Patch vLLM's stat loggers in the front-end: EARS counters on /metrics and in the periodic log line.

Why: the EARS counters arrive in ``SpecDecodingStats`` (see ``spec_decode_metrics_stats.py``); vLLM's loggers only
read the fields they know.
How: ``PrometheusStatLogger.__init__``: when ``additional_config["ears"]`` selects EARS, create the EARS metrics
(after vLLM has unregistered old ``vllm:`` collectors) and hang them on its ``SpecDecodingProm``;
``SpecDecodingProm.observe`` feeds them. ``SpecDecodingLogging.observe/reset/log``: sum the EARS fields per interval
and append them to vLLM's "SpecDecoding metrics:" line (only when EARS verified tokens in that interval).
(vLLM's ``vllm.stat_logger_plugins`` entry point was the alternative: it would replace vLLM's Prometheus logger in
every ``vllm serve`` and force stats on with --disable-log-stats, and could not extend the existing log line.)
Versions: vLLM 0.32.x (run), 0.33.x (same classes, read).
Remove when: vLLM gives rejection samplers a way to report their own statistics.
"""

from __future__ import annotations

from ..config import ears_settings
from ..metrics import EarsLogging, EarsProm


def apply_prometheus(loggers_module) -> None:
    cls = loggers_module.PrometheusStatLogger
    if getattr(cls.__init__, "_ears", False):
        return
    original_init = cls.__init__

    def __init__(self, vllm_config, *args, **kwargs):
        original_init(self, vllm_config, *args, **kwargs)
        settings = ears_settings(getattr(vllm_config, "additional_config", None))
        prom = getattr(self, "spec_decoding_prom", None)
        if settings is None or not settings.enabled or prom is None or not prom.spec_decoding_enabled:
            return
        prom.ears = EarsProm(settings.alpha, ["model_name", "engine"], self.per_engine_labelvalues)

    __init__._ears = True
    __init__.__wrapped__ = original_init
    cls.__init__ = __init__


def apply_spec_decode(metrics_module) -> None:
    prom_cls = metrics_module.SpecDecodingProm
    if not getattr(prom_cls.observe, "_ears", False):
        original_observe = prom_cls.observe

        def observe(self, spec_decoding_stats, engine_idx=0, *args, **kwargs):
            original_observe(self, spec_decoding_stats, engine_idx, *args, **kwargs)
            ears = getattr(self, "ears", None)
            if ears is not None:
                ears.observe(spec_decoding_stats, engine_idx)

        observe._ears = True
        observe.__wrapped__ = original_observe
        prom_cls.observe = observe

    log_cls = metrics_module.SpecDecodingLogging
    if getattr(log_cls.log, "_ears", False):
        return
    original_log_observe, original_log = log_cls.observe, log_cls.log

    def log_observe(self, spec_decoding_stats, *args, **kwargs):
        original_log_observe(self, spec_decoding_stats, *args, **kwargs)
        if not hasattr(self, "ears"):
            self.ears = EarsLogging()
        self.ears.observe(spec_decoding_stats)

    def log(self, *args, **kwargs):
        ears = getattr(self, "ears", None)
        if ears is None or not ears.verified:
            if ears is not None:
                ears.reset()
            return original_log(self, *args, **kwargs)
        log_fn = kwargs.pop("log_fn", args[0] if args else metrics_module.logger.info)
        suffix, values = ears.suffix()

        def log_fn_with_ears(msg, *fmt_args, **fmt_kwargs):
            return log_fn(msg + suffix, *fmt_args, *values, **fmt_kwargs)

        ears.reset()
        return original_log(self, log_fn=log_fn_with_ears)

    log_observe.__wrapped__ = original_log_observe
    log.__wrapped__ = original_log
    log._ears = True
    log_cls.observe = log_observe
    log_cls.log = log

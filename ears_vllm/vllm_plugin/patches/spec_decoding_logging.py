"""Patch ``SpecDecodingLogging.observe`` / ``.log`` (``vllm.v1.spec_decode.metrics``): EARS in the log line.

Why: the periodic "SpecDecoding metrics:" line only shows vLLM's own fields of ``SpecDecodingStats``.
How: ``observe``: also sum the EARS fields per interval (``metrics.EarsLogging``). ``log``: when EARS verified
drafts in the interval, append its figures to vLLM's line (through the ``log_fn`` vLLM formats it with), then reset
the sums.
Active without EARS: no (without EARS the fields stay 0 and the line is vLLM's own).
Versions: vLLM 0.32.x (run), 0.33.x (same class, read).
Remove when: vLLM gives rejection samplers a way to report their own statistics.
"""

from __future__ import annotations

from ..metrics import EarsLogging
from ._patch import wrap


def apply(metrics_module) -> None:
    cls = metrics_module.SpecDecodingLogging

    @wrap(cls, "observe")
    def observe(original, self, spec_decoding_stats, *args, **kwargs):
        original(self, spec_decoding_stats, *args, **kwargs)
        if not hasattr(self, "ears"):
            self.ears = EarsLogging()
        self.ears.observe(spec_decoding_stats)

    @wrap(cls, "log")
    def log(original, self, *args, **kwargs):
        ears = getattr(self, "ears", None)
        if ears is None or not ears.verified:
            if ears is not None:
                ears.reset()
            return original(self, *args, **kwargs)
        log_fn = kwargs.pop("log_fn", args[0] if args else metrics_module.logger.info)
        suffix, values = ears.suffix()

        def log_fn_with_ears(msg, *fmt_args, **fmt_kwargs):
            return log_fn(msg + suffix, *fmt_args, *values, **fmt_kwargs)

        ears.reset()
        return original(self, log_fn=log_fn_with_ears)

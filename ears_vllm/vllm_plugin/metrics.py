"""EARS metrics in the front-end, next to vLLM's ``vllm:spec_decode_*``.

The counters come from the worker's sampler via ``SpecDecodingStats`` (see ``patches/spec_decode_metrics_stats.py``
and ``patches/scheduler_update_from_output.py``). Exposed on ``/metrics`` (labels ``model_name``, ``engine``):

- ``vllm:ears_num_tolerance_accepted_tokens_total``: draft tokens accepted only thanks to the EARS tolerance
  (the standard rule would have rejected them with the same uniform draw);
- ``vllm:ears_num_verified_draft_tokens_total``: draft positions verified by the random-sampling rule;
- ``vllm:ears_uncertainty_sum_total``: sum of the target's uncertainty ``h = 1 - max p`` over those positions;
  mean uncertainty = ``ears_uncertainty_sum_total / ears_num_verified_draft_tokens_total``;
- ``vllm:ears_mean_uncertainty``: that mean since start-up (gauge); ``vllm:ears_alpha``: the configured alpha.

The periodic ``SpecDecoding metrics:`` log line gains ``EARS tolerance-accepted: N tokens (x% of accepted), EARS
mean uncertainty: h``.
"""

from __future__ import annotations

import prometheus_client


class EarsProm:
    def __init__(self, alpha: float, labelnames: list[str], per_engine_labelvalues: dict[int, list[object]]):
        def per_engine(metric):
            return {idx: metric.labels(*values) for idx, values in per_engine_labelvalues.items()}

        counter, gauge = prometheus_client.Counter, prometheus_client.Gauge
        self.tolerance_accepted = per_engine(counter(
            name="vllm:ears_num_tolerance_accepted_tokens",
            documentation="Draft tokens accepted only thanks to the EARS tolerance alpha * (1 - max p).",
            labelnames=labelnames))
        self.verified = per_engine(counter(
            name="vllm:ears_num_verified_draft_tokens",
            documentation="Draft tokens verified by the EARS random-sampling rule.",
            labelnames=labelnames))
        self.uncertainty_sum = per_engine(counter(
            name="vllm:ears_uncertainty_sum",
            documentation="Sum of the target uncertainty 1 - max p over EARS-verified draft tokens.",
            labelnames=labelnames))
        self.mean_uncertainty = per_engine(gauge(
            name="vllm:ears_mean_uncertainty",
            documentation="Mean target uncertainty 1 - max p over EARS-verified draft tokens since start-up.",
            labelnames=labelnames, multiprocess_mode="mostrecent"))
        alpha_gauge = per_engine(gauge(
            name="vllm:ears_alpha", documentation="Configured EARS alpha (requests may override it).",
            labelnames=labelnames, multiprocess_mode="mostrecent"))
        for g in alpha_gauge.values():
            g.set(alpha)
        self._totals = {idx: [0, 0.0] for idx in per_engine_labelvalues}

    def observe(self, stats, engine_idx: int = 0) -> None:
        verified = getattr(stats, "ears_num_verified", 0)
        if not verified:
            return
        h_sum = getattr(stats, "ears_uncertainty_sum", 0.0)
        self.tolerance_accepted[engine_idx].inc(getattr(stats, "ears_num_tolerance_accepted", 0))
        self.verified[engine_idx].inc(verified)
        self.uncertainty_sum[engine_idx].inc(h_sum)
        totals = self._totals.setdefault(engine_idx, [0, 0.0])
        totals[0] += verified
        totals[1] += h_sum
        self.mean_uncertainty[engine_idx].set(totals[1] / totals[0])


class EarsLogging:
    """Interval sums for the periodic log line (reset with vLLM's ``SpecDecodingLogging``)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.tolerance_accepted = 0
        self.verified = 0
        self.uncertainty_sum = 0.0
        self.accepted = 0

    def observe(self, stats) -> None:
        self.tolerance_accepted += getattr(stats, "ears_num_tolerance_accepted", 0)
        self.verified += getattr(stats, "ears_num_verified", 0)
        self.uncertainty_sum += getattr(stats, "ears_uncertainty_sum", 0.0)
        self.accepted += stats.num_accepted_tokens

    def suffix(self) -> tuple[str, tuple]:
        if not self.verified:
            return "", ()
        share = 100.0 * self.tolerance_accepted / self.accepted if self.accepted else 0.0
        return (
            ", EARS tolerance-accepted: %d tokens (%.1f%% of accepted), EARS mean uncertainty: %.3f",
            (self.tolerance_accepted, share, self.uncertainty_sum / self.verified),
        )

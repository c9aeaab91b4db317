"""EARS metrics in the front-end, next to vLLM's ``vllm:spec_decode_*``.

The counters come from the worker's sampler via ``SpecDecodingStats`` (see ``patches/spec_decoding_stats.py``
and ``patches/scheduler.py``). Exposed on ``/metrics`` (labels ``model_name``, ``engine``):

- ``vllm:ears_num_tolerance_accepted_tokens_total``: draft tokens accepted only thanks to the EARS tolerance
  (the standard rule would have rejected them with the same uniform draw);
- ``vllm:ears_num_verified_draft_tokens_total``: draft positions the random-sampling rule decided (each request's
  accepted drafts and its first rejection; positions after a rejection are never decided);
- ``vllm:ears_uncertainty_sum_total``: sum of the target's uncertainty ``h = 1 - max p`` over those positions;
  mean uncertainty = ``ears_uncertainty_sum_total / ears_num_verified_draft_tokens_total``;
- ``vllm:ears_tv_cost_sum_total``: sum over those positions of the exact expected total-variation distance between
  the token EARS emitted and the target distribution, ``min(1, p/q + alpha*h) - min(1, p/q)`` (0 with alpha 0):
  the quality cost of the tolerance; mean cost per decided draft = this / ``ears_num_verified_draft_tokens_total``;
- ``vllm:ears_mean_uncertainty``, ``vllm:ears_mean_tv_cost``: those means since start-up (gauges);
  ``vllm:ears_alpha``: the configured alpha;
- ``vllm:ears_request_tv_spent``: histogram of the total expected TV cost each finished request spent (what it
  spent of its TV budget, when it has one: at most the budget). Per request, with vLLM's
  ``--per-request-spec-decode-metrics``: ``spec_decode_metrics.ears_tv_spent`` / ``speculative_decoding.ears_tv_spent``.

The periodic ``SpecDecoding metrics:`` log line gains ``EARS tolerance-accepted: N tokens (x% of accepted), EARS
mean uncertainty: h, EARS TV cost: c per decided draft``.
"""

from __future__ import annotations

import prometheus_client

# Total TV cost per request: budgets of interest run from a hundredth to tens.
REQUEST_TV_BUCKETS = [0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]


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
        self.tv_cost_sum = per_engine(counter(
            name="vllm:ears_tv_cost_sum",
            documentation="Sum over EARS-verified draft tokens of the exact expected total-variation distance "
                          "between the emitted token and the target distribution, min(1, p/q + alpha*h) - "
                          "min(1, p/q): the quality cost of the tolerance.",
            labelnames=labelnames))
        self.mean_uncertainty = per_engine(gauge(
            name="vllm:ears_mean_uncertainty",
            documentation="Mean target uncertainty 1 - max p over EARS-verified draft tokens since start-up.",
            labelnames=labelnames, multiprocess_mode="mostrecent"))
        self.mean_tv_cost = per_engine(gauge(
            name="vllm:ears_mean_tv_cost",
            documentation="Mean expected TV cost per EARS-verified draft token since start-up.",
            labelnames=labelnames, multiprocess_mode="mostrecent"))
        self.request_tv_spent = per_engine(prometheus_client.Histogram(
            name="vllm:ears_request_tv_spent",
            documentation="Total expected TV cost each finished request spent over its verified positions (at most "
                          "its TV budget when it has one).",
            labelnames=labelnames, buckets=REQUEST_TV_BUCKETS))
        alpha_gauge = per_engine(gauge(
            name="vllm:ears_alpha", documentation="Configured EARS alpha (requests may override it).",
            labelnames=labelnames, multiprocess_mode="mostrecent"))
        for g in alpha_gauge.values():
            g.set(alpha)
        self._totals = {idx: [0, 0.0, 0.0] for idx in per_engine_labelvalues}

    def observe(self, stats, engine_idx: int = 0) -> None:
        for spent in getattr(stats, "ears_request_tv_spent", ()):
            self.request_tv_spent[engine_idx].observe(spent)
        verified = getattr(stats, "ears_num_verified", 0)
        if not verified:
            return
        h_sum = getattr(stats, "ears_uncertainty_sum", 0.0)
        tv_sum = getattr(stats, "ears_tv_cost_sum", 0.0)
        self.tolerance_accepted[engine_idx].inc(getattr(stats, "ears_num_tolerance_accepted", 0))
        self.verified[engine_idx].inc(verified)
        self.uncertainty_sum[engine_idx].inc(h_sum)
        self.tv_cost_sum[engine_idx].inc(tv_sum)
        totals = self._totals.setdefault(engine_idx, [0, 0.0, 0.0])
        totals[0] += verified
        totals[1] += h_sum
        totals[2] += tv_sum
        self.mean_uncertainty[engine_idx].set(totals[1] / totals[0])
        self.mean_tv_cost[engine_idx].set(totals[2] / totals[0])


class EarsLogging:
    """Interval sums for the periodic log line (reset with vLLM's ``SpecDecodingLogging``)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.tolerance_accepted = 0
        self.verified = 0
        self.uncertainty_sum = 0.0
        self.tv_cost_sum = 0.0
        self.accepted = 0

    def observe(self, stats) -> None:
        self.tolerance_accepted += getattr(stats, "ears_num_tolerance_accepted", 0)
        self.verified += getattr(stats, "ears_num_verified", 0)
        self.uncertainty_sum += getattr(stats, "ears_uncertainty_sum", 0.0)
        self.tv_cost_sum += getattr(stats, "ears_tv_cost_sum", 0.0)
        self.accepted += stats.num_accepted_tokens

    def suffix(self) -> tuple[str, tuple]:
        if not self.verified:
            return "", ()
        share = 100.0 * self.tolerance_accepted / self.accepted if self.accepted else 0.0
        return (
            ", EARS tolerance-accepted: %d tokens (%.1f%% of accepted), EARS mean uncertainty: %.3f, "
            "EARS TV cost: %.4f per decided draft",
            (self.tolerance_accepted, share, self.uncertainty_sum / self.verified, self.tv_cost_sum / self.verified),
        )

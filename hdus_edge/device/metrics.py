"""Prometheus metrics of a running agent, served as text at ``/metrics`` (``prometheus_client``).

Two kinds: what the agent already counts (members, seed versions, orders applied, receipts,
rejections by reason, broker connection, parked messages, last ensemble rebuild) is read at scrape
time from ``DeviceAgent.observe()`` by a custom collector, so the agent's hot paths carry no metric
code; what only the API sees (inference requests and their latency) is counted where it happens.
Each ``AgentMetrics`` has its own registry (never the process-global one), so two agents in one
process, as in tests, do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from hdus_edge.device.agent import AgentObservation
from hdus_edge.device.apply_times import APPLY_BUCKETS

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Batch-1 inference is ~0.2-2 ms here and tens of ms on a Pi Zero; big batches take longer.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _AgentCollector(Collector):
    """Reads one ``AgentObservation`` per scrape (all figures of one scrape agree with each other)."""

    def __init__(self, observe: Callable[[], AgentObservation]) -> None:
        self._observe = observe

    def collect(self) -> Iterator[Metric]:
        o = self._observe()
        yield _gauge("hdus_agent_ready", "1 while the agent runs and serves its ensemble.", float(o.ready))
        yield _gauge("hdus_ensemble_members", "Neighbours' seeds in the ensemble (the main model not counted).",
                     len(o.members))
        versions = GaugeMetricFamily("hdus_ensemble_seed_version", "Version of each seed in the ensemble.",
                                     labels=["owner"])
        for owner, version in sorted(o.seed_versions.items()):
            versions.add_metric([owner], version)
        yield versions
        yield _gauge("hdus_ensemble_generation", "Ensemble snapshot generation (goes up with every rebuild).",
                     o.ensemble_generation)
        yield _gauge("hdus_ensemble_last_rebuild_timestamp_seconds", "Unix time of the last ensemble rebuild.",
                     o.ensemble_built_at)
        yield _gauge("hdus_ensemble_fused", "1 when the ensemble runs as one fused graph.", float(o.ensemble_fused))
        yield _counter("hdus_seeds_accepted", "Neighbours' seeds verified and installed.", o.accepted)
        yield _counter("hdus_unlearn_orders_applied", "Unlearn orders applied on this device.", o.orders_applied)
        yield _counter("hdus_receipts_sent", "Signed unlearn receipts handed to the outbox.", o.receipts_sent)
        yield _counter("hdus_messages_duplicate", "Redelivered messages that changed nothing.", o.duplicates)
        rejected = CounterMetricFamily("hdus_messages_rejected", "Messages rejected, by reason.", labels=["reason"])
        for reason, count in sorted(o.rejections.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield _gauge("hdus_broker_connected", "1 while connected to the broker with subscriptions in place.",
                     float(o.connected))
        yield _counter("hdus_broker_reconnects", "Connections to the broker after the first.", max(o.connects - 1, 0))
        yield _gauge("hdus_messages_parked", "Messages held until their sender's hello arrives.", o.parked)
        yield _gauge("hdus_outbox_pending", "Published messages waiting for the broker's acknowledgement.",
                     o.outbox_pending)
        applies = HistogramMetricFamily("hdus_unlearn_apply_seconds", "Time to apply an unlearn order, by role "
                                        "(holder: store step, ensemble rebuild, receipt handed over; non_holder: "
                                        "the tombstone commit).", labels=["role"])
        bounds = [*(f"{b:g}" for b in APPLY_BUCKETS), "+Inf"]
        for role, hist in sorted(o.applies.items()):
            applies.add_metric([role], list(zip(bounds, hist.cumulative)), sum_value=hist.sum_s)
        yield applies


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class AgentMetrics:
    """The agent's registry: its observation collector plus the API's inference figures."""

    def __init__(self, observe: Callable[[], AgentObservation]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_AgentCollector(observe))
        self.inferences = Counter("hdus_inference_requests", "Inference requests, by outcome (ok, client_error, "
                                  "server_error).", ["outcome"], registry=self.registry)
        self.latency = Histogram("hdus_inference_seconds", "Time to answer a successful inference request "
                                 "(parse, ensemble, encode).", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch = Counter("hdus_inference_samples", "Samples predicted (sum of batch sizes).", registry=self.registry)
        for outcome in ("ok", "client_error", "server_error"):
            self.inferences.labels(outcome)  # present at 0 from the first scrape

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

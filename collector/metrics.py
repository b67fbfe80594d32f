"""The collector's Prometheus metrics, built in main() on a registry of their own and passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class CollectorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("unlinkwatch_events", "Deletions stored", ["op", "result"], registry=r)
        self.duplicates = Counter("unlinkwatch_events_duplicate", "Replayed events ignored", registry=r)
        self.store_refusals = Counter("unlinkwatch_ingest_store_refusals", "Batches the store could not commit (a "
                                      "full disk, a database gone): refused, the agent sends them again",
                                      registry=r)
        self.lost = Gauge("unlinkwatch_events_lost", "Events agents report lost (cumulative), by stage",
                          ["node", "agent", "stage"], registry=r)
        self.sequence_gaps = Counter("unlinkwatch_sequence_gaps", "Sequence numbers never received",
                                     ["node"], registry=r)
        self.alerts = Counter("unlinkwatch_alerts", "Alerts raised", ["rule", "severity"], registry=r)
        self.sink_failures = Counter("unlinkwatch_alert_sink_failures", "Alert deliveries that failed",
                                     ["sink"], registry=r)
        self.ingest_latency = Histogram("unlinkwatch_ingest_latency_seconds", "Batch receive to commit",
                                        registry=r)
        self.ingest_inflight = Gauge("unlinkwatch_ingest_inflight_bytes",
                                     "Received batch bytes held until acked, all streams (bounded)", registry=r)
        self.query_latency = Histogram("unlinkwatch_query_latency_seconds", "Query time", registry=r)
        self.rules_loaded = Gauge("unlinkwatch_rules_loaded", "Rules in force", registry=r)
        self.rules_reload_failures = Counter("unlinkwatch_rules_reload_failures", "Rejected rule reloads",
                                             registry=r)

"""Alert outputs: the collector log (always), Alertmanager's v2 API, a JSON webhook.

Each sink runs behind a `Delivery`: a bounded queue and one worker thread, so a slow or unreachable sink
never blocks ingest; a full queue drops alerts and every failure is counted in `sink_failures{sink}`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Protocol

from unlinkwatch.eventjson import alert_to_dict, rfc3339_ns, text
from unlinkwatch.pb import events_pb2 as pb

from .metrics import CollectorMetrics

log = logging.getLogger("unlinkwatch.alerts")

QUEUE_SIZE = 1000
BATCH = 100


class AlertSink(Protocol):
    name: str

    def deliver(self, alerts: Sequence[pb.Alert]) -> None:
        """Send alerts; called from the sink's own worker thread; raises when they could not be sent."""
        ...

    def close(self) -> None:
        """Abort pending retries (called once, at shutdown)."""
        ...


class DeliveryError(Exception):
    pass


class LogSink:
    """One JSON line per alert on the collector log: {"msg": "alert RULE", "alert": {...}}."""

    name = "log"

    def deliver(self, alerts: Sequence[pb.Alert]) -> None:
        for a in alerts:
            log.warning("alert %s", a.rule, extra={"fields": {"alert": alert_to_dict(a)}})

    def close(self) -> None:
        pass


class _HttpSink:
    """POSTs JSON with retries and exponential backoff; 5xx, 429 and network errors are retried."""

    name = "http"

    def __init__(self, url: str, metrics: CollectorMetrics, attempts: int = 5, backoff_s: float = 0.5,
                 max_backoff_s: float = 8.0, timeout_s: float = 5.0) -> None:
        self.url = url
        self.metrics = metrics
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self._stop = threading.Event()

    def post(self, body: Any) -> None:
        data = json.dumps(body).encode()
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            req = urllib.request.Request(self.url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    resp.read()
                return
            except urllib.error.HTTPError as e:
                retry = e.code >= 500 or e.code == 429
                problem = f"HTTP {e.code}"
            except (OSError, TimeoutError) as e:
                retry, problem = True, str(getattr(e, "reason", e))
            self.metrics.sink_failures.labels(self.name).inc()
            if not retry or attempt == self.attempts or self._stop.is_set():
                raise DeliveryError(f"{self.name} {self.url}: {problem} (attempt {attempt}/{self.attempts})")
            log.info("alert delivery retry", extra={"fields": {"sink": self.name, "problem": problem,
                                                               "attempt": attempt, "retry_in_s": delay}})
            if self._stop.wait(delay):
                raise DeliveryError(f"{self.name} {self.url}: {problem}; shutting down")
            delay = min(delay * 2, self.max_backoff_s)

    def close(self) -> None:
        self._stop.set()


class WebhookSink(_HttpSink):
    """One POST per alert; the body is the alert's JSON object (the same as the log line's `alert`)."""

    name = "webhook"

    def deliver(self, alerts: Sequence[pb.Alert]) -> None:
        for a in alerts:
            self.post(alert_to_dict(a))


def alertmanager_payload(a: pb.Alert) -> dict[str, Any]:
    """One Alertmanager v2 alert. `alert_id` keeps folded alerts distinct; an update reuses it."""
    ev = a.event
    labels = {"alertname": a.rule, "rule": a.rule, "severity": a.severity, "namespace": ev.pod.namespace,
              "pod": ev.pod.name, "node": ev.node, "alert_id": str(a.id)}
    annotations = {"description": a.description, "count": str(a.count),
                   "sample_paths": "\n".join(text(p) for p in a.sample_paths),
                   "path": text(a.sample_paths[0] if a.sample_paths else ev.path),  # the path the rule fired on
                   "rename_to": text(ev.rename_to), "comm": text(ev.process.comm), "exe": text(ev.process.exe),
                   "container": ev.container.name,
                   "workload": ev.pod.workload}
    return {"labels": {k: v for k, v in labels.items() if v},
            "annotations": {k: v for k, v in annotations.items() if v},
            "startsAt": rfc3339_ns(a.time_unix_ns)}


class AlertmanagerSink(_HttpSink):
    """POST /api/v2/alerts, a batch per request."""

    name = "alertmanager"

    def __init__(self, url: str, metrics: CollectorMetrics, **kw: Any) -> None:
        base = url.rstrip("/")
        super().__init__(base if base.endswith("/api/v2/alerts") else base + "/api/v2/alerts", metrics, **kw)

    def deliver(self, alerts: Sequence[pb.Alert]) -> None:
        self.post([alertmanager_payload(a) for a in alerts])


class Delivery:
    """A bounded queue and a worker thread in front of one sink."""

    def __init__(self, sink: AlertSink, metrics: CollectorMetrics, maxsize: int = QUEUE_SIZE) -> None:
        self.sink = sink
        self.metrics = metrics
        self._q: queue.Queue[pb.Alert | None] = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._run, name=f"alert-sink-{sink.name}", daemon=True)
        self._dropped_logged = 0.0

    def start(self) -> None:
        self._thread.start()

    def offer(self, alerts: Sequence[pb.Alert]) -> None:
        """Never blocks: a full queue (sink down for long) drops the alert and counts it."""
        for a in alerts:
            try:
                self._q.put_nowait(a)
            except queue.Full:
                self.metrics.sink_failures.labels(self.sink.name).inc()
                now = time.monotonic()
                if now - self._dropped_logged > 10:
                    self._dropped_logged = now
                    log.error("alert sink queue full, dropping", extra={"fields": {"sink": self.sink.name}})

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._deliver(batch)
                    return
                batch.append(nxt)
            self._deliver(batch)

    def _deliver(self, batch: list[pb.Alert]) -> None:
        try:
            self.sink.deliver(batch)
        except Exception as e:  # a sink must never take the collector down; failures are counted
            if not isinstance(e, DeliveryError):
                self.metrics.sink_failures.labels(self.sink.name).inc()
            log.error("alert delivery failed", extra={"fields": {"sink": self.sink.name, "error": str(e),
                                                                 "alerts": len(batch)}})

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (within timeout_s), then stop the worker."""
        deadline = time.monotonic() + timeout_s
        try:
            self._q.put(None, timeout=min(timeout_s, 1.0))
        except queue.Full:  # the sink is stuck: what it has not taken is dropped and counted
            with contextlib.suppress(queue.Empty):
                while True:
                    self._q.get_nowait()
                    self.metrics.sink_failures.labels(self.sink.name).inc()
            with contextlib.suppress(queue.Full):
                self._q.put_nowait(None)
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self.sink.close()
        self._thread.join(1.0)


def build_sinks(alertmanager_url: str | None, webhook_url: str | None, metrics: CollectorMetrics) -> list[AlertSink]:
    """The log sink always, plus Alertmanager and the webhook when their URLs are given."""
    sinks: list[AlertSink] = [LogSink()]
    if alertmanager_url:
        sinks.append(AlertmanagerSink(alertmanager_url, metrics))
    if webhook_url:
        sinks.append(WebhookSink(webhook_url, metrics))
    return sinks


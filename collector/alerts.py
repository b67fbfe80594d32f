"""Alert engine: rule evaluation, folding, alert history and the WatchAlerts fan-out."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from unlinkwatch.collector.metrics import CollectorMetrics
from unlinkwatch.collector.sinks import AlertSink
from unlinkwatch.eventjson import event_to_dict, rfc3339_ns, text
from unlinkwatch.pb import events_pb2 as pb


class AlertStore(Protocol):
    def save_alerts(self, alerts: Sequence[pb.Alert]) -> None: ...

    def alerts_since(self, since_unix_ns: int, limit: int) -> list[pb.Alert]: ...


def alert_to_dict(a: pb.Alert) -> dict[str, Any]:
    return {
        "id": a.id,
        "time": rfc3339_ns(a.time_unix_ns),
        "rule": a.rule,
        "severity": a.severity,
        "description": a.description,
        "count": a.count,
        "sample_paths": [text(p) for p in a.sample_paths],
        "event": event_to_dict(a.event),
    }


class AlertEngine:
    def __init__(self, rules_file: str | None, sinks: Sequence[AlertSink], metrics: CollectorMetrics,
                 store: AlertStore | None) -> None:
        self._sinks = list(sinks)

    def start(self) -> None:
        pass

    def evaluate(self, events: Sequence[pb.DeletionEvent]) -> None:
        pass

    def watch(self, since_unix_ns: int, follow: bool, is_active: Callable[[], bool]) -> Iterator[pb.Alert]:
        return iter(())

    def close(self) -> None:
        pass

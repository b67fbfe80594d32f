"""Delivery to a real Alertmanager (Debian's prometheus-alertmanager) on loopback, checked through its API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unlinkwatch.collector.alerts import AlertEngine
from unlinkwatch.collector.metrics import CollectorMetrics
from unlinkwatch.collector.sinks import build_sinks

from tests.support.alertmanager import get_json, wait_for
from tests.support.alertrules import rm_rf, write_rules


def ours(url: str) -> list[dict[str, Any]]:
    return [a for a in get_json(url + "/api/v2/alerts") if a["labels"].get("rule") == "etc-deleted"]


def test_a_folded_rm_rf_reaches_alertmanager_as_one_alert_whose_count_is_updated(am_url: str, tmp_path: Path) -> None:
    metrics = CollectorMetrics()
    eng = AlertEngine(str(write_rules(tmp_path / "rules.yaml")), build_sinks(am_url, None, metrics), metrics, None)
    eng.start()
    try:
        events = rm_rf(10_000)
        for i in range(0, len(events), 1000):
            eng.evaluate(events[i : i + 1000])
        first = wait_for(lambda: ours(am_url))
        assert first[0]["annotations"]["count"] == "1000"  # the first notice, with its batch
        eng.flush()
        final = wait_for(lambda: [a for a in ours(am_url) if a["annotations"]["count"] == "10000"])
    finally:
        eng.close()
    alerts = ours(am_url)
    assert len(alerts) == 1 == len(final)
    a = alerts[0]
    assert a["labels"] == {"alertname": "etc-deleted", "rule": "etc-deleted", "severity": "critical",
                           "namespace": "prod", "pod": "web-1", "node": "node-1", "alert_id": a["labels"]["alert_id"]}
    assert a["annotations"]["description"] == "a file under /etc was deleted"
    assert a["annotations"]["sample_paths"].splitlines() == [f"/etc/app/f{i:05d}" for i in range(5)]
    assert a["startsAt"].startswith("2023-11-14T22:13:20")
    assert a["status"]["state"] == "active"
    assert (metrics.registry.get_sample_value("unlinkwatch_alert_sink_failures_total", {"sink": "alertmanager"})
            or 0) == 0

"""Sinks: the webhook retries with backoff, an unreachable or stuck sink never blocks ingest."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from unlinkwatch.collector.alerts import AlertEngine
from unlinkwatch.collector.metrics import CollectorMetrics
from unlinkwatch.collector.sinks import AlertmanagerSink, AlertSink, LogSink, WebhookSink, build_sinks

from tests.support.alertmanager import Receiver, wait_for
from tests.support.alertrules import deletion, rm_rf, write_rules
from unlinkwatch.eventjson import alert_to_dict
from unlinkwatch.pb import events_pb2 as pb


def failures(metrics: CollectorMetrics, sink: str) -> float:
    return metrics.registry.get_sample_value("unlinkwatch_alert_sink_failures_total", {"sink": sink}) or 0.0


def engine(tmp_path: Path, sinks: Sequence[AlertSink], metrics: CollectorMetrics, window: str = "10s") -> AlertEngine:
    eng = AlertEngine(str(write_rules(tmp_path / "rules.yaml", window)), sinks, metrics, None)
    eng.start()
    return eng


def test_the_webhook_retries_a_receiver_that_fails_twice_then_accepts(tmp_path: Path) -> None:
    metrics = CollectorMetrics()
    with Receiver(fail_first=2) as rx:
        eng = engine(tmp_path, [WebhookSink(rx.url, metrics, backoff_s=0.05)], metrics)
        try:
            eng.evaluate([deletion("/etc/shadow")])
            wait_for(lambda: rx.bodies)
        finally:
            eng.close()
    assert rx.attempts == 3
    assert len(rx.bodies) == 1
    body = rx.bodies[0]
    assert (body["rule"], body["count"], body["event"]["path"]) == ("etc-deleted", 1, "/etc/shadow")
    assert set(body) == set(alert_to_dict(pb.Alert()))
    assert failures(metrics, "webhook") == 2


def test_a_client_error_is_not_retried_and_is_counted(tmp_path: Path) -> None:
    metrics = CollectorMetrics()
    with Receiver(fail_first=100, fail_status=400) as rx:
        eng = engine(tmp_path, [WebhookSink(rx.url, metrics, backoff_s=0.05)], metrics)
        eng.evaluate([deletion("/etc/shadow")])
        wait_for(lambda: failures(metrics, "webhook") == 1)
        eng.close()
    assert rx.attempts == 1


def test_an_unreachable_sink_never_blocks_ingest_and_its_failures_are_counted(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    metrics = CollectorMetrics()
    sinks: list[AlertSink] = [AlertmanagerSink(dead, metrics, backoff_s=0.05, attempts=3),
                              WebhookSink(dead + "/hook", metrics, backoff_s=0.05, attempts=3)]
    eng = engine(tmp_path, sinks, metrics, window="0s")
    try:
        t = time.perf_counter()
        for i in range(20):  # 20 batches x 100 separate alerts: more than the sinks' queues hold
            eng.evaluate(rm_rf(100, root=f"/etc/d{i}"))
        assert time.perf_counter() - t < 2.0
        # each sink queues 1,000 alerts and works on a batch of up to 100: the other 900 are dropped and counted
        wait_for(lambda: failures(metrics, "alertmanager") >= 900 + 3 and failures(metrics, "webhook") >= 900 + 3)
    finally:
        t = time.perf_counter()
        eng.close()
        assert time.perf_counter() - t < 15


def test_a_stuck_sink_does_not_stall_evaluation(tmp_path: Path) -> None:
    release = threading.Event()

    class Stuck:
        name = "stuck"

        def deliver(self, alerts: Sequence[pb.Alert]) -> None:
            release.wait(30)

        def close(self) -> None:
            release.set()

    metrics = CollectorMetrics()
    eng = engine(tmp_path, [Stuck()], metrics, window="0s")
    t = time.perf_counter()
    eng.evaluate(rm_rf(3000))
    elapsed = time.perf_counter() - t
    assert elapsed < 2.0
    assert failures(metrics, "stuck") >= 3000 - 1000 - 100  # beyond the queue and the batch in hand: dropped
    release.set()
    eng.close()


def test_build_sinks_always_includes_the_log_and_adds_the_configured_ones() -> None:
    metrics = CollectorMetrics()
    assert [type(s) for s in build_sinks(None, None, metrics)] == [LogSink]
    sinks = build_sinks("http://am:9093", "http://hook/x", metrics)
    assert [s.name for s in sinks] == ["log", "alertmanager", "webhook"]
    assert isinstance(sinks[1], AlertmanagerSink) and sinks[1].url == "http://am:9093/api/v2/alerts"

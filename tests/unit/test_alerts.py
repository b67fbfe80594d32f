"""Folding, alert history and the WatchAlerts stream, and the JSON alert on the collector log."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from unlinkwatch.collector.alerts import AlertEngine
from unlinkwatch.collector.metrics import CollectorMetrics
from unlinkwatch.collector.sinks import LogSink

from tests.support.alertrules import T0, deletion, rm_rf, write_rules
from unlinkwatch.eventjson import alert_to_dict
from unlinkwatch.logs import JsonFormatter
from unlinkwatch.pb import events_pb2 as pb


class Collect:
    """A sink that keeps what it gets (delivery runs on the sink's own thread)."""

    name = "collect"

    def __init__(self) -> None:
        self.alerts: list[pb.Alert] = []
        self.lock = threading.Lock()

    def deliver(self, alerts: Sequence[pb.Alert]) -> None:
        with self.lock:
            self.alerts.extend(alerts)

    def close(self) -> None:
        pass


@pytest.fixture
def metrics() -> CollectorMetrics:
    return CollectorMetrics()


def engine_for(tmp_path: Path, metrics: CollectorMetrics, window: str = "10s",
               sinks: Sequence[object] = ()) -> AlertEngine:
    eng = AlertEngine(str(write_rules(tmp_path / "rules.yaml", window)), list(sinks), metrics, None,  # type: ignore[arg-type]
                      poll_interval_s=0.05)
    eng.start()
    return eng


@pytest.fixture
def sink() -> Collect:
    return Collect()


@pytest.fixture
def engine(tmp_path: Path, metrics: CollectorMetrics, sink: Collect) -> Iterator[AlertEngine]:
    eng = engine_for(tmp_path, metrics, sinks=[sink])
    yield eng
    eng.close()


def test_an_rm_rf_of_10000_files_is_one_alert_with_count_10000(engine: AlertEngine, sink: Collect,
                                                                metrics: CollectorMetrics) -> None:
    events = rm_rf(10_000)
    for i in range(0, len(events), 500):  # as ingest hands them over, batch by batch
        engine.evaluate(events[i : i + 500])
    engine.flush()  # the window closing
    engine.close()
    assert len({a.id for a in sink.alerts}) == 1
    first, summary = sink.alerts
    assert first.count == 500  # the first notice goes out with the batch that opened the group
    assert summary.count == 10_000
    assert summary.sample_paths == [b"/etc/app/f00000", b"/etc/app/f00001", b"/etc/app/f00002",
                                    b"/etc/app/f00003", b"/etc/app/f00004"]
    assert summary.event.path == b"/etc/app/f00000"
    assert summary.time_unix_ns == T0
    assert metrics.registry.get_sample_value("unlinkwatch_alerts_total",
                                             {"rule": "etc-deleted", "severity": "critical"}) == 1


def test_the_window_closes_by_itself_and_a_lone_deletion_sends_no_summary(tmp_path: Path, metrics: CollectorMetrics,
                                                                          sink: Collect) -> None:
    eng = engine_for(tmp_path, metrics, window="200ms", sinks=[sink])
    try:
        eng.evaluate([deletion("/etc/one", 0, pod="a")])
        eng.evaluate(rm_rf(3, pod="b"))
        eng.evaluate([deletion("/etc/app/late", 5, pod="b")])
        deadline = time.monotonic() + 5
        while len(sink.alerts) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
    finally:
        eng.close()
    assert [(a.event.pod.name, a.count) for a in sink.alerts] == [("a", 1), ("b", 3), ("b", 4)]


def test_folding_keeps_pods_and_host_processes_apart(engine: AlertEngine, sink: Collect) -> None:
    engine.evaluate([deletion("/etc/a", 0, pod="p1"), deletion("/etc/b", 1, pod="p2"),
                     deletion("/etc/c", 2, pod=None, ppid=10), deletion("/etc/d", 3, pod=None, ppid=10),
                     deletion("/etc/e", 4, pod=None, ppid=11), deletion("/etc/f", 5, pod=None, ppid=10, comm="mv"),
                     deletion("/etc/g", 6, pod=None, ppid=10, node="node-2")])
    engine.flush()
    engine.close()
    summaries = {a.id: a for a in sink.alerts}
    assert sorted(a.count for a in summaries.values()) == [1, 1, 1, 1, 1, 2]


def test_a_deletion_after_the_window_starts_a_new_alert(engine: AlertEngine, sink: Collect) -> None:
    engine.evaluate([deletion("/etc/a", t_ns=T0), deletion("/etc/b", t_ns=T0 + 9_000_000_000)])
    engine.evaluate([deletion("/etc/c", t_ns=T0 + 10_000_000_000)])
    engine.flush()
    engine.close()
    assert [(a.count, a.sample_paths[0]) for a in sink.alerts] == [(2, b"/etc/a"), (1, b"/etc/c")]


def test_a_zero_window_makes_every_matching_deletion_its_own_alert(tmp_path: Path, metrics: CollectorMetrics,
                                                                   sink: Collect) -> None:
    eng = engine_for(tmp_path, metrics, window="0s", sinks=[sink])
    eng.evaluate(rm_rf(3))
    eng.close()
    assert [a.count for a in sink.alerts] == [1, 1, 1]
    assert len({a.id for a in sink.alerts}) == 3


def test_excepted_and_unmatched_deletions_raise_nothing(engine: AlertEngine, sink: Collect) -> None:
    engine.evaluate([deletion("/etc/a", comm="dpkg"), deletion("/tmp/a")])
    engine.close()
    assert sink.alerts == []


def test_watch_replays_history_then_follows_live_alerts_and_updates(engine: AlertEngine) -> None:
    engine.evaluate([deletion("/etc/old", pod="old", t_ns=T0)])
    stop = threading.Event()
    got: list[pb.Alert] = []

    def consume() -> None:
        for a in engine.watch(T0, follow=True, is_active=lambda: not stop.is_set()):
            got.append(a)

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.2)
    engine.evaluate(rm_rf(3, pod="new"))
    engine.flush()
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    stop.set()
    t.join(5)
    assert not t.is_alive()
    assert [(a.event.pod.name, a.count) for a in got] == [("old", 1), ("new", 3)]
    history = list(engine.watch(T0, follow=False, is_active=lambda: True))
    assert [(a.event.pod.name, a.count) for a in history] == [("old", 1), ("new", 3)]  # latest version of each
    assert list(engine.watch(T0 + 1, follow=False, is_active=lambda: True)) == []


def test_the_log_sink_writes_the_alert_as_one_json_line() -> None:
    ev = deletion("/etc/x", 0)
    ev.path = b"/etc/\xffbad"
    alert = pb.Alert(id=7, time_unix_ns=T0, rule="etc-deleted", severity="critical", description="d", count=2,
                     sample_paths=[ev.path, b"/etc/b"], event=ev)
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("unlinkwatch.alerts")
    logger.addHandler(handler)
    try:
        LogSink().deliver([alert])
    finally:
        logger.removeHandler(handler)
    line = json.loads(buf.getvalue().strip())
    assert line["alert"] == alert_to_dict(alert)
    assert line["alert"]["sample_paths"] == ["/etc/\\xffbad", "/etc/b"]
    assert set(line["alert"]) == {"id", "time", "rule", "severity", "description", "count", "sample_paths", "event"}
    assert line["alert"]["time"] == "2023-11-14T22:13:20.000000000Z"
    assert line["alert"]["event"]["pod"] == "web-1"


def test_the_default_pack_is_used_when_no_rules_file_is_given(metrics: CollectorMetrics, sink: Collect) -> None:
    eng = AlertEngine(None, [sink], metrics, None)
    eng.start()
    eng.evaluate([deletion("/root/.bash_history")])
    eng.close()
    assert [a.rule for a in sink.alerts] == ["shell-history-deleted"]
    assert metrics.registry.get_sample_value("unlinkwatch_rules_loaded") == len(eng.rules.rules)


def test_history_from_the_sqlite_store_shows_each_alert_once_at_its_final_count(tmp_path: Path,
                                                                                metrics: CollectorMetrics) -> None:
    from unlinkwatch.collector.store import open_store

    store = open_store(f"sqlite:///{tmp_path}/uw.db")
    eng = AlertEngine(str(write_rules(tmp_path / "rules.yaml")), [], metrics, store)
    eng.start()
    try:
        eng.evaluate(rm_rf(2, pod="a"))
        eng.evaluate(rm_rf(3, pod="a")[2:])
        eng.evaluate([deletion("/etc/x", 9, pod="b")])
        eng.flush()
        history = list(eng.watch(0, follow=False, is_active=lambda: True))
    finally:
        eng.close()
        store.close()
    assert [(a.event.pod.name, a.count) for a in history] == [("a", 3), ("b", 1)]


def test_an_alert_on_a_rename_samples_the_path_the_rule_fired_on(engine: AlertEngine, sink: Collect) -> None:
    moved_away, replaced = deletion("/etc/a", 1, pod="p1"), deletion("/tmp/new", 2, pod="p2")
    for ev, to in ((moved_away, b"/tmp/a"), (replaced, b"/etc/b")):
        ev.op, ev.rename_to = pb.OP_RENAME, to
    replaced.flags = pb.EVENT_FLAG_REPLACED
    engine.evaluate([moved_away, replaced])
    engine.close()
    assert sorted(list(a.sample_paths) for a in sink.alerts) == [[b"/etc/a"], [b"/etc/b"]]

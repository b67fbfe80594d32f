"""The Shipper against a real collector on loopback: spool across outages and restarts, exact drop counts."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from unlinkwatch.agent.metrics import AgentMetrics
from unlinkwatch.agent.ship.shipper import Shipper, ShipperConfig
from unlinkwatch.collector.query import EventFilter, query
from unlinkwatch.collector.store import open_store

from bench import workload
from tests.conftest import require_root
from tests.support.collector import free_port, start_inprocess, start_subprocess
from tests.support.eventgen import events
from unlinkwatch.pb import events_pb2 as pb


def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def shipper(port: int, agent: str, spool: Path | None = None, **kw: object) -> Shipper:
    cfg = ShipperConfig(collector=f"127.0.0.1:{port}", agent_id=agent, node=agent.split(":")[0],
                        attach_mode="tracepoint", spool_dir=str(spool) if spool else None,
                        batch_max_delay_s=0.05, **kw)  # type: ignore[arg-type]
    s = Shipper(cfg, AgentMetrics())
    s.start()
    return s


def submit_all(s: Shipper, evs: list[pb.DeletionEvent], chunk: int = 100) -> None:
    for i in range(0, len(evs), chunk):
        s.submit(evs[i:i + chunk], [])


def test_events_and_identity_updates_arrive_batched(tmp_path: Path) -> None:
    c = start_inprocess(f"sqlite:///{tmp_path}/c.db")
    s = shipper(c.port, "n:1", batch_max_events=300)
    try:
        evs = events("n:1", 1, 1000)
        evs[0].identity = pb.IDENTITY_STATE_UNKNOWN
        evs[0].pod.Clear()
        evs[0].pod.uid = "uid-late"
        submit_all(s, evs)
        s.submit([], [pb.IdentityUpdate(pod_uid="uid-late", pod=pb.Pod(name="p", namespace="ns"))])
        wait_for(lambda: c.store.count() == 1000 and s.backlog() == 0)
        [late] = query(c.store, EventFilter(namespace="ns", pod="p"), None, 10)[0]
        assert late.seq == 1 and late.identity == pb.IDENTITY_STATE_LATE
    finally:
        s.close()
        c.close()


def test_a_collector_outage_loses_nothing_with_a_spool(tmp_path: Path) -> None:
    port = free_port()
    s = shipper(port, "n:1", tmp_path / "spool")
    try:
        submit_all(s, events("n:1", 1, 5000))
        wait_for(lambda: s.backlog() == 5000 and len(list((tmp_path / "spool").iterdir())) > 0)
        c = start_inprocess(f"sqlite:///{tmp_path}/c.db", port=port)
        wait_for(lambda: c.store.count() == 5000 and s.backlog() == 0)
        assert list((tmp_path / "spool").iterdir()) == [] and s.lost()["queue"] == 0
        c.close()
    finally:
        s.close(timeout=0.5)


def test_an_agent_restart_mid_stream_resends_the_spool_first_and_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    first = shipper(port, "n:run1", spool)
    submit_all(first, events("n:run1", 1, 3000))
    first.close(timeout=0.3)   # collector down: everything stays in the spool
    assert first.lost() == {"kernel": 0, "queue": 0, "transport": 0}
    c = start_inprocess(f"sqlite:///{tmp_path}/c.db", port=port)
    try:
        second = shipper(port, "n:run2", spool)
        submit_all(second, events("n:run2", 1, 2000))
        wait_for(lambda: c.store.count() == 5000 and second.backlog() == 0)
        second.close()
        by_agent = {a.agent: a for a in c.store.agents()}
        assert (by_agent["n:run1"].events, by_agent["n:run1"].gaps) == (3000, 0)
        assert (by_agent["n:run2"].events, by_agent["n:run2"].gaps) == (2000, 0)
        assert {e.agent for e in c.alerts.evaluated[:3000]} == {"n:run1"}   # the spool went first
    finally:
        c.close()


def test_a_full_spool_drops_the_oldest_batches_and_counts_them_exactly(tmp_path: Path) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    s = shipper(port, "n:1", spool, spool_max_bytes=200_000, batch_max_events=100)
    try:
        for i in range(0, 5000, 100):   # one batch per submit: wait until each is spooled
            s.submit(events("n:1", i + 1, 100), [])
            wait_for(lambda: not s._pending)
        lost = s.lost()["queue"]
        assert 0 < lost < 5000 and lost % 100 == 0
        assert sum(int(p.name.split("-")[2].split(".")[0]) for p in spool.iterdir()) == 5000 - lost
        c = start_inprocess(f"sqlite:///{tmp_path}/c.db", port=port)
        wait_for(lambda: s.backlog() == 0 and c.store.count() == 5000 - lost)
        stored = [e.seq for e in query(c.store, EventFilter(), None, 10_000)[0]]
        assert stored == list(range(lost + 1, 5001))   # exactly the oldest were dropped
        wait_for(lambda: c.store.agents()[0].lost_queue == lost)
        [a] = c.store.agents()
        assert (a.events, a.lost_queue, a.gaps) == (5000 - lost, lost, 0)
        c.close()
    finally:
        s.close(timeout=0.5)


def test_without_a_spool_the_bounded_queue_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    port = free_port()
    s = shipper(port, "n:1", queue_max_events=1000, batch_max_events=100)
    try:
        for i in range(0, 3000, 100):
            s.submit(events("n:1", i + 1, 100), [])
            wait_for(lambda: not s._pending)
        c = start_inprocess(f"sqlite:///{tmp_path}/c.db", port=port)
        wait_for(lambda: s.backlog() == 0)
        lost = s.lost()["queue"]
        assert c.store.count() + lost == 3000 and lost >= 2000
        c.close()
    finally:
        s.close(timeout=0.5)


def test_without_a_spool_the_queue_is_bounded_in_bytes_too_and_drops_the_oldest(tmp_path: Path) -> None:
    port = free_port()
    s = shipper(port, "n:1", queue_max_bytes=60_000, batch_max_events=100)  # events of a few hundred bytes
    try:
        for i in range(0, 3000, 100):
            s.submit(events("n:1", i + 1, 100), [])
            wait_for(lambda: not s._pending)
            assert s._queued_bytes <= 60_000 + 40_000  # a batch over at most, until the next is made
        lost = s.lost()["queue"]
        assert 0 < lost < 3000 and lost % 100 == 0
        c = start_inprocess(f"sqlite:///{tmp_path}/c.db", port=port)
        wait_for(lambda: s.backlog() == 0 and c.store.count() == 3000 - lost)
        stored = [e.seq for e in query(c.store, EventFilter(), None, 10_000)[0]]
        assert stored == list(range(lost + 1, 3001)) and s._queued_bytes == 0
        c.close()
    finally:
        s.close(timeout=0.5)


def test_a_spool_directory_removed_under_the_agent_is_made_again_and_what_it_held_is_counted_lost(
        tmp_path: Path) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    s = shipper(port, "n:1", spool, batch_max_events=100)
    try:
        submit_all(s, events("n:1", 1, 1000))
        wait_for(lambda: spooled_events(spool) == 1000)
        shutil.rmtree(spool)  # what a cleaner would do: the 1,000 events on disk go with it
        submit_all(s, events("n:1", 1001, 1000))
        wait_for(lambda: spooled_events(spool) == 1000)  # the next batches on disk again, in a new directory
        assert spool_write_errors(s) == 0
        c = start_inprocess(f"sqlite:///{tmp_path}/c.db", port=port)
        wait_for(lambda: s.backlog() == 0 and c.store.count() == 1000)
        assert [e.seq for e in query(c.store, EventFilter(), None, 10_000)[0]] == list(range(1001, 2001))
        assert s.lost()["queue"] == 1000  # the removed files' events: counted, not silently gone
        c.close()
    finally:
        s.close(timeout=0.5)


def test_a_spool_removes_only_the_unfinished_files_it_wrote_itself(tmp_path: Path) -> None:
    from unlinkwatch.agent.ship.spool import Spool

    d = tmp_path / "spool"
    d.mkdir()
    (d / "0000000000000007-3-100.tmp").write_bytes(b"cut short")
    for name in ("notes.tmp", "backup.tmp", "0000000000000007-3.tmp", "keep.batch"):
        (d / name).write_text("someone else's")
    Spool(str(d), 1 << 20)
    assert sorted(p.name for p in d.iterdir()) == ["0000000000000007-3.tmp", "backup.tmp", "keep.batch", "notes.tmp"]


def spooled_events(spool: Path) -> int:
    return sum(int(p.name.split("-")[2].split(".")[0]) for p in spool.glob("*.batch"))


def test_batches_acknowledged_in_time_never_touch_the_disk(tmp_path: Path) -> None:
    c = start_inprocess(f"sqlite:///{tmp_path}/c.db")
    spool = tmp_path / "spool"
    s = shipper(c.port, "n:1", spool, batch_max_events=500, spool_after_s=5.0)
    try:
        s.submit(events("n:1", 1, 10), [])
        wait_for(lambda: s.backlog() == 0)  # a stream delivers acks (before it, batches go to disk at once)
        assert s._spool is not None
        written = s._spool.writes
        submit_all(s, events("n:1", 11, 5000))
        wait_for(lambda: c.store.count() == 5010 and s.backlog() == 0)
        assert s._spool.writes == written and list(spool.iterdir()) == []
    finally:
        s.close()
        c.close()


def test_batches_held_past_the_memory_bound_go_to_disk_even_with_acks_in_time(tmp_path: Path) -> None:
    c = start_inprocess(f"sqlite:///{tmp_path}/c.db")
    spool = tmp_path / "spool"
    s = shipper(c.port, "n:1", spool, batch_max_events=500, spool_after_s=5.0, hold_max_bytes=1)
    try:
        s.submit(events("n:1", 1, 10), [])
        wait_for(lambda: s.backlog() == 0)
        assert s._spool is not None
        written = s._spool.writes
        submit_all(s, events("n:1", 11, 5000))
        wait_for(lambda: c.store.count() == 5010 and s.backlog() == 0)
        assert s._spool.writes > written and list(spool.iterdir()) == [] and s.lost()["queue"] == 0
    finally:
        s.close()
        c.close()


def test_batches_whose_acks_are_late_go_to_disk_and_leave_it_on_their_acks(tmp_path: Path) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    proc = start_subprocess(f"sqlite:///{tmp_path}/c.db", port, log_path=tmp_path / "collector.log")
    s = shipper(port, "n:1", spool, batch_max_events=500, spool_after_s=0.3)
    try:
        s.submit(events("n:1", 1, 10), [])
        wait_for(lambda: s.backlog() == 0)
        proc.send_signal(signal.SIGSTOP)  # the collector hangs: its connection stays open and no ack comes
        try:
            submit_all(s, events("n:1", 11, 3000))
            # each batch once its ack is 0.3 s late; well before gRPC gives the stream up (about 10 s), after
            # which everything held goes to disk anyway
            wait_for(lambda: spooled_events(spool) == 3000, timeout=5.0)
        finally:
            proc.send_signal(signal.SIGCONT)
        wait_for(lambda: s.backlog() == 0 and spooled_events(spool) == 0)
        assert s.lost() == {"kernel": 0, "queue": 0, "transport": 0}
    finally:
        s.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_an_agent_stopped_while_the_collector_hangs_leaves_what_it_held_on_disk_for_the_next_start(
        tmp_path: Path) -> None:
    port = free_port()
    db = f"sqlite:///{tmp_path}/c.db"
    spool = tmp_path / "spool"
    proc = start_subprocess(db, port, log_path=tmp_path / "collector.log")
    try:
        first = shipper(port, "n:run1", spool, batch_max_events=500, spool_after_s=600.0)
        first.submit(events("n:run1", 1, 10), [])
        wait_for(lambda: first.backlog() == 0)
        proc.send_signal(signal.SIGSTOP)
        try:
            submit_all(first, events("n:run1", 11, 3000))
            wait_for(lambda: first.backlog() == 3000 and not first._pending)
            assert spooled_events(spool) == 0  # held in memory: no ack is late yet
            first.close(timeout=0.3)
            assert first.lost() == {"kernel": 0, "queue": 0, "transport": 0}
            assert spooled_events(spool) == 3000
        finally:
            proc.send_signal(signal.SIGCONT)
        second = shipper(port, "n:run2", spool)
        wait_for(lambda: second.backlog() == 0 and spooled_events(spool) == 0)
        second.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    store = open_store(db)
    try:
        [a] = store.agents()
        assert (a.agent, a.events, a.max_seq, a.gaps, a.lost_queue) == ("n:run1", 3010, 3010, 0, 0)
    finally:
        store.close()


def spool_write_errors(s: Shipper) -> float:
    return s._m.registry.get_sample_value("unlinkwatch_agent_spool_write_errors_total") or 0.0


def test_a_full_spool_disk_keeps_the_batches_in_memory_and_the_collector_gets_them_all(tmp_path: Path) -> None:
    require_root()
    port = free_port()
    with workload.tmpfs_mount(max_files=1000, size="128k") as disk:  # a real disk that fills: ENOSPC
        spool = disk / "spool"
        s = shipper(port, "n:1", spool, batch_max_events=100)
        try:
            submit_all(s, events("n:1", 1, 5000))  # collector down: each batch to disk at once, until it is full
            wait_for(lambda: spool_write_errors(s) > 0 and not s._pending and s.backlog() == 5000)
            assert 0 < spooled_events(spool) < 5000 and list(spool.glob("*.tmp")) == []
            submit_all(s, events("n:1", 5001, 1000))  # the batcher still runs
            wait_for(lambda: not s._pending and s.backlog() == 6000)
            c = start_inprocess(f"sqlite:///{tmp_path}/c.db", port=port)
            wait_for(lambda: c.store.count() == 6000 and s.backlog() == 0)
            stored = [e.seq for e in query(c.store, EventFilter(), None, 10_000)[0]]
            assert stored == list(range(1, 6001)) and s.lost() == {"kernel": 0, "queue": 0, "transport": 0}
            assert spooled_events(spool) == 0
            c.close()
        finally:
            s.close(timeout=0.5)


def test_with_the_spool_disk_full_and_the_collector_down_memory_stays_bounded_and_drops_are_counted(
        tmp_path: Path) -> None:
    require_root()
    port = free_port()
    with workload.tmpfs_mount(max_files=1000, size="64k") as disk:
        spool = disk / "spool"
        s = shipper(port, "n:1", spool, batch_max_events=100, spool_max_bytes=300_000, hold_max_bytes=1)
        try:
            for i in range(0, 5000, 100):  # one batch per submit
                s.submit(events("n:1", i + 1, 100), [])
                wait_for(lambda: not s._pending)
            assert spool_write_errors(s) > 0
            assert s._spool is not None and s._spool.bytes + s._held <= 300_000 + 1 + 40_000  # a batch's slack
            lost = s.lost()["queue"]
            assert 0 < lost < 5000 and lost % 100 == 0
            c = start_inprocess(f"sqlite:///{tmp_path}/c.db", port=port)
            wait_for(lambda: s.backlog() == 0 and c.store.count() == 5000 - lost)
            stored = [e.seq for e in query(c.store, EventFilter(), None, 10_000)[0]]
            assert stored == list(range(lost + 1, 5001))  # exactly the oldest were dropped
            c.close()
        finally:
            s.close(timeout=0.5)

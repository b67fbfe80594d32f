"""The collector is killed with SIGKILL twice during a 20,000-event burst from a Shipper with a spool:
every event is stored exactly once, with no gap and nothing counted lost."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from unlinkwatch.agent.metrics import AgentMetrics
from unlinkwatch.agent.ship.shipper import Shipper, ShipperConfig
from unlinkwatch.collector.store import open_store

from tests.support.collector import free_port, start_subprocess
from tests.support.eventgen import events
from tests.support.postgres import PostgresCluster  # postgres_server: the session fixture (conftest)

N = 20_000


def burst_with_two_kills(tmp_path: Path, db: str) -> None:
    port = free_port()
    log = tmp_path / "collector.log"
    proc = start_subprocess(db, port, log_path=log)
    s = Shipper(ShipperConfig(collector=f"127.0.0.1:{port}", agent_id="node-k:1", node="node-k",
                              attach_mode="tracepoint", spool_dir=str(tmp_path / "spool"),
                              batch_max_events=500, batch_max_delay_s=0.02), AgentMetrics())
    s.start()
    evs = events("node-k:1", 1, N)
    done = threading.Event()

    def produce() -> None:
        for i in range(0, N, 200):
            s.submit(evs[i:i + 200], [])
            time.sleep(0.04)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        for pause in (0.8, 0.6):
            time.sleep(pause)
            assert not done.is_set(), "burst ended before the kill"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            time.sleep(0.3)
            proc = start_subprocess(db, port, log_path=log)
        producer.join()
        deadline = time.monotonic() + 60
        while s.backlog() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.backlog() == 0
        assert s.lost() == {"kernel": 0, "queue": 0, "transport": 0}
    finally:
        s.close(timeout=2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    store = open_store(db)
    try:
        assert store.count() == N
        [a] = store.agents()
        assert (a.events, a.max_seq, a.gaps, a.lost_queue) == (N, N, 0, 0)
    finally:
        store.close()


def test_sigkilled_sqlite_collector_stores_every_event_exactly_once(tmp_path: Path) -> None:
    burst_with_two_kills(tmp_path, f"sqlite:///{tmp_path}/c.db")


def test_sigkilled_postgres_collector_stores_every_event_exactly_once(tmp_path: Path,
                                                                      postgres_server: PostgresCluster) -> None:
    burst_with_two_kills(tmp_path, postgres_server.new_database())

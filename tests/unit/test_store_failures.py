"""A collector whose store fails under it: its SQLite disk fills (a real tmpfs, ENOSPC), or PostgreSQL drops its
connections (a restart, a failover). It refuses what it cannot store, the agents keep it, and once the store is back
every event arrives; nothing is lost and the collector never stops."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg
from unlinkwatch.agent.metrics import AgentMetrics
from unlinkwatch.agent.ship.shipper import Shipper, ShipperConfig
from unlinkwatch.collector.store import open_store

from bench import workload
from tests.conftest import require_root
from tests.support.agentproc import scrape
from tests.support.collector import free_port, start_subprocess
from tests.support.eventgen import events
from tests.support.postgres import PostgresCluster


def _stored(db: str) -> tuple[int, int, int]:
    """The one agent's (events, highest seq, gaps) as the store has them."""
    store = open_store(db)
    try:
        [a] = store.agents()
        return a.events, a.max_seq, a.gaps
    finally:
        store.close()


def test_a_collector_with_a_full_disk_keeps_running_and_stores_everything_once_it_has_room(tmp_path: Path) -> None:
    require_root()
    port = free_port()
    with workload.tmpfs_mount(max_files=100, size="3m") as disk:
        db = f"sqlite:///{disk}/events.db"
        metrics = free_port()
        log_path = tmp_path / "collector.log"
        proc = start_subprocess(db, port, "--metrics-addr", f"127.0.0.1:{metrics}", log_path=log_path)
        s = Shipper(ShipperConfig(collector=f"127.0.0.1:{port}", agent_id="n:1", node="n", attach_mode="tracepoint",
                                  spool_dir=str(tmp_path / "spool"), batch_max_delay_s=0.05), AgentMetrics())
        s.start()
        try:
            evs = events("n:1", 1, 20_000)
            for i in range(0, len(evs), 500):
                s.submit(evs[i:i + 500], [])
            deadline = time.monotonic() + 60
            while "database or disk is full" not in log_path.read_text():
                assert time.monotonic() < deadline, log_path.read_text()[-2000:]
                time.sleep(0.2)
            time.sleep(2)  # the agent retries meanwhile; the collector refuses again
            assert proc.poll() is None and s.backlog() > 0
            # the first refusal and the agent's retries
            assert scrape(metrics, "unlinkwatch_ingest_store_refusals_total") >= 2
            subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
            deadline = time.monotonic() + 90
            while s.backlog():
                assert time.monotonic() < deadline, f"backlog {s.backlog()}"
                time.sleep(0.2)
            assert s.lost() == {"kernel": 0, "queue": 0, "transport": 0} and proc.poll() is None
            time.sleep(1.5)  # a few checkpoints (every 0.5 s) on the disk with room
        finally:
            s.close()
            proc.terminate()
            proc.wait(30)
        log = log_path.read_text()
        # one line for the refusals (at most one per 30 s) and one for the checkpoints; no traceback, and the WAL
        # checkpoints outlived the full disk (a dead checkpointer leaves the WAL to grow for good)
        assert log.count("the store cannot take batches") == 1 and log.count("WAL checkpoint failed") <= 1
        assert "Traceback" not in log and "Exception in thread" not in log, log[-3000:]
        assert _stored(db) == (20_000, 20_000, 0)


def _ship(s: Shipper, first: int, n: int) -> None:
    evs = events("n:1", first, n)
    for i in range(0, n, 500):
        s.submit(evs[i:i + 500], [])


def _drained(s: Shipper, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while s.backlog():
        assert time.monotonic() < deadline, f"backlog {s.backlog()}"
        time.sleep(0.1)


def _query(port: int) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "unlinkwatch.cli", "query", "--collector", f"127.0.0.1:{port}",
                          "--output", "json", "--limit", "10"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_a_collector_whose_postgresql_connections_are_dropped_reconnects_and_loses_nothing(
        tmp_path: Path, postgres_server: PostgresCluster) -> None:
    url = postgres_server.new_database()
    db = url.rsplit("/", 1)[1]
    port = free_port()
    log_path = tmp_path / "collector.log"
    proc = start_subprocess(url, port, log_path=log_path)
    s = Shipper(ShipperConfig(collector=f"127.0.0.1:{port}", agent_id="n:1", node="n", attach_mode="tracepoint",
                              spool_dir=str(tmp_path / "spool"), batch_max_delay_s=0.05), AgentMetrics())
    s.start()
    try:
        _ship(s, 1, 3000)
        _drained(s)
        assert len(_query(port)) == 10  # a reader connection, to be dropped below
        with psycopg.connect(postgres_server.url, autocommit=True) as admin:  # every connection of the collector
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                                   (db,)).fetchone()
        assert killed is not None and killed[0] >= 2  # its writer (commit process) and registry at least
        _ship(s, 3001, 3000)
        _drained(s)
        assert s.lost() == {"kernel": 0, "queue": 0, "transport": 0} and proc.poll() is None
        assert len(_query(port)) == 10  # and queries, whose reader connection was dropped too
    finally:
        s.close()
        proc.terminate()
        proc.wait(30)
    assert _stored(url) == (6000, 6000, 0)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-3000:]

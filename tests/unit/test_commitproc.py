"""The collector's commit process: a child that dies fails only the group in flight, and the next group
starts a new child; nothing is stored twice when the failed group is sent again."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from unlinkwatch.collector.ingest.batch import prepare
from unlinkwatch.collector.ingest.commitproc import CommitProcess
from unlinkwatch.collector.ingest.writer import GroupWriter
from unlinkwatch.collector.store import open_store
from unlinkwatch.collector.store.model import BatchResult, Prepared

from tests.support.eventgen import batches
from tests.support.postgres import PostgresCluster  # postgres_server: the session fixture (conftest)

NOW = 1_800_000_000_000_000_000


def test_a_commit_process_killed_mid_group_fails_that_group_and_the_next_group_starts_a_new_one(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/events.db"
    store = open_store(url)
    child = CommitProcess(url)
    blocker = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    try:
        p1, p2, p3 = (prepare(store, b) for b in batches("node-a:1", 300, 100))  # registers identities now
        first = child.commit_prepared([p1], NOW)[0]
        assert isinstance(first, BatchResult) and first.duplicates == 0 and len(first.new_events) == 100
        proc = child._proc
        assert proc is not None
        blocker.execute("BEGIN IMMEDIATE")  # the child's next transaction waits for this write lock
        outcome: list[object] = []
        sender = threading.Thread(target=lambda: outcome.append(_attempt(child, p2)))
        sender.start()
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        sender.join(10)
        blocker.execute("ROLLBACK")
        assert not sender.is_alive()
        assert isinstance(outcome[0], RuntimeError) and "commit process ended" in str(outcome[0])
        again = child.commit_prepared([p1, p2, p3], NOW)  # the agent resends
        assert child._proc is not None and child._proc.pid != proc.pid
        assert [(r.duplicates, len(r.new_events)) for r in again if isinstance(r, BatchResult)] == \
            [(100, 0), (0, 100), (0, 100)]
        assert store.count() == 300 and store.agents()[0].events == 300
    finally:
        blocker.close()
        child.close()
        store.close()


def _attempt(child: CommitProcess, p: Prepared) -> object:
    try:
        return child.commit_prepared([p], NOW)
    except RuntimeError as e:
        return e


def test_closing_the_commit_process_ends_the_child(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/events.db"
    child = CommitProcess(url)
    proc = child._proc
    assert proc is not None
    child.close()
    assert proc.poll() == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_groups_in_flight_as_the_collector_runs_them_store_every_event_once_and_account_each_agent_exactly(
        request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    """As the collector: SQLite one child, PostgreSQL two, one writer thread each."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/events.db"
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres_server")
        url = cluster.new_database()
    store = open_store(url)
    children = [CommitProcess(url) for _ in range(1 if backend == "sqlite" else 2)]
    writer = GroupWriter(store, group_events=300, commits=[c.commit_prepared for c in children])
    try:
        agents = [f"node-{k}:1" for k in range(3)]
        per_agent = [list(batches(a, 2000, 100)) for a in agents]
        sent = [b for round_ in zip(*per_agent, strict=True) for b in round_]  # agents interleaved
        sent += per_agent[1][5:8]  # an agent resending batches: duplicates, possibly while the first is in flight
        futures = [writer.submit(prepare(store, b)) for b in sent]
        results = [f.result(60) for f in futures]
        assert sum(len(r.new_events) for r in results) == 6000
        assert sum(r.duplicates for r in results) == 300
        assert store.count() == 6000
        assert {(a.agent, a.events, a.max_seq, a.gaps) for a in store.agents()} == {(a, 2000, 2000, 0) for a in agents}
    finally:
        writer.close()
        for c in children:
            c.close()
        store.close()

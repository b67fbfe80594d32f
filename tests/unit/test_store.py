"""Both stores (real SQLite, real PostgreSQL) give the same answers: round trip, dedup, late identity,
filters, paging, retention and alert history."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from unlinkwatch.collector.ingest.batch import commit_batch, prepare
from unlinkwatch.collector.ingest.commitproc import CommitProcess
from unlinkwatch.collector.query import Cursor, EventFilter, query, read_events
from unlinkwatch.collector.store import Store, open_store
from unlinkwatch.collector.store.model import ident_key
from unlinkwatch.collector.store.sqlite import SqliteStore

from tests.support.eventgen import T0, batches, events, make_event, pod_uid
from tests.support.postgres import PostgresCluster  # postgres_server: the session fixture (conftest)
from unlinkwatch.pathglob import match
from unlinkwatch.pb import events_pb2 as pb

NOW = T0 + 10**15


@pytest.fixture(params=["sqlite", "postgres", "sqlite, commits in a child", "postgres, commits in a child"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The store; in the "child" cases its write transactions run in a CommitProcess, as in the collector."""
    if request.param.startswith("sqlite"):
        url = f"sqlite:///{tmp_path}/events.db"
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres_server")
        url = cluster.new_database()
    s = open_store(url)
    child = CommitProcess(url) if "child" in request.param else None
    if child is not None:
        s.commit_prepared = child.commit_prepared  # type: ignore[method-assign]  # commit_batch uses it too
    try:
        yield s
    finally:
        if child is not None:
            child.close()
        s.close()


def full_event(seq: int, agent: str = "node-a:1") -> pb.DeletionEvent:
    ev = pb.DeletionEvent(
        time_unix_ns=T0 + seq, node="node-a", op=pb.OP_RENAME, path=b"/data/\xff\xfe-caf\xc3\xa9\x00x",
        raw_path=b"rel/\x80name", result=-13, cgroup_id=2**63 + 5, identity=pb.IDENTITY_STATE_RESOLVED,
        agent=agent, seq=seq, flags=pb.EVENT_FLAG_PATH_TRUNCATED | pb.EVENT_FLAG_DIR_UNRESOLVED,
        attach_mode="fentry",
        process=pb.Process(pid=4_000_000_000, tid=7, ppid=1, uid=65534, gid=4_294_967_295, comm=b"r\xffm",
                           exe=b"/bin/\xe2\x82"),
        container=pb.Container(id="c" * 64, name="app", image="reg/app@sha256:" + "a" * 64),
        pod=pb.Pod(uid=pod_uid(1), name="web-1", namespace="prod", workload="Deployment/web",
                   labels={"app": "web", "tier": "front"}),
    )
    return ev


def batch(evs: list[pb.DeletionEvent], agent: str = "node-a:1", batch_id: int = 1, **kw: object) -> pb.EventBatch:
    kw.setdefault("first_seq", evs[0].seq if evs else 1)
    return pb.EventBatch(agent=agent, node="node-a", batch_id=batch_id, events=evs, **kw)  # type: ignore[arg-type]


def test_every_field_survives_the_round_trip_including_non_utf8_bytes(store: Store) -> None:
    ev = full_event(1)
    commit_batch(store, batch([ev]), NOW)
    got, cursor = query(store, EventFilter(), None, 10)
    assert got == [ev] and cursor is None


def test_a_replayed_batch_is_stored_once_and_reported_as_duplicates(store: Store) -> None:
    b = next(batches("node-a:1", 500, 500))
    first = commit_batch(store, b, NOW)
    again = commit_batch(store, b, NOW)
    assert (len(first.new_events), first.duplicates) == (500, 0)
    assert (len(again.new_events), again.duplicates) == (0, 500)
    overlap = batch(events("node-a:1", 451, 100), batch_id=2)
    third = commit_batch(store, overlap, NOW)
    assert [e.seq for e in third.new_events] == list(range(501, 551)) and third.duplicates == 50
    assert store.count() == 550
    assert store.agents()[0].events == 550


def test_same_sequence_number_under_another_agent_is_a_different_event(store: Store) -> None:
    commit_batch(store, batch([full_event(1, "node-a:1")]), NOW)
    commit_batch(store, batch([full_event(1, "node-a:2")], agent="node-a:2"), NOW)
    assert store.count() == 2


def test_sequence_gaps_and_reported_losses_are_accounted_per_agent(store: Store) -> None:
    evs = events("node-a:1", 1, 20)
    commit_batch(store, batch(evs[:5]), NOW)
    st = commit_batch(store, batch(evs[10:], batch_id=2, lost=pb.LossCounters(kernel=3, queue=2)), NOW).state
    # seqs 6..10 never arrived; the agent says 2 were dropped from its queue: 3 are unexplained
    assert (st.events, st.max_seq, st.lost_kernel, st.lost_queue, st.gaps) == (15, 20, 3, 2, 3)
    assert st.coverage == pytest.approx(15 / (15 + 5 + 3))
    hb = commit_batch(store, pb.EventBatch(agent="node-a:1", batch_id=3, first_seq=21), NOW + 5).state
    assert hb.last_seen_ns == NOW + 5 and hb.gaps == 3
    [a] = store.agents()
    assert (a.agent, a.node, a.events, a.gaps) == ("node-a:1", "node-a", 15, 3)


def test_identity_update_turns_unknown_events_of_that_pod_late_with_names(store: Store) -> None:
    unknown = full_event(1)
    unknown.identity = pb.IDENTITY_STATE_UNKNOWN
    unknown.pod.Clear()
    unknown.pod.uid = pod_uid(9)
    unknown.container.name = unknown.container.image = ""
    other = full_event(2)
    upd = pb.IdentityUpdate(pod_uid=pod_uid(9), container_id="c" * 64,
                            pod=pb.Pod(uid=pod_uid(9), name="late-pod", namespace="ns-late", workload="Job/x"),
                            container=pb.Container(id="c" * 64, name="worker", image="busybox"))
    commit_batch(store, batch([unknown, other]), NOW)
    commit_batch(store, batch([], batch_id=2, identity_updates=[upd], first_seq=3), NOW)
    [late] = query(store, EventFilter(namespace="ns-late", pod="late-pod"), None, 10)[0]
    assert late.identity == pb.IDENTITY_STATE_LATE and late.seq == 1
    assert (late.pod.uid, late.pod.workload, late.container.name, late.container.image) == (
        pod_uid(9), "Job/x", "worker", "busybox")
    assert [e.seq for e in query(store, EventFilter(pod_uid=pod_uid(9)), None, 10)[0]] == [1]
    assert query(store, EventFilter(namespace="prod"), None, 10)[0][0].identity == pb.IDENTITY_STATE_RESOLVED


def seqs(store: Store, f: EventFilter, limit: int = 100_000) -> list[int]:
    return [e.seq for e in query(store, f, None, limit)[0]]


def test_filters_select_exactly_the_matching_events_oldest_first(store: Store) -> None:
    for b in batches("node-a:1", 3000, 1000, pods=20):
        commit_batch(store, b, NOW)
    everything = query(store, EventFilter(), None, 100_000)[0]
    assert [e.seq for e in everything] == list(range(1, 3001))

    def expect(pred: object) -> list[int]:
        return [e.seq for e in everything if pred(e)]  # type: ignore[operator]

    assert seqs(store, EventFilter(pod_uid=pod_uid(3))) == expect(lambda e: e.pod.uid == pod_uid(3))
    assert seqs(store, EventFilter(namespace="ns3")) == expect(lambda e: e.pod.namespace == "ns3")
    assert seqs(store, EventFilter(namespace="ns3", pod="web-13")) == expect(
        lambda e: e.pod.namespace == "ns3" and e.pod.name == "web-13")
    assert seqs(store, EventFilter(workload="Deployment/web-4")) == expect(
        lambda e: e.pod.workload == "Deployment/web-4")
    assert seqs(store, EventFilter(container="c1")) == expect(lambda e: e.container.name == "c1")
    assert seqs(store, EventFilter(node="node-a")) == list(range(1, 3001))
    assert seqs(store, EventFilter(node="node-b")) == []
    assert seqs(store, EventFilter(since_ns=T0 + 100 * 10**6, until_ns=T0 + 200 * 10**6)) == list(range(100, 200))
    assert seqs(store, EventFilter(path_glob="/var/lib/app3/**")) == expect(
        lambda e: e.path.startswith(b"/var/lib/app3/"))
    assert seqs(store, EventFilter(path_glob="/var/lib/app*/cache/file-1?.tmp")) == list(range(10, 20))
    assert seqs(store, EventFilter(path_glob="**/file-7.tmp")) == [7]
    assert seqs(store, EventFilter(rename_to_glob="/var/lib/app3/done/**")) == expect(
        lambda e: e.op == pb.OP_RENAME and e.rename_to.startswith(b"/var/lib/app3/done/"))
    assert seqs(store, EventFilter(rename_to_glob="**/file-4", path_glob="/var/lib/*/cache/**")) == [4]
    assert seqs(store, EventFilter(pod_uid="nope")) == []


GLOB_SHAPES = ["/x/**", "/x/**/y", "**/y", "/x/*", "/x", "/**", "**", "/x/[xy]*/**", "/x/[!x]*", "/x?/**",
               "/x/\\*/**", "/\\[x]/**", "/\\xff/**", "/caf\\xc3\\xa9/**", "/a b/**", "/x/**/x-old/**",
               "/x-old/**", "/x0/*/y", "**/.hidden/**", "/x/y/**"]
SEGMENTS = [b"x", b"x-old", b"x.bak", b"x0", b"y", b"a b", b"\xff", b"caf\xc3\xa9", b"[x]", b"*", b".hidden"]


def generated_paths(n: int, seed: int = 7) -> list[bytes]:
    """Random paths over segments that sort just around "x/" and need escapes, with every parent directory
    (as `rm -rf` deletes them too)."""
    rng = random.Random(seed)
    paths: set[bytes] = set()
    while len(paths) < n:
        segs = [rng.choice(SEGMENTS) for _ in range(rng.randint(1, 4))]
        paths.update(b"/" + b"/".join(segs[:k]) for k in range(1, len(segs) + 1))
    return sorted(paths)


@pytest.mark.parametrize("wide_from", [5_000, 1], ids=["ranges read by path", "ranges read in time order"])
def test_a_path_query_returns_exactly_what_the_glob_matches_for_every_glob_shape(
        store: Store, wide_from: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from unlinkwatch.collector.query import pages

    monkeypatch.setattr(pages, "WIDE_PATH_RANGE", wide_from)
    paths = generated_paths(600)
    evs = [make_event("node-a:1", i + 1) for i in range(len(paths))]
    for ev, path in zip(evs, paths, strict=True):
        ev.path = path
    commit_batch(store, pb.EventBatch(agent="node-a:1", node="node-a", batch_id=1, first_seq=1,
                                      attach_mode="tracepoint", events=evs), NOW)
    for glob in GLOB_SHAPES:
        got = sorted(e.path for e in query(store, EventFilter(path_glob=glob), None, 100_000)[0])
        assert got == [p for p in paths if match(glob, p)], glob
    # the case: rm -rf /x reports /x itself, and '/x/**' finds it
    assert b"/x" in [e.path for e in query(store, EventFilter(path_glob="/x/**"), None, 100_000)[0]]


def test_paging_walks_every_match_once_in_order(store: Store) -> None:
    for b in batches("node-a:1", 1000, 1000, pods=5):
        commit_batch(store, b, NOW)
    f = EventFilter(path_glob="/var/lib/app2/**")
    want = seqs(store, f)
    got: list[int] = []
    cursor: Cursor | None = None
    while True:
        page, cursor = query(store, f, cursor, 7)
        got += [e.seq for e in page]
        if cursor is None:
            break
        assert len(page) == 7
    assert got == want and len(want) > 100


def test_retention_deletes_only_events_older_than_the_cutoff(store: Store) -> None:
    for b in batches("node-a:1", 1000, 250):
        commit_batch(store, b, NOW)
    assert store.delete_before(T0 + 400 * 10**6, chunk=64) == 399
    assert seqs(store, EventFilter())[:2] == [400, 401] and store.count() == 601


def test_alert_history_is_kept_in_time_order(store: Store) -> None:
    alerts = [pb.Alert(time_unix_ns=T0 + i, rule=f"r{i}", severity="high", count=i + 1, sample_paths=[b"/etc/\xff"],
                       event=full_event(i + 1), id=i + 1) for i in range(5)]
    store.save_alerts(alerts[3:])
    store.save_alerts(alerts[:3])
    assert store.alerts_since(0, 100) == alerts
    assert [a.rule for a in store.alerts_since(T0 + 2, 2)] == ["r2", "r3"]


def test_a_folded_alert_saved_again_with_its_final_count_is_kept_once(store: Store) -> None:
    first = pb.Alert(time_unix_ns=T0, rule="etc", severity="high", count=1, id=42)
    store.save_alerts([first])
    store.save_alerts([pb.Alert(time_unix_ns=T0, rule="etc", severity="high", count=10_000, id=42)])
    assert [(a.id, a.count) for a in store.alerts_since(0, 100)] == [(42, 10_000)]


def test_the_retention_pass_keeps_exactly_the_configured_window(store: Store) -> None:
    from unlinkwatch.collector.retention import Retention

    from unlinkwatch.timeparse import parse_duration_ns

    for b in batches("node-a:1", 600, 300):
        commit_batch(store, b, NOW)
    keep = parse_duration_ns("100ms")   # events are 1 ms apart: seq 500..600 are within 100 ms of the last
    assert Retention(store, keep).run_once(now_ns=T0 + 600 * 10**6) == 499
    assert seqs(store, EventFilter()) == list(range(500, 601))


def test_a_group_commit_dedups_across_its_batches_and_accounts_each_in_order(store: Store) -> None:
    b1 = batch(events("node-a:1", 1, 100), batch_id=1)
    b2 = batch(events("node-a:1", 51, 100), batch_id=2)   # half of it repeats b1, in the same transaction
    b3 = batch(events("node-b:1", 1, 10), agent="node-b:1", batch_id=1)
    r1, r2, r3 = store.commit_prepared([prepare(store, b) for b in (b1, b2, b3)], NOW)
    assert not isinstance(r1, Exception) and not isinstance(r2, Exception) and not isinstance(r3, Exception)
    assert (len(r1.new_events), r1.duplicates, r1.state.events) == (100, 0, 100)
    assert [e.seq for e in r2.new_events] == list(range(101, 151)) and r2.duplicates == 50
    assert (r2.state.events, r2.state.max_seq, r3.state.events) == (150, 150, 10)
    assert store.count() == 160


def test_a_failing_batch_of_a_group_fails_alone(store: Store) -> None:
    good = batch(events("node-a:1", 1, 20), batch_id=1)
    bad = prepare(store, batch([pb.DeletionEvent(agent="node-a:1", seq=21, time_unix_ns=1)], batch_id=2))
    bad.rows[0] = (bad.rows[0][0], 2**64 - 1, *bad.rows[0][2:])  # (prepare refuses such a time: InvalidBatch)
    later = batch(events("node-a:1", 22, 5), batch_id=3)
    r1, r2, r3 = store.commit_prepared([prepare(store, good), bad, prepare(store, later)], NOW)
    assert isinstance(r2, Exception) and not isinstance(r1, Exception) and not isinstance(r3, Exception)
    assert store.count() == 25 and store.agents()[0].events == 25


def test_events_are_stored_as_the_bytes_they_arrived_in(store: Store) -> None:
    unknown_field = b"\xa8\x06\x07"  # field 101, varint 7: from a newer agent; kept as it came
    raw = full_event(1).SerializeToString() + unknown_field
    store.commit_prepared([prepare(store, batch([pb.DeletionEvent.FromString(raw)]), [raw])], NOW)
    commit_batch(store, batch([full_event(2)], batch_id=2), NOW)  # no bytes given: serialized from the message
    blobs, _ = read_events(store, EventFilter(), None, 10)
    assert blobs[0] == raw and pb.DeletionEvent.FromString(blobs[1]) == full_event(2)  # (map order varies)
    got = query(store, EventFilter(), None, 10)[0][0]
    got.DiscardUnknownFields()
    assert got == full_event(1)


def test_closing_the_sqlite_store_while_a_stream_thread_registers_an_identity_waits_for_it(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path}/events.db")
    blocker = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the registration waits for this write lock
    outcome: list[object] = []

    def prepare() -> None:
        try:
            outcome.append(prepare(s, batch(events("node-a:1", 1, 10))))
        except Exception as e:
            outcome.append(e)

    t = threading.Thread(target=prepare)
    t.start()
    time.sleep(0.3)
    closer = threading.Thread(target=s.close)
    closer.start()
    time.sleep(0.3)
    blocker.execute("ROLLBACK")
    t.join(30)
    closer.join(30)
    blocker.close()
    assert not t.is_alive() and not closer.is_alive() and len(outcome) == 1  # and the process is still alive


def test_the_sqlite_wal_stays_bounded_under_constant_ingest(tmp_path: Path) -> None:
    """PASSIVE checkpoints alone never catch up with a writer that never pauses, and the WAL grew without
    bound; past the limit a RESTART checkpoint lets the next commit start the WAL over."""
    db = tmp_path / "events.db"
    s = SqliteStore(str(db), checkpoint_every_s=0.05, wal_restart_bytes=2 << 20)
    try:
        largest = 0
        for b in batches("node-a:1", 60_000, 1500):
            commit_batch(s, b, NOW)
            largest = max(largest, (tmp_path / "events.db-wal").stat().st_size)
        assert s.count() == 60_000
        assert largest < 24 << 20, f"WAL reached {largest >> 20} MiB"
    finally:
        s.close()



@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_batch_of_many_new_pods_numbers_each_identity_once_and_a_second_store_agrees(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/events.db"
    else:
        url = request.getfixturevalue("postgres_server").new_database()
    evs = events("node-a:1", 1, 600, pods=500)
    first, second = open_store(url), open_store(url)
    try:
        commit_batch(first, batch(evs), NOW)
        nums = [r[5] for r in prepare(first, batch(evs)).rows]
        assert len(set(nums)) == len({ident_key(e) for e in evs}) > 300
        assert [r[5] for r in prepare(second, batch(evs)).rows] == nums  # registered by the first: same numbers
        for uid in {e.pod.uid for e in evs[::97] if e.pod.uid}:
            got, _ = query(first, EventFilter(pod_uid=uid), None, 1000)
            assert sorted(e.seq for e in got) == sorted(e.seq for e in evs if e.pod.uid == uid)
    finally:
        second.close()
        first.close()

"""Ingest rules, pure: a batch's validation and its event rows, built with the store's numbering (agents and
identities) outside any write lock; prepare() makes the Prepared that a commit takes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from unlinkwatch.pb import events_pb2 as pb

from ..store import Store
from ..store.model import MAX_INT64, MAX_SEQ, SEQ_BITS, BatchResult, EventRow, IdentKey, Prepared


class InvalidBatch(ValueError):
    """The batch breaks the protocol; the stream gets INVALID_ARGUMENT and nothing of it is stored."""


def validate_header(batch: pb.EventBatch) -> None:
    """What a batch must carry besides its events (those are checked as their rows are built: event_rows)."""
    if not batch.agent:
        raise InvalidBatch("batch without agent id")


def event_rows(agent_num: int, events: Sequence[pb.DeletionEvent], idents: dict[IdentKey, int],
               new_idents: Callable[[list[IdentKey]], dict[IdentKey, int]],
               blobs: Sequence[bytes] | None = None, agent: str = "") -> list[EventRow]:
    """Rows in EVENT_COLUMNS order; the hot path of ingest, so attribute reads are kept to the minimum.
    Each event is checked on the way (InvalidBatch: a sequence number or time out of range, or `agent`
    given and the event names another): one pass over the events instead of two.
    Identities not numbered yet are registered together, once per batch (`new_idents`: one transaction).
    `blobs`: each event's bytes as received (codec.batch_events), stored as they are instead of re-serialized."""
    base = agent_num << SEQ_BITS
    rows: list[EventRow] = []
    append = rows.append
    get = idents.get
    missing: list[tuple[int, IdentKey]] = []
    if blobs is None or len(blobs) != len(events):
        blobs = [ev.SerializeToString() for ev in events]
    for ev, data in zip(events, blobs, strict=True):
        seq = ev.seq
        t = ev.time_unix_ns
        if not 0 < seq <= MAX_SEQ:
            raise InvalidBatch(f"event sequence number out of range: {seq}")
        if t > MAX_INT64:
            raise InvalidBatch(f"event time out of range: {t}")
        a = ev.agent
        if a and agent and a != agent:
            raise InvalidBatch(f"event of agent {a!r} in a batch of {agent!r}")
        pod = ev.pod
        c = ev.container
        key = (ev.node, pod.uid, pod.namespace, pod.name, pod.workload, c.name, c.id)
        num = get(key)
        if num is None:
            missing.append((len(rows), key))
            num = 0
        append((base | seq, t, ev.op, ev.result, ev.path, num, ev.identity, data))
    if missing:
        nums = new_idents(list(dict.fromkeys(k for _, k in missing)))
        for i, key in missing:
            r = rows[i]
            rows[i] = (r[0], r[1], r[2], r[3], r[4], nums[key], r[6], r[7])
    return rows


def prepare(store: Store, batch: pb.EventBatch, blobs: Sequence[bytes] | None = None) -> Prepared:
    """The batch validated and its rows built (any thread, no lock held); `blobs` are the events' bytes as
    received. Raises InvalidBatch for a batch that breaks the protocol (nothing of it is stored)."""
    validate_header(batch)
    num = store.agent_num(batch.agent)
    return Prepared.of(batch, num, event_rows(num, batch.events, store.idents, store.new_idents, blobs, batch.agent))


def commit_batch(store: Store, batch: pb.EventBatch, now_ns: int) -> BatchResult:
    """One batch prepared and committed as a group of one (tests, tools, the benchmark's direct path)."""
    res = store.commit_prepared([prepare(store, batch)], now_ns)[0]
    if isinstance(res, Exception):
        raise res
    return res


def bulk_load(store: Store, agent: str, events: Sequence[pb.DeletionEvent]) -> int:
    """Events stored without per-batch accounting (benchmarks, imports); returns rows written."""
    return store.bulk_insert(event_rows(store.agent_num(agent), events, store.idents, store.new_idents, agent=agent))

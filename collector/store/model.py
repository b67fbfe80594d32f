"""What the store keeps and how an agent's accounting moves, pure: rows, identities, agent state, the
prepared batch that ingest hands to a commit and the result it gets back.

Each agent gets a small number when first seen; an event's storage id is `agent_num << SEQ_BITS | seq`,
so the primary key itself deduplicates (agent, seq) and no extra unique index slows inserts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence, Set
from dataclasses import dataclass, field, replace
from operator import itemgetter

from unlinkwatch.pb import events_pb2 as pb

SEQ_BITS = 40
MAX_SEQ = (1 << SEQ_BITS) - 1
MAX_AGENT_NUM = (1 << (63 - SEQ_BITS)) - 1
MAX_INT64 = (1 << 63) - 1

# The event columns, in row order. `ident` numbers one (node, pod, container) identity in the idents table:
# one small integer index then serves pod UID, namespace+pod, workload, container and node.
EVENT_COLUMNS = ("id", "time_ns", "op", "result", "path", "ident", "identity", "data")
IDENT_COLUMNS = ("node", "pod_uid", "namespace", "pod", "workload", "container", "container_id")
AGENT_COLS = ("agent", "node", "attach_mode", "last_seen_ns", "events", "max_seq", "lost_kernel", "lost_queue",
              "lost_transport", "gaps")
EventRow = tuple[int, int, int, int, bytes, int, int, bytes]
IdentKey = tuple[str, str, str, str, str, str, str]
_ID, _PATH, _OP_RESULT = itemgetter(0), itemgetter(4), itemgetter(2, 3)  # EVENT_COLUMNS positions


@dataclass(frozen=True)
class AgentState:
    agent: str
    node: str = ""
    attach_mode: str = ""
    last_seen_ns: int = 0
    events: int = 0        # distinct events stored
    max_seq: int = 0       # highest sequence number received
    lost_kernel: int = 0
    lost_queue: int = 0
    lost_transport: int = 0
    gaps: int = 0          # sequence numbers neither stored nor reported lost

    @property
    def lost_total(self) -> int:
        return self.lost_kernel + self.lost_queue + self.lost_transport

    @property
    def coverage(self) -> float:
        denom = self.events + self.lost_total + self.gaps
        return self.events / denom if denom else 1.0


def storage_id(agent_num: int, seq: int) -> int:
    return (agent_num << SEQ_BITS) | seq


def seq_of(storage_id_: int) -> int:
    return storage_id_ & MAX_SEQ


def ident_key(ev: pb.DeletionEvent) -> IdentKey:
    pod, c = ev.pod, ev.container
    return (ev.node, pod.uid, pod.namespace, pod.name, pod.workload, c.name, c.id)


def batch_max_seq(batch: pb.EventBatch, top_seq: int | None = None) -> int:
    """The highest sequence number the batch proves the agent has issued (`top_seq`: its events' highest,
    when already known)."""
    top = max((ev.seq for ev in batch.events), default=0) if top_seq is None else top_seq
    return max(top, batch.first_seq - 1 if batch.first_seq else 0)


def account(old: AgentState, batch: pb.EventBatch, stored: int, now_ns: int,
            top_seq: int | None = None) -> AgentState:
    """The agent's state after a batch; loss counters are cumulative, so the largest value seen wins."""
    lost = batch.lost
    st = replace(
        old,
        node=batch.node or old.node,
        attach_mode=batch.attach_mode or old.attach_mode,
        last_seen_ns=now_ns,
        events=old.events + stored,
        max_seq=max(old.max_seq, batch_max_seq(batch, top_seq)),
        lost_kernel=max(old.lost_kernel, lost.kernel),
        lost_queue=max(old.lost_queue, lost.queue),
        lost_transport=max(old.lost_transport, lost.transport),
    )
    # Missing sequence numbers the agent did not account for (queue and transport drops carry seqs).
    return replace(st, gaps=max(0, st.max_seq - st.events - st.lost_queue - st.lost_transport))


def apply_identity(ev: pb.DeletionEvent, upd: pb.IdentityUpdate) -> None:
    """Late join: names learned after the event; the ids already in the event are kept."""
    if upd.HasField("pod"):
        uid = ev.pod.uid or upd.pod_uid
        ev.pod.CopyFrom(upd.pod)
        ev.pod.uid = uid or upd.pod.uid
    if upd.HasField("container"):
        cid = ev.container.id or upd.container_id
        ev.container.CopyFrom(upd.container)
        ev.container.id = cid or upd.container.id
    ev.identity = pb.IDENTITY_STATE_LATE


def row_counts(rows: Sequence[EventRow]) -> dict[tuple[int, bool], int]:
    out: dict[tuple[int, bool], int] = {}
    for (op, result), n in Counter(map(_OP_RESULT, rows)).items():  # counted in C, then folded by success
        key = (op, result == 0)
        out[key] = out.get(key, 0) + n
    return out


def fresh_rows(rows: list[EventRow], existing: Set[int]) -> list[EventRow]:
    """The rows to insert: not stored before and not a repeat inside the batch (the batch's own list when
    nothing repeats, the usual case)."""
    if not existing and len({r[0] for r in rows}) == len(rows):
        return rows
    seen: set[int] = set(existing)
    out = []
    for r in rows:
        if r[0] not in seen:
            seen.add(r[0])
            out.append(r)
    return out


@dataclass
class Prepared:
    """A validated batch with its event rows built (outside the write lock), ready to commit. What can be
    worked out from the rows alone is worked out here too: the commit holds the write lock and the GIL."""
    batch: pb.EventBatch
    agent_num: int
    rows: list[EventRow]
    lo: int = 0           # lowest and highest storage id of the rows
    hi: int = 0
    counts: dict[tuple[int, bool], int] = field(default_factory=dict)  # (op, succeeded) -> rows

    @classmethod
    def of(cls, batch: pb.EventBatch, agent_num: int, rows: list[EventRow]) -> Prepared:
        if not rows:
            return cls(batch, agent_num, rows)
        ids = list(map(_ID, rows))
        return cls(batch, agent_num, rows, min(ids), max(ids), row_counts(rows))

    def paths(self) -> list[bytes]:
        return list(map(_PATH, self.rows))

    @property
    def top_seq(self) -> int:
        return self.hi & MAX_SEQ


@dataclass
class BatchResult:
    new_events: Sequence[pb.DeletionEvent]  # the batch's own event list when all are new (no copy)
    duplicates: int
    state: AgentState
    counts: dict[tuple[int, bool], int] = field(default_factory=dict)  # (op, succeeded) -> new events
    existing: frozenset[int] = frozenset()  # storage ids of the batch that were stored before (replays)


CommitOutcome = BatchResult | Exception


def new_events_of(events: Sequence[pb.DeletionEvent], stored: int,
                  existing_ids: Set[int]) -> Sequence[pb.DeletionEvent]:
    """The events of a batch that were new: not stored before and not a repeat inside the batch. When all
    `stored` were (the usual case), the batch's own list, not a copy."""
    if stored == len(events):
        return events
    skip = {seq_of(i) for i in existing_ids}
    out = []
    for ev in events:
        if ev.seq not in skip:
            skip.add(ev.seq)
            out.append(ev)
    return out

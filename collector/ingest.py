"""Ingest rules, pure: batch validation, event -> store row, per-agent accounting (dedup, gaps, losses).

Each agent gets a small number when first seen; an event's storage id is `agent_num << SEQ_BITS | seq`,
so the primary key itself deduplicates (agent, seq) and no extra unique index slows inserts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from unlinkwatch.pb import events_pb2 as pb

SEQ_BITS = 40
MAX_SEQ = (1 << SEQ_BITS) - 1
MAX_AGENT_NUM = (1 << (63 - SEQ_BITS)) - 1
MAX_INT64 = (1 << 63) - 1

# The store's event columns, in row order. `ident` numbers one (node, pod, container) identity in the
# idents table: one small integer index then serves pod UID, namespace+pod, workload, container and node.
EVENT_COLUMNS = ("id", "time_ns", "op", "result", "path", "ident", "identity", "data")
IDENT_COLUMNS = ("node", "pod_uid", "namespace", "pod", "workload", "container", "container_id")
EventRow = tuple[int, int, int, int, bytes, int, int, bytes]
IdentKey = tuple[str, str, str, str, str, str, str]


class InvalidBatch(ValueError):
    """The batch breaks the protocol; the stream gets INVALID_ARGUMENT and nothing of it is stored."""


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


def validate_header(batch: pb.EventBatch) -> None:
    """What a batch must carry besides its events (those are checked as their rows are built: event_rows)."""
    if not batch.agent:
        raise InvalidBatch("batch without agent id")


def ident_key(ev: pb.DeletionEvent) -> IdentKey:
    pod, c = ev.pod, ev.container
    return (ev.node, pod.uid, pod.namespace, pod.name, pod.workload, c.name, c.id)


def event_rows(agent_num: int, events: Sequence[pb.DeletionEvent], idents: dict[IdentKey, int],
               new_idents: Callable[[list[IdentKey]], dict[IdentKey, int]],
               blobs: Sequence[bytes] | None = None, agent: str = "") -> list[EventRow]:
    """Rows in EVENT_COLUMNS order; the hot path of ingest, so attribute reads are kept to the minimum.
    Each event is checked on the way (InvalidBatch: a sequence number or time out of range, or `agent`
    given and the event names another): one pass over the events instead of two.
    Identities not numbered yet are registered together, once per batch (`new_idents`: one transaction).
    `blobs`: each event's bytes as received (event_blobs), stored as they are instead of re-serialized."""
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


def event_blobs(raw: bytes) -> list[bytes] | None:
    """The serialized DeletionEvents of a serialized EventBatch, sliced out of its bytes (a scan of the
    top-level fields only): storing these costs nothing, where re-serializing each parsed event costs about
    as much as parsing it. None when the bytes are not a well-formed batch (the caller re-serializes)."""
    out: list[bytes] = []
    append = out.append
    i, n = 0, len(raw)
    try:
        while i < n:
            b = raw[i]
            i += 1
            if b == 0x22:  # field 4 (events), length-delimited: by far the most frequent tag
                ln = raw[i]
                i += 1
                if ln & 0x80:
                    ln &= 0x7F
                    shift = 7
                    while True:
                        b = raw[i]
                        i += 1
                        ln |= (b & 0x7F) << shift
                        if not b & 0x80:
                            break
                        shift += 7
                append(raw[i:i + ln])
                i += ln
                continue
            tag, shift = b & 0x7F, 7
            while b & 0x80:
                b = raw[i]
                i += 1
                tag |= (b & 0x7F) << shift
                shift += 7
            wt = tag & 7
            if wt == 0:
                while raw[i] & 0x80:
                    i += 1
                i += 1
            elif wt == 1:
                i += 8
            elif wt == 5:
                i += 4
            elif wt == 2:
                ln, shift = 0, 0
                while True:
                    b = raw[i]
                    i += 1
                    ln |= (b & 0x7F) << shift
                    if not b & 0x80:
                        break
                    shift += 7
                if tag >> 3 == 4:
                    append(raw[i:i + ln])
                i += ln
            else:
                return None
    except IndexError:
        return None
    return out if i == n else None


def storage_id(agent_num: int, seq: int) -> int:
    return (agent_num << SEQ_BITS) | seq


def seq_of(storage_id_: int) -> int:
    return storage_id_ & MAX_SEQ


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


def agent_info(st: AgentState) -> pb.AgentInfo:
    return pb.AgentInfo(
        agent=st.agent, node=st.node, last_seen_unix_ns=st.last_seen_ns, events=st.events,
        lost=pb.LossCounters(kernel=st.lost_kernel, queue=st.lost_queue, transport=st.lost_transport),
        sequence_gaps=st.gaps, attach_mode=st.attach_mode, coverage=st.coverage,
    )

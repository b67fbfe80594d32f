"""Synthetic DeletionEvents with every field set, for tests and benchmarks (deterministic per seed)."""

from __future__ import annotations

import random
from collections.abc import Iterator

from unlinkwatch.pb import events_pb2 as pb

T0 = 1_700_000_000_000_000_000
OPS = (pb.OP_UNLINK, pb.OP_UNLINK, pb.OP_UNLINK, pb.OP_RMDIR, pb.OP_RENAME)
IDENTITIES = (pb.IDENTITY_STATE_RESOLVED, pb.IDENTITY_STATE_RESOLVED, pb.IDENTITY_STATE_HOST,
              pb.IDENTITY_STATE_UNKNOWN)


def pod_uid(i: int) -> str:
    return f"{i:08x}-0000-4000-8000-{i:012x}"


def make_event(agent: str, seq: int, *, pods: int = 100, rng: random.Random | None = None,
               t0: int = T0, step_ns: int = 1_000_000) -> pb.DeletionEvent:
    r = rng or random.Random(seq)
    p = r.randrange(pods)
    ident = IDENTITIES[seq % len(IDENTITIES)]
    ev = pb.DeletionEvent(
        time_unix_ns=t0 + seq * step_ns, node=agent.split(":")[0], op=OPS[seq % len(OPS)],
        path=f"/var/lib/app{p % 7}/cache/file-{seq}.tmp".encode(), raw_path=f"file-{seq}.tmp".encode(),
        result=0 if seq % 13 else -2, cgroup_id=10_000 + p, identity=ident, agent=agent, seq=seq,
        attach_mode="tracepoint",
        process=pb.Process(pid=1000 + p, tid=1000 + p, ppid=1, uid=seq % 3, gid=0, comm=b"rm",
                           exe=b"/usr/bin/rm"),
    )
    if ev.op == pb.OP_RENAME:  # moved into a sibling directory; every other one over an existing file
        ev.rename_to = f"/var/lib/app{p % 7}/done/file-{seq}".encode()
        ev.flags = pb.EVENT_FLAG_REPLACED if seq % 2 else 0
    if ident != pb.IDENTITY_STATE_HOST:
        ev.container.id = f"{p:064x}"
        ev.pod.uid = pod_uid(p)
    if ident == pb.IDENTITY_STATE_RESOLVED:
        ev.container.name, ev.container.image = f"c{p % 3}", "registry.local/app:1"
        ev.pod.name, ev.pod.namespace = f"web-{p}", f"ns{p % 10}"
        ev.pod.workload = f"Deployment/web-{p // 2}"
        ev.pod.labels["app"] = f"web-{p // 2}"
    return ev


def events(agent: str, first_seq: int, n: int, *, pods: int = 100, seed: int = 1) -> list[pb.DeletionEvent]:
    rng = random.Random(seed * 1_000_003 + first_seq)
    return [make_event(agent, s, pods=pods, rng=rng) for s in range(first_seq, first_seq + n)]


def batches(agent: str, n_events: int, batch_size: int, *, pods: int = 100) -> Iterator[pb.EventBatch]:
    seq, bid = 1, 1
    while seq <= n_events:
        k = min(batch_size, n_events - seq + 1)
        yield pb.EventBatch(agent=agent, node=agent.split(":")[0], batch_id=bid, first_seq=seq,
                            attach_mode="tracepoint", events=events(agent, seq, k, pods=pods))
        seq += k
        bid += 1

"""Reference events for tests: a decoded Deletion as the protobuf library's DeletionEvent (the oracle the
agent's direct encoders are checked against), one record decoded that way, and random deletions."""

from __future__ import annotations

import random

from unlinkwatch.agent.decode import CgroupMkdir, Decoder, Deletion, Lineage, Proc

from unlinkwatch.codec import dev_name, split_args
from unlinkwatch.pb import events_pb2 as pb


def to_event(d: Deletion, node: str = "", agent: str = "", attach_mode: str = "") -> pb.DeletionEvent:
    ev = pb.DeletionEvent(
        time_unix_ns=d.time_unix_ns, node=node, op=d.op, path=d.path, raw_path=d.raw_path,  # type: ignore[arg-type]
        result=d.result, cgroup_id=d.cgroup_id, agent=agent, attach_mode=attach_mode, flags=d.flags,
        rename_to=d.rename_to, rename_flags=d.rename_flags, action=d.action, policy=d.policy,  # type: ignore[arg-type]
        process=pb.Process(pid=d.pid, tid=d.tid, ppid=d.ppid, uid=d.uid, gid=d.gid, comm=d.comm, exe=d.exe,
                           args=split_args(d.args)),
        ancestry=[pb.Process(pid=a.pid, comm=a.comm, exe=a.exe, args=split_args(a.args), unknown=a.unknown)
                  for a in (d.lineage.ancestors if d.lineage else ())],
        exec_session=bool(d.lineage and d.lineage.exec_session), host_path=d.host_path, volume=d.volume)
    if d.file_type:
        ev.inode, ev.dev, ev.file_type, ev.size = d.inode, dev_name(d.dev), d.file_type, d.size  # type: ignore[assignment]
        ev.nlink, ev.freed = d.nlink, d.freed
    ev.rename_to_host_path = d.rename_to_host_path
    return ev


def decode(decoder: Decoder, rec: bytes) -> pb.DeletionEvent | CgroupMkdir | None:
    """Decoder.split() of one record, with a DeletionEvent for a deletion."""
    decoder.tick()
    item = decoder.split(rec)
    if isinstance(item, Deletion):
        return to_event(item, decoder.node, decoder.agent_id, decoder.attach_mode)
    return item


NODE, AGENT, MODE = "node-ä", "node-ä:abc123", "tracepoint"


def templates() -> list[pb.DeletionEvent]:
    """A host, an unknown and a resolved identity."""
    host = pb.DeletionEvent(cgroup_id=1, identity=pb.IDENTITY_STATE_HOST)
    unknown = pb.DeletionEvent(cgroup_id=77, identity=pb.IDENTITY_STATE_UNKNOWN)
    unknown.pod.uid, unknown.container.id = "0f1e-uid", "c" * 64
    resolved = pb.DeletionEvent(cgroup_id=2**40 + 5, identity=pb.IDENTITY_STATE_RESOLVED)
    resolved.pod.uid, resolved.pod.name, resolved.pod.namespace = "uid-1", "web-7d4b9c-x2x", "prod"
    resolved.pod.workload = "Deployment/web"
    resolved.pod.labels["app"] = "web"
    resolved.pod.labels["tier"] = 'front "end"'
    resolved.container.id, resolved.container.name, resolved.container.image = "d" * 64, "app", "reg/app:1"
    return [host, unknown, resolved]


def random_deletion(r: random.Random, cgroup_id: int) -> Deletion:
    """A deletion with values at the edges of their encodings."""
    path_len = r.choice([1, 20, 127, 128, 300, 16383, 16384, 20000])
    path = b"/" + bytes(r.choice(b"abc/.\xff\xc3\xa9 \"\\\n") for _ in range(path_len - 1))
    op, flags = r.choice([0, 1, 2, 3]), r.choice([0, 1, 2, 3, 64, 128, 193])  # rename fields only on renames
    lineage = random_lineage(r)
    if lineage is not None and lineage.truncated:
        flags |= pb.EVENT_FLAG_ANCESTRY_TRUNCATED  # the decoder sets the flag with the lineage
    return Deletion(
        time_unix_ns=r.choice([0, 5, 2**28 - 1, 2**28, 2**28 + 1, 1_764_000_000_123_456_789, 2**63 - 1]),
        op=op, path=path, raw_path=r.choice([b"", path[-10:], b"rel\xfe"]),
        result=r.choice([0, -2, -13, -2**31, 5]), pid=r.choice([0, 1, 127, 128, 4_194_304]),
        tid=r.randrange(2**22), ppid=r.randrange(2**22), uid=r.choice([0, 1000, 2**32 - 1]),
        gid=r.choice([0, 65534]), comm=r.choice([b"", b"rm", b"k\xffz"]), exe=r.choice([b"", b"/usr/bin/rm"]),
        cgroup_id=cgroup_id, flags=flags | (r.choice([0, 4, 8, 16, 28]) if op == pb.OP_RENAME else 0),
        rename_to=r.choice([b"", b"/x/\xffy", path[:200]]) if op == pb.OP_RENAME else b"",
        rename_flags=r.choice([0, 1, 2, 4, 7]) if op == pb.OP_RENAME else 0,
        action=r.choice([0, 0, 1, 2]), policy=r.choice(["", "protect-\u00e4\"x", "keep-logs"]),
        args=r.choice([b"", b"rm\0-f\0x\0", b"sh\0\0-c\0caf\xe9 \"q\"\0", b"cut\0par"]),
        lineage=lineage, host_path=r.choice([b"", path, b"/var/lib/kubelet/pods/u/volumes/x\xff \"y"]),
        volume=r.choice(["", "emptyDir/cache", "rootfs", "hostPath/v\u00e4r\"x"]),
        rename_to_host_path=r.choice([b"", b"/var/lib/kubelet/pods/u/volumes/x/\xffz"]) if op == pb.OP_RENAME else b"",
        **random_victim(r))


def random_victim(r: random.Random) -> dict[str, object]:
    """What a deletion destroyed, at the edges of its encodings; often not read (file_type 0)."""
    file_type = r.choice([0, 0, 1, 2, 3, 4, 5, 6, 7])
    if not file_type:
        return {}
    return {"inode": r.choice([1, 127, 128, 2**32 + 1, 2**64 - 1]), "dev": r.choice([0, 8 << 20 | 1, 2**32 - 1]),
            "file_type": file_type, "size": r.choice([0, 1, 2**20, 2**63 - 1]), "nlink": r.choice([0, 1, 2, 2**32 - 1]),
            "freed": r.choice([False, True])}


def random_lineage(r: random.Random) -> Lineage | None:
    """None (the process unknown), no ancestors, or a few at the edges of their encodings."""
    if r.random() < 0.2:
        return None
    ancestors = tuple(Proc(r.choice([b"", b"/bin/sh", b"/x\xff\"y"]), r.choice([b"", b"sh\0-c\0rm x; true\0", b"cut"]),
                           0, r.choice([1, 128, 4_194_304]), r.choice([b"", b"sh", b"k\xffz"]),
                           unknown=r.random() < 0.2) for _ in range(r.choice([0, 1, 3, 8])))
    return Lineage(ancestors, r.random() < 0.3, len(ancestors) == 8 and r.random() < 0.5)


def reference_event(d: Deletion, template: pb.DeletionEvent, seq: int) -> pb.DeletionEvent:
    """What the library builds for d with identity `template` and sequence number seq."""
    ev = to_event(d, NODE, AGENT, MODE)
    ev.MergeFrom(template)
    ev.seq = seq
    return ev

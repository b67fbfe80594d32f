"""DeletionEvent <-> the JSON object of CONTRACT.md (agent --stdout, query --output json), and an alert's JSON."""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable
from typing import Any

from unlinkwatch.pb import events_pb2 as pb

OP_NAMES = {pb.OP_UNLINK: "unlink", pb.OP_RMDIR: "rmdir", pb.OP_RENAME: "rename"}
OP_BY_NAME = {v: k for k, v in OP_NAMES.items()}
ACTION_NAMES = {pb.ACTION_UNSPECIFIED: "allowed", pb.ACTION_WOULD_BLOCK: "would-block", pb.ACTION_BLOCKED: "blocked"}
ACTION_BY_NAME = {v: k for k, v in ACTION_NAMES.items()}
FILE_TYPE_NAMES = {pb.FILE_TYPE_FILE: "file", pb.FILE_TYPE_DIR: "dir", pb.FILE_TYPE_SYMLINK: "symlink",
                   pb.FILE_TYPE_FIFO: "fifo", pb.FILE_TYPE_SOCKET: "socket", pb.FILE_TYPE_CHAR: "char",
                   pb.FILE_TYPE_BLOCK: "block"}
FILE_TYPE_BY_NAME = {v: k for k, v in FILE_TYPE_NAMES.items()}
VICTIM_KEYS = ("inode", "dev", "file_type", "size", "nlink", "freed")  # null when the kernel could not read them
IDENTITY_NAMES = {
    pb.IDENTITY_STATE_RESOLVED: "resolved",
    pb.IDENTITY_STATE_LATE: "late",
    pb.IDENTITY_STATE_UNKNOWN: "unknown",
    pb.IDENTITY_STATE_HOST: "host",
}
IDENTITY_BY_NAME = {v: k for k, v in IDENTITY_NAMES.items()}
RENAME_FLAG_NAMES = ((1, "noreplace"), (2, "exchange"), (4, "whiteout"))  # renameat2's RENAME_* bits
TRUNCATED_FLAGS = pb.EVENT_FLAG_PATH_TRUNCATED | pb.EVENT_FLAG_RENAME_TO_TRUNCATED


def rename_flag_names(flags: int) -> list[str]:
    return [name for bit, name in RENAME_FLAG_NAMES if flags & bit]


def rename_flag_bits(names: Iterable[str]) -> int:
    """Inverse of rename_flag_names()."""
    wanted = set(names)
    return sum(bit for bit, name in RENAME_FLAG_NAMES if name in wanted)


def text(raw: bytes) -> str:
    """Bytes as text; bytes that are not UTF-8 become the four characters \\xNN."""
    return raw.decode("utf-8", "backslashreplace")


_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def untext(s: str) -> bytes:
    """Inverse of text() for paths typed by a user (\\xNN back to a byte)."""
    parts = _ESCAPE.split(s)
    out = bytearray()
    for i, part in enumerate(parts):
        out += bytes([int(part, 16)]) if i % 2 else part.encode("utf-8")
    return bytes(out)


def rfc3339_ns(unix_ns: int) -> str:
    secs, ns = divmod(unix_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ns:09d}Z"


def parse_rfc3339_ns(s: str) -> int:
    """Parse our own rfc3339_ns output (and second/sub-second precision variants, Z or offset)."""
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?", s)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {s!r}")
    secs = calendar.timegm(time.strptime(f"{m[1]}T{m[2]}", "%Y-%m-%dT%H:%M:%S"))
    ns = int((m[3] or "0").ljust(9, "0"))
    tz = m[4] or "Z"
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        hh, mm = int(tz[1:3]), int(tz[-2:])
        secs -= sign * (hh * 3600 + mm * 60)
    return secs * 1_000_000_000 + ns


def ancestor_to_dict(a: pb.Process) -> dict[str, Any]:
    return {"pid": a.pid, "comm": text(a.comm), "exe": text(a.exe), "args": [text(x) for x in a.args],
            "unknown": a.unknown}


def victim_to_dict(ev: pb.DeletionEvent) -> dict[str, Any]:
    """What the deletion destroyed, each key null when the kernel could not read it."""
    if not ev.file_type:
        return dict.fromkeys(VICTIM_KEYS)
    return {"inode": ev.inode, "dev": ev.dev, "file_type": FILE_TYPE_NAMES.get(ev.file_type, "unknown"),
            "size": ev.size, "nlink": ev.nlink, "freed": ev.freed}


def event_to_dict(ev: pb.DeletionEvent) -> dict[str, Any]:
    p, pod, c = ev.process, ev.pod, ev.container
    return {
        "time": rfc3339_ns(ev.time_unix_ns),
        "node": ev.node,
        "op": OP_NAMES.get(ev.op, "unspecified"),
        "path": text(ev.path),
        "raw_path": text(ev.raw_path),
        "host_path": text(ev.host_path),
        "volume": ev.volume,
        **victim_to_dict(ev),
        "result": ev.result,
        "pid": p.pid,
        "tid": p.tid,
        "ppid": p.ppid,
        "uid": p.uid,
        "gid": p.gid,
        "comm": text(p.comm),
        "exe": text(p.exe),
        "args": [text(a) for a in p.args],
        "ancestry": [ancestor_to_dict(a) for a in ev.ancestry],
        "exec_session": ev.exec_session,
        "ancestry_truncated": bool(ev.flags & pb.EVENT_FLAG_ANCESTRY_TRUNCATED),
        "cgroup_id": ev.cgroup_id,
        "container_id": c.id,
        "pod_uid": pod.uid,
        "pod": pod.name,
        "namespace": pod.namespace,
        "container": c.name,
        "image": c.image,
        "workload": pod.workload,
        "identity": IDENTITY_NAMES.get(ev.identity, "unknown"),
        "agent": ev.agent,
        "seq": ev.seq,
        "path_truncated": bool(ev.flags & TRUNCATED_FLAGS),
        "args_truncated": bool(ev.flags & pb.EVENT_FLAG_ARGS_TRUNCATED),
        "process_unknown": bool(ev.flags & pb.EVENT_FLAG_PROCESS_UNKNOWN),
        "attach_mode": ev.attach_mode,
        "action": ACTION_NAMES.get(ev.action, "allowed"),
        "policy": ev.policy,
        "rename_to": text(ev.rename_to),
        "rename_to_host_path": text(ev.rename_to_host_path),
        "replaced": bool(ev.flags & pb.EVENT_FLAG_REPLACED),
        "rename_flags": rename_flag_names(ev.rename_flags),
    }


def dict_to_event(d: dict[str, Any]) -> pb.DeletionEvent:
    """Inverse of event_to_dict (fixtures, tests, replaying JSON lines)."""
    ev = pb.DeletionEvent(
        time_unix_ns=parse_rfc3339_ns(d["time"]) if d.get("time") else 0,
        node=d.get("node", ""),
        op=OP_BY_NAME.get(d.get("op", ""), pb.OP_UNSPECIFIED),
        path=untext(d.get("path", "")),
        raw_path=untext(d.get("raw_path", d.get("path", ""))),
        host_path=untext(d.get("host_path", "")),
        volume=d.get("volume", ""),
        inode=int(d.get("inode") or 0),
        dev=d.get("dev") or "",
        file_type=FILE_TYPE_BY_NAME.get(d.get("file_type") or "", pb.FILE_TYPE_UNSPECIFIED),
        size=int(d.get("size") or 0),
        nlink=int(d.get("nlink") or 0),
        freed=bool(d.get("freed")),
        result=int(d.get("result", 0)),
        cgroup_id=int(d.get("cgroup_id", 0)),
        identity=IDENTITY_BY_NAME.get(d.get("identity", ""), pb.IDENTITY_STATE_UNSPECIFIED),
        agent=d.get("agent", ""),
        seq=int(d.get("seq", 0)),
        attach_mode=d.get("attach_mode", ""),
        flags=(pb.EVENT_FLAG_PATH_TRUNCATED if d.get("path_truncated") else 0)
        | (pb.EVENT_FLAG_REPLACED if d.get("replaced") else 0)
        | (pb.EVENT_FLAG_ARGS_TRUNCATED if d.get("args_truncated") else 0)
        | (pb.EVENT_FLAG_PROCESS_UNKNOWN if d.get("process_unknown") else 0)
        | (pb.EVENT_FLAG_ANCESTRY_TRUNCATED if d.get("ancestry_truncated") else 0),
        exec_session=bool(d.get("exec_session")),
        rename_to=untext(d.get("rename_to", "")),
        rename_to_host_path=untext(d.get("rename_to_host_path", "")),
        rename_flags=rename_flag_bits(d.get("rename_flags") or ()),
        action=ACTION_BY_NAME.get(d.get("action", ""), pb.ACTION_UNSPECIFIED),
        policy=d.get("policy", ""),
    )
    for key in ("pid", "tid", "ppid", "uid", "gid"):
        setattr(ev.process, key, int(d.get(key, 0)))
    ev.process.comm = untext(d.get("comm", ""))
    ev.process.exe = untext(d.get("exe", ""))
    ev.process.args.extend(untext(a) for a in d.get("args") or ())
    for a in d.get("ancestry") or ():
        ev.ancestry.add(pid=int(a.get("pid", 0)), comm=untext(a.get("comm", "")), exe=untext(a.get("exe", "")),
                        args=[untext(x) for x in a.get("args") or ()], unknown=bool(a.get("unknown")))
    ev.container.id = d.get("container_id", "")
    ev.container.name = d.get("container", "")
    ev.container.image = d.get("image", "")
    ev.pod.uid = d.get("pod_uid", "")
    ev.pod.name = d.get("pod", "")
    ev.pod.namespace = d.get("namespace", "")
    ev.pod.workload = d.get("workload", "")
    for k, v in (d.get("pod_labels") or {}).items():
        ev.pod.labels[k] = v
    return ev


def alert_to_dict(a: pb.Alert) -> dict[str, Any]:
    """The alert's JSON object (CONTRACT.md): log lines, webhook bodies, `unlinkwatch alerts --output json`."""
    return {
        "id": a.id,
        "time": rfc3339_ns(a.time_unix_ns),
        "rule": a.rule,
        "severity": a.severity,
        "description": a.description,
        "count": a.count,
        "sample_paths": [text(p) for p in a.sample_paths],
        "event": event_to_dict(a.event),
    }

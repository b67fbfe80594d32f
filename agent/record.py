"""Decodes the kernel's records (agent/bpf/kprobe.h, struct uw_event) into DeletionEvents. Pure: the
layout below is checked against the C header by a test that compiles it."""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from unlinkwatch.pb import events_pb2 as pb

# struct uw_event: ts_ns cgroup_id proc_start_ns kind op pid tid ppid uid gid result dirfd flags raw_len dir_len comm
HEADER = struct.Struct("<QQQIIIIIIIiiIII16s")
HEADER_FIELDS = ("ts_ns", "cgroup_id", "proc_start_ns", "kind", "op", "pid", "tid", "ppid", "uid", "gid",
                 "result", "dirfd", "flags", "raw_len", "dir_len", "comm")

KIND_DELETION, KIND_CGROUP_MKDIR, KIND_EXE = 1, 2, 3
F_RAW_TRUNCATED, F_DIR_TRUNCATED, F_DIR_UNRESOLVED, F_RAW_UNREADABLE = 1, 2, 4, 8
OPS = {1: pb.OP_UNLINK, 2: pb.OP_RMDIR, 3: pb.OP_RENAME}


def normalize(path: bytes) -> bytes:
    """Lexical normalisation of an absolute path: "//", "." and ".." (never above "/")."""
    if b"/." not in path and b"//" not in path and not (path.endswith(b"/") and len(path) > 1):
        return path
    parts: list[bytes] = []
    for part in path.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if parts:
                parts.pop()
        else:
            parts.append(part)
    return b"/" + b"/".join(parts)


def join(directory: bytes, raw: bytes) -> bytes:
    """The absolute path of `raw` as the process saw it; `directory` is "" for "/"."""
    if raw.startswith(b"/"):
        return normalize(raw)
    return normalize(directory + b"/" + raw)


class MonotonicToUnix:
    """bpf_ktime_get_ns() is CLOCK_MONOTONIC; the offset to wall time is re-read every second."""

    def __init__(self) -> None:
        self._next = 0.0
        self._offset = 0

    def offset(self) -> int:
        now = time.monotonic()
        if now >= self._next:
            self._offset = time.clock_gettime_ns(time.CLOCK_REALTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            self._next = now + 1.0
        return self._offset


class Deletion(NamedTuple):
    """One deletion as the kernel reported it, before identity and sequence number; values as in the proto."""

    time_unix_ns: int
    op: int
    path: bytes
    raw_path: bytes
    result: int
    pid: int
    tid: int
    ppid: int
    uid: int
    gid: int
    comm: bytes
    exe: bytes
    cgroup_id: int
    flags: int


def to_event(d: Deletion, node: str = "", agent: str = "", attach_mode: str = "") -> pb.DeletionEvent:
    """A DeletionEvent of a Deletion (tests, the self-test); the hot path encodes bytes instead (wire.py)."""
    return pb.DeletionEvent(
        time_unix_ns=d.time_unix_ns, node=node, op=d.op, path=d.path, raw_path=d.raw_path,  # type: ignore[arg-type]
        result=d.result, cgroup_id=d.cgroup_id, agent=agent, attach_mode=attach_mode, flags=d.flags,
        process=pb.Process(pid=d.pid, tid=d.tid, ppid=d.ppid, uid=d.uid, gid=d.gid, comm=d.comm, exe=d.exe))


_NEW = tuple.__new__
_OUT_FLAGS = [0] * 16
for _f in range(16):
    if _f & (F_RAW_TRUNCATED | F_DIR_TRUNCATED):
        _OUT_FLAGS[_f] |= pb.EVENT_FLAG_PATH_TRUNCATED
    if _f & F_DIR_UNRESOLVED:
        _OUT_FLAGS[_f] |= pb.EVENT_FLAG_DIR_UNRESOLVED


@dataclass(frozen=True)
class CgroupMkdir:
    cgroup_id: int
    path: str


class Decoder:
    """Turns records into events; remembers executables sent once per process by the kernel."""

    def __init__(self, node: str, agent_id: str, attach_mode: str, exe_cache_size: int = 16384) -> None:
        self.node = node
        self.agent_id = agent_id
        self.attach_mode = attach_mode
        self._exe: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._exe_cache_size = exe_cache_size
        self._clock = MonotonicToUnix()
        self._offset = self._clock.offset()

    def tick(self) -> None:
        """Re-reads the kernel-clock-to-wall-time offset (itself refreshed once a second); once per batch."""
        self._offset = self._clock.offset()

    def split(self, rec: bytes) -> Deletion | CgroupMkdir | None:
        """The hot path: one record -> a Deletion (None for records that only update the decoder).
        Times use the clock offset of the last tick()."""
        (ts_ns, cgroup_id, proc_start, kind, op, pid, tid, ppid, uid, gid, result, _dirfd, flags,
         raw_len, dir_len, comm) = HEADER.unpack_from(rec, 0)
        end = HEADER.size + raw_len
        raw = rec[HEADER.size : end]
        if kind == KIND_DELETION:
            path = join(rec[end : end + dir_len], raw) if raw else b""
            nul = comm.find(b"\0")
            return _NEW(Deletion, (
                ts_ns + self._offset, OPS.get(op, 0), path, raw, result, pid, tid, ppid, uid, gid,
                comm if nul < 0 else comm[:nul], self._exe.get((pid, proc_start), b""), cgroup_id,
                _OUT_FLAGS[flags & 15]))
        if kind == KIND_EXE:
            self._exe[(pid, proc_start)] = raw
            if len(self._exe) > self._exe_cache_size:
                self._exe.popitem(last=False)
            return None
        if kind == KIND_CGROUP_MKDIR:
            return CgroupMkdir(cgroup_id, raw.decode("utf-8", "surrogateescape"))
        return None

    def decode(self, rec: bytes) -> pb.DeletionEvent | CgroupMkdir | None:
        """split() with a DeletionEvent for deletions."""
        self.tick()
        item = self.split(rec)
        if isinstance(item, Deletion):
            return to_event(item, self.node, self.agent_id, self.attach_mode)
        return item

"""Decodes the kernel's records (agent/bpf/kprobe.h, struct uw_event) into DeletionEvents. Pure: the
layout below is checked against the C header by a test that compiles it."""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from dataclasses import dataclass

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

    def decode(self, rec: bytes) -> pb.DeletionEvent | CgroupMkdir | None:
        (ts_ns, cgroup_id, proc_start, kind, op, pid, tid, ppid, uid, gid, result, _dirfd, flags,
         raw_len, dir_len, comm) = HEADER.unpack_from(rec, 0)
        base = HEADER.size
        raw = rec[base : base + raw_len]
        if kind == KIND_DELETION:
            directory = rec[base + raw_len : base + raw_len + dir_len]
            ev = pb.DeletionEvent(
                time_unix_ns=ts_ns + self._clock.offset(),
                node=self.node,
                op=OPS.get(op, pb.OP_UNSPECIFIED),
                path=join(directory, raw) if raw else b"",
                raw_path=raw,
                result=result,
                cgroup_id=cgroup_id,
                agent=self.agent_id,
                attach_mode=self.attach_mode,
            )
            p = ev.process
            p.pid, p.tid, p.ppid, p.uid, p.gid = pid, tid, ppid, uid, gid
            p.comm = comm.split(b"\0", 1)[0]
            exe = self._exe.get((pid, proc_start))
            if exe is not None:
                p.exe = exe
            out_flags = 0
            if flags & (F_RAW_TRUNCATED | F_DIR_TRUNCATED):
                out_flags |= pb.EVENT_FLAG_PATH_TRUNCATED
            if flags & F_DIR_UNRESOLVED:
                out_flags |= pb.EVENT_FLAG_DIR_UNRESOLVED
            ev.flags = out_flags
            return ev
        if kind == KIND_EXE:
            self._exe[(pid, proc_start)] = raw
            if len(self._exe) > self._exe_cache_size:
                self._exe.popitem(last=False)
            return None
        if kind == KIND_CGROUP_MKDIR:
            return CgroupMkdir(cgroup_id, raw.decode("utf-8", "surrogateescape"))
        return None

"""The agent's hot path out: a decoded deletion, its identity and its sequence number become DeletionEvent
protobuf bytes (to ship) or a JSON line (for --stdout) directly, with no protobuf object per event.

Pure. What repeats is encoded once and reused: the agent's constant fields, each process's `Process`
message, each cgroup's identity fields. What varies per event (time, path, result, seq, flags) is written
with table-driven varints. Tests prove the bytes parse to the same DeletionEvent the protobuf library
builds, and the JSON line is byte for byte `json.dumps(eventjson.event_to_dict(event))`."""

from __future__ import annotations

import time
from json.encoder import encode_basestring_ascii as _jstr  # type: ignore[attr-defined]

from unlinkwatch.agent.record import Deletion
from unlinkwatch.eventjson import IDENTITY_NAMES, OP_NAMES
from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.protowire import MIN14 as _MIN14
from unlinkwatch.protowire import varint

__all__ = ["OP_NAME", "EventEncoder", "JsonLines", "identity_json", "identity_wire", "varint"]

_B = [bytes([i]) for i in range(256)]
# The same 14 bits as two bytes that both carry the continuation bit (the low part of a longer varint).
_CONT14 = [bytes(((i & 0x7F) | 0x80, (i >> 7) | 0x80)) for i in range(1 << 14)]
_CACHE_MAX = 4096
OP_NAME: dict[int, str] = {0: "unspecified", **{int(k): v for k, v in OP_NAMES.items()}}


def _field(tag: int, data: bytes) -> bytes:
    """A length-delimited field (string, bytes, message); empty for the proto3 default."""
    return _B[tag] + varint(len(data)) + data if data else b""


def _uint(tag: int, n: int) -> bytes:
    return _B[tag] + varint(n) if n else b""


def text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


class _HighBits:
    """varint(n) for n >= 2**14 whose bits above the low 14 rarely change (times, sequence numbers)."""

    __slots__ = ("enc", "hi")

    def __init__(self) -> None:
        self.hi, self.enc = -1, b""

    def varint(self, n: int) -> bytes:
        if n < 0x4000:
            return _MIN14[n]
        hi = n >> 14
        if hi != self.hi:
            self.hi, self.enc = hi, varint(hi)
        return _CONT14[n & 0x3FFF] + self.enc


class _HighBits28(_HighBits):
    """The same with 28 low bits (4 bytes): for nanosecond times, whose bits above 2**28 change every 0.27 s."""

    def varint(self, n: int) -> bytes:
        if n < 0x10000000:
            return varint(n)
        hi = n >> 28
        if hi != self.hi:
            self.hi, self.enc = hi, varint(hi)
        lo = n & 0xFFFFFFF
        return _CONT14[lo & 0x3FFF] + _CONT14[lo >> 14] + self.enc


def identity_wire(template: pb.DeletionEvent) -> bytes:
    """The identity part of an event (cgroup_id, container, pod, identity) as protobuf bytes."""
    part = pb.DeletionEvent(cgroup_id=template.cgroup_id, identity=template.identity)
    if template.HasField("container"):
        part.container.CopyFrom(template.container)
    if template.HasField("pod"):
        part.pod.CopyFrom(template.pod)
    return part.SerializeToString()


def identity_json(template: pb.DeletionEvent) -> str:
    """The same part as the JSON members from "container_id" to "identity" (event_to_dict's order)."""
    c, pod = template.container, template.pod
    return (f', "container_id": {_jstr(c.id)}, "pod_uid": {_jstr(pod.uid)}, "pod": {_jstr(pod.name)}, '
            f'"namespace": {_jstr(pod.namespace)}, "container": {_jstr(c.name)}, "image": {_jstr(c.image)}, '
            f'"workload": {_jstr(pod.workload)}, "identity": "{IDENTITY_NAMES.get(template.identity) or "unknown"}"')


class EventEncoder:
    """DeletionEvent bytes for one agent. `ident` is identity_wire() of the event's cgroup."""

    def __init__(self, node: str, agent_id: str, attach_mode: str) -> None:
        self._node = _field(0x12, node.encode())
        self._tail = _field(0x7A, attach_mode.encode())
        self._agent = _field(0x62, agent_id.encode())
        self._time = _HighBits28()
        self._seq = _HighBits()
        self._procs: dict[tuple[int, int, int, int, int, bytes, bytes], bytes] = {}
        self._op = {op: _uint(0x18, op) for op in (0, 1, 2, 3)}
        self._flags = {f: _uint(0x70, f) for f in range(4)}

    def _process(self, d: Deletion) -> bytes:
        key = (d.pid, d.tid, d.ppid, d.uid, d.gid, d.comm, d.exe)
        wire = self._procs.get(key)
        if wire is None:
            body = (_uint(0x08, d.pid) + _uint(0x10, d.tid) + _uint(0x18, d.ppid) + _uint(0x20, d.uid)
                    + _uint(0x28, d.gid) + _field(0x32, d.comm) + _field(0x3A, d.exe))
            wire = b"\x3a" + varint(len(body)) + body
            if len(self._procs) >= _CACHE_MAX:
                self._procs.clear()
            self._procs[key] = wire
        return wire

    def encode(self, d: Deletion, ident: bytes, seq: int) -> bytes:
        path, raw, result = d.path, d.raw_path, d.result
        return b"".join((
            b"\x08", self._time.varint(d.time_unix_ns), self._node, self._op[d.op],
            b"\x22" + varint(len(path)) + path if path else b"",
            b"\x2a" + varint(len(raw)) + raw if raw else b"",
            b"\x30" + varint(((result << 1) ^ (result >> 31)) & 0xFFFFFFFF) if result else b"",
            self._process(d), ident, self._agent, b"\x68", self._seq.varint(seq), self._flags[d.flags], self._tail,
        ))


class JsonLines:
    """The JSON line of CONTRACT.md for one agent. `ident` is identity_json() of the event's cgroup."""

    def __init__(self, node: str, agent_id: str, attach_mode: str) -> None:
        self._node = _jstr(node)
        self._agent = _jstr(agent_id)
        self._attach = _jstr(attach_mode)
        self._secs, self._prefix = -1, ""
        self._procs: dict[tuple[int, int, int, int, int, bytes, bytes], str] = {}

    def _process(self, d: Deletion) -> str:
        key = (d.pid, d.tid, d.ppid, d.uid, d.gid, d.comm, d.exe)
        s = self._procs.get(key)
        if s is None:
            s = (f', "pid": {d.pid}, "tid": {d.tid}, "ppid": {d.ppid}, "uid": {d.uid}, "gid": {d.gid}, '
                 f'"comm": {_jstr(text(d.comm))}, "exe": {_jstr(text(d.exe))}')
            if len(self._procs) >= _CACHE_MAX:
                self._procs.clear()
            self._procs[key] = s
        return s

    def line(self, d: Deletion, ident: str, seq: int) -> str:
        secs, ns = divmod(d.time_unix_ns, 1_000_000_000)
        if secs != self._secs:
            self._secs, self._prefix = secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
        truncated = "true" if d.flags & pb.EVENT_FLAG_PATH_TRUNCATED else "false"
        return (f'{{"time": "{self._prefix}.{ns:09d}Z", "node": {self._node}, "op": "{OP_NAME[d.op]}", '
                f'"path": {_jstr(text(d.path))}, "raw_path": {_jstr(text(d.raw_path))}, "result": {d.result}'
                f'{self._process(d)}, "cgroup_id": {d.cgroup_id}{ident}, "agent": {self._agent}, "seq": {seq}, '
                f'"path_truncated": {truncated}, "attach_mode": {self._attach}}}\n')

"""Every protobuf byte the project writes or slices by hand, in one place. Field tags come from the generated
descriptors (proto/events.proto is the one definition), never from literals; tests/unit/test_codec.py
round-trips each message written here through the protobuf library.

Hand-written bytes exist only where the library's objects cost too much per event:
- the agent's DeletionEvent encoder (EventWriter): no protobuf object per event; what repeats (the agent's
  constant fields, each process's Process message, each cgroup's identity fields) is encoded once;
- an EventBatch of events already serialized (batch_bytes), and the events sliced back out of one
  (batch_events): the collector stores them as received instead of re-serializing;
- a QueryResponse of stored event bytes (query_response): no parse, no re-serialize."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from unlinkwatch.pb import events_pb2 as pb

_B = [bytes([i]) for i in range(256)]
MIN14 = [_B[i] if i < 0x80 else bytes(((i & 0x7F) | 0x80, i >> 7)) for i in range(1 << 14)]  # 0 .. 2**14-1
# The same 14 bits as two bytes that both carry the continuation bit (the low part of a longer varint).
_CONT14 = [bytes(((i & 0x7F) | 0x80, (i >> 7) | 0x80)) for i in range(1 << 14)]
_CACHE_MAX = 4096

_LEN_TYPES = {FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE}
_I64_TYPES = {FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_DOUBLE}
_I32_TYPES = {FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_FLOAT}


def varint(n: int) -> bytes:
    """The varint of an unsigned integer."""
    if n < 0x4000:
        return MIN14[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tag(message: Descriptor, field: str) -> bytes:
    """The key of `field` of `message` (field number and wire type), from the descriptor."""
    fd = message.fields_by_name[field]
    if fd.type in _LEN_TYPES:
        wire_type = 2
    elif fd.type in _I64_TYPES:
        wire_type = 1
    elif fd.type in _I32_TYPES:
        wire_type = 5
    else:
        wire_type = 0
    return varint(fd.number << 3 | wire_type)


_EV, _PROC = pb.DeletionEvent.DESCRIPTOR, pb.Process.DESCRIPTOR
T_TIME, T_NODE, T_OP, T_PATH, T_RAW, T_RESULT, T_PROCESS, T_AGENT, T_SEQ, T_FLAGS, T_ATTACH = (
    tag(_EV, f) for f in ("time_unix_ns", "node", "op", "path", "raw_path", "result", "process", "agent", "seq",
                          "flags", "attach_mode"))
T_RENAME_TO, T_RENAME_FLAGS = tag(_EV, "rename_to"), tag(_EV, "rename_flags")
T_RENAME_TO_HOST_PATH = tag(_EV, "rename_to_host_path")
T_ACTION, T_POLICY = tag(_EV, "action"), tag(_EV, "policy")
T_ANCESTRY, T_EXEC_SESSION = tag(_EV, "ancestry"), tag(_EV, "exec_session")
T_HOST_PATH, T_VOLUME = tag(_EV, "host_path"), tag(_EV, "volume")
T_INODE, T_DEV, T_FILE_TYPE, T_SIZE, T_NLINK, T_FREED = (
    tag(_EV, f) for f in ("inode", "dev", "file_type", "size", "nlink", "freed"))
_ALL_FLAGS = 2 * max(pb.EventFlag.values()) - 1
_OP_RENAME = pb.OP_RENAME
TP_PID, TP_TID, TP_PPID, TP_UID, TP_GID, TP_COMM, TP_EXE, TP_ARGS = (
    tag(_PROC, f) for f in ("pid", "tid", "ppid", "uid", "gid", "comm", "exe", "args"))
TP_UNKNOWN = tag(_PROC, "unknown")
T_BATCH_EVENTS = tag(pb.EventBatch.DESCRIPTOR, "events")
T_RESPONSE_EVENTS = tag(pb.QueryResponse.DESCRIPTOR, "events")
T_RESPONSE_TOKEN = tag(pb.QueryResponse.DESCRIPTOR, "next_page_token")
_BATCH_EVENTS_NUMBER = pb.EventBatch.DESCRIPTOR.fields_by_name["events"].number
assert len(T_BATCH_EVENTS) == 1  # batch_events() reads it as one byte


def field(key: bytes, data: bytes) -> bytes:
    """A length-delimited field (string, bytes, message); empty for the proto3 default."""
    return key + varint(len(data)) + data if data else b""


def uint(key: bytes, n: int) -> bytes:
    """A varint field; empty for the proto3 default."""
    return key + varint(n) if n else b""


def sint32(n: int) -> int:
    """ZigZag of a 32-bit signed integer."""
    return ((n << 1) ^ (n >> 31)) & 0xFFFFFFFF


class _HighBits:
    """varint(n) for n >= 2**14 whose bits above the low 14 rarely change (times, sequence numbers)."""

    __slots__ = ("enc", "hi")

    def __init__(self) -> None:
        self.hi, self.enc = -1, b""

    def varint(self, n: int) -> bytes:
        if n < 0x4000:
            return MIN14[n]
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


class AncestorFields(Protocol):
    """What EventWriter reads of one ancestor."""

    @property
    def pid(self) -> int: ...
    @property
    def comm(self) -> bytes: ...
    @property
    def exe(self) -> bytes: ...
    @property
    def args(self) -> bytes: ...  # each argument NUL-terminated (the last one unterminated when cut)
    @property
    def unknown(self) -> bool: ...


class LineageFields(Protocol):
    """A deletion's ancestry; hashed by identity (the decoder reuses one object per chain)."""

    @property
    def ancestors(self) -> Sequence[AncestorFields]: ...
    @property
    def exec_session(self) -> bool: ...
    @property
    def truncated(self) -> bool: ...


class DeletionFields(Protocol):
    """What EventWriter reads of a deletion (the agent's decoded record)."""

    @property
    def time_unix_ns(self) -> int: ...
    @property
    def op(self) -> int: ...
    @property
    def path(self) -> bytes: ...
    @property
    def raw_path(self) -> bytes: ...
    @property
    def result(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def tid(self) -> int: ...
    @property
    def ppid(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def comm(self) -> bytes: ...
    @property
    def exe(self) -> bytes: ...
    @property
    def args(self) -> bytes: ...  # each argument NUL-terminated (the last one unterminated when cut)
    @property
    def flags(self) -> int: ...
    @property
    def rename_to(self) -> bytes: ...
    @property
    def rename_flags(self) -> int: ...
    @property
    def action(self) -> int: ...
    @property
    def policy(self) -> str: ...
    @property
    def lineage(self) -> LineageFields | None: ...
    @property
    def host_path(self) -> bytes: ...
    @property
    def volume(self) -> str: ...
    @property
    def inode(self) -> int: ...
    @property
    def dev(self) -> int: ...
    @property
    def file_type(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def nlink(self) -> int: ...
    @property
    def freed(self) -> bool: ...
    @property
    def rename_to_host_path(self) -> bytes: ...


def dev_name(dev: int) -> str:
    """A device number as the kernel keeps it (major << 20 | minor) as "major:minor"."""
    return f"{dev >> 20}:{dev & 0xFFFFF}"


def split_args(args: bytes) -> list[bytes]:
    """The arguments of a command line whose arguments are each NUL-terminated (the last one unterminated when
    it was cut), as the kernel keeps it."""
    if not args:
        return []
    parts = args.split(b"\0")
    return parts[:-1] if args.endswith(b"\0") else parts


def args_fields(args: bytes) -> bytes:
    """A command line kept as the kernel keeps it, as the repeated `args` fields of a Process message."""
    return b"".join([TP_ARGS + varint(len(a)) + a for a in split_args(args)])


def identity_fields(template: pb.DeletionEvent) -> bytes:
    """The identity part of an event (cgroup_id, container, pod, identity) as DeletionEvent bytes, made by
    the library: EventWriter.encode appends it as it is (fields may come in any order)."""
    part = pb.DeletionEvent(cgroup_id=template.cgroup_id, identity=template.identity)
    if template.HasField("container"):
        part.container.CopyFrom(template.container)
    if template.HasField("pod"):
        part.pod.CopyFrom(template.pod)
    return part.SerializeToString()


class EventWriter:
    """DeletionEvent bytes for one agent, with no protobuf object per event. `ident` is identity_fields() of
    the event's cgroup; what varies per event (time, path, result, seq, flags) is written with table-driven
    varints."""

    def __init__(self, node: str, agent_id: str, attach_mode: str) -> None:
        self._node = field(T_NODE, node.encode())
        self._tail = field(T_ATTACH, attach_mode.encode())
        self._agent = field(T_AGENT, agent_id.encode())
        self._time = _HighBits28()
        self._seq = _HighBits()
        self._procs: dict[tuple[int, int, int, int, int, bytes, bytes, bytes], bytes] = {}
        self._op: dict[int, bytes] = {int(op): uint(T_OP, op) for op in pb.Op.values()}
        self._flags = {f: uint(T_FLAGS, f) for f in range(_ALL_FLAGS + 1)}
        self._lineages: dict[LineageFields, bytes] = {}
        self._devs: dict[int, bytes] = {}

    def _lineage(self, lineage: LineageFields | None) -> bytes:
        if lineage is None:
            return b""
        wire = self._lineages.get(lineage)
        if wire is None:
            parts = []
            for a in lineage.ancestors:
                body = (uint(TP_PID, a.pid) + field(TP_COMM, a.comm) + field(TP_EXE, a.exe)
                        + args_fields(a.args)
                        + uint(TP_UNKNOWN, int(a.unknown)))
                parts.append(T_ANCESTRY + varint(len(body)) + body)
            wire = b"".join(parts) + uint(T_EXEC_SESSION, int(lineage.exec_session))
            if len(self._lineages) >= _CACHE_MAX:
                self._lineages.clear()
            self._lineages[lineage] = wire
        return wire

    def _process(self, d: DeletionFields) -> bytes:
        key = (d.pid, d.tid, d.ppid, d.uid, d.gid, d.comm, d.exe, d.args)
        wire = self._procs.get(key)
        if wire is None:
            body = (uint(TP_PID, d.pid) + uint(TP_TID, d.tid) + uint(TP_PPID, d.ppid) + uint(TP_UID, d.uid)
                    + uint(TP_GID, d.gid) + field(TP_COMM, d.comm) + field(TP_EXE, d.exe)
                    + args_fields(d.args))
            wire = T_PROCESS + varint(len(body)) + body
            if len(self._procs) >= _CACHE_MAX:
                self._procs.clear()
            self._procs[key] = wire
        return wire

    def encode(self, d: DeletionFields, ident: bytes, seq: int) -> bytes:
        path, raw, result = d.path, d.raw_path, d.result
        return b"".join((
            T_TIME, self._time.varint(d.time_unix_ns), self._node, self._op[d.op],
            T_PATH + varint(len(path)) + path if path else b"",
            T_RAW + varint(len(raw)) + raw if raw else b"",
            T_RESULT + varint(sint32(result)) if result else b"",
            self._process(d), ident, self._agent, T_SEQ, self._seq.varint(seq), self._flags[d.flags], self._tail,
            self._rename(d) if d.op == _OP_RENAME else b"",  # rename fields are set on renames only
            self._policy(d) if d.action or d.policy else b"",  # set where a node-policy rule decided
            self._lineage(d.lineage),
            T_HOST_PATH + varint(len(d.host_path)) + d.host_path if d.host_path else b"",
            field(T_VOLUME, d.volume.encode()) if d.volume else b"",
            self._victim(d) if d.file_type else b"",  # set where the kernel read what was destroyed
        ))

    def _victim(self, d: DeletionFields) -> bytes:
        dev = self._devs.get(d.dev)
        if dev is None:
            if len(self._devs) >= _CACHE_MAX:
                self._devs.clear()
            dev = self._devs[d.dev] = field(T_DEV, dev_name(d.dev).encode())
        return (uint(T_INODE, d.inode) + dev + uint(T_FILE_TYPE, d.file_type)
                + uint(T_SIZE, d.size & 0xFFFFFFFFFFFFFFFF) + uint(T_NLINK, d.nlink) + uint(T_FREED, int(d.freed)))

    @staticmethod
    def _policy(d: DeletionFields) -> bytes:
        return uint(T_ACTION, d.action) + field(T_POLICY, d.policy.encode())

    @staticmethod
    def _rename(d: DeletionFields) -> bytes:
        to = d.rename_to
        return (field(T_RENAME_TO, to) + uint(T_RENAME_FLAGS, d.rename_flags)
                + field(T_RENAME_TO_HOST_PATH, d.rename_to_host_path))


def repeated(key: bytes, blobs: Sequence[bytes]) -> list[bytes]:
    """A repeated length-delimited field as pieces for one join: each blob's key and length, then the blob itself,
    so that every blob is copied once, into the join's result. (Each blob's key and length prepended to it first was
    a copy of every blob more: 1.4 us an event of 1.2 KB against 0.08 us this way, a 4,096-event batch's temporaries
    being megabytes.)"""
    pieces: list[bytes] = [b""] * (2 * len(blobs))
    pieces[0::2] = [key + varint(len(b)) for b in blobs]
    pieces[1::2] = blobs
    return pieces


def batch_bytes(header: pb.EventBatch, events: Sequence[bytes]) -> bytes:
    """EventBatch bytes from a header (no events) and serialized DeletionEvents."""
    return b"".join([header.SerializeToString(), *repeated(T_BATCH_EVENTS, events)])


def _varint_at(raw: bytes, i: int) -> tuple[int, int]:
    """The varint starting at raw[i], and the index after it (IndexError when cut short)."""
    n, shift = 0, 0
    while True:
        b = raw[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7


def batch_events(raw: bytes) -> list[bytes] | None:
    """The serialized DeletionEvents of a serialized EventBatch, sliced out of its bytes (a scan of the
    top-level fields only): storing these costs nothing, where re-serializing each parsed event costs about
    as much as parsing it. None when the bytes are not a well-formed batch (the caller re-serializes)."""
    out: list[bytes] = []
    append = out.append
    events_key = T_BATCH_EVENTS[0]
    i, n = 0, len(raw)
    try:
        while i < n:
            if raw[i] == events_key:  # by far the most frequent field: its length read inline
                ln = raw[i + 1]
                i += 2
                if ln & 0x80:  # events of 128 bytes to 16 KiB (most): the second byte inline too
                    b = raw[i]
                    i += 1
                    ln = (ln & 0x7F) | (b & 0x7F) << 7
                    if b & 0x80:
                        rest, i = _varint_at(raw, i)
                        ln |= rest << 14
                append(raw[i:i + ln])
                i += ln
                continue
            key, i = _varint_at(raw, i)
            wt = key & 7
            if wt == 0:
                _, i = _varint_at(raw, i)
            elif wt == 1:
                i += 8
            elif wt == 5:
                i += 4
            elif wt == 2:
                ln, i = _varint_at(raw, i)
                if key >> 3 == _BATCH_EVENTS_NUMBER:
                    append(raw[i:i + ln])
                i += ln
            else:
                return None
    except IndexError:
        return None
    return out if i == n else None


def query_response(blobs: Sequence[bytes], token: str) -> bytes:
    """The bytes of QueryResponse(events=blobs parsed, next_page_token=token), without any parse."""
    parts = repeated(T_RESPONSE_EVENTS, blobs)
    if token:
        parts.append(field(T_RESPONSE_TOKEN, token.encode()))
    return b"".join(parts)

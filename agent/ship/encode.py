"""The ship stage's encodings of a deletion with its identity and sequence number: DeletionEvent bytes to ship
(unlinkwatch.codec.EventWriter) and the JSON line of --stdout, both without a protobuf object per event.
Tests prove each line is byte for byte `json.dumps(eventjson.event_to_dict(event))`."""

from __future__ import annotations

import time
from json.encoder import encode_basestring_ascii as _jstr  # type: ignore[attr-defined]
from typing import Protocol

from unlinkwatch.codec import DeletionFields, LineageFields, dev_name, identity_fields, split_args
from unlinkwatch.eventjson import (
    ACTION_NAMES,
    FILE_TYPE_NAMES,
    IDENTITY_NAMES,
    OP_NAMES,
    TRUNCATED_FLAGS,
    VICTIM_KEYS,
    rename_flag_names,
)
from unlinkwatch.pb import events_pb2 as pb

_CACHE_MAX = 4096
_CODES_MAX = 65536
OP_NAME: dict[int, str] = {0: "unspecified", **{int(k): v for k, v in OP_NAMES.items()}}
_OP_RENAME = pb.OP_RENAME
_ALLOWED = '"action": "allowed", "policy": ""'
_ACTION: dict[int, str] = {int(k): v for k, v in ACTION_NAMES.items()}
_FILE_TYPE: dict[int, str] = {int(k): v for k, v in FILE_TYPE_NAMES.items()}
# 'path_truncated, args_truncated, process_unknown' values by (path bit | the two process flags shifted to 2 and 4)
_PROC_FLAGS = pb.EVENT_FLAG_ARGS_TRUNCATED | pb.EVENT_FLAG_PROCESS_UNKNOWN
_PROC_SHIFT = pb.EVENT_FLAG_ARGS_TRUNCATED.bit_length() - 2
_TRUNCATED = [f'{"true" if i & 1 else "false"}, "args_truncated": {"true" if i & 2 else "false"}, '
              f'"process_unknown": {"true" if i & 4 else "false"}' for i in range(8)]
# '"replaced": ..., "rename_flags": [...]' by (replaced << 3 | renameat2 flags)
_RENAME = [f'"replaced": {"true" if i & 8 else "false"}, "rename_flags": '
           + "[" + ", ".join(f'"{n}"' for n in rename_flag_names(i & 7)) + "]" for i in range(16)]


_NO_LINEAGE = b', "ancestry": [], "exec_session": false, "ancestry_truncated": false'
_NO_VICTIM = "".join(f', "{k}": null' for k in VICTIM_KEYS)


class HasTemplate(Protocol):
    """An identity: the DeletionEvent fields it gives (cgroup_id, container, pod, identity)."""

    @property
    def template(self) -> pb.DeletionEvent: ...


class DeletionLine(DeletionFields, Protocol):
    @property
    def cgroup_id(self) -> int: ...


def text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def args_json(args: bytes) -> str:
    """A command line kept as the kernel keeps it, as a JSON array of strings."""
    return "[" + ", ".join([_jstr(text(a)) for a in split_args(args)]) + "]"


def identity_json(template: pb.DeletionEvent) -> str:
    """The identity part of an event as the JSON members from "container_id" to "identity" (event_to_dict's
    order)."""
    c, pod = template.container, template.pod
    return (f', "container_id": {_jstr(c.id)}, "pod_uid": {_jstr(pod.uid)}, "pod": {_jstr(pod.name)}, '
            f'"namespace": {_jstr(pod.namespace)}, "container": {_jstr(c.name)}, "image": {_jstr(c.image)}, '
            f'"workload": {_jstr(pod.workload)}, "identity": "{IDENTITY_NAMES.get(template.identity) or "unknown"}"')


class IdentityCodes:
    """Each identity's encoded fields (protobuf bytes, JSON members), made once per identity object: an
    identity that changes is a new object, so a stale entry is never served (it is dropped when the table
    is cleared)."""

    def __init__(self) -> None:
        self._codes: dict[HasTemplate, tuple[bytes, str]] = {}
        self.get = self._codes.get

    def make(self, ident: HasTemplate) -> tuple[bytes, str]:
        t = ident.template
        codes = (identity_fields(t), identity_json(t))
        if len(self._codes) >= _CODES_MAX:
            self._codes.clear()
        self._codes[ident] = codes
        return codes


class JsonLines:
    """The JSON line of CONTRACT.md for one agent, as three pieces of bytes to be written one after the other
    (os.writev): the fields up to the process's, the ancestry, the rest. The ancestry is most of a line's bytes
    (every ancestor's command line) and the same for every deletion by one process: its bytes are made once and
    never copied again in user space. `ident` is identity_json() of the event's cgroup."""

    def __init__(self, node: str, agent_id: str, attach_mode: str) -> None:
        self._node = _jstr(node)
        self._agent = _jstr(agent_id)
        self._attach = _jstr(attach_mode)
        self._tail = (f'"attach_mode": {self._attach}, {_ALLOWED}, "rename_to": "", "rename_to_host_path": "", '
                      f'{_RENAME[0]}}}\n')
        self._secs, self._prefix = -1, ""
        self._procs: dict[tuple[int, int, int, int, int, bytes, bytes, bytes], str] = {}
        self._lineages: dict[LineageFields, bytes] = {}

    def _lineage(self, lineage: LineageFields | None) -> bytes:
        if lineage is None:
            return _NO_LINEAGE
        s = self._lineages.get(lineage)
        if s is None:
            ancestors = ", ".join([
                f'{{"pid": {a.pid}, "comm": {_jstr(text(a.comm))}, "exe": {_jstr(text(a.exe))}, '
                f'"args": {args_json(a.args)}, "unknown": {"true" if a.unknown else "false"}}}'
                for a in lineage.ancestors])
            s = (f', "ancestry": [{ancestors}], "exec_session": {"true" if lineage.exec_session else "false"}, '
                 f'"ancestry_truncated": {"true" if lineage.truncated else "false"}').encode()
            if len(self._lineages) >= _CACHE_MAX:
                self._lineages.clear()
            self._lineages[lineage] = s
        return s

    def _victim(self, d: DeletionLine) -> str:
        return (f', "inode": {d.inode}, "dev": "{dev_name(d.dev)}", "file_type": '
                f'"{_FILE_TYPE.get(d.file_type, "unknown")}", "size": {d.size}, "nlink": {d.nlink}, '
                f'"freed": {"true" if d.freed else "false"}')

    def _process(self, d: DeletionLine) -> str:
        key = (d.pid, d.tid, d.ppid, d.uid, d.gid, d.comm, d.exe, d.args)
        s = self._procs.get(key)
        if s is None:
            s = (f', "pid": {d.pid}, "tid": {d.tid}, "ppid": {d.ppid}, "uid": {d.uid}, "gid": {d.gid}, '
                 f'"comm": {_jstr(text(d.comm))}, "exe": {_jstr(text(d.exe))}, "args": {args_json(d.args)}')
            if len(self._procs) >= _CACHE_MAX:
                self._procs.clear()
            self._procs[key] = s
        return s

    def line(self, d: DeletionLine, ident: str, seq: int) -> str:
        """The whole line (the pieces joined)."""
        return b"".join(self.pieces(d, ident, seq)).decode()

    def pieces(self, d: DeletionLine, ident: str, seq: int) -> tuple[bytes, bytes, bytes]:
        """The line as three pieces; every byte is ASCII (strings are JSON-escaped as such)."""
        secs, ns = divmod(d.time_unix_ns, 1_000_000_000)
        if secs != self._secs:
            self._secs, self._prefix = secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
        flags = d.flags
        truncated = _TRUNCATED[(1 if flags & TRUNCATED_FLAGS else 0) | (flags & _PROC_FLAGS) >> _PROC_SHIFT]
        # rename and policy fields are set where they apply (the decoder's invariant): most events end the same way
        tail = self._tail if d.op != _OP_RENAME and not d.policy and not d.action else (
            f'"attach_mode": {self._attach}, "action": "{_ACTION.get(d.action, "allowed")}", '
            f'"policy": {_jstr(d.policy)}, "rename_to": {_jstr(text(d.rename_to))}, '
            f'"rename_to_host_path": {_jstr(text(d.rename_to_host_path))}, '
            f'{_RENAME[(8 if flags & pb.EVENT_FLAG_REPLACED else 0) | (d.rename_flags & 7)]}}}\n')
        path = _jstr(text(d.path))
        # a host process's host path is its path, the same object (the decoder's): escaped once
        host_path = path if d.host_path is d.path else _jstr(text(d.host_path))
        return ((f'{{"time": "{self._prefix}.{ns:09d}Z", "node": {self._node}, "op": "{OP_NAME[d.op]}", '
                 f'"path": {path}, "raw_path": {_jstr(text(d.raw_path))}, '
                 f'"host_path": {host_path}, "volume": {_jstr(d.volume)}'
                 f'{self._victim(d) if d.file_type else _NO_VICTIM}, "result": {d.result}'
                 f'{self._process(d)}').encode(),
                self._lineage(d.lineage),
                (f', "cgroup_id": {d.cgroup_id}{ident}, "agent": {self._agent}, "seq": {seq}, '
                 f'"path_truncated": {truncated}, {tail}').encode())

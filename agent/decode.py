"""The decode stage: the kernel's records (agent/bpf/kprobe.h, struct uw_event) into Deletions. Pure.

The record's layout and its constants are read from kprobe.h itself, the one definition, when this module
loads; a test compiles the header with the C compiler and checks every offset against what is read here."""

from __future__ import annotations

import errno
import re
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from unlinkwatch.pb import events_pb2 as pb

HEADER_H = Path(__file__).resolve().parent / "bpf" / "kprobe.h"
_C_TYPES = {"__u64": "Q", "__s64": "q", "__u32": "I", "__s32": "i", "__u16": "H", "__s16": "h", "__u8": "B",
            "__s8": "b", "char": "s"}


@dataclass(frozen=True)
class RecordLayout:
    """struct uw_event as `struct` reads it, and the header's named constants (enums and #defines)."""

    header: struct.Struct
    fields: tuple[str, ...]
    constants: dict[str, int]


def read_layout(text: str, struct_name: str = "uw_event") -> RecordLayout:
    """The layout of `struct_name` in a header of fixed-width fields (no implicit padding: the C side must
    keep the record packed by ordering, so the same bytes mean the same thing on both sides)."""
    body = re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)
    consts: dict[str, int] = {}
    for name, value, shift in re.findall(r"#define\s+(\w+)\s+\(?\s*(\d+)(?:ULL|UL|U)?\s*(?:<<\s*(\d+)\s*)?\)?",
                                         body):
        consts[name] = int(value) << int(shift or 0)  # "4096", "(1U << 2)", "(1ULL << 63)"
    for block in re.findall(r"enum\s+\w+\s*\{(.*?)\}", body, flags=re.S):
        for name, value in re.findall(r"(\w+)\s*=\s*(\d+)", block):
            consts[name] = int(value)
    m = re.search(r"struct\s+" + struct_name + r"\s*\{(.*?)\};", body, flags=re.S)
    if m is None:
        raise ValueError(f"no struct {struct_name} in the header")
    fmt, fields, offset = "<", [], 0
    for ctype, name, count in re.findall(r"(\w+)\s+(\w+)\s*(?:\[(\w+)\])?\s*;", m[1]):
        code = _C_TYPES[ctype]
        if code == "s":
            n = int(consts.get(count, count))
            fmt, size, align = fmt + f"{n}s", n, 1
        else:
            size = align = struct.calcsize(code)
            fmt += code
        if offset % align:
            raise ValueError(f"{struct_name}.{name} at offset {offset} is not {align}-byte aligned")
        fields.append(name)
        offset += size
    return RecordLayout(struct.Struct(fmt), tuple(fields), consts)


LAYOUT = read_layout(HEADER_H.read_text())
HEADER, HEADER_FIELDS, C = LAYOUT.header, LAYOUT.fields, LAYOUT.constants
KIND_DELETION, KIND_CGROUP_MKDIR, KIND_EXE = C["UW_KIND_DELETION"], C["UW_KIND_CGROUP_MKDIR"], C["UW_KIND_EXE"]
KIND_RENAME_TO = C["UW_KIND_RENAME_TO"]
KIND_MNT_NS = C["UW_KIND_MNT_NS"]
OP_RENAME = C["UW_OP_RENAME"]
OPS = {C[f"UW_OP_{name}"]: pb.Op.Value(f"OP_{name}") for name in ("UNLINK", "RMDIR", "RENAME")}
_F = {name: C[f"UW_F_{name}"] for name in ("RAW_TRUNCATED", "DIR_TRUNCATED", "DIR_UNRESOLVED", "RAW_UNREADABLE",
                                           "REPLACED", "POLICY_USER", "PROC_UNKNOWN")}
ACTIONS = {C["UW_ACTION_ALLOWED"]: pb.ACTION_UNSPECIFIED, C["UW_ACTION_WOULD_BLOCK"]: pb.ACTION_WOULD_BLOCK,
           C["UW_ACTION_BLOCKED"]: pb.ACTION_BLOCKED}
_F_MASK = max(_F.values()) * 2 - 1
_I_KIND, _I_PID, _I_RESULT, _I_RAW_LEN = (HEADER_FIELDS.index(f) for f in ("kind", "pid", "result", "raw_len"))


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
    """The absolute path of `raw` as the process saw it; `directory` is "" for "/". The kernel writes `directory`
    from dentry names, in normal form already: one name under it needs no normalisation."""
    if raw.startswith(b"/"):
        return normalize(raw)
    if b"/" not in raw and raw != b"." and raw != b".." and directory[-1:] != b"/":
        return directory + b"/" + raw
    return normalize(directory + b"/" + raw)


def successful_deletion_by(rec: bytes, pid: int) -> bytes | None:
    """The raw path of a record that is a successful deletion by process `pid`, else None (the self-test
    looks for its own deletions with this, before any Decoder exists)."""
    h = HEADER.unpack_from(rec, 0)
    if h[_I_KIND] != KIND_DELETION or h[_I_PID] != pid or h[_I_RESULT] != 0:
        return None
    return rec[HEADER.size:HEADER.size + h[_I_RAW_LEN]]


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
    rename_to: bytes = b""   # op rename: the destination
    rename_flags: int = 0    # op rename: renameat2 flags as passed
    action: int = 0          # proto Action: the node policy's verdict
    policy: str = ""         # the node-policy rule that decided it
    args: bytes = b""        # the command line as exec'd, each argument NUL-terminated (codec.split_args())
    lineage: Lineage | None = None  # its ancestry (None: the kernel sent nothing of the process)
    mnt_ns: int = 0          # the process's mount namespace (its inode number)
    chroot: bool = False     # its root is not that namespace's root
    host_path: bytes = b""   # where the file is on the node (agent/placement/), set by the decoder or the pipeline
    volume: str = ""         # the pod volume it was in
    # what was destroyed (file_type 0: the kernel could not read it): values as in the proto, dev as the kernel's
    # major << 20 | minor
    inode: int = 0
    dev: int = 0
    file_type: int = 0
    size: int = 0
    nlink: int = 0
    freed: bool = False
    rename_to_host_path: bytes = b""  # op rename: where the destination is on the node (as host_path for path)
    root_mnt_id: int = 0     # the mount id of the process's root when it deleted (placement checks its table by it)


class Proc(NamedTuple):
    """What the kernel sent of a process (UW_KIND_EXE) before its first deletion, or as an ancestor of one."""

    exe: bytes
    args: bytes   # each argument NUL-terminated; the last one unterminated when cut
    flags: int    # pb.EVENT_FLAG_ARGS_TRUNCATED
    pid: int = 0
    comm: bytes = b""
    parent: tuple[int, int] = (0, 0)  # the parent's key (pid, start) when this was sent
    ns_pid: int = 0     # its pid in its own pid namespace (1: a container's first process, or init)
    ns_level: int = 0   # that namespace's depth (0: the host's)
    unknown: bool = False  # no exec seen: pid, comm and parent only


UNKNOWN_PROC = Proc(b"", b"", 0, unknown=True)
_EXE_ARGS_TRUNCATED = C["UW_F_ARGS_TRUNCATED"]
_CHROOT = C["UW_F_CHROOT"]
_VICTIM = C["UW_F_VICTIM"]
_S_IFMT = 0o170000
# i_mode's type -> pb.FileType
FILE_TYPES = {0o100000: pb.FILE_TYPE_FILE, 0o040000: pb.FILE_TYPE_DIR, 0o120000: pb.FILE_TYPE_SYMLINK,
              0o010000: pb.FILE_TYPE_FIFO, 0o140000: pb.FILE_TYPE_SOCKET, 0o020000: pb.FILE_TYPE_CHAR,
              0o060000: pb.FILE_TYPE_BLOCK}
_NO_VICTIM = (0, 0, 0, 0, 0, False)
_EXE_UNKNOWN = C["UW_F_PROC_UNKNOWN"]
ANCESTRY = C["UW_ANCESTRY"]


class Lineage:
    """A deletion's ancestry: its parents nearest first, up to its pid namespace's first process (a
    container's, or init), at most ANCESTRY of them. exec_session: the topmost is not that first process
    but was started into the namespace from outside it (runc exec, kubectl exec). Compared by identity: the
    decoder hands out one object per chain until a process record may change it, so the encoders cache by it."""

    __slots__ = ("ancestors", "exec_session", "truncated")

    def __init__(self, ancestors: tuple[Proc, ...], exec_session: bool, truncated: bool) -> None:
        self.ancestors = ancestors
        self.exec_session = exec_session
        self.truncated = truncated

    def __repr__(self) -> str:
        chain = " < ".join(p.comm.decode(errors="replace") for p in self.ancestors)
        return f"Lineage({chain!r}, exec_session={self.exec_session}, truncated={self.truncated})"


_NO_ANCESTORS = Lineage((), False, False)
_NEW = tuple.__new__
_OUT_FLAGS = [0] * (_F_MASK + 1)
for _f in range(_F_MASK + 1):
    if _f & (_F["RAW_TRUNCATED"] | _F["DIR_TRUNCATED"]):
        _OUT_FLAGS[_f] |= pb.EVENT_FLAG_PATH_TRUNCATED
    if _f & _F["DIR_UNRESOLVED"]:
        _OUT_FLAGS[_f] |= pb.EVENT_FLAG_DIR_UNRESOLVED
    if _f & _F["REPLACED"]:
        _OUT_FLAGS[_f] |= pb.EVENT_FLAG_REPLACED
    if _f & _F["POLICY_USER"]:
        _OUT_FLAGS[_f] |= pb.EVENT_FLAG_POLICY_USER
    if _f & _F["PROC_UNKNOWN"]:
        _OUT_FLAGS[_f] |= pb.EVENT_FLAG_PROCESS_UNKNOWN
# a rename's destination record: its own flags become the RENAME_TO ones (an unreadable destination too)
_TO_FLAGS = [0] * (_F_MASK + 1)
for _f in range(_F_MASK + 1):
    if _f & (_F["RAW_TRUNCATED"] | _F["DIR_TRUNCATED"]):
        _TO_FLAGS[_f] |= pb.EVENT_FLAG_RENAME_TO_TRUNCATED
    if _f & (_F["DIR_UNRESOLVED"] | _F["RAW_UNREADABLE"]):
        _TO_FLAGS[_f] |= pb.EVENT_FLAG_RENAME_TO_UNRESOLVED


@dataclass(frozen=True)
class CgroupMkdir:
    cgroup_id: int
    path: str


@dataclass(frozen=True, slots=True)
class MntNs:
    """A process exec'd in a mount namespace the kernel had not announced (agent/placement/ opens its table)."""

    pid: int
    mnt_ns: int


class Decoder:
    """Turns records into Deletions; remembers the processes the kernel sends once each (by pid and start time,
    the kernel's key), least recently used first out: the kernel keeps at most UW_PROCS of them, so a process
    it still knows (and will not send again) is one this table holds, unless more than `proc_cache_size`
    other processes deleted since its last deletion."""

    def __init__(self, node: str, agent_id: str, attach_mode: str, proc_cache_size: int = 65536,
                 pending_renames: int = 4096) -> None:
        self.node = node
        # tid -> (destination, RENAME_TO flags) of a rename whose own record has not come yet
        self._rename_to: OrderedDict[int, tuple[int, bytes, int]] = OrderedDict()
        self._pending_max = pending_renames
        self.agent_id = agent_id
        self.attach_mode = attach_mode
        self._procs: OrderedDict[tuple[int, int], Proc] = OrderedDict()
        self._proc_cache_size = proc_cache_size
        # (pid, start, ppid, parent start) -> the deletion's lineage, until the next process record
        self._lineages: dict[tuple[int, int, int, int], Lineage | None] = {}
        self._clock = MonotonicToUnix()
        self._offset = self._clock.offset()
        # the node policy's rule names by generation (its low byte, as records carry it); set by the policy runtime
        self.policy_names: dict[int, list[str]] = {}
        self.host_mnt_ns = -1  # the host's mount namespace, once the pipeline places deletions (none before)

    def tick(self) -> None:
        """Re-reads the kernel-clock-to-wall-time offset (itself refreshed once a second); once per batch."""
        self._offset = self._clock.offset()

    def split(self, rec: bytes) -> Deletion | CgroupMkdir | MntNs | None:
        """One record -> a Deletion, or a CgroupMkdir, or None for records that only update the decoder.
        Times use the clock offset of the last tick()."""
        (ts_ns, cgroup_id, proc_start, parent_start, kind, op, pid, tid, ppid, uid, gid, result, _dirfd, flags,
         raw_len, dir_len, rename_flags, ns_pid, ns_level, mnt_ns, nlink, dev, ino, size, mode, _reserved, policy,
         action, policy_gen, comm, root_mnt_id, _reserved2) = HEADER.unpack_from(rec, 0)
        end = HEADER.size + raw_len
        raw = rec[HEADER.size : end]
        if kind == KIND_DELETION:
            path = join(rec[end : end + dir_len], raw) if raw else b""
            nul = comm.find(b"\0")
            rule = self._rule(policy_gen, policy) if policy else ""
            out_flags = _OUT_FLAGS[flags & _F_MASK]
            proc = self._proc(pid, proc_start)
            lineage = self._lineage(pid, proc_start, proc, ppid, parent_start)
            if lineage is not None and lineage.truncated:
                out_flags |= pb.EVENT_FLAG_ANCESTRY_TRUNCATED
            if out_flags & pb.EVENT_FLAG_PROCESS_UNKNOWN or proc.unknown:
                proc = UNKNOWN_PROC
                out_flags |= pb.EVENT_FLAG_PROCESS_UNKNOWN
            chroot = bool(flags & _CHROOT)
            # a host process in the host's namespace and root: its path is the host's (agent/placement/)
            where = path if mnt_ns == self.host_mnt_ns and not chroot else b""
            if flags & _VICTIM:
                ftype = FILE_TYPES.get(mode & _S_IFMT, 0)
                freed = result == 0 and (nlink <= 1 or ftype == pb.FILE_TYPE_DIR)
                victim: tuple[int, int, int, int, int, bool] = (ino, dev, ftype, size, nlink, freed)
            else:
                victim = _NO_VICTIM
            if op != OP_RENAME:
                return _NEW(Deletion, (
                    ts_ns + self._offset, OPS.get(op, 0), path, raw, result, pid, tid, ppid, uid, gid,
                    comm if nul < 0 else comm[:nul], proc.exe, cgroup_id, out_flags | proc.flags, b"", 0,
                    ACTIONS.get(action, 0), rule, proc.args, lineage, mnt_ns, chroot, where, "", *victim, b"",
                    root_mnt_id))
            to, out_flags = self._destination(tid, ts_ns, result, out_flags | proc.flags)
            return _NEW(Deletion, (
                ts_ns + self._offset, OPS[op], path, raw, result, pid, tid, ppid, uid, gid,
                comm if nul < 0 else comm[:nul], proc.exe, cgroup_id, out_flags, to, rename_flags,
                ACTIONS.get(action, 0), rule, proc.args, lineage, mnt_ns, chroot, where, "", *victim,
                to if where else b"", root_mnt_id))
        if kind == KIND_RENAME_TO:
            self._rename_to[tid] = (ts_ns, join(rec[end : end + dir_len], raw) if raw else b"",
                                    _TO_FLAGS[flags & _F_MASK])
            if len(self._rename_to) > self._pending_max:
                self._rename_to.popitem(last=False)
            return None
        if kind == KIND_EXE:
            nul = comm.find(b"\0")
            self._procs[(pid, proc_start)] = Proc(
                raw, rec[end : end + dir_len], pb.EVENT_FLAG_ARGS_TRUNCATED if flags & _EXE_ARGS_TRUNCATED else 0,
                pid, comm if nul < 0 else comm[:nul], (ppid, parent_start), ns_pid, ns_level,
                bool(flags & _EXE_UNKNOWN))
            self._procs.move_to_end((pid, proc_start))
            self._lineages.clear()  # a chain through this process may read differently now
            if len(self._procs) > self._proc_cache_size:
                self._procs.popitem(last=False)
            return None
        if kind == KIND_CGROUP_MKDIR:
            return CgroupMkdir(cgroup_id, raw.decode("utf-8", "surrogateescape"))
        if kind == KIND_MNT_NS:
            return MntNs(pid, mnt_ns)
        return None

    def _lineage(self, pid: int, start: int, me: Proc, ppid: int, parent_start: int) -> Lineage | None:
        key = (pid, start, ppid, parent_start)
        lineage = self._lineages.get(key)
        if lineage is None:
            lineage = self._lineages[key] = self._walk(me, (ppid, parent_start))
            if len(self._lineages) > self._proc_cache_size:
                self._lineages.clear()
        return lineage

    def _walk(self, me: Proc, parent: tuple[int, int]) -> Lineage | None:
        """The ancestry from the processes the kernel sent, cut as the kernel cuts it (agent/bpf/unlink.bpf.c,
        uw_lineage): at the pid namespace's first process, where the chain leaves the namespace, or after
        ANCESTRY ancestors. An ancestor the kernel never sent (its record lost) ends the chain as unknown."""
        if me is UNKNOWN_PROC:
            return None
        if me.ns_pid == 1:
            return _NO_ANCESTORS  # the namespace's first process: no parent inside it
        chain: list[Proc] = []
        key = parent
        while key[0]:
            p = self._procs.get(key)
            if p is None:
                chain.append(Proc(b"", b"", 0, key[0], unknown=True))
                return Lineage(tuple(chain), False, False)
            self._procs.move_to_end(key)  # in use: an ancestor the kernel will not send again
            if p.ns_level < me.ns_level:
                return Lineage(tuple(chain), True, False)  # entered from outside: an exec session
            if len(chain) == ANCESTRY:
                return Lineage(tuple(chain), False, True)
            chain.append(p)
            if p.ns_pid == 1:
                break
            key = p.parent
        return Lineage(tuple(chain), False, False)

    def _proc(self, pid: int, proc_start: int) -> Proc:
        key = (pid, proc_start)
        proc = self._procs.get(key)
        if proc is None:
            return UNKNOWN_PROC
        self._procs.move_to_end(key)
        return proc

    def _rule(self, gen: int, policy: int) -> str:
        names = self.policy_names.get(gen)
        return names[policy - 1] if names is not None and policy <= len(names) else f"#{policy}"

    def _destination(self, tid: int, ts_ns: int, result: int, flags: int) -> tuple[bytes, int]:
        """The destination its entry sent for this thread's rename: the same thread and entry time (a rename the
        node policy ignored leaves its destination's record behind, replaced by the thread's next one). Missing
        (its record lost, or sent before the agent started) means unresolved, never guessed."""
        pending = self._rename_to.pop(tid, None)
        if pending is None or pending[0] != ts_ns:
            return b"", flags | pb.EVENT_FLAG_RENAME_TO_UNRESOLVED
        _ts, to, to_flags = pending
        if result == -errno.ENAMETOOLONG and len(to) >= C["UW_PATH_MAX"] - 1:
            to_flags |= pb.EVENT_FLAG_RENAME_TO_TRUNCATED  # at entry the kernel could not tell a cut path
        return to, flags | to_flags

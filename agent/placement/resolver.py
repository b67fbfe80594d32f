"""Where each deletion's file lived on the node: its host path and its pod volume (agent/placement/mounts.py and
volumes.py do the mapping; this module reads the mount tables).

The kernel gives each deletion its process's mount namespace (uw_event.mnt_ns) and says when the process is
chrooted. A namespace's table is opened through /proc/PID/mountinfo when the kernel announces the namespace (its
first exec, UW_KIND_MNT_NS, which wakes the agent at once), else through the deleting process, its parent, or (at
most once a second) any process found in that namespace. The open file keeps the namespace readable after its
processes are gone; the kernel marks it (POLLPRI) when a mount changes there, and tick() re-reads the tables so
marked, once per batch. A chrooted process's path is first put below its root (/proc/PID/root). A namespace all
of whose processes are gone before its table is opened cannot be placed: those deletions have an empty host path,
counted in `unplaced`."""

from __future__ import annotations

import os
import select
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from unlinkwatch.mountinfo import Mount, parse_mountinfo

from .mounts import MountTable, host_path
from .volumes import KUBELET_ROOT, ROOTFS, host_path_volume, kubelet_volume, pod_volume


class PodVolumes(Protocol):
    """What the pod watch knows of a pod's volumes (agent/identity/kube.py, PodInfo)."""

    @property
    def volumes(self) -> Mapping[str, str]: ...  # name -> the pod spec's key for its type
    @property
    def host_paths(self) -> Mapping[str, bytes]: ...  # hostPath volumes: name -> the host's path
    @property
    def claims(self) -> Mapping[str, str]: ...  # claim volumes: name -> "persistentVolumeClaim/<claim>"
    @property
    def pvs(self) -> Mapping[str, str]: ...  # bound PV name -> volume name


@dataclass(frozen=True)
class _NoVolumes:
    volumes: Mapping[str, str] = field(default_factory=dict)
    host_paths: Mapping[str, bytes] = field(default_factory=dict)
    claims: Mapping[str, str] = field(default_factory=dict)
    pvs: Mapping[str, str] = field(default_factory=dict)


_NO_VOLUMES = _NoVolumes()
MAX_NAMESPACES = 4096
MAX_DIRS = 65536
SCAN_EVERY_S = 1.0  # a namespace none of whose known processes is left: /proc scanned at most this often
# An open table keeps its namespace, and so every mount in it, alive: one whose process is gone is closed once
# unused this long (time for the last deletions of an exiting container to be placed), checked this often.
LINGER_S = 5.0
SWEEP_S = 1.0


class _Table:
    def __init__(self, f: int, pid: int, mnt_ns: int = 0) -> None:
        self.fd = f
        self.pid = pid  # the process it was opened through
        self.mnt_ns = mnt_ns
        self.used = time.monotonic()
        self.table = MountTable(parse_mountinfo(_read(f)))
        self.missing: set[int] = set()  # roots of deletions this table has not: read again once for each

    def reread(self) -> None:
        self.table = MountTable(parse_mountinfo(_read(self.fd)))
        self.missing.clear()


def _read(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def which_layer(upper: bytes, lowers: list[bytes], fs_path: bytes, host_root: bytes = b"") -> bytes:
    """The host path of the overlayfs layer that held `fs_path`, read just after its deletion: a whiteout in the
    upper directory means an image layer had the name (its data is still there); otherwise the upper directory,
    unless only a lower layer has it (the deletion failed). The layers are looked at through `host_root` (the
    host's root, /proc/1/root, when the agent runs in a container)."""
    up = upper.rstrip(b"/") + fs_path if upper else b""
    try:
        st = os.lstat(host_root + up) if up else None
    except OSError:
        st = None
    whiteout = st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    if st is not None and not whiteout:
        return up
    for lower in lowers:
        candidate = lower.rstrip(b"/") + fs_path
        if os.path.lexists(host_root + candidate):
            return candidate
    return up


def _host_process(proc: str) -> str:
    """Whose namespace is the host's: init's (the DaemonSet shares the host's pids), or this process's where init's
    cannot be read (a sandbox that hides pid 1's namespaces; the agent then runs in the host's)."""
    try:
        os.stat(f"{proc}/1/ns/mnt")
        return "1"
    except PermissionError:
        return "self"


class Placement:
    def __init__(self, proc: str = "/proc", kubelet_root: bytes = KUBELET_ROOT,
                 forget: Callable[[int], None] = lambda mnt_ns: None) -> None:
        self.proc = proc
        self.kubelet_root = kubelet_root
        host = _host_process(proc)
        self.host_ns = os.stat(f"{proc}/{host}/ns/mnt").st_ino
        # the agent in a container (a DaemonSet sharing the host's pids) sees the host's files through init's root
        self.host_root = f"{proc}/1/root".encode() if host == "1" and os.stat(
            f"{proc}/self/ns/mnt").st_ino != self.host_ns else b""
        self._host = _Table(os.open(f"{proc}/{host}/mountinfo", os.O_RDONLY | os.O_CLOEXEC), 1)
        self._tables: OrderedDict[int, _Table] = OrderedDict()  # by mount namespace
        self._dirs: dict[tuple[int, bytes], tuple[bytes, Mount | None]] = {}  # (ns, directory) -> (host dir, mount)
        self._poll = select.poll()
        self._poll.register(self._host.fd, select.POLLPRI)
        self._by_fd = {self._host.fd: self._host}
        self._scanned: dict[int, float] = {}  # namespace -> when /proc was last scanned for it
        self._forget = forget  # the kernel may announce this namespace again (its announced set: mnt_seen)
        self._next_sweep = 0.0
        self.unplaced = 0

    def close(self) -> None:
        for t in self._by_fd.values():
            os.close(t.fd)
        self._by_fd.clear()
        self._tables.clear()

    def tick(self) -> None:
        """Re-reads the tables whose namespaces mounted or unmounted something; once per batch. Once a second,
        closes the tables whose process is gone and that were not used for LINGER_S."""
        changed = self._poll.poll(0)
        for fd, _ in changed:
            t = self._by_fd.get(fd)
            if t is None:
                continue
            # A namespace whose process is gone is being torn down (its mounts go with its last process, on newer
            # kernels even while this file is open): its last view stands, for the deletions still in the queue
            if t is self._host or self._in(t.pid, t.mnt_ns):
                table = t.table
                t.reread()
                if t is not self._host and not self._in(t.pid, t.mnt_ns):
                    t.table = table
        if changed:
            self._dirs.clear()
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_S
        for ns, t in list(self._tables.items()):
            if now - t.used > LINGER_S and not self._in(t.pid, ns):
                self._close(ns)

    def _in(self, pid: int, mnt_ns: int) -> bool:
        try:
            return os.stat(f"{self.proc}/{pid}/ns/mnt").st_ino == mnt_ns
        except OSError:
            return False

    def _close(self, mnt_ns: int, forget: bool = True) -> None:
        """Lets the namespace go; its number may then be reused, so the kernel may announce it again."""
        t = self._tables.pop(mnt_ns)
        self._poll.unregister(t.fd)
        del self._by_fd[t.fd]
        os.close(t.fd)
        self._dirs.clear()
        if forget:
            self._forget(mnt_ns)

    def _layer(self, upper: bytes, lowers: list[bytes], fs_path: bytes) -> bytes:
        return which_layer(upper, lowers, fs_path, self.host_root)

    def announce(self, pid: int, mnt_ns: int) -> None:
        """The kernel saw the first exec in `mnt_ns` (UW_KIND_MNT_NS): its table is opened now, through that
        process, and kept, so that deletions in it are placed even once all its processes are gone."""
        if mnt_ns == self.host_ns:
            return
        if mnt_ns in self._tables:  # opened through an earlier process (runc's init), maybe before its pivot_root:
            self._close(mnt_ns, forget=False)  # the file shows mounts relative to its opener's root
        if self._table(pid, 0, mnt_ns, scan=False) is None:
            self._forget(mnt_ns)  # gone already: the kernel announces the namespace again at its next exec

    def place(self, path: bytes, pid: int, ppid: int, mnt_ns: int, chroot: bool, pod_uid: str,
              pod: PodVolumes | None = None, root_mnt_id: int = 0) -> tuple[bytes, str]:
        """(host path, volume) of a deleted `path`; pod_uid is empty for a process outside pods. The namespace's
        table is read through the deleting process, its parent, or any process in it. root_mnt_id is the mount
        the process's root was when it deleted (0: unknown): a table whose root is another mount maps the path
        from that mount, or not at all when it no longer has it."""
        if not path or not mnt_ns:
            return b"", ""
        if chroot:  # the path is below the process's root, which its namespace names
            root = self._root(pid, ppid, mnt_ns)
            if root is None:
                self.unplaced += 1
                return b"", ""
            path = root.rstrip(b"/") + path
        if mnt_ns == self.host_ns:
            return path, ""
        if root_mnt_id and not chroot:
            seen = self._from_root(path, pid, ppid, mnt_ns, root_mnt_id)
            if seen is None:
                self.unplaced += 1
                return b"", ""
            path = seen
        where, mount = self._cached(path, pid, ppid, mnt_ns)
        if not pod_uid or not where:
            return where, ""
        return where, self._volume(where, mount, pod_uid, pod or _NO_VOLUMES)

    def _from_root(self, path: bytes, pid: int, ppid: int, mnt_ns: int, root_mnt_id: int) -> bytes | None:
        """`path` in the terms of the namespace's table (MountTable.from_root). A table that lacks the root is read
        again, once per root, through the deleting process or its parent: one opened before a pivot_root shows only
        what its opener's old root still reaches."""
        t = self._table(pid, ppid, mnt_ns)
        if t is None:
            return path  # _cached() counts it unplaced
        seen = t.table.from_root(path, root_mnt_id)
        if seen is not None or root_mnt_id in t.missing:
            return seen
        for p in (pid, ppid):
            fd = self._open(p, mnt_ns) if p else None
            if fd is not None:
                self._close(mnt_ns, forget=False)
                t = self._add(fd, p, mnt_ns)
                seen = t.table.from_root(path, root_mnt_id)
                break
        if seen is None:
            t.missing.add(root_mnt_id)  # a root gone before the table was read: runc's init before its pivot_root
        return seen

    def _cached(self, path: bytes, pid: int, ppid: int, mnt_ns: int) -> tuple[bytes, Mount | None]:
        d, _, name = path.rpartition(b"/")
        hit = self._dirs.get((mnt_ns, d))
        if hit is not None:
            return (hit[0] + name if hit[0] else b""), hit[1]
        t = self._table(pid, ppid, mnt_ns)
        if t is None:
            self.unplaced += 1
            return b"", None
        where, mount = host_path(path, t.table, self._host.table, self._layer)
        # a directory maps as a whole, but on an overlayfs each file's layer is its own
        if mount is not None and mount.fstype != "overlay" and d and name and where.endswith(b"/" + name):
            if len(self._dirs) >= MAX_DIRS:
                self._dirs.clear()
            self._dirs[(mnt_ns, d)] = (where[: len(where) - len(name)], mount)
        return where, mount

    def _table(self, pid: int, ppid: int, mnt_ns: int, scan: bool = True) -> _Table | None:
        t = self._tables.get(mnt_ns)
        if t is not None:
            self._tables.move_to_end(mnt_ns)
            t.used = time.monotonic()
            return t
        for p in self._members(pid, ppid, mnt_ns, scan):
            fd = self._open(p, mnt_ns)
            if fd is not None:
                break
        else:
            return None
        return self._add(fd, p, mnt_ns)

    def _add(self, fd: int, pid: int, mnt_ns: int) -> _Table:
        t = self._tables[mnt_ns] = _Table(fd, pid, mnt_ns)
        self._by_fd[fd] = t
        self._poll.register(fd, select.POLLPRI)
        if len(self._tables) > MAX_NAMESPACES:
            self._close(next(iter(self._tables)))
        return t

    def _members(self, pid: int, ppid: int, mnt_ns: int, scan: bool) -> Iterator[int]:
        """Processes that may be in namespace `mnt_ns`: the deleting one, its parent (a shell whose `rm` is gone),
        then, at most once a second for a namespace, every process."""
        yield pid
        if ppid:
            yield ppid
        now = time.monotonic()
        if not scan:
            return
        if self._scanned.get(mnt_ns, 0.0) > now - SCAN_EVERY_S:
            return
        self._scanned[mnt_ns] = now
        if len(self._scanned) > MAX_NAMESPACES:
            self._scanned.clear()
        for name in os.listdir(self.proc):
            if name.isdigit():
                try:
                    if os.stat(f"{self.proc}/{name}/ns/mnt").st_ino == mnt_ns:
                        yield int(name)
                except OSError:
                    continue

    def _open(self, pid: int, mnt_ns: int) -> int | None:
        """/proc/PID/mountinfo, opened and then checked to be of namespace `mnt_ns` (a reused pid fails it)."""
        try:
            fd = os.open(f"{self.proc}/{pid}/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if os.stat(f"{self.proc}/{pid}/ns/mnt").st_ino == mnt_ns:
                return fd
        except OSError:
            pass
        os.close(fd)
        return None

    def _root(self, pid: int, ppid: int, mnt_ns: int) -> bytes | None:
        """A chrooted process's root, in its namespace's terms (through its parent when it is gone: a chrooted
        shell's `rm`)."""
        for p in (pid, ppid):
            try:
                root = os.readlink(f"{self.proc}/{p}/root".encode())
                if os.stat(f"{self.proc}/{p}/ns/mnt").st_ino == mnt_ns:
                    return root
            except OSError:
                continue
        return None

    def _volume(self, where: bytes, mount: Mount | None, pod_uid: str, pod: PodVolumes) -> str:
        if mount is not None and mount.point == b"/":
            return ROOTFS
        kv = kubelet_volume(where, self.kubelet_root)
        if kv is not None:
            return pod_volume(kv[1], pod.volumes, pod.claims, pod.pvs)
        return host_path_volume(where, pod.host_paths)

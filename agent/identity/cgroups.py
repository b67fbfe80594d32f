"""cgroup2 mount discovery and cgroup id -> path (mkdir cache, open_by_handle_at, start-up scan)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from unlinkwatch import mountinfo

FILEID_KERNFS = 0xFE
ROOT_CGROUP_ID = 1  # the cgroup2 root's kernfs id; v1-only processes report it too


@dataclass(frozen=True, slots=True)
class Cgroup2Mount:
    mountpoint: str  # where it is mounted, e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified
    root: str = "/"  # the hierarchy path mounted there ("/" unless inside a cgroup namespace)


def parse_mountinfo(text: str) -> Cgroup2Mount | None:
    """The cgroup2 mount in /proc/self/mountinfo text; pure v2 and hybrid layouts; None when absent."""
    found = [Cgroup2Mount(mountpoint=m.point.decode("utf-8", "surrogateescape"),
                          root=m.root.decode("utf-8", "surrogateescape"))
             for m in mountinfo.parse_mountinfo(text.encode("utf-8", "surrogateescape")) if m.fstype == "cgroup2"]
    if not found:
        return None
    # Prefer the conventional places over extra bind mounts elsewhere.
    for preferred in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        for m in found:
            if m.mountpoint == preferred:
                return m
    return found[0]


def find_cgroup2(mountinfo_path: str = "/proc/self/mountinfo") -> Cgroup2Mount | None:
    try:
        with open(mountinfo_path, encoding="utf-8", errors="replace") as f:
            return parse_mountinfo(f.read())
    except OSError:
        return None


def join_root(root: str, rel: str) -> str:
    """Hierarchy path of a path relative to the mount: the tracepoint's form, always starting with '/'."""
    rel = "/" + rel.strip("/") if rel.strip("/") else "/"
    if root in ("", "/"):
        return rel
    return root.rstrip("/") + (rel if rel != "/" else "")


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_uint64)]


class HandleResolver:
    """cgroup id -> path via open_by_handle_at(FILEID_KERNFS); needs CAP_DAC_READ_SEARCH, else unavailable."""

    def __init__(self, mount: Cgroup2Mount) -> None:
        self.mount = mount
        self.available = False
        self._fd = -1
        self._libc: ctypes.CDLL | None = None
        try:
            # the C library already in the process: find_library would run ldconfig or gcc, which make and
            # delete a temporary file that the agent would then report as a deletion of its own
            self._libc = ctypes.CDLL(None, use_errno=True)
            self._fd = os.open(mount.mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.available = True
        except OSError:
            self.available = False

    def lookup(self, cgroup_id: int) -> str | None:
        """Hierarchy path of a live cgroup; None when it is gone (ESTALE) or lookups are not permitted."""
        if not self.available or self._libc is None:
            return None
        handle = _FileHandle(8, FILEID_KERNFS, cgroup_id)
        fd = self._libc.open_by_handle_at(self._fd, ctypes.byref(handle), os.O_RDONLY | os.O_CLOEXEC)
        if fd < 0:
            if ctypes.get_errno() in (errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP):
                self.available = False  # not permitted here: do not pay for a failing syscall per event
            return None
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        finally:
            os.close(fd)
        mp = self.mount.mountpoint.rstrip("/")
        if target != mp and not target.startswith(mp + "/"):
            return None
        return join_root(self.mount.root, target[len(mp):])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.available = False


def scan(mount: Cgroup2Mount) -> dict[int, str]:
    """Every cgroup under the mount: inode number (= cgroup id) -> hierarchy path."""
    out: dict[int, str] = {}
    with contextlib.suppress(OSError):
        out[os.stat(mount.mountpoint).st_ino] = join_root(mount.root, "/")
    stack = [(mount.mountpoint, "")]
    while stack:
        top, rel = stack.pop()
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue  # removed while walking
        for e in entries:
            try:
                if not e.is_dir(follow_symlinks=False):
                    continue
                child = f"{rel}/{e.name}"
                out[e.inode()] = join_root(mount.root, child)
                stack.append((e.path, child))
            except OSError:
                continue
    return out


@dataclass(slots=True)
class _Entry:
    path: str
    gone_at: float = 0.0  # monotonic time the cgroup was seen removed; 0 while alive


class CgroupPaths:
    """cgroup id -> hierarchy path; entries outlive their cgroup for `grace_seconds`, at most `max_entries`."""

    def __init__(self, mount: Cgroup2Mount | None, grace_seconds: float = 300.0, max_entries: int = 65536,
                 clock: Callable[[], float] = time.monotonic, use_handles: bool = True) -> None:
        self.mount = mount
        self.grace_seconds = grace_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._handles = HandleResolver(mount) if mount is not None and use_handles else None
        self.handle_lookups = 0

    def __len__(self) -> int:
        return len(self._entries)

    def on_mkdir(self, cgroup_id: int, path: str) -> None:
        """A cgroup created (from the kernel's cgroup_mkdir tracepoint: path relative to the hierarchy root)."""
        self._put(cgroup_id, path if path.startswith("/") else "/" + path)

    def on_rmdir(self, cgroup_id: int) -> None:
        """A cgroup removed: keep its path for the grace period so late events still resolve."""
        with self._lock:
            e = self._entries.get(cgroup_id)
            if e is not None and not e.gone_at:
                e.gone_at = self._clock()

    def _put(self, cgroup_id: int, path: str) -> None:
        with self._lock:
            self._entries[cgroup_id] = _Entry(path)
            self._entries.move_to_end(cgroup_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def items(self) -> list[tuple[int, str]]:
        """(id, path) of every cgroup known to be alive."""
        with self._lock:
            return [(cid, e.path) for cid, e in self._entries.items() if not e.gone_at]

    def scan(self) -> int:
        """Start-up walk of the whole hierarchy; returns how many cgroups were found."""
        if self.mount is None:
            return 0
        found = scan(self.mount)
        for cid, path in found.items():
            if cid not in self._entries:
                self._put(cid, path)
        return len(found)

    def lookup(self, cgroup_id: int) -> str | None:
        """The path, from the cache, else from the kernel by handle (live cgroups only); None if unknown."""
        e = self._entries.get(cgroup_id)
        if e is not None:
            return e.path
        if self._handles is None:
            return None
        self.handle_lookups += 1
        path = self._handles.lookup(cgroup_id)
        if path is not None:
            self._put(cgroup_id, path)
        return path

    def lookup_cached(self, cgroup_id: int) -> str | None:
        e = self._entries.get(cgroup_id)
        return e.path if e is not None else None

    def sweep(self) -> int:
        """Mark removed cgroups (their directory is gone or reused) and evict those past the grace period."""
        if self.mount is None:
            return 0
        now = self._clock()
        with self._lock:
            items = list(self._entries.items())
        dead: list[int] = []
        newly_gone: list[int] = []
        for cid, e in items:
            if e.gone_at:
                if now - e.gone_at >= self.grace_seconds:
                    dead.append(cid)
                continue
            if not self._alive(cid, e.path):
                newly_gone.append(cid)
        with self._lock:
            for cid in newly_gone:
                e2 = self._entries.get(cid)
                if e2 is not None and not e2.gone_at:
                    e2.gone_at = now
            for cid in dead:
                self._entries.pop(cid, None)
        return len(dead)

    def _alive(self, cgroup_id: int, path: str) -> bool:
        assert self.mount is not None
        root = self.mount.root.rstrip("/")
        if root and not (path == root or path.startswith(root + "/")):
            return True  # outside our view of the hierarchy: cannot tell, keep it (LRU still bounds it)
        try:
            return os.stat(self.mount.mountpoint.rstrip("/") + path[len(root):]).st_ino == cgroup_id
        except OSError:
            return False

    def close(self) -> None:
        if self._handles is not None:
            self._handles.close()


def cgroup_id_of(path_in_mount: str) -> int:
    """The cgroup id of a cgroup2 directory (its inode number)."""
    return os.stat(path_in_mount).st_ino


def own_cgroup_path(pid: int | str = "self") -> str | None:
    """A process's cgroup2 path from /proc/<pid>/cgroup (the '0::' line)."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        return None
    return None

"""Where a deleted file lived on the node (pure): a path as its process saw it -> the same file as the host's mount
namespace sees it, through mount tables (/proc/PID/mountinfo, proc(5)).

A path is found in its process's table (the mount whose mount point is its longest prefix, the last one mounted
there when several are). Inside that mount's filesystem it is the mount's root plus the rest of the path. On the
host, the mount of the same device whose root is the longest prefix of that gives the host path. An overlayfs
(a container's root filesystem) maps to its layers instead: the upper directory for a file the container made,
or the lower layer that holds an image's file (the caller says which, from the whiteout the deletion left), unless
the overlayfs is the host's own root (a live image, a VM), which the host reaches as it is."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from unlinkwatch.mountinfo import Mount, unescape


def under(path: bytes, prefix: bytes) -> bytes | None:
    """The rest of `path` below directory `prefix` ("" for the prefix itself, "/x" below it), or None."""
    if prefix == b"/":
        return path if path != b"/" else b""
    if path == prefix:
        return b""
    if path.startswith(prefix) and path[len(prefix) : len(prefix) + 1] == b"/":
        return path[len(prefix) :]
    return None


def _join(base: bytes, rest: bytes) -> bytes:
    return (base.rstrip(b"/") + rest) or b"/"


class MountTable:
    def __init__(self, mounts: Iterable[Mount]) -> None:
        self.mounts = list(mounts)
        # for find(): the longest mount point first, and for one point the last mounted first
        self._by_point = sorted(enumerate(self.mounts), key=lambda im: (-len(im[1].point), -im[0]))
        self._by_dev: dict[str, list[Mount]] = {}
        for m in self.mounts:
            self._by_dev.setdefault(m.dev, []).append(m)
        self._by_id = {m.mount_id: m for m in self.mounts}
        top = self.find(b"/")
        self._root = top[0] if top else None  # the mount at "/"
        self.root_id = self._root.mount_id if self._root else 0

    def find(self, path: bytes) -> tuple[Mount, bytes] | None:
        """The mount `path` is on, and the rest of the path below its mount point."""
        for _, m in self._by_point:
            rest = under(path, m.point)
            if rest is not None:
                return m, rest
        return None

    def from_root(self, path: bytes, root_mnt_id: int) -> bytes | None:
        """`path` as seen from the root mount `root_mnt_id` (the kernel's record of the process's root when it
        deleted) in this table's terms: itself when that mount is this table's root; below that mount's point when
        the root is another mount here (a table read before a pivot_root); None when the table no longer has it (read
        after a pivot_root that unmounted the old root: runc's init deletes dev/ptmx before its pivot)."""
        if not root_mnt_id or root_mnt_id == self.root_id:
            return path
        m = self._by_id.get(root_mnt_id)
        if m is None:
            return None
        return _join(m.point, path)

    def is_root(self, dev: str) -> bool:
        """Whether `dev` is the filesystem mounted at "/" here."""
        return self._root is not None and self._root.dev == dev

    def visible(self, dev: str, fs_path: bytes) -> bytes | None:
        """Where `fs_path` (a path inside the filesystem `dev`) can be reached in this table: through the mount of
        that device whose root is its longest prefix."""
        best: tuple[int, bytes] | None = None
        for m in self._by_dev.get(dev, ()):
            rest = under(fs_path, m.root)
            if rest is not None and (best is None or len(m.root) > best[0]):
                best = (len(m.root), _join(m.point, rest))
        return best[1] if best else None


def overlay_layers(options: str) -> tuple[bytes, list[bytes]]:
    """An overlayfs mount's upper directory and lower layers (top first), from its superblock options: values are
    octal-escaped, and a ":" inside a lower layer's name is written "\\:"."""
    upper, lowers = b"", []
    for opt in options.split(","):
        key, _, value = opt.partition("=")
        raw = value.encode("utf-8", "surrogateescape")
        if key == "upperdir":
            upper = unescape(raw)
        elif key in ("lowerdir", "lowerdir+"):
            lowers += [unescape(p).replace(b"\\:", b":") for p in re.split(rb"(?<!\\):", raw) if p]
    return upper, lowers


# (upper, lowers, path inside the overlay) -> which layer held the deleted file: its host path
Layer = Callable[[bytes, list[bytes], bytes], bytes]


def host_path(path: bytes, table: MountTable, host: MountTable, layer: Layer) -> tuple[bytes, Mount | None]:
    """`path` as a process with mount table `table` saw it -> (its path on the host, the mount it was on); b""
    when the host cannot reach the file (a filesystem mounted only inside the process's namespace)."""
    found = table.find(path)
    if found is None:
        return b"", None
    m, rest = found
    fs_path = _join(m.root, rest)
    if m.fstype == "overlay" and not host.is_root(m.dev):  # the host's own root may be an overlayfs too
        upper, lowers = overlay_layers(m.options)
        if upper or lowers:
            return layer(upper, lowers, fs_path), m
    return host.visible(m.dev, fs_path) or b"", m

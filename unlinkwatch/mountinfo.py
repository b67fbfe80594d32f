"""/proc/PID/mountinfo (proc(5)) read once for the whole project: the agent's cgroup2 discovery and host paths, and
the test suite's leftover sweep."""

from __future__ import annotations

import re
from typing import NamedTuple

_OCTAL = re.compile(rb"\\([0-7]{3})")


def unescape(field: bytes) -> bytes:
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    return _OCTAL.sub(lambda m: bytes([int(m[1], 8)]), field)


class Mount(NamedTuple):
    mount_id: int
    dev: str        # "major:minor" of the filesystem
    root: bytes     # the directory of the filesystem mounted here ("/" for all of it; a bind mount's source)
    point: bytes    # where, relative to the reading process's root
    fstype: str
    source: bytes
    options: str    # the superblock's options as written (escaped: overlay_layers() reads them)


def parse_mountinfo(text: bytes) -> list[Mount]:
    """The lines of a mountinfo file, in its order (a later mount on the same point is on top)."""
    out = []
    for line in text.splitlines():
        head, sep, tail = line.partition(b" - ")
        f, t = head.split(b" "), tail.split(b" ")
        if not sep or len(f) < 6 or len(t) < 3:
            continue
        out.append(Mount(int(f[0]), f[2].decode(), unescape(f[3]), unescape(f[4]), t[0].decode(),
                         unescape(t[1]), t[2].decode("utf-8", "surrogateescape")))
    return out


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[Mount]:
    with open(path, "rb") as f:
        return parse_mountinfo(f.read())

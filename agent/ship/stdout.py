"""--stdout: the JSON lines' pieces (ship/encode.py, JsonLines.pieces) written with os.writev, without joining
them first. A batch of lines is megabytes, mostly ancestry that repeats from line to line: written as pieces, it is
copied once, by the kernel."""

from __future__ import annotations

import os
from typing import TextIO

IOV_MAX = 1024  # the kernel's limit on pieces per writev (UIO_MAXIOV)


def write_all(fd: int, pieces: list[bytes]) -> None:
    """Writes every byte of `pieces` in order, IOV_MAX pieces per call; a short write (a signal, a full disk's
    last bytes) goes on from where it stopped."""
    for start in range(0, len(pieces), IOV_MAX):
        chunk = pieces[start : start + IOV_MAX]
        done = os.writev(fd, chunk)
        if done < sum(map(len, chunk)):
            rest = memoryview(b"".join(chunk))[done:]
            while rest:
                rest = rest[os.write(fd, rest) :]


class StdoutLines:
    """The lines' destination: the stream's file descriptor, or the stream itself when it has none (a test's)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            self._fd = None

    def write(self, pieces: list[bytes]) -> None:
        if self._fd is None:
            self._stream.write(b"".join(pieces).decode())
            self._stream.flush()
            return
        self._stream.flush()  # whatever went through the stream goes first
        write_all(self._fd, pieces)

"""--stdout: the JSON lines' pieces (ship/encode.py, JsonLines.pieces) written with os.writev, without joining
them first. A batch of lines is megabytes, mostly ancestry that repeats from line to line: written as pieces, it is
copied once, by the kernel.

A write the file refuses (a full disk, an I/O error) loses the lines it did not finish, counted by the caller, and
the agent goes on: the next batch is written when it comes. A line cut short ends there (the next write starts with
a newline), so it never runs into the next one. A closed pipe (`agent --stdout | head`) ends the agent as before."""

from __future__ import annotations

import logging
import os
from typing import TextIO

log = logging.getLogger("unlinkwatch.agent.stdout")
IOV_MAX = 1024  # the kernel's limit on pieces per writev (UIO_MAXIOV)


class WriteFailed(OSError):
    """write_all() stopped after `written` bytes."""

    def __init__(self, written: int, error: OSError) -> None:
        super().__init__(error.errno, error.strerror)
        self.written = written


def write_all(fd: int, pieces: list[bytes]) -> None:
    """Writes every byte of `pieces` in order, IOV_MAX pieces per call; a short write (a signal, a full disk's
    last bytes) goes on from where it stopped. A refusal raises WriteFailed with the bytes written before it
    (BrokenPipeError as itself)."""
    written = 0
    try:
        for start in range(0, len(pieces), IOV_MAX):
            chunk = pieces[start : start + IOV_MAX]
            done = os.writev(fd, chunk)
            written += done
            if done < sum(map(len, chunk)):
                rest = memoryview(b"".join(chunk))[done:]
                while rest:
                    n = os.write(fd, rest)
                    written += n
                    rest = rest[n:]
    except BrokenPipeError:
        raise
    except OSError as e:
        raise WriteFailed(written, e) from e


def lines_done(pieces: list[bytes], written: int) -> tuple[int, int, bool]:
    """(lines whole in the first `written` bytes, lines in all, whether those bytes end inside a line). A line
    ends with the piece that ends with a newline."""
    done = total = 0
    end = last_line_end = 0
    for p in pieces:
        end += len(p)
        if p.endswith(b"\n"):
            total += 1
            if end <= written:
                done, last_line_end = done + 1, end
    return done, total, written > last_line_end


class StdoutLines:
    """The lines' destination: the stream's file descriptor, or the stream itself when it has none (a test's)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            self._fd = None
        self._torn = False     # the last write stopped inside a line
        self._failing = False  # writes fail (logged once until one succeeds)

    def write(self, pieces: list[bytes]) -> int:
        """Writes the lines; returns how many were lost to a refused write (0 when all were written)."""
        if self._fd is None:
            self._stream.write(b"".join(pieces).decode())
            self._stream.flush()
            return 0
        self._stream.flush()  # whatever went through the stream goes first
        mend = self._torn
        try:
            write_all(self._fd, [b"\n", *pieces] if mend else pieces)
        except WriteFailed as e:
            written = e.written - 1 if mend and e.written else e.written  # of `pieces`
            done, total, torn = lines_done(pieces, written)
            self._torn = torn or (mend and not e.written)
            lost = total - done
            if not self._failing:
                log.error("--stdout: lines not written; going on", extra={"fields": {
                    "error": e.strerror, "lines_lost": lost}})
            self._failing = True
            return lost
        self._torn = False
        if self._failing:
            log.info("--stdout: lines written again")
            self._failing = False
        return 0

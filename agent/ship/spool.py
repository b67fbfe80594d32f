"""Disk spool of serialized EventBatches: one file per batch, removed on its ack. The shipper decides when a batch is
written (shipper.py: while no stream delivers acks, once its ack is late, or when the agent stops).

A file name carries its order, batch id and event count (`<index>-<batch_id>-<events>.batch`), so a restart
can resend in order and count drops exactly without parsing. The order is reserved when the batch is made
(reserve()), so batches written later than younger ones still resend in the order they were made. Files appear
atomically (write + rename)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from unlinkwatch.errors import UserError

log = logging.getLogger("unlinkwatch.agent.spool")
_NAME = re.compile(r"(\d{16})-(\d+)-(\d+)\.batch")
_TMP = re.compile(r"(\d{16})-(\d+)-(\d+)\.tmp")  # put()'s names before the rename; nothing else is removed


@dataclass
class SpoolFile:
    index: int
    batch_id: int
    events: int
    size: int
    path: Path


class Spool:
    def __init__(self, directory: str, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for tmp in self.dir.glob("*.tmp"):
                if _TMP.fullmatch(tmp.name):  # a write cut short by a crash; never acknowledged nor counted
                    tmp.unlink()
        except OSError as e:
            raise UserError(f"--spool: cannot use {directory}: {e.strerror}") from None
        self.bytes = 0
        self.writes = 0  # files written by this process
        self._next = 1
        self._lock = threading.Lock()  # put() runs in the batcher thread, remove() in the ack reader

    def load(self) -> list[SpoolFile]:
        """Batches left by earlier runs, oldest first."""
        files = []
        for p in self.dir.iterdir():
            m = _NAME.fullmatch(p.name)
            if not m:
                continue
            try:
                size = p.stat().st_size
            except OSError:
                continue
            files.append(SpoolFile(int(m[1]), int(m[2]), int(m[3]), size, p))
        files.sort(key=lambda f: f.index)
        self.bytes = sum(f.size for f in files)
        self._next = max((f.index for f in files), default=0) + 1
        return files

    def reserve(self) -> int:
        """The next place in the spool's order, for a batch put() later."""
        with self._lock:
            index, self._next = self._next, self._next + 1
        return index

    def put(self, index: int, batch_id: int, events: int, data: bytes) -> SpoolFile:
        """The batch's file; OSError (a full or failing disk) leaves nothing behind."""
        path = self.dir / f"{index:016d}-{batch_id}-{events}.batch"
        tmp = path.with_suffix(".tmp")
        try:
            try:
                f = open(tmp, "wb")  # noqa: SIM115 - closed below
            except FileNotFoundError:  # the directory was removed under us (a cleaner, an operator): made again
                self.dir.mkdir(parents=True, exist_ok=True)
                f = open(tmp, "wb")  # noqa: SIM115
            with f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        with self._lock:
            self.bytes += len(data)
            self.writes += 1
        return SpoolFile(index, batch_id, events, len(data), path)

    def read(self, f: SpoolFile) -> bytes | None:
        try:
            return f.path.read_bytes()
        except OSError as e:
            log.error("spooled batch unreadable", extra={"fields": {"path": str(f.path), "error": str(e)}})
            return None

    def remove(self, f: SpoolFile) -> None:
        try:
            f.path.unlink(missing_ok=True)
        except OSError as e:  # resent by the next start if it is still there; the collector drops repeats
            log.error("spooled batch not removed", extra={"fields": {"path": str(f.path), "error": str(e)}})
        with self._lock:
            self.bytes -= f.size

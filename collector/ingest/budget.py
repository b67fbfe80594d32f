"""A byte budget for ingest: how much of the agents' data the collector holds at once, over all streams.

Each Ingest stream reads up to INGEST_WINDOW batches ahead of its acks; without a bound over all streams,
a few hundred agents replaying their spools after a collector restart could each hold that many batches
(raw bytes, parsed messages and rows: about three times the raw size) and exhaust the collector's memory.
A stream takes a batch's raw size from the budget before parsing it and gives it back once the batch is
acked; when the budget is spent, readers wait, so gRPC flow control slows the agents down instead."""

from __future__ import annotations

import threading
from collections.abc import Callable

DEFAULT_INFLIGHT_BYTES = 128 << 20  # raw bytes; parsed, with rows, about three times that


class ByteBudget:
    def __init__(self, capacity: int = DEFAULT_INFLIGHT_BYTES) -> None:
        self.capacity = capacity
        self._used = 0
        self.peak = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    def acquire(self, n: int, give_up: Callable[[], bool], poll_s: float = 0.2) -> bool:
        """Take n bytes, waiting while they do not fit; False (nothing taken) once give_up() says so.
        A request larger than the whole budget is let through when nothing else is held, so it cannot wait
        forever (the message size limit bounds it)."""
        with self._cond:
            while self._used and self._used + n > self.capacity:
                if give_up():
                    return False
                self._cond.wait(poll_s)
            self._used += n
            self.peak = max(self.peak, self._used)
            return True

    def release(self, n: int) -> None:
        if n <= 0:
            return
        with self._cond:
            self._used -= n
            self._cond.notify_all()


class StreamHold:
    """What one stream holds of a budget: its reader takes, its acks give back, and close() returns the rest
    (the stream ended); a take after close() is returned at once, so nothing leaks when the two race."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self._lock = threading.Lock()
        self._held = 0
        self._closed = False

    def take(self, n: int, give_up: Callable[[], bool]) -> bool:
        if not self._budget.acquire(n, lambda: self._closed or give_up()):
            return False
        with self._lock:
            if not self._closed:
                self._held += n
                return True
        self._budget.release(n)
        return False

    def give_back(self, n: int) -> None:
        with self._lock:
            n = min(n, self._held)
            self._held -= n
        self._budget.release(n)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            n, self._held = self._held, 0
        self._budget.release(n)

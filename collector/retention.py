"""Background deletion of events older than --retention, in small chunks so ingest never waits long."""

from __future__ import annotations

import logging
import threading
import time

from .store import Store

log = logging.getLogger("unlinkwatch.collector.retention")


class Retention:
    def __init__(self, store: Store, keep_ns: int, interval_s: float = 60.0) -> None:
        self._store, self._keep_ns, self._interval = store, keep_ns, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run_once(self, now_ns: int | None = None) -> int:
        cutoff = (now_ns or time.time_ns()) - self._keep_ns
        n = self._store.delete_before(cutoff)
        if n:
            log.info("retention deleted old events", extra={"fields": {"deleted": n, "cutoff_ns": cutoff}})
        return n

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("retention pass failed; retrying next interval")
            self._stop.wait(self._interval)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

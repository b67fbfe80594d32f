"""Group commit: one writer thread commits the prepared batches of every Ingest stream, several at a time.

Streams parse, validate and build rows in their own threads and hand the result here; the writer takes
everything queued (up to GROUP_EVENTS events) and commits it as one transaction, so one commit (one WAL
sync point, one pass over each index page touched) serves several batches, and the SQL work runs while
other threads parse the next batches (sqlite3 and psycopg release the GIL while the database works).
A batch's future resolves only after the transaction holding it has committed: acks stay after commit."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from unlinkwatch.collector.store import BatchResult, CommitOutcome, Prepared, Store

log = logging.getLogger("unlinkwatch.collector")
GROUP_EVENTS = 32_768  # events per transaction at most (a batch is never split)

_Item = tuple[Prepared, "Future[BatchResult]"]


class GroupWriter:
    def __init__(self, store: Store, group_events: int = GROUP_EVENTS,
                 commit: Callable[[Sequence[Prepared], int], list[CommitOutcome]] | None = None) -> None:
        self._commit_prepared = commit or store.commit_prepared  # or a CommitProcess's
        self._group_events = group_events
        self._q: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, p: Prepared) -> Future[BatchResult]:
        fut: Future[BatchResult] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("collector is stopping")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
                self._thread.start()
            self._q.put((p, fut))
        return fut

    def _run(self) -> None:
        q = self._q
        while True:
            item = q.get()
            if item is None:
                return
            group = [item]
            n = len(item[0].rows)
            stop = False
            while n < self._group_events:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
                n += len(nxt[0].rows)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[_Item]) -> None:
        try:
            results = self._commit_prepared([p for p, _ in group], time.time_ns())
        except BaseException as e:  # the store failed as a whole: every batch of the group fails
            log.exception("ingest commit failed")
            for _, fut in group:
                fut.set_exception(e)
            return
        for (_, fut), res in zip(group, results, strict=True):
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        with self._lock:
            self._closed = True
            t = self._thread
            self._q.put(None)
        if t is not None:
            t.join(60)

"""Group commit: writer threads commit the prepared batches of every Ingest stream, several at a time.

Streams parse, validate and build rows in their own threads and hand the result here; a writer takes
everything queued (up to GROUP_EVENTS events) and commits it as one transaction, so one commit (one WAL
sync point, one pass over each index page touched) serves several batches. In the collector each writer
thread hands its groups to a commit process (commitproc.py), so the SQL work runs on its own
interpreter while the streams parse the next batches. A batch's future resolves only after the
transaction holding it has committed: acks stay after commit, and each stream acks in order."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from ..store import Store
from ..store.model import BatchResult, CommitOutcome, Prepared

log = logging.getLogger("unlinkwatch.collector")
GROUP_EVENTS = 32_768  # events per transaction at most (a batch is never split)

_Item = tuple[Prepared, "Future[BatchResult]"]


CommitFn = Callable[[Sequence[Prepared], int], list[CommitOutcome]]


class GroupWriter:
    """`commits`: one writer thread per function, each committing whole groups (CommitProcess children;
    the store's own commit_prepared by default). SQLite has one writer at a time, so it gets one; with
    PostgreSQL two groups can be in flight, one copying while the other commits."""

    def __init__(self, store: Store, group_events: int = GROUP_EVENTS, commits: Sequence[CommitFn] = ()) -> None:
        self._commits = list(commits) or [store.commit_prepared]
        self._group_events = group_events
        self._q: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, p: Prepared) -> Future[BatchResult]:
        fut: Future[BatchResult] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("collector is stopping")
            if not self._threads:
                self._threads = [threading.Thread(target=self._run, args=(c,), name=f"ingest-writer-{i}", daemon=True)
                                 for i, c in enumerate(self._commits)]
                for t in self._threads:
                    t.start()
            self._q.put((p, fut))
        return fut

    def _run(self, commit: CommitFn) -> None:
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
            self._commit(commit, group)
            if stop:
                return

    def _commit(self, commit: CommitFn, group: list[_Item]) -> None:
        try:
            results = commit([p for p, _ in group], time.time_ns())
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
        """Commit what is queued, then stop the threads."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
            for _ in threads:
                self._q.put(None)
        for t in threads:
            t.join(60)

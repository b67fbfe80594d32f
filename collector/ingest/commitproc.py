"""Ingest's write transactions in a process of their own.

The collector's stream threads spend their time in Python (parsing, rows, alert rules) and hold the GIL
for it; a writer thread in the same process needs the GIL back after every SQL statement, and measured
here it waited for it about half of its time. A child process with its own interpreter commits instead:
the parent sends each group of prepared batches (the batch header without its events, and the rows,
pickled over a pipe), the child runs the store's commit_prepared on its own connection and sends back,
per batch, the accounting result or the exception. Acks still follow the commit: the parent resolves a
batch only once the child has answered for the transaction that holds it.

SQLite gets one child (one writer at a time); PostgreSQL gets two, so one group copies while the other
commits (its accounting locks the agents' rows in name order, so the two never deadlock).

If the child dies, the group in flight fails (its streams end with an error, their agents resend and the
store deduplicates) and the next group starts a new child. The child exits when its input closes, which
includes the parent dying."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import astuple
from typing import IO, Any

from unlinkwatch.pb import events_pb2 as pb

from ..store import open_store
from ..store.model import AgentState, BatchResult, CommitOutcome, Prepared, new_events_of

log = logging.getLogger("unlinkwatch.collector")
_LEN = struct.Struct("<Q")
READY = "ready"


def _send(out: IO[bytes], obj: object) -> None:
    """Pickled in fast mode, without a memo: a group is tens of thousands of row tuples, none shared or
    self-referring, and memoizing each costs four times the pickling (all of it holding the GIL)."""
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    p.fast = True
    p.dump(obj)
    data = buf.getbuffer()
    out.write(_LEN.pack(len(data)))
    out.write(data)
    out.flush()


def _recv(inp: IO[bytes]) -> Any:
    head = inp.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError
    n = _LEN.unpack(head)[0]
    data = inp.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


def batch_header(batch: pb.EventBatch) -> bytes:
    """The batch without its events: what the commit needs besides the rows (agent, losses, updates)."""
    h = pb.EventBatch(agent=batch.agent, node=batch.node, batch_id=batch.batch_id, attach_mode=batch.attach_mode,
                      first_seq=batch.first_seq)
    if batch.HasField("lost"):
        h.lost.CopyFrom(batch.lost)
    h.identity_updates.extend(batch.identity_updates)
    return h.SerializeToString()


def _outcome(res: CommitOutcome) -> tuple[Any, ...]:
    if isinstance(res, BaseException):
        try:
            pickle.dumps(res)
            return ("error", res)
        except Exception:
            return ("error", RuntimeError(f"{type(res).__name__}: {res}"))
    return ("ok", res.duplicates, astuple(res.state), res.counts, res.existing)


class CommitProcess:
    """commit_prepared() of the store at `db_url`, run in a child process (one group at a time)."""

    def __init__(self, db_url: str) -> None:
        self._url = db_url
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._start()

    def _start(self) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "unlinkwatch.collector.ingest.commitproc"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert proc.stdin is not None and proc.stdout is not None
        try:
            _send(proc.stdin, self._url)  # over the pipe, not argv: a PostgreSQL URL may hold a password
            if _recv(proc.stdout) != READY:
                raise EOFError
        except (EOFError, OSError):
            code = proc.wait(10)
            raise RuntimeError(f"the commit process did not start (exit code {code})") from None
        self._proc = proc

    def commit_prepared(self, items: Sequence[Prepared], now_ns: int) -> list[CommitOutcome]:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    log.warning("the commit process ended (exit code %s); starting a new one", self._proc.returncode)
                self._start()
            proc = self._proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            msg = ([(batch_header(p.batch), p.agent_num, p.rows, p.lo, p.hi, p.counts) for p in items], now_ns)
            try:
                _send(proc.stdin, msg)
                answers = _recv(proc.stdout)
            except (EOFError, OSError):
                code = proc.poll()
                self._proc = None
                with contextlib.suppress(Exception):
                    proc.kill()
                    proc.wait(5)
                log.warning("the commit process ended (exit code %s) during a commit; its batches are not acked", code)
                raise RuntimeError(f"the commit process ended (exit code {code}); this group was not acked") \
                    from None
        if isinstance(answers, tuple):  # the group failed as a whole
            raise answers[1]
        return [_result(p, a) for p, a in zip(items, answers, strict=True)]

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()  # the child finishes and exits on end of input
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _result(p: Prepared, answer: tuple[Any, ...]) -> CommitOutcome:
    if answer[0] == "error":
        err: Exception = answer[1]
        return err
    _, duplicates, state, counts, existing = answer
    events = p.batch.events
    new_events = new_events_of(events, len(events) - duplicates, existing)
    return BatchResult(new_events=new_events, duplicates=duplicates, state=AgentState(*state), counts=counts,
                       existing=existing)


def main() -> int:
    # Ctrl-C in a terminal reaches the whole process group: the parent stops the collector and then closes
    # our input, and until then we still commit what it sends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers on the pipe
    try:
        url = _recv(inp)
    except EOFError:
        return 1
    store = open_store(url, background=False)
    try:
        _send(out, READY)
        while True:
            try:
                items, now_ns = _recv(inp)
            except EOFError:
                return 0
            preps = [Prepared(pb.EventBatch.FromString(h), num, rows, lo, hi, counts)
                     for h, num, rows, lo, hi, counts in items]
            try:
                answer: object = [_outcome(r) for r in store.commit_prepared(preps, now_ns)]
            except Exception as e:  # the store failed as a whole: every batch of the group fails
                answer = _outcome(e)
            _send(out, answer)
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())

"""The ingest stage's streams: each agent's Ingest stream is read ahead by a reader thread (parse, validate,
build rows, queue to the group writer) while the stream's own thread acks each batch in order once its
transaction has committed, then hands its new events to the alert rules. All streams together hold at most
the byte budget of received batches until their acks (budget.py); the writes run in commit processes
(writer.py, commitproc.py)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Protocol

from google.protobuf.message import DecodeError

from unlinkwatch.codec import batch_events
from unlinkwatch.eventjson import OP_NAMES
from unlinkwatch.pb import events_pb2 as pb

from ..metrics import CollectorMetrics
from ..store import Store
from ..store.model import BatchResult, Prepared
from .batch import InvalidBatch, prepare
from .budget import DEFAULT_INFLIGHT_BYTES, ByteBudget, StreamHold
from .writer import CommitFn, GroupWriter

log = logging.getLogger("unlinkwatch.collector")
INGEST_WINDOW = 16  # batches of one stream read ahead (parsed, rows built, queued to commit) before their ack
PROTOCOL_ERRORS = (InvalidBatch, OverflowError, DecodeError)  # the stream is refused: INVALID_ARGUMENT
STORE_LOG_EVERY_S = 30.0  # while the store refuses batches, one log line at most this often


class StoreUnavailable(Exception):
    """The store could not take an agent's batch (a full disk, a database gone): the stream ends with UNAVAILABLE
    and the agent, which never had the ack, sends the batch again."""

    def __init__(self, agent: str, error: Exception) -> None:
        super().__init__(str(error) or type(error).__name__)
        self.agent = agent

_Pending = tuple[float, Prepared, "Future[BatchResult]", int] | BaseException | None


class AlertEvaluator(Protocol):
    """Where a committed batch's new events go (the alert engine)."""

    def evaluate(self, events: Sequence[pb.DeletionEvent], paths: Sequence[bytes] | None = None) -> None: ...


class IngestStreams:
    def __init__(self, store: Store, alerts: AlertEvaluator, metrics: CollectorMetrics,
                 commits: Sequence[CommitFn] = (), inflight_bytes: int = DEFAULT_INFLIGHT_BYTES,
                 policies: dict[str, pb.NodePolicy] | None = None) -> None:
        """`commits`: what runs the write transactions (CommitProcess children); the store itself by default.
        `inflight_bytes`: how much received batch data all streams together may hold before their acks.
        `policies`: where each agent's node policy, as its batches report it, is kept for `status`."""
        self._store, self._alerts, self._m = store, alerts, metrics
        self.policies = policies if policies is not None else {}
        self.budget = ByteBudget(inflight_bytes)
        metrics.ingest_inflight.set_function(lambda: self.budget.used)
        self._gaps: dict[str, int] = {}
        self._writer = GroupWriter(store, commits=commits)
        self._refusal_lock = threading.Lock()  # streams' threads refuse at once
        self._refusals = 0          # store refusals since the last line logged about them
        self._refusal_logged = 0.0  # when that line was logged (monotonic; 0: none since the store last took one)

    def close(self) -> None:
        """Commit what the streams have queued; call after the server stopped, before the store closes."""
        self._writer.close()

    def serve(self, requests: Iterator[bytes | pb.EventBatch], is_active: Callable[[], bool]) -> Iterator[pb.Ack]:
        """Acks of one stream, in order; raises one of PROTOCOL_ERRORS for a batch that breaks the protocol
        (nothing of it is stored), StoreUnavailable when the store cannot commit, or whatever ended the stream
        under us."""
        pending: queue.Queue[_Pending] = queue.Queue(INGEST_WINDOW)
        done = threading.Event()
        hold = StreamHold(self.budget)
        reader = threading.Thread(target=self._read, args=(requests, pending, done, is_active, hold),
                                  name="ingest-reader", daemon=True)
        reader.start()
        try:
            while True:
                try:
                    item = pending.get(timeout=0.5)
                except queue.Empty:
                    if is_active():
                        continue
                    return  # the agent went away and the reader stopped without a word
                if item is None:
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, DecodeError):
                        log.warning("rejected batch", extra={"fields": {"error": str(item)}})
                    if isinstance(item, StoreUnavailable):
                        self._refused(item.agent, item)
                    raise item
                t0, prepared, fut, size = item
                batch = prepared.batch
                try:
                    res = fut.result()
                except (InvalidBatch, OverflowError) as e:
                    log.warning("rejected batch", extra={"fields": {"agent": batch.agent, "error": str(e)}})
                    raise
                except Exception as e:  # the commit failed as a whole (writer.py): nothing of it is stored
                    refused = StoreUnavailable(batch.agent, e)
                    self._refused(batch.agent, refused)
                    raise refused from e
                if self._refusal_logged:
                    self._refusal_logged = 0.0
                    log.info("the store takes batches again")
                self._account(res.state.agent, res.state.node, res)
                if batch.HasField("policy"):
                    self.policies[batch.agent] = batch.policy
                if res.new_events:  # all new (the usual case): the rows' paths are the events' paths
                    self._alerts.evaluate(res.new_events, None if res.duplicates else prepared.paths())
                self._m.ingest_latency.observe(time.perf_counter() - t0)
                hold.give_back(size)
                yield pb.Ack(batch_id=batch.batch_id, stored=len(batch.events) - res.duplicates,
                             duplicates=res.duplicates)
        finally:
            done.set()
            hold.close()

    def _read(self, requests: Iterator[bytes | pb.EventBatch], pending: queue.Queue[_Pending],
              done: threading.Event, is_active: Callable[[], bool], hold: StreamHold) -> None:
        def gone() -> bool:  # the ack loop ended, or the agent went away
            return done.is_set() or not is_active()

        def put(item: _Pending) -> bool:
            while True:
                try:
                    pending.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    if gone():
                        return False

        try:
            for req in requests:
                t0 = time.perf_counter()
                size = len(req) if isinstance(req, bytes) else req.ByteSize()
                if not hold.take(size, gone):
                    return
                if isinstance(req, bytes):
                    batch = pb.EventBatch.FromString(req)
                    blobs = batch_events(req)
                else:
                    batch, blobs = req, None
                try:
                    prepared = prepare(self._store, batch, blobs)
                except (InvalidBatch, OverflowError) as e:
                    log.warning("rejected batch", extra={"fields": {"agent": batch.agent, "error": str(e)}})
                    put(e)
                    return
                except Exception as e:  # numbering a new agent or identity: the store's registry failed
                    put(StoreUnavailable(batch.agent, e))
                    return
                if not put((t0, prepared, self._writer.submit(prepared), size)):
                    return
        except BaseException as e:  # a bad message, a broken stream, or the RPC ended under us
            put(e)
            return
        put(None)

    def _refused(self, agent: str, e: StoreUnavailable) -> None:
        """A batch the store could not commit: counted; logged at once, then at most every STORE_LOG_EVERY_S with
        how many refusals came in between (hundreds of agents retry every few seconds)."""
        self._m.store_refusals.inc()
        with self._refusal_lock:
            self._refusals += 1
            now = time.monotonic()
            if self._refusal_logged and now - self._refusal_logged < STORE_LOG_EVERY_S:
                return
            refused, self._refusal_logged, self._refusals = self._refusals, now, 0
        log.error("the store cannot take batches; agents keep them and send them again", extra={"fields": {
            "error": str(e), "agent": agent, "refused": refused}})

    def _account(self, agent: str, node: str, res: BatchResult) -> None:
        m, st = self._m, res.state
        for (op, ok), n in res.counts.items():
            m.events.labels(OP_NAMES.get(pb.Op.ValueType(op), "unspecified"), "success" if ok else "failure").inc(n)
        if res.duplicates:
            m.duplicates.inc(res.duplicates)
        for stage, v in (("kernel", st.lost_kernel), ("queue", st.lost_queue), ("transport", st.lost_transport)):
            m.lost.labels(node, agent, stage).set(v)
        grew = st.gaps - self._gaps.get(agent, 0)
        if grew > 0:
            m.sequence_gaps.labels(node).inc(grew)
        self._gaps[agent] = max(st.gaps, self._gaps.get(agent, 0))

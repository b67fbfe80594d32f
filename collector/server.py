"""The collector's gRPC service: Ingest (batches in, acks out), Query, WatchAlerts, AgentStatus, health."""

from __future__ import annotations

import hmac
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from unlinkwatch.collector.budget import DEFAULT_INFLIGHT_BYTES, ByteBudget, StreamHold
from unlinkwatch.collector.ingest import InvalidBatch, agent_info, event_blobs
from unlinkwatch.collector.metrics import CollectorMetrics
from unlinkwatch.collector.store import (
    MAX_QUERY_LIMIT,
    BatchResult,
    Cursor,
    EventFilter,
    Prepared,
    Store,
)
from unlinkwatch.collector.writer import CommitFn, GroupWriter
from unlinkwatch.eventjson import OP_NAMES
from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.protowire import varint
from unlinkwatch.tlsconfig import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
    _Handler = grpc.GenericRpcHandler[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor
    _Handler = grpc.GenericRpcHandler

log = logging.getLogger("unlinkwatch.collector")
SERVICE = "unlinkwatch.v1.Collector"
TOKEN_METHODS = {f"/{SERVICE}/Query", f"/{SERVICE}/WatchAlerts", f"/{SERVICE}/AgentStatus"}
DEFAULT_QUERY_LIMIT = 1000
EVENTS_PER_RESPONSE = 1000
INGEST_WINDOW = 16  # batches of one stream read ahead (parsed, rows built, queued to commit) before their ack

_Pending = tuple[float, Prepared, "Future[BatchResult]", int] | BaseException | None


class AlertEvaluator(Protocol):
    def evaluate(self, events: Sequence[pb.DeletionEvent], paths: Sequence[bytes] | None = None) -> None: ...

    def watch(self, since_unix_ns: int, follow: bool, is_active: Callable[[], bool]) -> Iterator[pb.Alert]: ...


class CollectorService:
    def __init__(self, store: Store, alerts: AlertEvaluator, metrics: CollectorMetrics,
                 commits: Sequence[CommitFn] = (), inflight_bytes: int = DEFAULT_INFLIGHT_BYTES) -> None:
        """`commits`: what runs the write transactions (CommitProcess children); the store itself by default.
        `inflight_bytes`: how much received batch data all streams together may hold before their acks."""
        self._store, self._alerts, self._m = store, alerts, metrics
        self.budget = ByteBudget(inflight_bytes)
        metrics.ingest_inflight.set_function(lambda: self.budget.used)
        self._gaps: dict[str, int] = {}
        self._writer = GroupWriter(store, commits=commits)

    def close(self) -> None:
        """Commit what the streams have queued; call after the server stopped, before the store closes."""
        self._writer.close()

    def Ingest(self, request_iterator: Iterator[bytes | pb.EventBatch],
               context: grpc.ServicerContext) -> Iterator[pb.Ack]:
        """A reader thread parses, validates and builds rows for up to INGEST_WINDOW batches ahead and queues
        them to the group writer; this thread acks each batch in order once its transaction has committed,
        then hands its new events to the alert rules. Batches read ahead also count against the budget all
        streams share (collector/budget.py)."""
        pending: queue.Queue[_Pending] = queue.Queue(INGEST_WINDOW)
        done = threading.Event()
        hold = StreamHold(self.budget)
        reader = threading.Thread(target=self._read_stream, args=(request_iterator, pending, done, context, hold),
                                  name="ingest-reader", daemon=True)
        reader.start()
        try:
            while True:
                try:
                    item = pending.get(timeout=0.5)
                except queue.Empty:
                    if context.is_active():
                        continue
                    return  # the agent went away and the reader stopped without a word
                if item is None:
                    return
                if isinstance(item, BaseException):
                    self._reject(item, context)
                    raise item
                t0, prepared, fut, size = item
                batch = prepared.batch
                try:
                    res = fut.result()
                except (InvalidBatch, OverflowError) as e:
                    self._reject(e, context, batch.agent)
                    raise
                self._account(res.state.agent, res.state.node, res)
                if res.new_events:  # all new (the usual case): the rows' paths are the events' paths
                    self._alerts.evaluate(res.new_events, None if res.duplicates else prepared.paths())
                self._m.ingest_latency.observe(time.perf_counter() - t0)
                hold.give_back(size)
                yield pb.Ack(batch_id=batch.batch_id, stored=len(batch.events) - res.duplicates,
                             duplicates=res.duplicates)
        finally:
            done.set()
            hold.close()

    def _reject(self, e: BaseException, context: grpc.ServicerContext, agent: str = "") -> None:
        if isinstance(e, (InvalidBatch, OverflowError, DecodeError)):
            log.warning("rejected batch", extra={"fields": {"agent": agent, "error": str(e)}})
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad batch: {e}")

    def _read_stream(self, requests: Iterator[bytes | pb.EventBatch], pending: queue.Queue[_Pending],
                     done: threading.Event, context: grpc.ServicerContext, hold: StreamHold) -> None:
        def gone() -> bool:  # the ack loop ended, or the agent went away
            return done.is_set() or not context.is_active()

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
                    blobs = event_blobs(req)
                else:
                    batch, blobs = req, None
                try:
                    prepared = self._store.prepare(batch, blobs)
                except (InvalidBatch, OverflowError) as e:
                    log.warning("rejected batch", extra={"fields": {"agent": batch.agent, "error": str(e)}})
                    put(e)
                    return
                if not put((t0, prepared, self._writer.submit(prepared), size)):
                    return
        except BaseException as e:  # a bad message, a broken stream, or the RPC ended under us
            put(e)
            return
        put(None)

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

    def Query(self, request: pb.QueryRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Serialized QueryResponses built straight from the stored event bytes (no parse, no re-serialize):
        a QueryResponse is its events as length-delimited field 1, then the page token as field 2."""
        t0 = time.perf_counter()
        try:
            cursor = Cursor.parse(request.page_token)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        f = EventFilter.from_request(request)
        remaining = min(request.limit or DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT)
        first = True
        while True:
            n = min(remaining, EVENTS_PER_RESPONSE)
            blobs, cursor = self._store.query_raw(f, cursor, n)
            remaining -= len(blobs)
            done = cursor is None or remaining <= 0
            if first:
                self._m.query_latency.observe(time.perf_counter() - t0)
                first = False
            yield query_response(blobs, cursor.token() if cursor and done else "")
            if done or not context.is_active():
                return

    def WatchAlerts(self, request: pb.WatchAlertsRequest, context: grpc.ServicerContext) -> Iterator[pb.Alert]:
        yield from self._alerts.watch(request.since_unix_ns, request.follow, context.is_active)

    def AgentStatus(self, request: pb.AgentStatusRequest, context: grpc.ServicerContext) -> pb.AgentStatusResponse:
        return pb.AgentStatusResponse(agents=[agent_info(st) for st in self._store.agents()])


def query_response(blobs: Sequence[bytes], token: str) -> bytes:
    """The bytes of QueryResponse(events=blobs parsed, next_page_token=token), without any parse."""
    parts: list[bytes] = []
    append = parts.append
    for b in blobs:
        n = len(b)
        append(b"\x0a")
        append(varint(n))
        append(b)
    if token:
        t = token.encode()
        append(b"\x12")
        append(varint(len(t)))
        append(t)
    return b"".join(parts)


def _identity(b: bytes) -> bytes:
    return b


def service_handler(service: CollectorService) -> _Handler:
    """The Collector service as the generated code would register it, except that Ingest receives each batch
    as bytes (the stored event bytes are sliced out of them) and Query sends bytes it built itself."""
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Ingest": grpc.stream_stream_rpc_method_handler(
            service.Ingest, request_deserializer=None, response_serializer=pb.Ack.SerializeToString),
        "Query": grpc.unary_stream_rpc_method_handler(
            service.Query, request_deserializer=pb.QueryRequest.FromString, response_serializer=_identity),
        "WatchAlerts": grpc.unary_stream_rpc_method_handler(
            service.WatchAlerts, request_deserializer=pb.WatchAlertsRequest.FromString,
            response_serializer=pb.Alert.SerializeToString),
        "AgentStatus": grpc.unary_unary_rpc_method_handler(
            service.AgentStatus, request_deserializer=pb.AgentStatusRequest.FromString,
            response_serializer=pb.AgentStatusResponse.SerializeToString),
    })


class TokenInterceptor(_Interceptor):
    """Query-side methods need `authorization: Bearer <token>`; agents (Ingest) and health do not."""

    def __init__(self, token: str) -> None:
        self._want = f"Bearer {token}".encode()

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        if details.method in TOKEN_METHODS:
            got = dict(details.invocation_metadata).get("authorization", "")
            got_b = got.encode() if isinstance(got, str) else got
            if not hmac.compare_digest(got_b, self._want):
                return self._deny_unary if details.method.endswith("/AgentStatus") else self._deny_stream
        return continuation(details)


def build_server(listen: str, service: CollectorService, creds: grpc.ServerCredentials | None,
                 token: str | None, max_workers: int = 256) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A started-ready (not yet started) server and its bound port; raises OSError when the address is taken."""
    interceptors: list[_Interceptor] = [TokenInterceptor(token)] if token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
                         interceptors=interceptors,
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                  ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                  ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((service_handler(service),))
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    port = server.add_secure_port(listen, creds) if creds else server.add_insecure_port(listen)
    if not port:
        raise OSError(f"cannot listen on {listen}")
    for name in ("", SERVICE):
        hs.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, hs

"""The collector's gRPC service: Ingest (batches in, acks out), Query, WatchAlerts, AgentStatus, health."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from unlinkwatch.collector.ingest import InvalidBatch, agent_info, validate_batch
from unlinkwatch.collector.metrics import CollectorMetrics
from unlinkwatch.collector.store import MAX_QUERY_LIMIT, BatchResult, Cursor, EventFilter, Store
from unlinkwatch.eventjson import OP_NAMES
from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.pb import events_pb2_grpc as pbg
from unlinkwatch.tlsconfig import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor

log = logging.getLogger("unlinkwatch.collector")
SERVICE = "unlinkwatch.v1.Collector"
TOKEN_METHODS = {f"/{SERVICE}/Query", f"/{SERVICE}/WatchAlerts", f"/{SERVICE}/AgentStatus"}
DEFAULT_QUERY_LIMIT = 1000
EVENTS_PER_RESPONSE = 500


class AlertEvaluator(Protocol):
    def evaluate(self, events: Sequence[pb.DeletionEvent]) -> None: ...

    def watch(self, since_unix_ns: int, follow: bool, is_active: Callable[[], bool]) -> Iterator[pb.Alert]: ...


class CollectorService(pbg.CollectorServicer):
    def __init__(self, store: Store, alerts: AlertEvaluator, metrics: CollectorMetrics) -> None:
        self._store, self._alerts, self._m = store, alerts, metrics
        self._gaps: dict[str, int] = {}

    def Ingest(self, request_iterator: Iterator[pb.EventBatch], context: grpc.ServicerContext) -> Iterator[pb.Ack]:
        for batch in request_iterator:
            t0 = time.perf_counter()
            try:
                validate_batch(batch)
                res = self._store.commit_batch(batch, time.time_ns())
            except (InvalidBatch, OverflowError) as e:
                log.warning("rejected batch", extra={"fields": {"agent": batch.agent, "error": str(e)}})
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad batch: {e}")
            self._account(res.state.agent, res.state.node, res)
            if res.new_events:
                self._alerts.evaluate(res.new_events)
            self._m.ingest_latency.observe(time.perf_counter() - t0)
            yield pb.Ack(batch_id=batch.batch_id, stored=len(batch.events) - res.duplicates, duplicates=res.duplicates)

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

    def Query(self, request: pb.QueryRequest, context: grpc.ServicerContext) -> Iterator[pb.QueryResponse]:
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
            events, cursor = self._store.query(f, cursor, n)
            remaining -= len(events)
            done = cursor is None or remaining <= 0
            if first:
                self._m.query_latency.observe(time.perf_counter() - t0)
                first = False
            yield pb.QueryResponse(events=events, next_page_token=cursor.token() if cursor and done else "")
            if done or not context.is_active():
                return

    def WatchAlerts(self, request: pb.WatchAlertsRequest, context: grpc.ServicerContext) -> Iterator[pb.Alert]:
        yield from self._alerts.watch(request.since_unix_ns, request.follow, context.is_active)

    def AgentStatus(self, request: pb.AgentStatusRequest, context: grpc.ServicerContext) -> pb.AgentStatusResponse:
        return pb.AgentStatusResponse(agents=[agent_info(st) for st in self._store.agents()])


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
    pbg.add_CollectorServicer_to_server(service, server)
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    port = server.add_secure_port(listen, creds) if creds else server.add_insecure_port(listen)
    if not port:
        raise OSError(f"cannot listen on {listen}")
    for name in ("", SERVICE):
        hs.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, hs

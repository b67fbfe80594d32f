"""The collector's gRPC adapter: the Collector service (Ingest, Query, WatchAlerts, AgentStatus) wired to its
stages, the bearer-token check for query clients, and health."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.tlsconfig import MAX_MESSAGE_BYTES

from .ingest.budget import DEFAULT_INFLIGHT_BYTES
from .ingest.stream import PROTOCOL_ERRORS, IngestStreams, StoreUnavailable
from .ingest.writer import CommitFn
from .metrics import CollectorMetrics
from .query import QueryService
from .store import Store

if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
    _Handler = grpc.GenericRpcHandler[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor
    _Handler = grpc.GenericRpcHandler

SERVICE = "unlinkwatch.v1.Collector"
TOKEN_METHODS = {f"/{SERVICE}/Query", f"/{SERVICE}/WatchAlerts", f"/{SERVICE}/AgentStatus"}


class AlertSource(Protocol):
    def evaluate(self, events: Sequence[pb.DeletionEvent], paths: Sequence[bytes] | None = None) -> None: ...

    def watch(self, since_unix_ns: int, follow: bool, is_active: Callable[[], bool]) -> Iterator[pb.Alert]: ...


class CollectorService:
    """The gRPC methods, each handed to its stage: Ingest to ingest, Query and AgentStatus to query,
    WatchAlerts to the alert engine. Protocol errors become INVALID_ARGUMENT here and nowhere else."""

    def __init__(self, store: Store, alerts: AlertSource, metrics: CollectorMetrics,
                 commits: Sequence[CommitFn] = (), inflight_bytes: int = DEFAULT_INFLIGHT_BYTES) -> None:
        """`commits`: what runs the write transactions (CommitProcess children); the store itself by default.
        `inflight_bytes`: how much received batch data all streams together may hold before their acks."""
        self._alerts = alerts
        policies: dict[str, pb.NodePolicy] = {}  # agent -> its node policy, as its last batch said (not stored)
        self.ingest = IngestStreams(store, alerts, metrics, commits, inflight_bytes, policies)
        self.query = QueryService(store, metrics, policies)

    def close(self) -> None:
        """Commit what the streams have queued; call after the server stopped, before the store closes."""
        self.ingest.close()

    def Ingest(self, request_iterator: Iterator[bytes | pb.EventBatch],
               context: grpc.ServicerContext) -> Iterator[pb.Ack]:
        try:
            yield from self.ingest.serve(request_iterator, context.is_active)
        except PROTOCOL_ERRORS as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad batch: {e}")
        except StoreUnavailable as e:  # the agent keeps the batch and sends it again after its backoff
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the store cannot take batches now: {e}")

    def Query(self, request: pb.QueryRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        try:
            yield from self.query.events(request, context.is_active)
        except ValueError as e:  # a bad page token
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    def WatchAlerts(self, request: pb.WatchAlertsRequest, context: grpc.ServicerContext) -> Iterator[pb.Alert]:
        yield from self._alerts.watch(request.since_unix_ns, request.follow, context.is_active)

    def AgentStatus(self, request: pb.AgentStatusRequest, context: grpc.ServicerContext) -> pb.AgentStatusResponse:
        return self.query.status()


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

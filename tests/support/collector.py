"""A real collector for tests: in-process (gRPC on loopback, real store) or as a subprocess to SIGKILL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from unlinkwatch.collector.ingest.budget import DEFAULT_INFLIGHT_BYTES
from unlinkwatch.collector.metrics import CollectorMetrics
from unlinkwatch.collector.server import CollectorService, build_server
from unlinkwatch.collector.store import Store, open_store

from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.runstate import die_with_parent

ROOT = Path(__file__).resolve().parents[2]


class RecordingAlerts:
    """Stands in for the alert engine's evaluate/watch: keeps what it was handed, to check exactly-once."""

    def __init__(self) -> None:
        self.evaluated: list[pb.DeletionEvent] = []
        self._lock = threading.Lock()

    def evaluate(self, events: Sequence[pb.DeletionEvent], paths: Sequence[bytes] | None = None) -> None:
        assert paths is None or paths == [ev.path for ev in events]
        with self._lock:
            self.evaluated.extend(events)

    def watch(self, since_unix_ns: int, follow: bool, is_active: Callable[[], bool]) -> Iterator[pb.Alert]:
        return iter(())


@dataclass
class InProcessCollector:
    store: Store
    server: grpc.Server
    port: int
    alerts: RecordingAlerts
    metrics: CollectorMetrics
    service: CollectorService
    addr: str = field(init=False)

    def __post_init__(self) -> None:
        self.addr = f"127.0.0.1:{self.port}"

    def close(self, close_store: bool = True) -> None:
        self.server.stop(grace=1).wait(5)
        if close_store:
            self.store.close()


def start_inprocess(db: str | Store, token: str | None = None, creds: grpc.ServerCredentials | None = None,
                    port: int = 0, inflight_bytes: int | None = None) -> InProcessCollector:
    store = open_store(db) if isinstance(db, str) else db
    metrics, alerts = CollectorMetrics(), RecordingAlerts()
    service = CollectorService(store, alerts, metrics, inflight_bytes=inflight_bytes or DEFAULT_INFLIGHT_BYTES)
    server, bound, _ = build_server(f"127.0.0.1:{port}", service, creds, token)
    server.start()
    return InProcessCollector(store, server, bound, alerts, metrics, service)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(addr: str, timeout: float = 20.0, creds: grpc.ChannelCredentials | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ch = grpc.secure_channel(addr, creds) if creds else grpc.insecure_channel(addr)
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
        finally:
            ch.close()
        time.sleep(0.05)


def start_subprocess(db: str, port: int, *extra: str, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """`unlinkwatch collector` as its own process (so it can be killed with SIGKILL), ready when it returns."""
    cmd = [sys.executable, "-m", "unlinkwatch.cli", "--log-level", "warning", "collector",
           "--listen", f"127.0.0.1:{port}", "--db", db, *extra]
    err = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=die_with_parent)
    try:
        wait_serving(f"127.0.0.1:{port}")
    except grpc.RpcError:
        proc.kill()
        raise
    return proc

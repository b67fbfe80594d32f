"""`unlinkwatch collector`: wires store, alert engine, gRPC service, metrics endpoint and retention."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from unlinkwatch.errors import UserError
from unlinkwatch.observability import serve_http, split_addr
from unlinkwatch.timeparse import parse_duration_ns
from unlinkwatch.tlsconfig import server_credentials

from .ingest.commitproc import CommitProcess
from .metrics import CollectorMetrics
from .retention import Retention
from .server import CollectorService, build_server
from .store import DEFAULT_DB, open_store

log = logging.getLogger("unlinkwatch.collector")


def run(args: argparse.Namespace) -> int:
    for flag, addr in (("--listen", args.listen), ("--metrics-addr", args.metrics_addr)):
        if addr:  # before any work: a typo is one line, not a server on another port
            try:
                split_addr(addr)
            except ValueError as e:
                raise UserError(f"{flag}: {e}") from None
    keep_ns = None
    if args.retention:
        try:
            keep_ns = parse_duration_ns(args.retention)
        except ValueError as e:
            raise UserError(f"--retention: {e}") from None
    creds = server_credentials(args.tls_cert, args.tls_key, args.tls_ca)
    # Imported here: the alert engine is its own stage and module, and `--help` should not load it.
    from .alerts import AlertEngine
    from .sinks import build_sinks

    metrics = CollectorMetrics()
    store = open_store(args.db)
    engine = AlertEngine(args.rules, build_sinks(args.alertmanager, args.webhook, metrics), metrics, store)
    stop = threading.Event()
    closers: list[Callable[[], object]] = [store.close]
    try:
        engine.start()
        closers.insert(0, engine.close)
        url = args.db or DEFAULT_DB
        committers = [CommitProcess(url) for _ in range(1 if url.startswith("sqlite") else 2)]
        closers[:0] = [c.close for c in committers]
        service = CollectorService(store, engine, metrics, commits=[c.commit_prepared for c in committers])
        closers.insert(0, service.close)  # after the server stopped: commits what streams had queued
        try:
            server, port, health = build_server(args.listen, service, creds, args.token)
        except (OSError, RuntimeError) as e:
            raise UserError(f"--listen: cannot listen on {args.listen}: {e}") from None
        server.start()
        closers.insert(0, lambda: server.stop(grace=5).wait(10))
        if args.metrics_addr:
            try:
                http = serve_http(args.metrics_addr, metrics.registry, lambda: not stop.is_set())
            except (OSError, ValueError) as e:
                raise UserError(f"--metrics-addr: {e}") from None
            closers.insert(0, http.close)
        if keep_ns:
            retention = Retention(store, keep_ns)
            retention.start()
            closers.insert(0, retention.close)
        host = args.listen.rpartition(":")[0]
        log.info(f"collector listening on {host}:{port}",
                 extra={"fields": {"port": port, "db": args.db or "sqlite:///unlinkwatch.db", "tls": bool(creds),
                                   "mtls": bool(args.tls_ca), "token": bool(args.token)}})

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        while not stop.wait(1.0):
            pass
        health.enter_graceful_shutdown()
        log.info("collector stopping")
    finally:
        for close in closers:
            try:
                close()
            except Exception:
                log.exception("error while stopping")
    return 0

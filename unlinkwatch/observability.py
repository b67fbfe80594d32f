"""HTTP endpoints for operators: Prometheus /metrics, liveness /healthz, readiness /readyz."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def split_addr(addr: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """`host:port`, `:port`, `[v6]:port` -> (host, port); ValueError when the port is not a number from 0 to
    65535."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not an address (host:port): {addr!r}")
    if int(port) > 65535:
        raise ValueError(f"port {port} is out of range (0-65535): {addr!r}")
    host = host.strip("[]") or default_host
    return host, int(port)


class HttpHandle:
    """A running endpoint server; `.port` is the bound port (useful with port 0)."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self.port: int = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="http-observability", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_http(addr: str, registry: CollectorRegistry, ready: Callable[[], bool]) -> HttpHandle:
    host, port = split_addr(addr)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n")
            elif path == "/readyz":
                ok = _safe(ready)
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would flood the JSON log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return HttpHandle(server)


def _safe(ready: Callable[[], bool]) -> bool:
    try:
        return bool(ready())
    except Exception:
        return False

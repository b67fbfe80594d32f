"""A real Alertmanager on loopback for alert delivery tests, plus a small HTTP receiver for webhooks."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from unlinkwatch import runstate

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
CONFIG = """route:
  receiver: "null"
  group_wait: 1s
receivers:
  - name: "null"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    return shutil.which(ALERTMANAGER) is not None


@contextmanager
def alertmanager() -> Iterator[str]:
    """Start Alertmanager (no clustering, temp storage) and yield its base URL once it is ready."""
    tmpdir, rec = runstate.temp_dir("uw-am-")
    tmp = str(tmpdir)
    with contextlib.ExitStack() as stack:
        stack.callback(rec.done)
        stack.callback(shutil.rmtree, tmp, True)
        am_log = stack.enter_context(open(Path(tmp) / "am.log", "wb"))
        cfg = Path(tmp) / "alertmanager.yml"
        cfg.write_text(CONFIG)
        port = free_port()
        proc = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={cfg}", f"--storage.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=am_log, preexec_fn=runstate.die_with_parent)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with urllib.request.urlopen(url + "/-/ready", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("alertmanager did not start: " + (Path(tmp) / "am.log").read_text()[-2000:])
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def am_url() -> Iterator[str]:
    """A real Alertmanager on loopback for the tests of one module."""
    if not available():
        pytest.skip("prometheus-alertmanager is not installed (make setup installs it)")
    with alertmanager() as url:
        yield url


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def wait_for(predicate: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)


class Receiver:
    """An HTTP server on loopback that answers the first `fail_first` POSTs with `fail_status`, then 200,
    and keeps every body it accepted."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.attempts = 0
        self.bodies: list[Any] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.attempts += 1
                    fail = receiver.attempts <= receiver.fail_first
                    if not fail:
                        receiver.bodies.append(json.loads(data))
                self.send_response(receiver.fail_status if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

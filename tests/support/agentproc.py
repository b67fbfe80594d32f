"""Runs the real agent (`unlinkwatch agent --stdout`) as a subprocess and collects its JSON lines."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from unlinkwatch.runstate import die_with_parent

Event = dict[str, Any]
# compile + attach + self-test: about 2 s here, 35-150 s in the kernel lab, where two emulated machines share
# the host (tests/vm sets it)
ATTACH_TIMEOUT_S = float(os.environ.get("UNLINKWATCH_TEST_ATTACH_TIMEOUT", "120"))


def unlinkwatch_cmd() -> list[str]:
    return [sys.executable, "-m", "unlinkwatch.cli"]


class AgentProcess:
    def __init__(self, *extra: str, attach: str | None = None, metrics_port: int | None = None,
                 env: dict[str, str] | None = None, stdout: IO[str] | None = None) -> None:
        """`stdout`: a file for the lines instead of the pipe this reads them from (self.events stays empty)."""
        self.attach = attach or os.environ.get("UNLINKWATCH_TEST_ATTACH", "auto")
        self.metrics_port = metrics_port
        args = [*unlinkwatch_cmd(), "agent", "--stdout", "--attach", self.attach, *extra]
        if "--kube" not in extra:
            args += ["--kube", "off"]
        if metrics_port:
            args += ["--metrics-addr", f"127.0.0.1:{metrics_port}"]
        self.events: list[Event] = []
        self.info: dict[str, Any] = {}  # the "attached" log line
        self.log: list[str] = []
        self._cv = threading.Condition()
        self.proc = subprocess.Popen(args, stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, **(env or {})}, text=True, errors="replace",
                                     preexec_fn=die_with_parent)
        self._threads = [threading.Thread(target=self._read_log, daemon=True)]
        if stdout is None:
            self._threads.append(threading.Thread(target=self._read_events, daemon=True))
        for t in self._threads:
            t.start()

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cv:
                self.events.append(json.loads(line))
                self._cv.notify_all()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cv:
                self.log.append(line.rstrip("\n"))
                self._cv.notify_all()

    def wait_attached(self, timeout: float | None = None) -> dict[str, Any]:
        """Waits for the "attached" log line (compile + attach + self-test): ATTACH_TIMEOUT_S unless told."""
        deadline = time.monotonic() + (ATTACH_TIMEOUT_S if timeout is None else timeout)
        with self._cv:
            while time.monotonic() < deadline:
                for line in self.log:
                    if '"msg": "attached"' in line:
                        return dict(json.loads(line))
                if self.proc.poll() is not None:
                    break
                self._cv.wait(0.2)
        raise AssertionError(f"agent did not attach (rc={self.proc.poll()}):\n" + "\n".join(self.log[-20:]))

    def wait_for(self, pred: Callable[[Event], bool], count: int = 1, timeout: float = 30.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                found = [e for e in self.events if pred(e)]
                if len(found) >= count or time.monotonic() >= deadline:
                    return found
                self._cv.wait(0.1)

    def quiet_for(self, pred: Callable[[Event], bool], seconds: float = 1.0) -> list[Event]:
        time.sleep(seconds)
        with self._cv:
            return [e for e in self.events if pred(e)]

    def metric(self, name: str) -> float:
        assert self.metrics_port
        return scrape(self.metrics_port, name)

    def wait_metric(self, name: str, at_least: float, timeout: float = 30.0) -> float:
        """Polls /metrics until `name` (summed over its labels) reaches `at_least`."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.metric(name)
            if value >= at_least:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} stayed at {value} (< {at_least}) for {timeout:.0f} s")
            time.sleep(0.1)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` (noted in self.log). Stopping takes about a second, under
        the 6.1 kernel lab's emulated CPUs too, where detaching kprobes waits for RCU grace periods; once in
        a CI run it took over 15 s there, hence the wide margin."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.log.append(f"(test: the agent did not stop within {timeout:.0f} s of SIGTERM; killed)")
        for t in self._threads:
            t.join(5)
        return self.proc.returncode


@contextmanager
def attached_agent(*extra: str) -> Iterator[AgentProcess]:
    """An agent with a metrics port, attached in the mode the run asks for (UNLINKWATCH_TEST_ATTACH; the kernel
    lab sets it), stopped when the block ends."""
    a = AgentProcess(*extra, metrics_port=free_port())
    try:
        a.info = a.wait_attached()
        expected = os.environ.get("UNLINKWATCH_TEST_ATTACH")
        if expected and expected != "auto":
            assert a.info["mode"] == expected
        yield a
    finally:
        a.stop()


def scrape(port: int, name: str) -> float:
    """A metric from the /metrics endpoint on 127.0.0.1:`port` (an agent's or a collector's): `name` exactly, or
    `name{...}` summed over its labels when it names none."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in body.splitlines():
        key, _, value = line.rpartition(" ")
        if not line.startswith("#") and (key == name or ("{" not in name and key.startswith(name + "{"))):
            total += float(value)
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_deleter(code: str, cwd: Path | str | None = None) -> int:
    """Runs Python code in a child process; returns its pid (events are matched by it)."""
    p = subprocess.run([sys.executable, "-c", "import os,sys\n" + code + "\nprint(os.getpid())"],
                       cwd=cwd, capture_output=True, text=True, check=True)
    return int(p.stdout.strip().splitlines()[-1])


def by_pid(pid: int) -> Callable[[Event], bool]:
    return lambda e: e["pid"] == pid


def paths(events: list[Event]) -> Iterator[str]:
    return (e["path"] for e in events)


@contextmanager
def agent_with_objects(cache: Path) -> Iterator[AgentProcess]:
    """An attached agent that keeps its compiled objects in `cache` (UNLINKWATCH_OBJECT_CACHE), stopped after."""
    a = AgentProcess(env={"UNLINKWATCH_OBJECT_CACHE": str(cache)})
    try:
        a.info = a.wait_attached()
        yield a
    finally:
        a.stop()

"""The agent's and the collector's flags are checked before any work (the agent's before its probes load): a
mistake is one line on stderr, exit 2, at once."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.agentproc import unlinkwatch_cmd


@pytest.mark.parametrize(("flags", "problem"), [
    (["--stdout", "--metrics-addr", "bad"], "--metrics-addr: not an address (host:port): 'bad'"),
    (["--stdout", "--metrics-addr", ":65536"], "--metrics-addr: port 65536 is out of range (0-65535): ':65536'"),
    (["--stdout", "--ringbuf-mb", "3"], "--ringbuf-mb: 3 is not a power of two from 1 to 1024"),
    (["--stdout", "--ringbuf-mb", "0"], "--ringbuf-mb: 0 is not a power of two from 1 to 1024"),
    (["--stdout", "--ringbuf-mb", "2048"], "--ringbuf-mb: 2048 is not a power of two from 1 to 1024"),
    (["--collector", "127.0.0.1:1", "--spool-max-mb", "0"], "--spool-max-mb: 0 is not a size in MB (1 or more)"),
    (["--collector", "127.0.0.1:1", "--spool", "/proc/no-such-dir"], "--spool: cannot use /proc/no-such-dir"),
])
def test_a_bad_flag_is_one_line_and_exit_2_before_any_probe_loads(flags: list[str], problem: str) -> None:
    t0 = time.monotonic()
    p = subprocess.run([*unlinkwatch_cmd(), "agent", "--kube", "off", *flags], capture_output=True, text=True,
                       timeout=60)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and p.stdout == "" and len(lines) == 1, p.stderr
    assert lines[0].startswith(f"unlinkwatch agent: {problem}")
    assert time.monotonic() - t0 < 10  # an attach takes 3 s or more, a compile longer



@pytest.mark.parametrize(("flags", "problem"), [
    (["--listen", "127.0.0.1:99999"], "--listen: port 99999 is out of range (0-65535): '127.0.0.1:99999'"),
    (["--listen", "localhost"], "--listen: not an address (host:port): 'localhost'"),
    (["--metrics-addr", "bad"], "--metrics-addr: not an address (host:port): 'bad'"),
    (["--retention", "soon"], "--retention: not a duration: 'soon'"),
])
def test_a_bad_collector_flag_is_one_line_and_exit_2_before_any_work(flags: list[str], problem: str,
                                                                      tmp_path: Path) -> None:
    p = subprocess.run([*unlinkwatch_cmd(), "collector", "--db", f"sqlite:///{tmp_path}/c.db", *flags],
                       capture_output=True, text=True, timeout=60)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith(f"unlinkwatch collector: {problem}") and not (tmp_path / "c.db").exists()


def test_a_taken_metrics_port_is_one_line_and_exit_2_before_any_probe_loads() -> None:
    t0 = time.monotonic()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = subprocess.run([*unlinkwatch_cmd(), "agent", "--stdout", "--kube", "off", "--metrics-addr",
                            f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"unlinkwatch agent: --metrics-addr: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert time.monotonic() - t0 < 10

"""Many laps of a small ring buffer lose nothing: the positions shared with the kernel are read and written
whole. (Read or written a byte at a time, a position caught mid-update near a 16 MiB boundary made the
kernel refuse reservations as if the ring were full: ~10 drops per 500 K deletions.)"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import require_root
from tests.support.agentproc import unlinkwatch_cmd

DELETIONS = 400_000  # ~70 MiB of records: four 16 MiB boundaries, eighteen laps of a 4 MiB ring
DELETER = """
import os, sys, time
d = os.open(sys.argv[1], os.O_RDONLY)
n = int(sys.argv[2])
for i in range(n):
    os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=d))
t0 = time.monotonic()
for i in range(n):
    os.unlink(f"f{i}", dir_fd=d)
    if i % 1000 == 999:  # about 50 K/s: the agent keeps up, so a drop can only be a refused reservation
        ahead = t0 + (i + 1) / 50_000 - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
"""


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def test_eighteen_laps_of_a_4_mib_ring_lose_no_record(tmp_path: Path) -> None:
    require_root()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    agent = subprocess.Popen([*unlinkwatch_cmd(), "agent", "--stdout", "--kube", "off", "--ringbuf-mb", "4",
                              "--attach", os.environ.get("UNLINKWATCH_TEST_ATTACH", "auto"),
                              "--metrics-addr", f"127.0.0.1:{port}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    work = tmp_path / "laps"
    work.mkdir()
    try:
        assert agent.stderr is not None
        for line in agent.stderr:
            if '"attached"' in line:
                break
        else:
            raise AssertionError(f"agent exited before attaching: {agent.wait()}")
        subprocess.run([sys.executable, "-c", DELETER, str(work), str(DELETIONS)], check=True)
        deadline = time.monotonic() + 30
        seen = 0.0
        while time.monotonic() < deadline:
            seen = _metric(port, 'unlinkwatch_agent_events_total{op="unlink",result="success"}')
            if seen >= DELETIONS:
                break
            time.sleep(0.2)
        assert _metric(port, 'unlinkwatch_agent_events_lost_total{stage="kernel"}') == 0
        assert seen >= DELETIONS
    finally:
        agent.terminate()
        agent.wait(15)
        shutil.rmtree(work, ignore_errors=True)

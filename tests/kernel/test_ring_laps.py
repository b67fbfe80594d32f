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
from unlinkwatch import runstate

DELETIONS = 400_000  # ~70 MiB of records: four 16 MiB boundaries, nine laps of an 8 MiB ring (10 K steps)
DELETER = """
import os, sys, time, urllib.request
d = os.open(sys.argv[1], os.O_RDONLY)
n, port = int(sys.argv[2]), int(sys.argv[3])
name = 'unlinkwatch_agent_events_total{op="unlink",result="success"} '
def seen():
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines() if l.startswith(name))
base = seen()
t0 = time.monotonic()
for start in range(0, n, 10_000):  # 10 K files at a time: the kernel lab's small /tmp runs out of inodes
    for i in range(start, start + 10_000):
        os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=d))
    for i in range(start, start + 10_000):
        os.unlink(f"f{i}", dir_fd=d)
        if i % 4000 == 3999:
            # Never more than ~20 K records (~3.6 MiB) unread in the 8 MiB ring, however slow the machine (the
            # kernel lab's emulated CPUs), and at most ~50 K/s: a drop can only be a refused reservation.
            # (Each look at the agent's metrics is slow while it is busy, so it looks every 4 K.)
            while i + 1 - (seen() - base) > 16_000:
                time.sleep(0.05)
            ahead = t0 + (i + 1) / 50_000 - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
"""


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0  # a labelled counter appears with its first increment


def test_nine_laps_of_an_8_mib_ring_lose_no_record(tmp_path: Path) -> None:
    require_root()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    work = tmp_path / "laps"
    work.mkdir()
    # a private tmpfs: the deletions' speed must not depend on the host's disk (recorded for make clean-host)
    mount = runstate.record("mount", path=str(work))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=65536", "unlinkwatch-laps", str(work)],
                   check=True)
    agent: subprocess.Popen[str] | None = None
    try:
        agent = subprocess.Popen([*unlinkwatch_cmd(), "agent", "--stdout", "--kube", "off", "--ringbuf-mb", "8",
                                  "--attach", os.environ.get("UNLINKWATCH_TEST_ATTACH", "auto"),
                                  "--metrics-addr", f"127.0.0.1:{port}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=runstate.die_with_parent)
        assert agent.stderr is not None
        for line in agent.stderr:
            if '"attached"' in line:
                break
        else:
            raise AssertionError(f"agent exited before attaching: {agent.wait()}")
        deadline = time.monotonic() + 10
        while True:  # the metrics endpoint is up before the "attached" line; kept as a guard
            try:
                _metric(port, "unlinkwatch_agent_events_lost_total")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        before = _metric(port, 'unlinkwatch_agent_events_total{op="unlink",result="success"}')
        subprocess.run([sys.executable, "-c", DELETER, str(work), str(DELETIONS), str(port)], check=True)
        deadline = time.monotonic() + 60
        seen = 0.0
        while time.monotonic() < deadline:
            seen = _metric(port, 'unlinkwatch_agent_events_total{op="unlink",result="success"}') - before
            if seen >= DELETIONS:
                break
            time.sleep(0.2)
        assert _metric(port, 'unlinkwatch_agent_events_lost_total{stage="kernel"}') == 0
        assert seen >= DELETIONS
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        subprocess.run(["umount", str(work)], check=False)
        shutil.rmtree(work, ignore_errors=True)
        mount.done()

"""Where the agent's lines go: `--stdout` into a file whose disk fills (a real tmpfs) loses the lines it
refuses, counted, and the agent goes on recording; once the disk has room, lines arrive again."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from bench import workload
from tests.conftest import require_root
from tests.support.agentproc import AgentProcess, free_port, run_deleter


def _delete_files(d: Path, n: int) -> int:
    return run_deleter(f"""
for i in range({n}):
    p = os.path.join({str(d)!r}, f"f{{i}}")
    open(p, "w").close()
    os.unlink(p)
""")


def test_an_agent_whose_stdout_disk_fills_counts_the_lost_lines_and_keeps_recording(work: Path) -> None:
    require_root()
    with workload.tmpfs_mount(max_files=10, size="64k") as disk, open(disk / "events.jsonl", "w") as out:
        a = AgentProcess(metrics_port=free_port(), stdout=out)
        try:
            a.info = a.wait_attached()
            _delete_files(work, 500)  # lines of about 1 KB: several times the disk
            a.wait_metric("unlinkwatch_agent_stdout_lines_lost_total", 1)
            # every one of the 500 through the loop (counted as read just before its batch is written), and the
            # loss count settled, before the disk grows: a batch still in flight would be lost after the remount
            a.wait_metric("unlinkwatch_agent_events_total", 500)
            lost = -1.0
            while (now := a.metric("unlinkwatch_agent_stdout_lines_lost_total")) != lost:
                lost = now
                time.sleep(0.5)
            assert a.proc.poll() is None and lost >= 1
            subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
            pid = _delete_files(work, 3)
            deadline = time.monotonic() + 30
            while (disk / "events.jsonl").read_bytes().count(b'"pid": %d,' % pid) < 3:
                assert time.monotonic() < deadline and a.proc.poll() is None, "\n".join(a.log[-20:])
                time.sleep(0.1)
            assert a.metric("unlinkwatch_agent_stdout_lines_lost_total") == lost  # nothing lost once there was room
            assert sum("--stdout: lines not written" in line for line in a.log) == 1
        finally:
            a.stop()


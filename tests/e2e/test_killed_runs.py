"""A run killed with SIGKILL to its whole process group (a time limit, the OOM killer, a closed terminal)
leaves nothing running, and `make clean-host` removes everything else it made: the bench with auditd
and the agent, a PostgreSQL-backed test, and the demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_root
from tests.support.leaks import bpf_owners
from unlinkwatch import runstate

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def _session_pids(sid: int) -> list[int]:
    """Live processes of the killed run's session (its children stay in it; none calls setsid)."""
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def _wait(cond: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


def _kill_and_clean(proc: subprocess.Popen[bytes]) -> str:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10  # the kernel delivers the parent-death signals
    while _session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _session_pids(proc.pid) == [], "processes of the killed run still run"
    out = subprocess.run(["make", "-s", "clean-host"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=runstate.die_with_parent)


def _mine(pid: int) -> list[dict[str, object]]:
    return [f for _, f in runstate.records() if f["owner"] == pid]



def test_a_bench_killed_while_auditd_records_leaves_no_process_rule_mount_loop_or_sysctl(tmp_path: Path) -> None:
    require_root()
    if subprocess.run(["auditctl", "-s"], capture_output=True).returncode != 0:
        pytest.skip("the kernel's audit subsystem does not answer (auditctl -s)")
    stats_before, bpf_before = BPF_STATS.read_text().strip(), bpf_owners()
    rules_before = subprocess.run(["auditctl", "-l"], capture_output=True, text=True).stdout
    log = tmp_path / "bench.log"
    bench = _start([sys.executable, "-m", "bench", "--quick", "--only", "overhead", "--fs", "ext4",
                    "--configs", "auditd,tracepoint", "-n", "100000", "--rounds", "1", "--out", str(tmp_path)], log)

    def auditd_recording() -> bool:  # the last pass: bpf_stats on, auditd's rule in the kernel
        rules = subprocess.run(["auditctl", "-l"], capture_output=True, text=True).stdout
        return BPF_STATS.read_text().strip() == "1" and "uwbench" in rules

    _wait(auditd_recording, 300, "the bench's auditd pass", log)
    made = _mine(bench.pid)
    assert {f["kind"] for f in made} >= {"audit-rule", "sysctl", "loop", "dir"}, made
    out = _kill_and_clean(bench)
    assert "uwbench" not in subprocess.run(["auditctl", "-l"], capture_output=True, text=True).stdout, out
    assert subprocess.run(["auditctl", "-l"], capture_output=True, text=True).stdout == rules_before
    assert BPF_STATS.read_text().strip() == stats_before
    assert "uwbench" not in Path("/proc/self/mountinfo").read_text()
    assert "uwbench" not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert bpf_owners() <= bpf_before
    assert _mine(bench.pid) == []
    assert not any(Path(str(f["path"])).exists() for f in made if f["kind"] == "dir")


def test_a_killed_run_with_a_postgresql_cluster_leaves_no_server_and_no_data_dir(tmp_path: Path) -> None:
    require_root()
    log = tmp_path / "pg.log"
    code = ("import sys, time\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from tests.support.postgres import PostgresCluster\n"
            "c = PostgresCluster()\nprint('ready', c.dir, flush=True)\ntime.sleep(300)\n")
    run = _start([sys.executable, "-c", code], log)
    _wait(lambda: "ready" in log.read_text(), 120, "the cluster", log)
    data_dir = Path(log.read_text().split("ready ", 1)[1].split()[0])
    _kill_and_clean(run)
    assert not data_dir.exists()


def test_a_killed_demo_leaves_no_process_probe_or_temp_dir(tmp_path: Path) -> None:
    require_root()
    bpf_before = bpf_owners()
    log = tmp_path / "demo.log"
    demo = _start([sys.executable, "-m", "unlinkwatch.cli", "demo", "--duration", "120"], log)
    _wait(lambda: "agent attached" in log.read_text(), 180, "the demo's agent", log)
    made = _mine(demo.pid)
    kinds = sorted(str(f["kind"]) for f in made)
    assert kinds[0] == "dir" and set(kinds[1:]) <= {"runc"}, kinds  # its temp dir, and its pods' containers
    _kill_and_clean(demo)
    assert bpf_owners() <= bpf_before
    assert not any(Path(str(f.get("path", ""))).exists() for f in made if f["kind"] == "dir")
    for f in made:
        if f["kind"] == "runc":  # the container is gone (runc's state dir went with the demo's temp dir)
            assert not Path(str(f["root"]), str(f["name"])).exists()
            pod_cgroup = str(Path(str(f["cgroup"])).parent)  # and the pod's cgroup the demo made above it
            assert not any(Path(mp + pod_cgroup).exists() for mp in runstate.cgroup_mountpoints()), pod_cgroup

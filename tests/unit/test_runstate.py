"""What a run makes on the host is recorded when made and undone by clean-host once its maker is gone
(unlinkwatch/runstate.py); children die with their parent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_root
from unlinkwatch import runstate


@pytest.fixture
def private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state dir and temp root, so these tests never touch a live run's things."""
    root = tmp_path / "tmproot"
    root.mkdir()
    monkeypatch.setattr(runstate, "STATE_DIR", tmp_path / "state")
    monkeypatch.setattr(runstate, "TEMP_ROOTS", (root,))
    monkeypatch.setenv("UNLINKWATCH_RUNSTATE_DIR", str(tmp_path / "state"))
    return root


def _record_in_child(code: str, state: Path) -> None:
    """Runs `code` in a child that records things and exits without undoing them (as a killed run)."""
    prog = f"import sys; sys.path.insert(0, {str(ROOT)!r})\nfrom unlinkwatch import runstate\n{code}"
    subprocess.run([sys.executable, "-c", prog], check=True, env={**os.environ, "UNLINKWATCH_RUNSTATE_DIR": str(state)})


def test_a_record_is_gone_once_its_run_undoes_the_thing(private: Path) -> None:
    with runstate.recorded("dir", path=str(private / "x")):
        assert len(runstate.records()) == 1
    assert runstate.records() == []


def test_clean_host_undoes_what_a_dead_run_recorded_and_leaves_a_live_runs_things(private: Path) -> None:
    state = runstate.STATE_DIR
    dead_dir = private / "uwbench-dead"
    _record_in_child(f"import os; os.mkdir({str(dead_dir)!r}); runstate.record('dir', path={str(dead_dir)!r})", state)
    live_dir, rec = runstate.temp_dir("uwbench-live-", private)
    unrecorded = private / "uw-pg-old"
    unrecorded.mkdir()
    other = private / "someone-elses"
    other.mkdir()
    lines = runstate.sweep()
    assert sorted(lines) == sorted([f"removed {dead_dir}", f"removed {unrecorded}"])
    assert live_dir.is_dir() and other.is_dir() and not dead_dir.exists()
    assert [p for p, _ in runstate.records()] == [rec.path]
    assert runstate.sweep() == []  # idempotent
    rec.done()


def test_a_recorded_process_of_a_dead_run_is_killed_but_a_reused_pid_is_not(private: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        st = runstate.start_time(sleeper.pid)
        _record_in_child(f"runstate.record('pid', pid={sleeper.pid}, start={st}, what='sleep')", runstate.STATE_DIR)
        _record_in_child(f"runstate.record('pid', pid={sleeper.pid}, start={st} + 1, what='reused')",
                         runstate.STATE_DIR)
        assert runstate.sweep() == [f"killed pid {sleeper.pid} (sleep)"]
        assert sleeper.wait(5) == -9
    finally:
        sleeper.kill()


def test_a_sysctl_changed_by_a_dead_run_is_restored(private: Path, tmp_path: Path) -> None:
    fake = tmp_path / "bpf_stats_enabled"  # a file stands in for /proc/sys here; the bench records the real one
    fake.write_text("1\n")
    _record_in_child(f"runstate.record('sysctl', path={str(fake)!r}, restore='0')", runstate.STATE_DIR)
    assert runstate.sweep() == [f"restored {fake} to 0"]
    assert fake.read_text() == "0"


def test_a_mount_and_a_loop_device_of_a_dead_run_are_removed(private: Path) -> None:
    require_root()
    mnt = private / "uwbench-tmpfs-x"
    image = private / "uwbench-1.ext4"
    loopmnt = private / "uwbench-ext4-x"
    code = (f"import os, subprocess\nos.mkdir({str(mnt)!r}); os.mkdir({str(loopmnt)!r})\n"
            f"runstate.record('mount', path={str(mnt)!r})\n"
            f"subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'uwtest', {str(mnt)!r}], check=True)\n"
            f"runstate.record('loop', image={str(image)!r})\n"
            f"open({str(image)!r}, 'wb').truncate(8 << 20)\n"
            f"subprocess.run(['mkfs.ext4', '-q', '-F', {str(image)!r}], check=True)\n"
            f"subprocess.run(['mount', '-o', 'loop', {str(image)!r}, {str(loopmnt)!r}], check=True)\n")
    _record_in_child(code, runstate.STATE_DIR)
    try:
        lines = runstate.sweep()
        assert f"unmounted {mnt}" in lines
        assert any("detached /dev/loop" in line and str(image) in line for line in lines), lines
        mounts = Path("/proc/self/mountinfo").read_text()
        assert str(mnt) not in mounts and str(loopmnt) not in mounts
        assert str(image) not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        assert not mnt.exists() and not image.exists()
    finally:
        for m in (mnt, loopmnt):
            subprocess.run(["umount", "-l", str(m)], capture_output=True)


def test_a_child_started_with_die_with_parent_ends_when_its_parent_is_killed() -> None:
    code = ("import subprocess, sys, time\n"
            f"sys.path.insert(0, {str(ROOT)!r})\nfrom unlinkwatch.runstate import die_with_parent\n"
            "p = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent)\nprint(p.pid, flush=True)\n"
            "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while runstate.start_time(child) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runstate.start_time(child) is None or Path(f"/proc/{child}/stat").read_text().split(") ")[1][0] == "Z"


def test_a_shell_script_records_through_clean_host_and_a_dir_is_removed_only_once_nothing_is_mounted_below(
        private: Path) -> None:
    root = private / "replay-root"
    (root / "proc").mkdir(parents=True)
    script = ROOT / "scripts" / "clean-host.py"
    subprocess.run(["bash", "-c", f'/usr/bin/python3 {script} --record dir --owner $$ path={root}'], check=True)
    assert [f["path"] for _, f in runstate.records()] == [str(root)]
    if os.geteuid() == 0:  # a bind mount below the dir: unmounted first, never deleted through
        subprocess.run(["mount", "--bind", str(ROOT / "bench"), str(root / "proc")], check=True)
    try:
        assert runstate.sweep() == [f"removed {root}"]
        assert not root.exists() and (ROOT / "bench" / "__main__.py").exists()
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], capture_output=True)

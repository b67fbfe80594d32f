"""On a host that has not mounted tracefs, the agent and doctor mount it for as long as they run and unmount it when
they end: the mount table is left as they found it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from unlinkwatch.agent.probe.tracefs import TRACEFS

from tests.conftest import ROOT, require_root
from tests.support.agentproc import AgentProcess, attached_agent, unlinkwatch_cmd


def _mounted() -> bool:
    return any(line.split()[4] == TRACEFS for line in Path("/proc/self/mountinfo").read_text().splitlines())


@pytest.fixture
def no_tracefs() -> Iterator[None]:
    """The host's tracefs unmounted for the test, and mounted again after it if it was."""
    require_root()
    was = _mounted()
    if was and subprocess.run(["umount", TRACEFS], capture_output=True).returncode != 0:
        pytest.skip(f"the host's tracefs at {TRACEFS} is in use, so a host without it cannot be made here")
    try:
        if Path("/sys/kernel/debug/tracing/events").is_dir():
            pytest.skip("tracefs is reachable through debugfs here (/sys/kernel/debug/tracing)")
        yield
    finally:
        if was and not _mounted():
            subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True)


def test_an_agent_mounts_a_missing_tracefs_while_it_runs_and_unmounts_it_when_it_stops(no_tracefs: None) -> None:
    with attached_agent():
        assert _mounted()
    assert not _mounted()


def test_doctor_mounts_a_missing_tracefs_for_its_checks_and_unmounts_it_after(no_tracefs: None) -> None:
    out = subprocess.run([*unlinkwatch_cmd(), "doctor", "--json"], capture_output=True, text=True, timeout=300)
    report = json.loads(out.stdout)
    assert report["checks"]["tracefs"] == {"ok": True, "detail": "mounted (by doctor, for its checks)"}
    assert report["agent_can_run"], out.stderr
    assert report["object"] in ("cached", "compiled")  # the session's kept compile (tests/conftest.py), or not yet
    assert not _mounted()


def test_the_tracefs_of_an_agent_killed_with_sigkill_is_unmounted_by_clean_host(no_tracefs: None) -> None:
    with attached_agent() as a:
        a.proc.kill()  # no chance to unmount
        a.proc.wait()
        assert _mounted()
    out = subprocess.run(["make", "-s", "clean-host"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"unmounted {TRACEFS}" in out.stdout and not _mounted()


def test_where_the_mount_cannot_be_recorded_the_agent_still_mounts_it_and_unmounts_it(no_tracefs: None) -> None:
    # the DaemonSet's root filesystem is read-only: no runstate record can be written there
    a = AgentProcess(env={"UNLINKWATCH_RUNSTATE_DIR": "/proc/self/unwritable"})
    try:
        a.wait_attached()
        assert _mounted()
        assert any("tracefs mount not recorded" in line for line in a.log)
    finally:
        assert a.stop() == 0, "\n".join(a.log[-20:])
    assert not _mounted()

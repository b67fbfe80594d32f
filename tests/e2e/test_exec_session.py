"""Exec sessions into a runc container in a kubelet-style cgroup (what `kubectl exec` runs on the node): their
deletions say exec_session and their ancestry stops at the process runc started; the container's own processes
are not exec sessions, and their ancestry stops at the container's first process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agentproc import AgentProcess
from tests.support.runc import RuncContainer, missing

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

INIT = "touch /tmp/own; while [ ! -e /tmp/go ]; do sleep 0.1; done; rm /tmp/own; sleep 60"


@pytest.fixture
def container(tmp_path: Path) -> Iterator[tuple[RuncContainer, int]]:
    c = RuncContainer(tmp_path)
    try:
        pid = c.start(["sh", "-c", INIT])
        yield c, pid
    finally:
        c.delete()


def test_the_containers_own_deletion_is_not_an_exec_session_and_stops_at_its_first_process(
        agent: AgentProcess, container: tuple[RuncContainer, int]) -> None:
    c, init = container
    assert c.exec(["touch", "/tmp/go"]).exit_code == 0
    (ev,) = agent.wait_for(lambda e: e["path"] == "/tmp/own" and e["cgroup_id"] != 1)
    assert ev["exec_session"] is False and ev["ancestry_truncated"] is False
    assert [(a["pid"], a["args"]) for a in ev["ancestry"]] == [(init, ["sh", "-c", INIT])]


def test_a_command_run_by_runc_exec_is_an_exec_session_with_no_ancestor_inside(
        agent: AgentProcess, container: tuple[RuncContainer, int]) -> None:
    c, _ = container
    assert c.exec(["touch", "/tmp/direct"]).exit_code == 0
    assert c.exec(["rm", "/tmp/direct"]).exit_code == 0
    (ev,) = agent.wait_for(lambda e: e["path"] == "/tmp/direct")
    assert ev["exec_session"] is True and ev["ancestry"] == [] and ev["args"] == ["rm", "/tmp/direct"]


def test_a_shell_opened_by_runc_exec_is_the_top_of_its_deletions_ancestry(
        agent: AgentProcess, container: tuple[RuncContainer, int]) -> None:
    c, init = container
    assert c.exec(["touch", "/tmp/shelled"]).exit_code == 0
    script = "rm /tmp/shelled; true"
    assert c.exec(["sh", "-c", script]).exit_code == 0
    (ev,) = agent.wait_for(lambda e: e["path"] == "/tmp/shelled")
    assert ev["exec_session"] is True and ev["comm"] == "rm"
    assert [a["args"] for a in ev["ancestry"]] == [["sh", "-c", script]]
    assert init not in [a["pid"] for a in ev["ancestry"]]  # a sibling of the container's processes, not a child

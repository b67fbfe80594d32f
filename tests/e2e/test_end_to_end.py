"""The whole product: the agent on the live kernel, shipping to a collector on SQLite, with pod metadata
from the Kubernetes API stand-in, and real runc containers in kubelet-style cgroups doing the deleting."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import require_root
from tests.support.runc import RuncContainer, missing
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_root()
    with running_stack(tmp_path_factory.mktemp("e2e")) as s:
        yield s


def test_a_container_deletion_is_stored_with_its_pod_container_and_workload(stack: Stack) -> None:
    c = RuncContainer(stack.work)
    name = stack.add_deployment_pod(c.pod_uid, c.container_id)
    res = c.run(["sh", "-c", "touch /etc/motd /tmp/rel && rm /etc/motd && cd /tmp && rm rel"])
    assert res.exit_code == 0, res.stderr
    every = stack.wait_query(4, "--namespace", "prod", "--pod", name)
    rows = [r for r in every if r["comm"] == "rm"]
    assert sorted(r["path"] for r in rows) == ["/etc/motd", "/tmp/rel"]
    # runc's init removes dev/ptmx in the new cgroup before pivot_root: the host's view, same pod
    assert any(r["path"].endswith("/rootfs/dev/ptmx") and r["comm"].startswith("runc") for r in every)
    for r in rows:
        assert r["identity"] == "resolved" and r["pod_uid"] == c.pod_uid and r["container_id"] == c.container_id
        assert r["container"] == "app" and r["image"] == "busybox:1.36" and r["workload"] == "Deployment/web"
        assert r["node"] == "node-a" and r["comm"] == "rm" and r["exe"] == "/bin/busybox", json.dumps(r)
    assert [r["raw_path"] for r in rows if r["path"] == "/tmp/rel"] == ["rel"]
    by_workload = stack.query("--workload", "Deployment/web", "--path", "/etc/**")
    assert [r["path"] for r in by_workload] == ["/etc/motd"]
    fired = stack.wait_alerts(lambda a: a["event"]["pod_uid"] == c.pod_uid)
    assert any(a["event"]["path"] == "/etc/motd" for a in fired)


def test_a_container_that_exits_at_once_is_still_attributed(stack: Stack) -> None:
    c = RuncContainer(stack.work)
    name = stack.add_deployment_pod(c.pod_uid, c.container_id)
    # the container is gone and its cgroup removed right after its one deletion
    res = c.run(["sh", "-c", "echo x > /etc/hostname; exec rm /etc/hostname"])
    assert res.exit_code == 0, res.stderr
    rows = stack.wait_query(1, "--pod-uid", c.pod_uid, "--path", "/etc/hostname")
    assert len(rows) == 1 and rows[0]["pod"] == name and rows[0]["identity"] == "resolved"


def test_a_pod_the_api_learns_of_late_is_joined_to_its_stored_events(stack: Stack) -> None:
    c = RuncContainer(stack.work)
    res = c.run(["sh", "-c", "touch /tmp/early && rm /tmp/early"])
    assert res.exit_code == 0, res.stderr
    rows = stack.wait_query(1, "--pod-uid", c.pod_uid, "--path", "/tmp/early")
    assert len(rows) == 1 and rows[0]["identity"] == "unknown" and rows[0]["container_id"] == c.container_id
    time.sleep(3.0)
    name = stack.add_deployment_pod(c.pod_uid, c.container_id, namespace="late")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = stack.query("--pod-uid", c.pod_uid, "--path", "/tmp/early")
        if rows and rows[0]["identity"] == "late":
            break
        time.sleep(0.5)
    assert rows[0]["identity"] == "late" and rows[0]["pod"] == name and rows[0]["namespace"] == "late"
    assert rows[0]["workload"] == "Deployment/web"


def test_a_pod_the_api_never_knows_keeps_its_uid_from_the_cgroup(stack: Stack) -> None:
    c = RuncContainer(stack.work, pod_uid=str(uuid.uuid4()))
    assert c.run(["sh", "-c", "touch /tmp/x && rm /tmp/x"]).exit_code == 0
    rows = stack.wait_query(1, "--pod-uid", c.pod_uid, "--path", "/tmp/x")
    assert len(rows) == 1 and rows[0]["identity"] == "unknown" and rows[0]["pod"] == ""


def test_a_host_process_is_marked_host(stack: Stack) -> None:
    f = stack.work / f"host-{secrets.token_hex(4)}"
    f.touch()
    p = subprocess.run(["rm", str(f)], check=True)
    assert p.returncode == 0
    rows = stack.wait_query(1, "--path", str(f))
    assert len(rows) == 1 and rows[0]["identity"] == "host" and rows[0]["pod_uid"] == ""


def test_a_rename_in_a_container_is_stored_with_both_names_in_its_view_and_its_pod(stack: Stack) -> None:
    c = RuncContainer(stack.work)
    name = stack.add_deployment_pod(c.pod_uid, c.container_id)
    res = c.run(["sh", "-c", "echo x > /etc/app.conf && cd /etc && mv app.conf ../tmp/stolen.conf"])
    assert res.exit_code == 0, res.stderr
    rows = stack.wait_query(1, "--pod-uid", c.pod_uid, "--rename-to", "/tmp/**")
    assert [(r["op"], r["path"], r["raw_path"], r["rename_to"], r["result"]) for r in rows] == [
        ("rename", "/etc/app.conf", "app.conf", "/tmp/stolen.conf", 0)]
    assert rows[0]["pod"] == name and rows[0]["identity"] == "resolved" and rows[0]["workload"] == "Deployment/web"
    assert stack.query("--pod-uid", c.pod_uid, "--path", "/etc/app.conf") == rows  # found by its source too
    fired = stack.wait_alerts(lambda a: a["event"]["pod_uid"] == c.pod_uid)
    assert [(a["rule"], a["event"]["path"], a["event"]["rename_to"]) for a in fired] == [
        ("etc-deleted", "/etc/app.conf", "/tmp/stolen.conf")]


def test_a_history_moved_away_or_shredded_raises_one_alert_under_its_original_name(stack: Stack) -> None:
    moved, shredded = stack.work / "u1" / ".bash_history", stack.work / "u2" / ".bash_history"
    for f in (moved, shredded):
        f.parent.mkdir()
        f.write_text("cat /etc/shadow\n" * 50)
    subprocess.run(["mv", str(moved), str(stack.work / "u1" / "h")], check=True)
    subprocess.run(["shred", "-u", str(shredded)], check=True)
    def mine(a: dict[str, Any]) -> bool:
        return a["rule"] == "shell-history-deleted" and a["event"]["path"].startswith(str(stack.work))

    stack.wait_alerts(mine, count=2)
    time.sleep(1.0)  # no further alert for shred's later names
    fired = [a for a in stack.alerts() if mine(a)]
    assert sorted((a["event"]["comm"], a["event"]["path"], a["count"]) for a in fired) == [
        ("mv", str(moved), 1), ("shred", str(shredded), 1)]
    shred_renames = stack.query("--path", str(stack.work / "u2" / "**"), "--rename-to", str(stack.work / "u2" / "*"))
    assert len(shred_renames) >= 2 and shred_renames[0]["path"] == str(shredded)

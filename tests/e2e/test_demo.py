"""`unlinkwatch demo` looks like a cluster: its pods' deletions come back named (namespace, pod, container,
workload) through `unlinkwatch query` against the running demo, its alerts fire, and it leaves nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from unlinkwatch.agent.identity.cgroups import find_cgroup2

from tests.conftest import ROOT, require_root
from tests.support.leaks import bpf_owners
from unlinkwatch import runstate

WANT_ALERTS = {"log-tampering", "service-account-token-deleted", "credentials-deleted", "shell-history-deleted"}


def _cli(*args: str) -> list[dict[str, Any]]:
    p = subprocess.run([sys.executable, "-m", "unlinkwatch.cli", *args, "--output", "json"], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]



def test_the_demo_names_pods_and_workloads_in_two_namespaces_raises_its_alerts_and_leaves_nothing(
        tmp_path: Path) -> None:
    require_root()
    if shutil.which("busybox") is None:
        pytest.skip("busybox is not installed (make setup installs it)")
    cg = find_cgroup2()
    assert cg is not None
    kubepods_before = Path(cg.mountpoint, "kubepods").exists()
    bpf_before = bpf_owners()
    out = tmp_path / "demo.out"
    with out.open("wb") as f:
        demo = subprocess.Popen([sys.executable, "-m", "unlinkwatch.cli", "demo", "--duration", "40"], cwd=ROOT,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=runstate.die_with_parent)
    try:
        deadline = time.monotonic() + 180
        while "--collector " not in out.read_text() or "TIME" not in out.read_text():
            assert demo.poll() is None and time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.2)
        text = out.read_text()
        addr = text.split("--collector ", 1)[1].split()[0]
        work = Path(text.split("(SQLite: ", 1)[1].split(")")[0]).parent
        alerts: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            alerts = _cli("alerts", "--collector", addr)
            if {a["rule"] for a in alerts} >= WANT_ALERTS:
                break
            time.sleep(1)
        time.sleep(1)  # the last events of the scenario reach the store
        rows = {ns: _cli("query", "--collector", addr, "--namespace", ns, "--limit", "5000")
                for ns in ("shop", "batch")}
        alerts = _cli("alerts", "--collector", addr)
    finally:
        rc = demo.wait(120)
    assert rc == 0, out.read_text()[-3000:]

    by_rule = {a["rule"]: a for a in alerts}
    assert set(by_rule) >= WANT_ALERTS, sorted(by_rule)
    assert by_rule["log-tampering"]["count"] >= 100, "the rm -rf of the log tree is one folded alert"
    assert by_rule["log-tampering"]["event"]["workload"] == "Deployment/web"
    assert by_rule["credentials-deleted"]["event"]["workload"] == "CronJob/report"
    assert by_rule["service-account-token-deleted"]["event"]["namespace"] == "shop"
    moved = by_rule["shell-history-deleted"]["event"]
    assert (moved["op"], moved["path"], moved["rename_to"]) == ("rename", "/root/.ash_history", "/tmp/.cache-7f3a")

    every = rows["shop"] + rows["batch"]
    assert {r["identity"] for r in every} <= {"resolved", "late"}
    resolved = sum(r["identity"] == "resolved" for r in every)
    assert resolved >= 0.9 * len(every), f"{resolved} of {len(every)} resolved at once"
    workloads = {(r["namespace"], r["workload"], r["container"]) for r in every}
    assert workloads == {("shop", "Deployment/web", "nginx"), ("shop", "Deployment/api", "api"),
                         ("batch", "CronJob/report", "report")}
    paths = {r["path"] for r in every}
    assert {"/etc/shadow", "/var/run/secrets/kubernetes.io/serviceaccount/token", "/var/log/nginx",
            "/app/cache/session-1.tmp", "/tmp/report-work"} <= paths
    assert all(r["pod"] and r["pod_uid"] for r in every)
    table = out.read_text()
    assert "shop/web-7d4b9c-" in table and "Deployment/web" in table  # the live table names them too
    assert "more by rm(" in table and "under /var/log/nginx" in table  # and folds the rm -rf storm
    assert "/root/.ash_history -> /tmp/.cache-7f3a" in table  # and shows where a renamed file went

    # nothing left: no process, probe, temp dir, record or cgroup of the demo
    assert not work.exists()
    assert [f for _, f in runstate.records() if f["owner"] == demo.pid] == []
    assert bpf_owners() <= bpf_before
    assert Path(cg.mountpoint, "kubepods").exists() == kubepods_before

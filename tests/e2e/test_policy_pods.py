"""The node policy's selectors on real runc containers in kubelet-style cgroups, with pods from the Kubernetes
API stand-in: one namespace ignored and another not, a pod the API does not know, and what the collector
keeps of it (query by verdict, `status`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_root
from tests.support.runc import RuncContainer, missing
from tests.support.stack import Stack, running_stack
from unlinkwatch.kubestub import make_pod

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

POLICY = """
policy:
  - name: quiet-builds
    action: ignore
    paths: ["/scratch/**"]
    namespaces: ["build-*"]
  - name: audit-keys-prod
    action: audit
    paths: ["**/*.key"]
    namespaces: ["prod"]
"""
# the container waits a moment first: a deletion in the instant before the agent has classified a new cgroup
# follows the rule for unknown cgroups instead (docs/POLICY.md), which the pending pod below shows
SCRIPT = "sleep 1; mkdir /scratch && touch /scratch/a /etc/b /k.key && rm /scratch/a /etc/b /k.key"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_root()
    work = tmp_path_factory.mktemp("policy-e2e")
    (work / "policy.yaml").write_text(POLICY)
    with running_stack(work, "--policy", str(work / "policy.yaml")) as s:
        yield s


def _run_in_pod(stack: Stack, namespace: str | None) -> RuncContainer:
    c = RuncContainer(stack.work)
    if namespace is not None:
        stack.api.add_pod(make_pod(f"p-{namespace}", namespace, uid=c.pod_uid,
                                   containers=[("app", "busybox:1.36", c.container_id)]))
        stack.pods_added += 1
        stack.agent.wait_metric("unlinkwatch_agent_pods_known", stack.pods_added)
    res = c.run(["sh", "-c", SCRIPT])
    assert res.exit_code == 0, res.stderr
    return c


def _mine(stack: Stack, c: RuncContainer, count: int) -> dict[str, tuple[str, str]]:
    rows = [r for r in stack.wait_query(count, "--pod-uid", c.pod_uid) if r["comm"] == "rm"]
    return {r["path"]: (r["action"], r["policy"]) for r in rows}


def test_selectors_ignore_one_namespace_audit_another_and_fail_closed_for_an_unknown_pod(stack: Stack) -> None:
    build = _run_in_pod(stack, "build-7")
    prod = _run_in_pod(stack, "prod")
    pending = _run_in_pod(stack, None)  # the API never hears of this pod
    dev = _run_in_pod(stack, "dev")  # a namespace no rule names
    assert _mine(stack, prod, 3) == {"/scratch/a": ("allowed", ""), "/etc/b": ("allowed", ""),
                                     "/k.key": ("would-block", "audit-keys-prod")}
    assert _mine(stack, pending, 3) == {"/scratch/a": ("allowed", ""), "/etc/b": ("allowed", ""),
                                        "/k.key": ("would-block", "audit-keys-prod")}
    assert _mine(stack, build, 2) == {"/etc/b": ("allowed", ""), "/k.key": ("allowed", "")}
    # no rule for it is an entry too: a cgroup without one would get every audit and block rule (the unknown's)
    assert _mine(stack, dev, 3) == {"/scratch/a": ("allowed", ""), "/etc/b": ("allowed", ""), "/k.key": ("allowed", "")}
    assert stack.agent.wait_metric('unlinkwatch_agent_events_filtered_total{policy="quiet-builds"}', 1) == 1

    flagged = stack.query("--action", "would-block", "--policy", "audit-*")
    assert sorted(r["pod_uid"] for r in flagged) == sorted([prod.pod_uid, pending.pod_uid])


def test_status_shows_each_nodes_policy_and_that_block_rules_run_as_audit(stack: Stack) -> None:
    p = subprocess.run([sys.executable, "-m", "unlinkwatch.cli", "status", "--collector", stack.addr, "--output",
                        "json"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    (node,) = [json.loads(line) for line in p.stdout.splitlines() if json.loads(line)["node"] == "node-a"]
    policy = node["policy"]
    assert policy["enforcement"] == "audit-only" and policy["rules"] == 2 and policy["reason"]
    assert policy["source"] == str(Path(stack.work) / "policy.yaml")

"""Block rules on real runc containers in kubelet-style cgroups, enforced with BPF LSM: a container in a selected
namespace cannot delete a protected file and one in another namespace can, each event names its pod, and `status`
says the node enforces. BPF LSM runs in the kernel lab (tests/vm runs this file there); on a kernel without it
these tests skip saying so."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from unlinkwatch.agent.policy.runtime import bpf_lsm_missing

from tests.conftest import ROOT, require_root
from tests.support.runc import RuncContainer, missing
from tests.support.stack import Stack, running_stack
from unlinkwatch.kubestub import make_pod

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))
_MISSING = bpf_lsm_missing()
if _MISSING:
    pytest.skip(f"block rules need BPF LSM, which this kernel cannot run ({_MISSING}); the kernel lab "
                "(tests/vm) runs these under Debian's 6.1 kernel with it", allow_module_level=True)

POLICY = """
policy:
  - name: protect-prod-config
    action: block
    paths: ["/etc/app.conf"]
    namespaces: ["prod"]
"""
# Until the agent has classified a new container's cgroup (within a second or so; longer under emulation), every
# block rule covers it (docs/POLICY.md), so the container tries for up to 10 s
SCRIPT = ("for i in 1 2 3 4 5 6 7 8 9 10; do touch /etc/app.conf; rm /etc/app.conf 2>/dev/null && break; sleep 1; "
          "done; test -e /etc/app.conf && echo still-there || echo gone")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_root()
    work = tmp_path_factory.mktemp("enforce-e2e")
    (work / "policy.yaml").write_text(POLICY)
    with running_stack(work, "--policy", str(work / "policy.yaml"), ) as s:
        yield s


def _run_in_pod(stack: Stack, namespace: str) -> tuple[RuncContainer, str]:
    c = RuncContainer(stack.work)
    stack.api.add_pod(make_pod(f"p-{namespace}", namespace, uid=c.pod_uid,
                               containers=[("app", "busybox:1.36", c.container_id)]))
    stack.pods_added += 1
    try:
        stack.agent.wait_metric("unlinkwatch_agent_pods_known", stack.pods_added, timeout=60)
    except AssertionError as e:
        raise AssertionError(f"{e}; the agent's log:\n" + "\n".join(stack.agent.log[-30:])) from None
    res = c.run(["sh", "-c", SCRIPT])
    assert res.exit_code == 0, res.stderr
    return c, res.stdout


def test_a_container_in_a_selected_namespace_is_blocked_and_one_in_another_is_not(stack: Stack) -> None:
    prod, prod_out = _run_in_pod(stack, "prod")
    dev, dev_out = _run_in_pod(stack, "dev")
    assert prod_out.split() == ["still-there"]
    assert dev_out.split() == ["gone"]
    blocked = [r for r in stack.wait_query(10, "--pod-uid", prod.pod_uid) if r["comm"] == "rm"]
    assert {(r["path"], r["namespace"], r["result"], r["action"], r["policy"]) for r in blocked} == {
        ("/etc/app.conf", "prod", -1, "blocked", "protect-prod-config")} and len(blocked) == 10
    rows = [r for r in stack.wait_query(1, "--pod-uid", dev.pod_uid, "--action", "allowed") if r["comm"] == "rm"]
    assert [(r["path"], r["namespace"], r["result"]) for r in rows] == [("/etc/app.conf", "dev", 0)]


def test_status_says_the_node_enforces_block_rules(stack: Stack) -> None:
    p = subprocess.run([sys.executable, "-m", "unlinkwatch.cli", "status", "--collector", stack.addr, "--output",
                        "json"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    (node,) = [json.loads(line) for line in p.stdout.splitlines() if json.loads(line)["node"] == "node-a"]
    assert (node["policy"]["enforcement"], node["policy"]["reason"]) == ("enforcing", "")

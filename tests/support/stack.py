"""The whole product for end-to-end tests: a collector on SQLite, the agent on the live kernel with pod metadata
from the Kubernetes API stand-in, and helpers to query and wait on them."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import ROOT
from tests.support.agentproc import AgentProcess
from tests.support.collector import free_port, start_subprocess
from unlinkwatch.kubestub import FakeKubeAPI, make_pod, make_replicaset, owner_ref


@dataclass
class Stack:
    api: FakeKubeAPI
    addr: str
    agent: AgentProcess
    work: Path
    pods_added: int = 0

    def query(self, *args: str) -> list[dict[str, Any]]:
        p = subprocess.run([sys.executable, "-m", "unlinkwatch.cli", "query", "--collector", self.addr,
                            "--output", "json", *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert p.returncode == 0, p.stderr
        return [json.loads(line) for line in p.stdout.splitlines()]

    def add_deployment_pod(self, pod_uid: str, container_id: str, namespace: str = "prod") -> str:
        """Adds the pod to the API server and waits until the agent's pod watch has it."""
        name = deployment_pod(self.api, pod_uid, container_id, namespace)
        self.pods_added += 1
        self.agent.wait_metric("unlinkwatch_agent_pods_known", self.pods_added)
        return name

    def wait_query(self, count: int, *args: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.query(*args)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.3)

    def alerts(self) -> list[dict[str, Any]]:
        p = subprocess.run([sys.executable, "-m", "unlinkwatch.cli", "alerts", "--collector", self.addr,
                            "--output", "json"], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert p.returncode == 0, p.stderr
        return [json.loads(line) for line in p.stdout.splitlines()]

    def wait_alerts(self, pred: Callable[[dict[str, Any]], bool], count: int = 1,
                    timeout: float = 15.0) -> list[dict[str, Any]]:
        """The alerts `pred` selects, once there are `count` of them (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [a for a in self.alerts() if pred(a)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.3)


@contextmanager
def running_stack(work: Path, *agent_args: str) -> Iterator[Stack]:
    """API stand-in, collector and agent (node "node-a", plus `agent_args`), stopped afterwards."""
    api = FakeKubeAPI().start()
    port = free_port()
    collector = start_subprocess(f"sqlite:///{work / 'events.db'}", port, log_path=work / "collector.log")
    agent = AgentProcess("--collector", f"127.0.0.1:{port}", "--node-name", "node-a", "--kube", "auto",
                         "--kubeconfig", str(api.write_kubeconfig(work / "kubeconfig")), *agent_args,
                         metrics_port=free_port())
    try:
        agent.wait_attached()
        yield Stack(api, f"127.0.0.1:{port}", agent, work)
    finally:
        agent.stop()
        collector.terminate()
        collector.wait(10)
        api.stop()


def deployment_pod(api: FakeKubeAPI, pod_uid: str, container_id: str, namespace: str = "prod") -> str:
    name = f"web-7d4b9c-{secrets.token_hex(3)}"
    rs = make_replicaset("web-7d4b9c", namespace, deployment="web")
    api.add_object(rs, "replicasets")
    api.add_pod(make_pod(name, namespace, uid=pod_uid, containers=[("app", "busybox:1.36", container_id)],
                         owner=owner_ref("apps/v1", "ReplicaSet", "web-7d4b9c"), labels={"app": "web"}))
    return name



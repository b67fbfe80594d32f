"""Owner resolution to the top workload, through the real client against the stand-in; schema-valid fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from unlinkwatch.agent.identity.kube import PodIndex, PodWatcher, api_client, make_fetch
from unlinkwatch.agent.identity.owners import OwnerResolver

from unlinkwatch.kubestub import FakeKubeAPI, make_job, make_pod, make_replicaset, owner_ref, wait_until

K8S_VERSION = "1.30.0"


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    fake = FakeKubeAPI().start()
    fake.add_object(make_replicaset("web-5d8f7c9b4", deployment="web"), "replicasets")
    fake.add_object(make_replicaset("orphan-rs"), "replicasets")
    fake.add_object(make_job("nightly-28718340", cronjob="nightly"), "jobs")
    fake.add_object(make_job("one-off"), "jobs")
    yield fake
    fake.stop()


def resolver(api: FakeKubeAPI, tmp_path: Path) -> OwnerResolver:
    return OwnerResolver(make_fetch(api_client(str(api.write_kubeconfig(tmp_path / "kc")))))


POD_CASES: list[tuple[str, dict[str, Any] | None, dict[str, str], str]] = [
    ("deployment via its replicaset", owner_ref("apps/v1", "ReplicaSet", "web-5d8f7c9b4"),
     {"pod-template-hash": "5d8f7c9b4"}, "Deployment/web"),
    ("a replicaset nobody owns", owner_ref("apps/v1", "ReplicaSet", "orphan-rs"), {}, "ReplicaSet/orphan-rs"),
    ("cronjob via its job", owner_ref("batch/v1", "Job", "nightly-28718340"), {}, "CronJob/nightly"),
    ("a job nobody owns", owner_ref("batch/v1", "Job", "one-off"), {}, "Job/one-off"),
    ("statefulset", owner_ref("apps/v1", "StatefulSet", "db"), {}, "StatefulSet/db"),
    ("daemonset", owner_ref("apps/v1", "DaemonSet", "agent"), {}, "DaemonSet/agent"),
    ("bare pod", None, {}, "Pod/bare"),
    ("static pod mirror owned by its node", owner_ref("v1", "Node", "node-a"), {}, "Pod/bare"),
]


@pytest.mark.parametrize(("name", "owner", "labels", "want"), POD_CASES, ids=[c[0] for c in POD_CASES])
def test_pods_resolve_to_their_top_workload(api: FakeKubeAPI, tmp_path: Path, name: str,
                                            owner: dict[str, Any] | None, labels: dict[str, str], want: str) -> None:
    pod = make_pod("bare", owner=owner, labels=labels)
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert resolver(api, tmp_path).workload(pod) == want


def test_owner_lookups_are_cached(api: FakeKubeAPI, tmp_path: Path) -> None:
    r = resolver(api, tmp_path)
    for i in range(20):
        pod = make_pod(f"web-5d8f7c9b4-{i}", owner=owner_ref("apps/v1", "ReplicaSet", "web-5d8f7c9b4"))
        assert r.workload(pod) == "Deployment/web"
    assert r.fetches == 1
    assert sum("/replicasets/" in q for q in api.requests) == 1


@pytest.mark.parametrize("failure", [403, 500, "garbage"])
def test_when_owner_lookups_fail_the_workload_is_guessed_from_names(api: FakeKubeAPI, tmp_path: Path,
                                                                    failure: int | str) -> None:
    api.fail_with, api.fail_prefix = failure, "/apis/"
    r = resolver(api, tmp_path)
    web = make_pod("web-5d8f7c9b4-x", owner=owner_ref("apps/v1", "ReplicaSet", "web-5d8f7c9b4"),
                   labels={"pod-template-hash": "5d8f7c9b4"})
    job = make_pod("nightly-28718340-q", owner=owner_ref("batch/v1", "Job", "nightly-28718340"))
    assert r.workload(web) == "Deployment/web"
    assert r.workload(job) == "CronJob/nightly"


def test_the_watcher_indexes_pods_with_their_resolved_workload(api: FakeKubeAPI, tmp_path: Path) -> None:
    api.add_pod(make_pod("web-5d8f7c9b4-x", owner=owner_ref("apps/v1", "ReplicaSet", "web-5d8f7c9b4")))
    api.add_pod(make_pod("nightly-28718340-q", owner=owner_ref("batch/v1", "Job", "nightly-28718340")))
    w = PodWatcher("node-a", PodIndex(), str(api.write_kubeconfig(tmp_path / "kc")))
    w.start()
    try:
        assert wait_until(lambda: len(w.index.pods) == 2)
        assert {p.workload for p in w.index.pods.values()} == {"Deployment/web", "CronJob/nightly"}
    finally:
        w.stop()


@pytest.mark.parametrize("obj", [
    make_pod("p", containers=[("app", "busybox:1.36", "a" * 64), ("side", "busybox:1.36", "")],
             init_containers=[("init", "busybox:1.36", "b" * 64)], labels={"app": "web"},
             owner=owner_ref("apps/v1", "ReplicaSet", "web-1")),
    make_replicaset("web-1", deployment="web"),
    make_job("nightly-1", cronjob="nightly"),
], ids=["pod", "replicaset", "job"])
def test_the_stand_in_serves_schema_valid_objects(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)

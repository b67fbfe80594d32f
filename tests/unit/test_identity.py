"""IdentityResolver: cgroup id -> pod/container fields and state, late joins, with the API stand-in."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from unlinkwatch.agent.identity import IdentityConfig, IdentityResolver
from unlinkwatch.agent.metrics import AgentMetrics

from unlinkwatch.kubestub import FakeKubeAPI, make_pod, make_replicaset, owner_ref, wait_until
from unlinkwatch.pb import events_pb2 as pb

CID = "ab" * 32


def cgroupfs_path(uid: str, cid: str = CID) -> str:
    return f"/kubepods/burstable/pod{uid}/{cid}"


def systemd_path(uid: str, cid: str = CID) -> str:
    u = uid.replace("-", "_")
    return (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/"
            f"cri-containerd-{cid}.scope")


def event(cgroup_id: int) -> pb.DeletionEvent:
    return pb.DeletionEvent(cgroup_id=cgroup_id, path=b"/tmp/x", op=pb.OP_UNLINK)


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    fake = FakeKubeAPI().start()
    yield fake
    fake.stop()


@pytest.fixture
def resolver(api: FakeKubeAPI, tmp_path: Path) -> Iterator[IdentityResolver]:
    cfg = IdentityConfig(node="node-a", kubeconfig=str(api.write_kubeconfig(tmp_path / "kc")),
                         cgroup2_root=str(tmp_path))
    r = IdentityResolver(cfg, AgentMetrics())
    r.start()
    assert r.watcher is not None and r.watcher.synced.wait(10)
    yield r
    r.stop()


@pytest.mark.parametrize("path_of", [cgroupfs_path, systemd_path], ids=["cgroupfs", "systemd"])
def test_a_known_pod_resolves_with_every_field(api: FakeKubeAPI, resolver: IdentityResolver, path_of: object) -> None:
    api.add_object(make_replicaset("web-5d8f7c9b4", "prod", deployment="web"), "replicasets")
    pod = make_pod("web-5d8f7c9b4-x", "prod", containers=[("nginx", "nginx:1.25", CID)],
                   owner=owner_ref("apps/v1", "ReplicaSet", "web-5d8f7c9b4"), labels={"app": "web"})
    api.add_pod(pod)
    uid = pod["metadata"]["uid"]
    assert wait_until(lambda: resolver.index.container(CID) is not None)
    assert callable(path_of)
    resolver.on_cgroup_mkdir(5001, path_of(uid))
    ev = event(5001)
    resolver.fill(ev)
    assert ev.identity == pb.IDENTITY_STATE_RESOLVED
    assert (ev.pod.uid, ev.pod.name, ev.pod.namespace, ev.pod.workload) == (uid, "web-5d8f7c9b4-x", "prod",
                                                                            "Deployment/web")
    assert dict(ev.pod.labels) == {"app": "web"}
    assert (ev.container.id, ev.container.name, ev.container.image) == (CID, "nginx", "nginx:1.25")
    assert ev.path == b"/tmp/x"  # fill touches identity fields only


def test_the_root_cgroup_and_paths_outside_kubepods_are_host(resolver: IdentityResolver) -> None:
    resolver.on_cgroup_mkdir(5002, "/system.slice/sshd.service")
    resolver.on_cgroup_mkdir(5003, "/kubepods/burstable")  # the QoS level holds no pod
    for cid in (1, 5002, 5003):
        ev = event(cid)
        resolver.fill(ev)
        assert ev.identity == pb.IDENTITY_STATE_HOST
        assert ev.pod.uid == "" and ev.container.id == ""


def test_a_pod_the_api_does_not_know_is_unknown_with_uid_and_container_id(resolver: IdentityResolver) -> None:
    uid = str(uuid.uuid4())
    resolver.on_cgroup_mkdir(5004, cgroupfs_path(uid))
    ev = event(5004)
    resolver.fill(ev)
    assert ev.identity == pb.IDENTITY_STATE_UNKNOWN
    assert (ev.pod.uid, ev.container.id, ev.pod.name) == (uid, CID, "")
    assert resolver.drain_updates() == []


def test_an_id_with_no_known_path_is_unknown_without_a_pod(resolver: IdentityResolver) -> None:
    ev = event(987654321)
    resolver.fill(ev)
    assert ev.identity == pb.IDENTITY_STATE_UNKNOWN and ev.pod.uid == ""


def test_a_pod_the_api_learns_of_3s_after_its_events_gets_one_late_join(
        api: FakeKubeAPI, resolver: IdentityResolver) -> None:
    uid = str(uuid.uuid4())
    resolver.on_cgroup_mkdir(5005, cgroupfs_path(uid))
    for _ in range(5):
        ev = event(5005)
        resolver.fill(ev)
        assert ev.identity == pb.IDENTITY_STATE_UNKNOWN
    time.sleep(3)
    api.add_pod(make_pod("late", "jobs", uid=uid, containers=[("work", "busybox:1.36", CID)]))
    updates: list[pb.IdentityUpdate] = []

    def drained() -> bool:
        updates.extend(resolver.drain_updates())
        return bool(updates)

    assert wait_until(drained)
    assert len(updates) == 1
    u = updates[0]
    assert (u.pod_uid, u.container_id, u.pod.name, u.pod.namespace, u.pod.workload) == (uid, CID, "late", "jobs",
                                                                                        "Pod/late")
    assert (u.container.name, u.container.image) == ("work", "busybox:1.36")
    assert resolver.drain_updates() == []
    ev = event(5005)
    resolver.fill(ev)
    assert ev.identity == pb.IDENTITY_STATE_RESOLVED and ev.pod.name == "late"


def test_a_container_not_yet_in_the_pod_status_is_unknown_until_it_appears(
        api: FakeKubeAPI, resolver: IdentityResolver) -> None:
    pod = make_pod("starting", containers=[("app", "busybox:1.36", "")])
    api.add_pod(pod)
    uid = pod["metadata"]["uid"]
    assert wait_until(lambda: resolver.index.pod(uid) is not None)
    resolver.on_cgroup_mkdir(5006, cgroupfs_path(uid))
    ev = event(5006)
    resolver.fill(ev)
    assert ev.identity == pb.IDENTITY_STATE_UNKNOWN and ev.pod.name == "starting"
    api.add_pod(make_pod("starting", uid=uid, containers=[("app", "busybox:1.36", CID)]))
    assert wait_until(lambda: resolver.index.container(CID) is not None)
    updates = resolver.drain_updates()
    assert [(u.pod.name, u.container.name) for u in updates] == [("starting", "app")]
    ev = event(5006)
    resolver.fill(ev)
    assert ev.identity == pb.IDENTITY_STATE_RESOLVED and ev.container.name == "app"


def test_a_deleted_pod_still_resolves_from_the_deleted_pod_cache(api: FakeKubeAPI, resolver: IdentityResolver) -> None:
    pod = make_pod("gone", containers=[("app", "busybox:1.36", CID)])
    api.add_pod(pod)
    uid = pod["metadata"]["uid"]
    resolver.on_cgroup_mkdir(5007, cgroupfs_path(uid))
    assert wait_until(lambda: resolver.index.container(CID) is not None)
    api.delete_pod("default", "gone")
    assert wait_until(lambda: (p := resolver.index.pod(uid)) is not None and p.deleted_at > 0)
    ev = event(5007)
    resolver.fill(ev)
    assert ev.identity == pb.IDENTITY_STATE_RESOLVED and ev.pod.name == "gone"


def test_identity_counts_reach_the_metrics_on_drain_when_asked_to(resolver: IdentityResolver) -> None:
    resolver.count_metrics = True
    for cid in (1, 1, 424242):
        resolver.fill(event(cid))
    resolver.drain_updates()
    assert resolver.metrics is not None
    text = generate_latest(resolver.metrics.registry).decode()
    assert 'unlinkwatch_agent_identity_total{state="host"} 2.0' in text
    assert 'unlinkwatch_agent_identity_total{state="unknown"} 1.0' in text


def test_with_kube_off_pods_are_unknown_and_no_updates_are_tracked(tmp_path: Path) -> None:
    r = IdentityResolver(IdentityConfig(node="n", kube="off", cgroup2_root=str(tmp_path)))
    r.start()
    try:
        assert r.watcher is None
        r.on_cgroup_mkdir(5008, cgroupfs_path(str(uuid.uuid4())))
        ev = event(5008)
        r.fill(ev)
        assert ev.identity == pb.IDENTITY_STATE_UNKNOWN and ev.container.id == CID
        assert r.drain_updates() == [] and r.stats()["pending"] == 0
    finally:
        r.stop()


def test_no_reachable_api_logs_one_warning_and_events_still_flow(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    api = FakeKubeAPI().start()
    kc = api.write_kubeconfig(tmp_path / "kc")
    api.stop()
    r = IdentityResolver(IdentityConfig(node="n", kubeconfig=str(kc), cgroup2_root=str(tmp_path)))
    caplog.set_level("WARNING")
    r.start()
    try:
        assert r.watcher is not None
        assert wait_until(lambda: r.watcher is not None and r.watcher.errors >= 3, timeout=15)
        r.fill(event(1))
        assert len([x for x in caplog.records if x.levelname == "WARNING"]) == 1
    finally:
        r.stop()


def test_a_known_cgroup_fills_in_a_few_microseconds(api: FakeKubeAPI, resolver: IdentityResolver) -> None:
    pod = make_pod("fast", containers=[("app", "busybox:1.36", CID)], labels={"app": "fast", "tier": "web"})
    api.add_pod(pod)
    assert wait_until(lambda: resolver.index.container(CID) is not None)
    resolver.on_cgroup_mkdir(5009, cgroupfs_path(pod["metadata"]["uid"]))
    ev = event(5009)
    resolver.fill(ev)
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        resolver.fill(ev)
    per_event_us = (time.perf_counter() - t0) / n * 1e6
    assert per_event_us < 10, per_event_us  # goal is 2 us (bench/identity.py); loose here for loaded CI

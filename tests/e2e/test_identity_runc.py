"""Real runc containers and hand-made cgroups: their cgroup ids resolve to the right pod and container."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from unlinkwatch.agent.identity import IdentityConfig, IdentityResolver
from unlinkwatch.agent.identity.cgroups import HandleResolver, find_cgroup2, own_cgroup_path

from tests.support.runc import CgroupMkdirTrace, HandMadeCgroup, RuncContainer, kubelet_systemd_path, missing
from unlinkwatch.kubestub import FakeKubeAPI, make_pod, wait_until
from unlinkwatch.pb import events_pb2 as pb

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    fake = FakeKubeAPI().start()
    yield fake
    fake.stop()


def resolver_for(api: FakeKubeAPI, tmp_path: Path) -> IdentityResolver:
    cfg = IdentityConfig(node="node-a", kubeconfig=str(api.write_kubeconfig(tmp_path / "kc")))
    r = IdentityResolver(cfg)
    r.start()
    assert r.watcher is not None and r.watcher.synced.wait(10)
    return r


def cgroup_id_of_pid(pid: int) -> int:
    mount = find_cgroup2()
    assert mount is not None
    path = own_cgroup_path(pid)
    assert path is not None
    return os.stat(mount.mountpoint.rstrip("/") + path).st_ino


def fill(r: IdentityResolver, cgroup_id: int) -> pb.DeletionEvent:
    ev = pb.DeletionEvent(cgroup_id=cgroup_id)
    r.fill(ev)
    return ev


def test_a_running_runc_container_resolves_to_its_pod_and_container(api: FakeKubeAPI, tmp_path: Path) -> None:
    r = resolver_for(api, tmp_path)
    c = RuncContainer(tmp_path)
    try:
        pid = c.start(["sleep", "30"])
        api.add_pod(make_pod("web-0", "prod", uid=c.pod_uid, containers=[("web", "busybox:1.36", c.container_id)]))
        assert wait_until(lambda: r.index.container(c.container_id) is not None)
        cgroup_id = cgroup_id_of_pid(pid)
        assert cgroup_id == os.stat(c.cgroup_dir).st_ino
        ev = fill(r, cgroup_id)  # not in the mkdir cache: found through open_by_handle_at
        assert r.cgroups.handle_lookups == 1
        assert ev.identity == pb.IDENTITY_STATE_RESOLVED
        assert (ev.pod.uid, ev.container.id, ev.pod.name, ev.container.name) == (
            c.pod_uid, c.container_id, "web-0", "web")
    finally:
        c.delete()
        r.stop()


def test_a_container_running_before_start_is_found_by_the_start_up_scan(api: FakeKubeAPI, tmp_path: Path) -> None:
    c = RuncContainer(tmp_path, qos="guaranteed")
    try:
        pid = c.start(["sleep", "30"])
        r = resolver_for(api, tmp_path)
        try:
            cgroup_id = cgroup_id_of_pid(pid)
            assert r.cgroups.lookup_cached(cgroup_id) == c.cgroup_path
            ev = fill(r, cgroup_id)
            assert r.cgroups.handle_lookups == 0
            assert ev.identity == pb.IDENTITY_STATE_UNKNOWN  # the API never heard of this pod
            assert (ev.pod.uid, ev.container.id) == (c.pod_uid, c.container_id)
        finally:
            r.stop()
    finally:
        c.delete()


def test_a_container_gone_within_50ms_resolves_through_the_mkdir_cache(api: FakeKubeAPI, tmp_path: Path) -> None:
    r = resolver_for(api, tmp_path)
    c = RuncContainer(tmp_path)
    try:
        # What the cgroup_mkdir tracepoint reports, captured here from the directory before runc reuses it.
        os.makedirs(c.cgroup_dir)
        cgroup_id = os.stat(c.cgroup_dir).st_ino
        r.on_cgroup_mkdir(cgroup_id, c.cgroup_path)
        t0 = time.monotonic()
        result = c.run(["sh", "-c", "rm -f /tmp/x; exit 0"])
        assert result.exit_code == 0, result.stderr
        assert time.monotonic() - t0 < 5
        assert not os.path.exists(c.cgroup_dir)
        mount = find_cgroup2()
        assert mount is not None
        assert HandleResolver(mount).lookup(cgroup_id) is None  # the kernel can no longer name it
        api.add_pod(make_pod("batch-x", uid=c.pod_uid, containers=[("job", "busybox:1.36", c.container_id)]))
        assert wait_until(lambda: r.index.container(c.container_id) is not None)
        ev = fill(r, cgroup_id)
        assert ev.identity == pb.IDENTITY_STATE_RESOLVED
        assert (ev.pod.uid, ev.pod.name, ev.container.id, ev.container.name) == (
            c.pod_uid, "batch-x", c.container_id, "job")
    finally:
        c.delete()
        r.stop()


def test_a_process_in_a_systemd_driver_cgroup_resolves_by_handle(api: FakeKubeAPI, tmp_path: Path) -> None:
    uid, cid = str(uuid.uuid4()), uuid.uuid4().hex * 2
    r = resolver_for(api, tmp_path)
    cg = HandMadeCgroup(kubelet_systemd_path(uid, cid))
    try:
        cgroup_id = cg.create()
        proc = cg.run(["sleep", "30"])
        assert wait_until(lambda: own_cgroup_path(proc.pid) == cg.path)
        assert cgroup_id_of_pid(proc.pid) == cgroup_id
        api.add_pod(make_pod("sysd", uid=uid, containers=[("app", "busybox:1.36", cid)]))
        assert wait_until(lambda: r.index.container(cid) is not None)
        ev = fill(r, cgroup_id)
        assert ev.identity == pb.IDENTITY_STATE_RESOLVED and (ev.pod.uid, ev.container.id) == (uid, cid)
    finally:
        cg.remove()
        r.stop()


def test_host_processes_are_host(api: FakeKubeAPI, tmp_path: Path) -> None:
    r = resolver_for(api, tmp_path)
    cg = HandMadeCgroup(f"/system.slice/uw-test-{uuid.uuid4().hex[:8]}.service")
    try:
        assert fill(r, cgroup_id_of_pid(os.getpid())).identity == pb.IDENTITY_STATE_HOST
        cgroup_id = cg.create()
        cg.run(["sleep", "30"])
        assert fill(r, cgroup_id).identity == pb.IDENTITY_STATE_HOST
    finally:
        cg.remove()
        r.stop()


def test_the_kernels_own_mkdir_records_name_a_container_that_is_already_gone(
        api: FakeKubeAPI, tmp_path: Path) -> None:
    r = resolver_for(api, tmp_path)
    c = RuncContainer(tmp_path)
    try:
        with CgroupMkdirTrace() as trace:
            result = c.run(["rm", "-f", "/tmp/nothing"])  # the container's process lives a few ms
            records = trace.records()
        assert result.exit_code == 0, result.stderr
        assert not os.path.exists(c.cgroup_dir)
        ids = [cid for cid, path in records if path == c.cgroup_path]
        assert len(ids) == 1, records
        mount = find_cgroup2()
        assert mount is not None and HandleResolver(mount).lookup(ids[0]) is None
        assert fill(r, ids[0]).identity == pb.IDENTITY_STATE_UNKNOWN  # nothing can name it yet
        for cgroup_id, path in records:  # what the agent's kernel side feeds, in order
            r.on_cgroup_mkdir(cgroup_id, path)
        ev = fill(r, ids[0])
        assert (ev.identity, ev.pod.uid, ev.container.id) == (pb.IDENTITY_STATE_UNKNOWN, c.pod_uid, c.container_id)
        api.add_pod(make_pod("gone-fast", uid=c.pod_uid, containers=[("job", "busybox:1.36", c.container_id)]))
        assert wait_until(lambda: len(r.drain_updates()) == 1)
        ev = fill(r, ids[0])
        assert (ev.identity, ev.pod.name, ev.container.name) == (pb.IDENTITY_STATE_RESOLVED, "gone-fast", "job")
    finally:
        c.delete()
        r.stop()

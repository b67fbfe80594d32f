"""Where a pod's deleted files lived on the node: a runc container in a kubelet-style cgroup, its volumes bind-mounted
from a kubelet directory (emptyDir, configMap) and from the host (hostPath), its root filesystem a real overlayfs
(an image layer below, the container's layer above), and its pod, with those volumes, served by the API stand-in.
What the collector keeps: `host_path` and `volume` of each event."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import require_root
from tests.support.runc import RuncContainer, missing
from tests.support.stack import Stack, running_stack
from unlinkwatch import runstate
from unlinkwatch.kubestub import make_pod

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_root()
    work = tmp_path_factory.mktemp("placement-e2e")
    (work / "kubelet").mkdir()
    with running_stack(work, "--kubelet-root", str(work / "kubelet")) as s:
        yield s


def test_each_deletion_in_a_pod_says_where_it_lived_on_the_node_and_in_which_volume(stack: Stack) -> None:
    work = stack.work
    c = RuncContainer(work)
    vols = work / "kubelet" / "pods" / c.pod_uid / "volumes"
    cache = vols / "kubernetes.io~empty-dir" / "cache"
    config = vols / "kubernetes.io~configmap" / "app-config"
    hostlog = work / "hostlog"
    for d in (cache, config, hostlog):
        d.mkdir(parents=True)
    (cache / "x").touch()
    (config / "app.yaml").touch()
    (hostlog / "old.log").touch()
    c.binds = [(cache, "/cache"), (config, "/etc/app"), (hostlog, "/host/log")]
    pod = make_pod("web-0", "prod", uid=c.pod_uid, containers=[("app", "busybox:1.36", c.container_id)])
    pod["spec"]["volumes"] = [{"name": "cache", "emptyDir": {}}, {"name": "app-config", "configMap": {"name": "cfg"}},
                              {"name": "varlog", "hostPath": {"path": str(hostlog)}}]
    stack.api.add_pod(pod)
    stack.pods_added += 1
    stack.agent.wait_metric("unlinkwatch_agent_pods_known", stack.pods_added)

    # the root filesystem: the image's files in a lower layer, the container's own in the upper one. The container
    # ends right after its last `rm`: its mount table was opened at its first exec (UW_KIND_MNT_NS) and kept
    c.prepare(["sh", "-c", "sleep 1; touch /tmp/made-here && rm /cache/x /etc/app/app.yaml /host/log/old.log "
                           "/etc/from-image /tmp/made-here"])
    rootfs, lower, upper, wd = (c.bundle / n for n in ("rootfs", "lower", "upper", "work"))
    rootfs.rename(lower)
    (lower / "etc" / "from-image").write_text("image")
    for d in (rootfs, upper, wd):
        d.mkdir()
    rec = runstate.record("mount", path=str(rootfs))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={wd}",
                    str(rootfs)], check=True)
    try:
        c.launch()
        res = c.wait()
        assert res.exit_code == 0, res.stderr
    finally:
        subprocess.run(["umount", "-l", str(rootfs)], check=False)
        rec.done()
        c.delete()

    rows = {r["path"]: (r["host_path"], r["volume"])
            for r in stack.wait_query(5, "--pod-uid", c.pod_uid) if r["comm"] == "rm"}
    assert rows == {
        "/cache/x": (f"{cache}/x", "emptyDir/cache"),
        "/etc/app/app.yaml": (f"{config}/app.yaml", "configMap/app-config"),
        "/host/log/old.log": (f"{hostlog}/old.log", "hostPath/varlog"),
        "/etc/from-image": (f"{lower}/etc/from-image", "rootfs"),
        "/tmp/made-here": (f"{upper}/tmp/made-here", "rootfs"),
    }
    by_volume = stack.query("--pod-uid", c.pod_uid, "--volume", "*Path/*")
    assert [r["path"] for r in by_volume] == ["/host/log/old.log"]
    on_node = stack.query("--pod-uid", c.pod_uid, "--host-path", f"{work}/kubelet/**")
    assert sorted(r["volume"] for r in on_node) == ["configMap/app-config", "emptyDir/cache"]

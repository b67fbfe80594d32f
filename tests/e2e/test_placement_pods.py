"""Where a pod's deleted files lived on the node: a runc container in a kubelet-style cgroup, its volumes bind-mounted
from a kubelet directory (emptyDir, configMap) and from the host (hostPath), its root filesystem a real overlayfs
(an image layer below, the container's layer above), and its pod, with those volumes, served by the API stand-in.
What the collector keeps: `host_path` and `volume` of each event."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, require_root
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


def stored_by(stack: Stack, pod_uid: str, comms: dict[str, int]) -> list[dict[str, Any]]:
    """The pod's stored events once those of `comms` (comm -> how many) are all in (30 s at most). Waited for before
    the test takes the pod's layers and volumes down: the agent decides an overlayfs layer, and finds a volume's
    device in the host's table, as it places each event, and on a node the kubelet unmounts a pod's volumes long
    after its last process, not milliseconds after."""
    deadline = time.monotonic() + 30
    while True:
        rows = stack.query("--pod-uid", pod_uid)
        counts = Counter(r["comm"] for r in rows)
        if all(counts[c] >= n for c, n in comms.items()) or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


def show(rows: list[dict[str, Any]]) -> None:
    """The stored events, one JSON line each, for `pytest -rP` (a record of what the collector kept)."""
    for r in rows:
        print(json.dumps(r, sort_keys=True))


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
    (cache / "sub").mkdir()
    (cache / "sub" / "y").touch()
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
                           "/etc/from-image /tmp/made-here && /bin/dirfd_unlink /cache/sub y"])
    rootfs, lower, upper, wd = (c.bundle / n for n in ("rootfs", "lower", "upper", "work"))
    subprocess.run(["gcc", "-static", "-O2", "-o", str(rootfs / "bin" / "dirfd_unlink"),
                    str(ROOT / "tests" / "support" / "dirfd_unlink.c")], check=True)
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
        stored = stored_by(stack, c.pod_uid, {"rm": 5, "dirfd_unlink": 1})
    finally:
        subprocess.run(["umount", "-l", str(rootfs)], check=False)
        rec.done()
        c.delete()

    show(stored)
    rows = {r["path"]: (r["host_path"], r["volume"]) for r in stored if r["comm"] == "rm"}
    assert rows == {
        "/cache/x": (f"{cache}/x", "emptyDir/cache"),
        "/etc/app/app.yaml": (f"{config}/app.yaml", "configMap/app-config"),
        "/host/log/old.log": (f"{hostlog}/old.log", "hostPath/varlog"),
        "/etc/from-image": (f"{lower}/etc/from-image", "rootfs"),
        "/tmp/made-here": (f"{upper}/tmp/made-here", "rootfs"),
    }
    # runc's init deletes dev/ptmx before its pivot_root: its old root is gone by the time the table is read, so
    # the row is unplaced unless it was placed before the pivot (then through the overlay's layers)
    ptmx = [r for r in stored if r["path"].endswith("/rootfs/dev/ptmx")]
    assert ptmx and all(r["host_path"] in ("", f"{upper}/dev/ptmx", f"{lower}/dev/ptmx") for r in ptmx), ptmx
    (at,) = [r for r in stored if r["comm"] == "dirfd_unlink"]
    assert (at["path"], at["raw_path"], at["host_path"], at["volume"]) == (
        "/cache/sub/y", "y", f"{cache}/sub/y", "emptyDir/cache")  # unlinkat(dirfd, "y")
    by_volume = stack.query("--pod-uid", c.pod_uid, "--volume", "*Path/*")
    assert [r["path"] for r in by_volume] == ["/host/log/old.log"]
    on_node = stack.query("--pod-uid", c.pod_uid, "--host-path", f"{work}/kubelet/**")
    assert sorted(r["volume"] for r in on_node) == ["configMap/app-config", "emptyDir/cache", "emptyDir/cache"]


def test_a_claims_volume_is_named_by_its_claim_and_each_volume_says_what_was_destroyed(stack: Stack) -> None:
    """A persistent volume (a loop-mounted ext4 at its CSI mount path, the PV bound to a claim the API stand-in
    serves), a secret in the kubelet's atomic-writer layout (`..data` -> a timestamped directory, each key a
    symlink through it) and a projected service-account token."""
    work = stack.work
    c = RuncContainer(work)
    vols = work / "kubelet" / "pods" / c.pod_uid / "volumes"
    pv_mount = vols / "kubernetes.io~csi" / "pv-data-1" / "mount"
    tls = vols / "kubernetes.io~secret" / "tls"
    token = vols / "kubernetes.io~projected" / "kube-api-access-x9z"
    for d in (pv_mount, tls / "..2026_12_06_01_02_03.000000001", token):
        d.mkdir(parents=True)
    (tls / "..2026_12_06_01_02_03.000000001" / "tls.key").write_text("key")
    (tls / "..data").symlink_to("..2026_12_06_01_02_03.000000001")
    (tls / "tls.key").symlink_to("..data/tls.key")
    (token / "token").write_text("eyJ")
    image = work / "pv.img"
    loop = runstate.record("loop", image=str(image))
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mounted = runstate.record("mount", path=str(pv_mount))
    subprocess.run(["mount", "-o", "loop", str(image), str(pv_mount)], check=True)
    try:
        (pv_mount / "db").mkdir()
        (pv_mount / "db" / "big").write_bytes(b"\0" * (1 << 20))
        (pv_mount / "db" / "linked").write_text("x")
        (pv_mount / "db" / "other-name").hardlink_to(pv_mount / "db" / "linked")
        (pv_mount / "db" / "old").write_bytes(b"o" * 2048)
        (pv_mount / "db" / "new").write_bytes(b"n")
        before = {n: os.stat(pv_mount / "db" / n) for n in ("big", "linked", "old")}
        c.binds = [(pv_mount, "/data"), (tls, "/etc/tls"), (token, "/var/run/secrets/kubernetes.io/serviceaccount")]
        stack.api.add_object({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                              "metadata": {"name": "data-db-0", "namespace": "prod", "uid": "claim-uid"},
                              "spec": {"volumeName": "pv-data-1"}, "status": {"phase": "Bound"}},
                             "persistentvolumeclaims")
        pod = make_pod("db-0", "prod", uid=c.pod_uid, containers=[("db", "postgres:16", c.container_id)])
        pod["spec"]["volumes"] = [
            {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}},
            {"name": "tls", "secret": {"secretName": "db-tls"}},
            {"name": "kube-api-access-x9z", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]
        stack.api.add_pod(pod)
        stack.pods_added += 1
        stack.agent.wait_metric("unlinkwatch_agent_pods_known", stack.pods_added)
        c.prepare(["sh", "-c", "sleep 1; cd /data/db && rm big linked && mv new old && rm /etc/tls/tls.key "
                               "/etc/tls/..data/tls.key /var/run/secrets/kubernetes.io/serviceaccount/token"])
        try:
            c.launch()
            res = c.wait()
            assert res.exit_code == 0, res.stderr
            everything = stored_by(stack, c.pod_uid, {"rm": 5, "mv": 1})
        finally:
            c.delete()
    finally:
        subprocess.run(["umount", str(pv_mount)], check=False)
        mounted.done()
        runstate.detach_loops(image)
        loop.done()

    show(everything)
    rows = {r["path"]: r for r in everything if r["comm"] == "rm"}
    (moved,) = [r for r in everything if r["op"] == "rename"]
    assert {p: (r["host_path"], r["volume"]) for p, r in rows.items()} == {
        "/data/db/big": (f"{pv_mount}/db/big", "persistentVolumeClaim/data-db-0"),
        "/data/db/linked": (f"{pv_mount}/db/linked", "persistentVolumeClaim/data-db-0"),
        "/etc/tls/tls.key": (f"{tls}/tls.key", "secret/tls"),
        "/etc/tls/..data/tls.key": (f"{tls}/..data/tls.key", "secret/tls"),
        "/var/run/secrets/kubernetes.io/serviceaccount/token": (f"{token}/token", "projected/kube-api-access-x9z"),
    }
    big, linked = rows["/data/db/big"], rows["/data/db/linked"]
    # ext4: read in every attach mode (its unlink tracepoint where only tracepoints are allowed)
    assert (big["inode"], big["size"], big["nlink"], big["file_type"], big["freed"]) == (
        before["big"].st_ino, 1 << 20, 1, "file", True)
    assert big["dev"] == f"{os.major(before['big'].st_dev)}:{os.minor(before['big'].st_dev)}"
    assert (linked["inode"], linked["nlink"], linked["freed"]) == (before["linked"].st_ino, 2, False)
    # a rename over a file: the destination it destroyed, where it lived on the node
    assert (moved["path"], moved["rename_to"], moved["replaced"]) == ("/data/db/new", "/data/db/old", True)
    assert (moved["host_path"], moved["rename_to_host_path"]) == (f"{pv_mount}/db/new", f"{pv_mount}/db/old")
    assert (moved["inode"], moved["size"], moved["freed"]) == (before["old"].st_ino, 2048, True)
    claimed = stack.query("--pod-uid", c.pod_uid, "--volume", "persistentVolumeClaim/*")
    assert sorted(r["path"] for r in claimed) == ["/data/db/big", "/data/db/linked", "/data/db/new"]

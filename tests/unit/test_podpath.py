"""Kubelet cgroup paths -> pod UID, container ID, runtime, QoS: table-driven over realistic samples."""

from __future__ import annotations

import pytest
from unlinkwatch.agent.identity.podpath import PodPath, is_kube_path, parse, parse_container

UID = "3f2a1c9e-7b4d-4e8f-9a1b-2c3d4e5f6a7b"
UID_ = UID.replace("-", "_")
CID = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
STATIC_UID = "9c3b1a2f8e7d6c5b4a39281706f5e4d3"

CASES: list[tuple[str, str, PodPath | None]] = [
    ("systemd burstable containerd",
     f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
     PodPath(UID, CID, "containerd", "burstable")),
    ("systemd besteffort cri-o",
     f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope",
     PodPath(UID, CID, "crio", "besteffort")),
    ("systemd cri-o conmon",
     f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{CID}.scope",
     PodPath(UID, CID, "crio-conmon", "besteffort")),
    ("systemd guaranteed docker",
     f"/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope",
     PodPath(UID, CID, "docker", "guaranteed")),
    ("systemd pod-level cgroup",
     f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
     PodPath(UID, "", "", "burstable")),
    ("cgroupfs burstable",
     f"/kubepods/burstable/pod{UID}/{CID}",
     PodPath(UID, CID, "", "burstable")),
    ("cgroupfs besteffort",
     f"/kubepods/besteffort/pod{UID}/{CID}",
     PodPath(UID, CID, "", "besteffort")),
    ("cgroupfs guaranteed",
     f"/kubepods/pod{UID}/{CID}",
     PodPath(UID, CID, "", "guaranteed")),
    ("cgroupfs pod-level cgroup",
     f"/kubepods/burstable/pod{UID}",
     PodPath(UID, "", "", "burstable")),
    ("cgroupfs static pod hash uid",
     f"/kubepods/burstable/pod{STATIC_UID}/{CID}",
     PodPath(STATIC_UID, CID, "", "burstable")),
    ("cgroupfs cri-o scope names",
     f"/kubepods/burstable/pod{UID}/crio-{CID}",
     PodPath(UID, CID, "crio", "burstable")),
    ("container's own nested sub-cgroup",
     f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
     "/init.scope",
     PodPath(UID, CID, "containerd", "burstable")),
    ("nested systemd inside a cgroupfs container",
     f"/kubepods/pod{UID}/{CID}/system.slice/cron.service",
     PodPath(UID, CID, "", "guaranteed")),
    ("kind node: kubelet.slice prefix",
     f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
     f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
     PodPath(UID, CID, "containerd", "besteffort")),
    ("kind node in docker: system.slice docker prefix",
     f"/system.slice/docker-{'a' * 64}.scope/kubelet.slice/kubelet-kubepods.slice/"
     f"kubelet-kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
     PodPath(UID, CID, "containerd", "guaranteed")),
    ("k3s cgroupfs under a prefix",
     f"/k3s/kubepods/burstable/pod{UID}/{CID}",
     PodPath(UID, CID, "", "burstable")),
    ("unknown runtime prefix keeps the uid and the 64-hex id",
     f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/kata-{CID}.scope",
     PodPath(UID, CID, "kata", "burstable")),
    ("unknown container naming: best-effort id, no exception",
     f"/kubepods/burstable/pod{UID}/sandbox-abc",
     PodPath(UID, "sandbox-abc", "", "burstable")),
    ("host root", "/", None),
    ("host service", "/system.slice/containerd.service", None),
    ("host user session", "/user.slice/user-0.slice/session-3.scope", None),
    ("qos-level cgroup has no pod", "/kubepods.slice/kubepods-burstable.slice", None),
    ("kubepods root has no pod", "/kubepods", None),
    ("a pod-looking name outside kubepods is not a pod", f"/system.slice/pod{UID}/{CID}", None),
    ("empty path", "", None),
]


@pytest.mark.parametrize(("name", "path", "want"), CASES, ids=[c[0] for c in CASES])
def test_kubelet_paths_parse_to_pod_identity(name: str, path: str, want: PodPath | None) -> None:
    assert parse(path) == want


def test_a_container_component_without_runtime_prefix_is_a_bare_id() -> None:
    assert parse_container(CID) == (CID, "")


def test_qos_level_cgroups_count_as_kube_paths_but_host_services_do_not() -> None:
    assert is_kube_path("/kubepods/burstable")
    assert not is_kube_path("/system.slice/kubelet.service")

"""Kubelet cgroup path -> pod UID, container ID, runtime and QoS class (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Pod UIDs are UUIDs; static pods use a 32-hex config hash; the systemd driver writes '-' as '_'.
_UID = r"[0-9a-fA-F][0-9a-fA-F_-]{7,63}"
_SYSTEMD_POD = re.compile(rf"(?:^|.*-)pod({_UID})\.slice$")
_CGROUPFS_POD = re.compile(rf"^pod({_UID})$")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Runtime scope prefixes written by kubelet's systemd driver (and CRI-O/Docker under cgroupfs).
_RUNTIMES = (("cri-containerd-", "containerd"), ("crio-conmon-", "crio-conmon"), ("crio-", "crio"),
             ("docker-", "docker"))
_QOS = {"burstable": "burstable", "besteffort": "besteffort"}


@dataclass(frozen=True, slots=True)
class PodPath:
    pod_uid: str
    container_id: str = ""  # "" for the pod-level cgroup itself
    runtime: str = ""  # containerd | crio | docker | ... ; "" when the path does not say (cgroupfs driver)
    qos: str = "guaranteed"  # guaranteed | burstable | besteffort


def _pod_uid(component: str) -> str | None:
    m = _SYSTEMD_POD.match(component)
    if m:
        return m.group(1).replace("_", "-")
    m = _CGROUPFS_POD.match(component)
    return m.group(1) if m else None


def _qos(components: list[str]) -> str:
    for c in components:
        for word in c.removesuffix(".slice").split("-"):
            if word in _QOS:
                return _QOS[word]
    return "guaranteed"


def parse_container(component: str) -> tuple[str, str]:
    """(container id, runtime) of the cgroup directly below a pod's; best effort for unknown runtimes."""
    name = component.removesuffix(".scope")
    for prefix, runtime in _RUNTIMES:
        if name.startswith(prefix):
            return name[len(prefix):], runtime
    if _HEX64.fullmatch(name):
        return name, ""
    m = _HEX64.search(name)
    if m:
        # An unknown runtime's prefix: keep the 64-hex id and name the runtime by the prefix.
        return m.group(0), name[: m.start()].rstrip("-_:") or ""
    return name, ""


def parse(path: str) -> PodPath | None:
    """Pod identity of a cgroup path relative to the cgroup2 root; None when the path is not in a pod."""
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        if "kubepods" not in part and not any("kubepods" in p for p in parts[:i]):
            continue
        uid = _pod_uid(part)
        if uid is None:
            continue
        qos = _qos(parts[:i + 1])
        if i + 1 >= len(parts):
            return PodPath(pod_uid=uid, qos=qos)
        cid, runtime = parse_container(parts[i + 1])
        return PodPath(pod_uid=uid, container_id=cid, runtime=runtime, qos=qos)
    return None


def is_kube_path(path: str) -> bool:
    """True for anything under a kubepods hierarchy (including QoS-level cgroups without a pod)."""
    return "kubepods" in path

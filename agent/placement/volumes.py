"""Which pod volume a host path is in (pure): `<type>/<name>`, type being the pod spec's key for it.

The kubelet keeps each pod's volumes at <root>/pods/<pod uid>/volumes/<plugin>/<directory>, the plugin being
"kubernetes.io~<name>" and the directory the volume's name (for persistent volumes, the PV's name), and a subPath's
bind source at <root>/pods/<uid>/volume-subpaths/<volume>/<container>/<index>. A hostPath volume is the host's own
directory, named in the pod spec. A container's own filesystem is "rootfs"."""

from __future__ import annotations

import re
from collections.abc import Mapping

from .mounts import under

KUBELET_ROOT = b"/var/lib/kubelet"
ROOTFS = "rootfs"

# the kubelet's plugin directory -> the pod spec's key
PLUGINS = {
    "empty-dir": "emptyDir",
    "configmap": "configMap",
    "secret": "secret",
    "projected": "projected",
    "downward-api": "downwardAPI",
    "csi": "csi",
    "local-volume": "local",
    "nfs": "nfs",
    "iscsi": "iscsi",
    "fc": "fc",
    "rbd": "rbd",
    "cephfs": "cephfs",
    "git-repo": "gitRepo",
    "host-path": "hostPath",
}
_VOLUME = re.compile(rb"/pods/([^/]+)/volumes/([^/]+)/([^/]+)(?:/|$)")
_SUBPATH = re.compile(rb"/pods/([^/]+)/volume-subpaths/([^/]+)/[^/]+/[^/]+(?:/|$)")


def kubelet_volume(host_path: bytes, root: bytes = KUBELET_ROOT) -> tuple[str, str] | None:
    """(pod uid, "type/name") of a path under the kubelet's pod volumes, or None."""
    rest = under(host_path, root.rstrip(b"/") or b"/")
    if not rest:
        return None
    m = _VOLUME.match(rest)
    if m:
        plugin = m[2].decode("utf-8", "replace")
        kind = PLUGINS.get(plugin.removeprefix("kubernetes.io~"), plugin)
        return m[1].decode("utf-8", "replace"), f"{kind}/{m[3].decode('utf-8', 'replace')}"
    m = _SUBPATH.match(rest)
    if m:
        return m[1].decode("utf-8", "replace"), f"subPath/{m[2].decode('utf-8', 'replace')}"
    return None


def pod_volume(label: str, volumes: Mapping[str, str], claims: Mapping[str, str], pvs: Mapping[str, str]) -> str:
    """A kubelet directory's "type/name" (kubelet_volume()) as the pod spec names it: a PV's directory as its
    claim ("persistentVolumeClaim/<claim>", "ephemeral/<volume>") where the pod's claim volume is bound to that
    PV (`pvs`: PV name -> volume name), a subPath as its volume."""
    kind, _, name = label.partition("/")
    if kind == "subPath":
        return claims.get(name) or f"{volumes.get(name) or kind}/{name}"
    volume = pvs.get(name)
    if volume is not None and volume in claims:
        return claims[volume]
    return label


def host_path_volume(host_path: bytes, host_paths: Mapping[str, bytes]) -> str:
    """"hostPath/<name>" for the pod's hostPath volume (name -> path) that holds `host_path`, the deepest one."""
    best = ""
    depth = -1
    for name, path in host_paths.items():
        if under(host_path, path.rstrip(b"/") or b"/") is not None and len(path) > depth:
            best, depth = f"hostPath/{name}", len(path)
    return best

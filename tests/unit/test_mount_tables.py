"""Where a deleted file lived on the node, from mount tables and the kubelet's layout (agent/placement/, pure)."""

from __future__ import annotations

from unlinkwatch.agent.identity.kube import pod_info
from unlinkwatch.agent.placement.mounts import MountTable, host_path, overlay_layers, under
from unlinkwatch.agent.placement.volumes import host_path_volume, kubelet_volume

from unlinkwatch.kubestub import make_pod
from unlinkwatch.mountinfo import parse_mountinfo

HOST = parse_mountinfo(b"""\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw - proc proc rw
40 22 8:17 / /var/lib/kubelet rw - ext4 /dev/sdb1 rw
41 22 0:50 / /run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs rw - overlay overlay \
rw,lowerdir=/img/l2:/img/l1,upperdir=/img/up,workdir=/img/work
42 40 7:3 / /var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/pv-9/mount rw - ext4 /dev/loop3 rw
43 22 8:1 /srv/with\\040space /mnt/space rw - ext4 /dev/sda1 rw
""")

CONTAINER = parse_mountinfo(b"""\
600 500 0:50 / / rw - overlay overlay rw,lowerdir=/img/l2:/img/l1,upperdir=/img/up,workdir=/img/work
601 600 8:17 /pods/u1/volumes/kubernetes.io~empty-dir/cache /cache rw - ext4 /dev/sdb1 rw
602 600 7:3 / /data rw - ext4 /dev/loop3 rw
603 600 8:1 /var/log /host/log rw - ext4 /dev/sda1 rw
604 600 0:77 / /dev/shm rw - tmpfs shm rw
605 600 8:17 /pods/u1/volumes/kubernetes.io~configmap/cfg/..2026_12_06 /etc/app/x.yaml ro - ext4 /dev/sdb1 rw
""")


def _never(upper: bytes, lowers: list[bytes], fs_path: bytes) -> bytes:
    raise AssertionError("not an overlay")


def test_mountinfo_lines_parse_with_their_escapes() -> None:
    m = HOST[-1]
    assert (m.mount_id, m.dev, m.root, m.point, m.fstype) == (43, "8:1", b"/srv/with space", b"/mnt/space", "ext4")


def test_under_is_by_whole_components() -> None:
    assert under(b"/cache/x", b"/cache") == b"/x"
    assert under(b"/cache", b"/cache") == b""
    assert under(b"/cachex/y", b"/cache") is None
    assert under(b"/a", b"/") == b"/a"


def test_the_last_mount_on_a_point_and_the_longest_point_win() -> None:
    t = MountTable(parse_mountinfo(b"1 0 8:1 / / rw - ext4 a rw\n2 1 0:9 / /x rw - tmpfs a rw\n"
                                   b"3 1 0:10 / /x rw - tmpfs b rw\n"))
    found = t.find(b"/x/y")
    assert found is not None and found[0].mount_id == 3 and found[1] == b"/y"
    assert t.find(b"/z") is not None and t.find(b"/z")[0].mount_id == 1  # type: ignore[index]


def test_a_path_is_mapped_from_the_mount_that_was_the_processs_root_when_it_deleted() -> None:
    after = MountTable(CONTAINER)  # read after the pivot_root: the overlay is "/"
    before = MountTable(parse_mountinfo(b"500 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
                                        b"600 500 0:50 / /bundle/rootfs rw - overlay overlay rw,upperdir=/img/up\n"))
    assert after.root_id == 600 and before.root_id == 500
    assert after.from_root(b"/etc/x", 600) == b"/etc/x" and after.from_root(b"/etc/x", 0) == b"/etc/x"
    # a deletion after the pivot, placed with the table read before it: below the new root's mount point
    assert before.from_root(b"/etc/x", 600) == b"/bundle/rootfs/etc/x"
    # runc's init deleting before its pivot, placed with the table read after it: the old root is gone
    assert after.from_root(b"/bundle/rootfs/dev/ptmx", 500) is None


def test_a_bind_mounted_volume_maps_to_its_directory_under_the_kubelet() -> None:
    where, m = host_path(b"/cache/a/b", MountTable(CONTAINER), MountTable(HOST), _never)
    assert where == b"/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache/a/b"
    assert m is not None and m.point == b"/cache"


def test_a_persistent_volume_maps_through_the_mount_of_the_same_device() -> None:
    where, _ = host_path(b"/data/db/x", MountTable(CONTAINER), MountTable(HOST), _never)
    assert where == b"/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/pv-9/mount/db/x"


def test_a_host_path_volume_maps_to_the_hosts_directory() -> None:
    where, _ = host_path(b"/host/log/syslog", MountTable(CONTAINER), MountTable(HOST), _never)
    assert where == b"/var/log/syslog"


def test_a_filesystem_the_host_has_not_mounted_has_no_host_path() -> None:
    where, m = host_path(b"/dev/shm/x", MountTable(CONTAINER), MountTable(HOST), _never)
    assert where == b"" and m is not None and m.fstype == "tmpfs"


def test_a_file_on_the_overlay_root_asks_which_layer_held_it() -> None:
    seen = []

    def layer(upper: bytes, lowers: list[bytes], fs_path: bytes) -> bytes:
        seen.append((upper, lowers, fs_path))
        return upper + fs_path

    where, m = host_path(b"/app/tmp.txt", MountTable(CONTAINER), MountTable(HOST), layer)
    assert where == b"/img/up/app/tmp.txt" and m is not None and m.point == b"/"
    assert seen == [(b"/img/up", [b"/img/l2", b"/img/l1"], b"/app/tmp.txt")]


def test_an_overlay_that_is_the_hosts_own_root_maps_as_the_host_sees_it() -> None:
    host = MountTable(parse_mountinfo(b"1 0 0:40 / / rw - overlay overlay rw,lowerdir=/ro,upperdir=/up/u,workdir=/w\n"))
    ns = MountTable(parse_mountinfo(b"7 6 0:40 /tmp/src /mnt rw - overlay overlay rw,lowerdir=/ro,upperdir=/up/u\n"))
    assert host_path(b"/mnt/x", ns, host, _never) == (b"/tmp/src/x", ns.mounts[0])


def test_overlay_options_keep_escaped_colons_and_commas_in_layer_names() -> None:
    upper, lowers = overlay_layers("rw,lowerdir=/a\\:b:/c\\054d,upperdir=/u\\040p,workdir=/w")
    assert upper == b"/u p" and lowers == [b"/a:b", b"/c,d"]
    assert overlay_layers("rw,lowerdir+=/l1,lowerdir+=/l2,upperdir=/u") == (b"/u", [b"/l1", b"/l2"])


def test_kubelet_volume_directories_name_their_type_and_volume() -> None:
    k = b"/var/lib/kubelet/pods/u1"
    assert kubelet_volume(k + b"/volumes/kubernetes.io~empty-dir/cache/x") == ("u1", "emptyDir/cache")
    assert kubelet_volume(k + b"/volumes/kubernetes.io~configmap/app-config/..data") == ("u1", "configMap/app-config")
    assert kubelet_volume(k + b"/volumes/kubernetes.io~secret/tls/tls.key") == ("u1", "secret/tls")
    assert kubelet_volume(k + b"/volumes/kubernetes.io~projected/kube-api-access-x9z/token") == (
        "u1", "projected/kube-api-access-x9z")
    assert kubelet_volume(k + b"/volumes/kubernetes.io~csi/pv-9/mount/x") == ("u1", "csi/pv-9")
    assert kubelet_volume(k + b"/volume-subpaths/logs/app/0/x") == ("u1", "subPath/logs")
    assert kubelet_volume(b"/var/lib/kubelet/plugins/x") is None
    assert kubelet_volume(b"/srv/kube/pods/u2/volumes/kubernetes.io~empty-dir/e", b"/srv/kube") == (
        "u2", "emptyDir/e")


def test_a_host_path_volume_is_the_deepest_one_holding_the_path() -> None:
    vols = {"varlog": b"/var/log", "pods": b"/var/log/pods", "other": b"/srv"}
    assert host_path_volume(b"/var/log/pods/a/0.log", vols) == "hostPath/pods"
    assert host_path_volume(b"/var/log/syslog", vols) == "hostPath/varlog"
    assert host_path_volume(b"/var/lib/x", vols) == ""


def test_a_pods_volumes_are_known_by_name_with_their_type_and_host_paths() -> None:
    pod = make_pod("web-0", "prod")
    pod["spec"]["volumes"] = [{"name": "cache", "emptyDir": {}}, {"name": "data",
                              "persistentVolumeClaim": {"claimName": "data-web-0"}},
                              {"name": "varlog", "hostPath": {"path": "/var/log", "type": "Directory"}}]
    info = pod_info(pod, "StatefulSet/web")
    assert dict(info.volumes) == {"cache": "emptyDir", "data": "persistentVolumeClaim", "varlog": "hostPath"}
    assert dict(info.host_paths) == {"varlog": b"/var/log"}

"""cgroup2 mount discovery (table of mountinfo layouts) and the id -> path cache, without root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from unlinkwatch.agent.identity.cgroups import Cgroup2Mount, CgroupPaths, join_root, parse_mountinfo, scan

PURE_V2 = """\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""
HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V1_ONLY = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
"""
CONTAINER_NS = """\
601 600 0:30 /kubepods/burstable/pod1/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup ro
"""
EXTRA_BIND = """\
50 1 0:40 / /run/my\\040cgroups rw - cgroup2 none rw
26 22 0:40 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw
"""
ESCAPED_ONLY = "50 1 0:40 / /run/my\\040cgroups rw - cgroup2 none rw\n"


@pytest.mark.parametrize(("text", "want"), [
    (PURE_V2, Cgroup2Mount("/sys/fs/cgroup", "/")),
    (HYBRID, Cgroup2Mount("/sys/fs/cgroup/unified", "/")),
    (V1_ONLY, None),
    (CONTAINER_NS, Cgroup2Mount("/sys/fs/cgroup", "/kubepods/burstable/pod1/abc")),
    (EXTRA_BIND, Cgroup2Mount("/sys/fs/cgroup", "/")),
    (ESCAPED_ONLY, Cgroup2Mount("/run/my cgroups", "/")),
    ("", None),
    ("garbage line without separator\n", None),
], ids=["pure v2", "hybrid", "v1 only", "cgroup namespace", "extra bind mount", "escaped mountpoint", "empty",
        "garbage"])
def test_mountinfo_layouts_find_the_cgroup2_mount(text: str, want: Cgroup2Mount | None) -> None:
    assert parse_mountinfo(text) == want


@pytest.mark.parametrize(("root", "rel", "want"), [
    ("/", "", "/"), ("/", "/kubepods/x", "/kubepods/x"), ("/", "kubepods", "/kubepods"),
    ("/ns/root", "/a", "/ns/root/a"), ("/ns/root", "/", "/ns/root"),
])
def test_paths_are_made_relative_to_the_hierarchy_root(root: str, rel: str, want: str) -> None:
    assert join_root(root, rel) == want


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_tree(tmp_path: Path, *rels: str) -> dict[str, int]:
    ids = {}
    for rel in rels:
        d = tmp_path / rel.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        ids[rel] = os.stat(d).st_ino
    return ids


def test_a_scan_maps_every_directory_inode_to_its_path(tmp_path: Path) -> None:
    ids = make_tree(tmp_path, "/kubepods/burstable/podA/c1", "/system.slice/x.service")
    found = scan(Cgroup2Mount(str(tmp_path)))
    for rel, ino in ids.items():
        assert found[ino] == rel
    assert found[os.stat(tmp_path).st_ino] == "/"


def test_the_mkdir_cache_answers_for_cgroups_that_no_longer_exist(tmp_path: Path) -> None:
    paths = CgroupPaths(Cgroup2Mount(str(tmp_path)), use_handles=False)
    paths.on_mkdir(4242, "/kubepods/burstable/podA/gone")
    assert paths.lookup(4242) == "/kubepods/burstable/podA/gone"
    paths.on_mkdir(4243, "kubepods/no-leading-slash")
    assert paths.lookup(4243) == "/kubepods/no-leading-slash"


def test_removed_cgroups_are_kept_for_the_grace_period_then_forgotten(tmp_path: Path) -> None:
    clock = Clock()
    ids = make_tree(tmp_path, "/kubepods/podA/c1", "/kubepods/podA/c2")
    paths = CgroupPaths(Cgroup2Mount(str(tmp_path)), grace_seconds=300, clock=clock, use_handles=False)
    paths.scan()
    (tmp_path / "kubepods/podA/c1").rmdir()
    paths.sweep()  # notices c1 is gone
    clock.now += 299
    paths.sweep()
    assert paths.lookup(ids["/kubepods/podA/c1"]) == "/kubepods/podA/c1"
    clock.now += 2
    assert paths.sweep() == 1
    assert paths.lookup(ids["/kubepods/podA/c1"]) is None
    assert paths.lookup(ids["/kubepods/podA/c2"]) == "/kubepods/podA/c2"


def test_the_cache_is_bounded_least_recently_added_first(tmp_path: Path) -> None:
    paths = CgroupPaths(Cgroup2Mount(str(tmp_path)), max_entries=100, use_handles=False)
    for i in range(1000):
        paths.on_mkdir(10_000 + i, f"/kubepods/pod{i}")
    assert len(paths) == 100
    assert paths.lookup(10_999) == "/kubepods/pod999"
    assert paths.lookup(10_000) is None


def test_without_a_cgroup2_mount_nothing_resolves_and_nothing_fails() -> None:
    paths = CgroupPaths(None)
    assert paths.scan() == 0
    assert paths.lookup(12345) is None
    assert paths.sweep() == 0

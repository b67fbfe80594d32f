"""Hand-made cgroups and cgroup_mkdir traces for identity tests; runc containers come from unlinkwatch.runcpod."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

from unlinkwatch.agent.probe import tracefs
from unlinkwatch.agent.probe.tracefs import TRACEFS

from unlinkwatch.runcpod import (  # noqa: F401 - the tests' names for them
    BUSYBOX,
    RuncContainer,
    RuncResult,
    cgroup2_mountpoint,
    kubelet_cgroupfs_path,
    missing,
)
from unlinkwatch.runstate import _rmdir_up, die_with_parent, remove_everywhere  # noqa: F401


def kubelet_systemd_path(pod_uid: str, container_id: str, qos: str = "burstable") -> str:
    u = pod_uid.replace("-", "_")
    return (f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice/"
            f"cri-containerd-{container_id}.scope")



class HandMadeCgroup:
    """A cgroup2 directory made by hand (e.g. a systemd-driver kubelet path) holding a process of our own."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.dir = cgroup2_mountpoint() + path
        self.proc: subprocess.Popen[bytes] | None = None

    def create(self) -> int:
        """Make the directory; returns its cgroup id (the inode number)."""
        os.makedirs(self.dir, exist_ok=True)
        return os.stat(self.dir).st_ino

    def run(self, args: list[str]) -> subprocess.Popen[bytes]:
        """Start a process inside the cgroup (it joins before exec, so it never runs elsewhere)."""
        procs = os.path.join(self.dir, "cgroup.procs")

        def join() -> None:
            die_with_parent()
            with open(procs, "w") as f:
                f.write("0")

        self.proc = subprocess.Popen(args, preexec_fn=join, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self.proc

    def remove(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        deadline = time.monotonic() + 5
        while os.path.exists(self.dir) and time.monotonic() < deadline:
            try:
                _rmdir_up(self.dir, cgroup2_mountpoint())
                break
            except OSError:
                time.sleep(0.02)
        _rmdir_up(self.dir, cgroup2_mountpoint())


class CgroupMkdirTrace:
    """The kernel's cgroup:cgroup_mkdir records for the cgroup2 hierarchy, from a private tracefs instance. A tracefs
    it has to mount is unmounted again when it ends (recorded, for make clean-host, should the run be killed)."""

    def __init__(self, name: str | None = None) -> None:
        self.dir = f"{TRACEFS}/instances/{name or 'uw-identity-' + secrets.token_hex(4)}"
        self._mount: tracefs.Mounted | None = None

    def __enter__(self) -> CgroupMkdirTrace:
        self._mount = tracefs.ensure()  # the agent's own: recorded first, for make clean-host
        os.mkdir(self.dir)
        ev = f"{self.dir}/events/cgroup/cgroup_mkdir"
        Path(ev, "filter").write_text("root == 0\n")  # the default (cgroup2) hierarchy only
        Path(ev, "enable").write_text("1\n")
        return self

    def records(self) -> list[tuple[int, str]]:
        """(id, path) of every cgroup2 directory created since __enter__."""
        out = []
        for line in Path(self.dir, "trace").read_text().splitlines():
            if "cgroup_mkdir:" not in line:
                continue
            fields = dict(f.split("=", 1) for f in line.split("cgroup_mkdir:", 1)[1].split() if "=" in f)
            out.append((int(fields["id"]), fields["path"]))
        return out

    def __exit__(self, *exc: object) -> None:
        Path(self.dir, "events/cgroup/cgroup_mkdir/enable").write_text("0\n")
        os.rmdir(self.dir)
        if self._mount is not None:
            tracefs.release(self._mount)

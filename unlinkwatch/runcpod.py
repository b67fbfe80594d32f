"""Real containers in kubelet-style cgroups: Debian's runc running a busybox root, its cgroupsPath what kubelet's
cgroupfs driver writes. The demo's pods and the identity tests' containers (a container outlives a killed
`runc run`, so each is recorded for make clean-host)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from unlinkwatch import runstate
from unlinkwatch.agent.identity.cgroups import find_cgroup2
from unlinkwatch.runstate import die_with_parent, remove_everywhere

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "rm", "sleep", "cat", "echo", "touch", "mkdir", "ls", "true", "rmdir", "mv")


def missing() -> str | None:
    """Why real containers cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create cgroups and run runc (CI runs as root)"
    if shutil.which("runc") is None:
        return "runc is not installed (apt-get install runc)"
    if not os.path.exists(BUSYBOX):
        return "busybox-static is not installed"
    if find_cgroup2() is None:
        return "no cgroup2 hierarchy mounted"
    return None


def cgroup2_mountpoint() -> str:
    m = find_cgroup2()
    assert m is not None, "no cgroup2 mount"
    return m.mountpoint.rstrip("/")


def kubelet_cgroupfs_path(pod_uid: str, container_id: str, qos: str = "burstable") -> str:
    if qos == "guaranteed":
        return f"/kubepods/pod{pod_uid}/{container_id}"
    return f"/kubepods/{qos}/pod{pod_uid}/{container_id}"


@dataclass
class RuncResult:
    exit_code: int
    stdout: str
    stderr: str


class RuncContainer:
    """One runc container whose cgroupsPath is a kubelet cgroupfs path; own pid and mount namespaces."""

    def __init__(self, workdir: Path, pod_uid: str | None = None, container_id: str | None = None,
                 qos: str = "burstable") -> None:
        self.pod_uid = pod_uid or str(uuid.uuid4())
        self.container_id = container_id or secrets.token_hex(32)
        self.cgroup_path = kubelet_cgroupfs_path(self.pod_uid, self.container_id, qos)
        self.bundle = workdir / f"bundle-{self.container_id[:12]}"
        self.state = workdir / "runc-state"
        self.name = f"uw-{self.container_id[:16]}"
        self._proc: subprocess.Popen[str] | None = None
        self._rec: runstate.Record | None = None
        self.binds: list[tuple[Path, str]] = []  # (host directory, path in the container): a pod's volumes

    @property
    def cgroup_dir(self) -> str:
        return cgroup2_mountpoint() + self.cgroup_path

    def prepare(self, args: list[str]) -> None:
        rootfs = self.bundle / "rootfs"
        for d in ("bin", "proc", "dev", "tmp", "etc", "sys"):
            (rootfs / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
        for applet in APPLETS:
            link = rootfs / "bin" / applet
            if not link.exists():
                link.symlink_to("busybox")
        subprocess.run(["runc", "spec"], cwd=self.bundle, check=True)
        cfg_path = self.bundle / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = args
        cfg["root"]["readonly"] = False
        cfg["linux"]["cgroupsPath"] = self.cgroup_path
        cfg["linux"]["namespaces"] = [ns for ns in cfg["linux"]["namespaces"] if ns["type"] != "network"]
        cfg["mounts"] += [{"destination": dst, "type": "bind", "source": str(src), "options": ["rbind", "rw"]}
                          for src, dst in self.binds]
        cfg_path.write_text(json.dumps(cfg))

    def _cmd(self, *args: str) -> list[str]:
        return ["runc", "--root", str(self.state), *args]

    def run(self, args: list[str], timeout: float = 30.0) -> RuncResult:
        """Run to completion; returns exit code and output; the container is deleted afterwards."""
        self.prepare(args)
        self._record()
        try:
            p = subprocess.run(self._cmd("run", "--bundle", str(self.bundle), self.name), capture_output=True,
                               text=True, timeout=timeout, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
            return RuncResult(p.returncode, p.stdout, p.stderr)
        finally:
            self.delete()

    def _record(self) -> None:
        """A container can outlive a killed run: recorded for `make clean-host` (unlinkwatch/runstate.py)."""
        self._rec = runstate.record("runc", root=str(self.state), name=self.name, cgroup=self.cgroup_path)

    def start(self, args: list[str]) -> int:
        """Start in the background; returns the container's init pid (host view) once it runs."""
        self.prepare(args)
        return self.launch()

    def launch(self) -> int:
        """start() of a prepared bundle (whose rootfs the caller may have filled in between)."""
        self._record()
        self._proc = subprocess.Popen(self._cmd("run", "--bundle", str(self.bundle), self.name),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            st = subprocess.run(self._cmd("state", self.name), capture_output=True, text=True)
            if st.returncode == 0:
                state = json.loads(st.stdout)
                if state.get("status") == "running" and state.get("pid"):
                    return int(state["pid"])
            if self._proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"runc container did not start: {self._proc.stderr.read() if self._proc.stderr else ''}")

    def exec(self, args: list[str], timeout: float = 30.0) -> RuncResult:
        """`runc exec` into the running container (what `kubectl exec` comes down to on the node)."""
        p = subprocess.run(self._cmd("exec", self.name, *args), capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        return RuncResult(p.returncode, p.stdout, p.stderr)

    def wait(self, timeout: float = 30.0) -> RuncResult:
        assert self._proc is not None
        out, err = self._proc.communicate(timeout=timeout)
        return RuncResult(self._proc.returncode, out, err)

    def delete(self) -> None:
        subprocess.run(self._cmd("delete", "--force", self.name), capture_output=True)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()
        remove_everywhere(self.cgroup_path)
        shutil.rmtree(self.bundle, ignore_errors=True)
        if self._rec is not None:
            self._rec.done()

"""`unlinkwatch demo`: a collector on a temp SQLite file, the agent on this host, and a pretend pod (a
busybox chroot in a kubelet-style cgroup) that deletes a few files, two of them sensitive. Deletions
and alerts are shown live; --duration ends it by itself."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc

from unlinkwatch.errors import UserError
from unlinkwatch.eventjson import event_to_dict, text
from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.pb import events_pb2_grpc as pbg
from unlinkwatch.runstate import die_with_parent, temp_dir

DEMO_RETENTION = "1h"
POD_SCRIPT = """
sleep() { /bin/busybox sleep "$@"; }
cd /app
sleep 1
rm cache/session-1.tmp cache/session-2.tmp
rm -r build
sleep 1
rm /var/run/secrets/kubernetes.io/serviceaccount/token
cd /etc && rm shadow
while sleep 5; do touch /tmp/heartbeat && rm /tmp/heartbeat; done
"""
POD_FILES = ("app/cache/session-1.tmp", "app/cache/session-2.tmp", "app/build/out/a.o", "app/build/out/b.o",
             "var/run/secrets/kubernetes.io/serviceaccount/token", "etc/shadow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "unlinkwatch.cli", *args]


class PretendPod:
    """A kubelet-style cgroup (cgroupfs driver, Burstable QoS) with a busybox chroot running in it."""

    def __init__(self, workdir: Path) -> None:
        from unlinkwatch.agent.identity.cgroups import find_cgroup2

        mount = find_cgroup2()
        if mount is None:
            raise UserError("no cgroup2 hierarchy is mounted, so a pretend pod cannot be made")
        busybox = shutil.which("busybox")
        if busybox is None:
            raise UserError("busybox is missing (apt-get install busybox-static, or run `make setup`)")
        self.uid = str(uuid.uuid4())
        self.container_id = uuid.uuid4().hex + uuid.uuid4().hex
        self.cgroup_rel = f"/kubepods/burstable/pod{self.uid}/{self.container_id}"
        self.cgroup = Path(mount.mountpoint + self.cgroup_rel)
        self.root = workdir / "rootfs"
        for d in ("bin", "tmp"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy(busybox, self.root / "bin" / "busybox")
        for f in POD_FILES:
            (self.root / f).parent.mkdir(parents=True, exist_ok=True)
            (self.root / f).write_text("demo\n")
        # only the directories made here are removed afterwards (a node may have a real /kubepods)
        self._made = [d for d in (self.cgroup, *self.cgroup.parents) if not d.exists()]
        self.cgroup.mkdir(parents=True, exist_ok=True)
        procs = self.cgroup / "cgroup.procs"
        self.proc = subprocess.Popen(
            ["chroot", str(self.root), "/bin/busybox", "sh", "-c", POD_SCRIPT],
            preexec_fn=lambda: _join(procs),  # joins the pod cgroup before exec
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):  # the pod's other processes (its sleep) keep the cgroup busy
            for pid in (self.cgroup / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for d in self._made:  # deepest first
            for _ in range(50):  # a cgroup can be removed only once its last process has gone
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, needle: str, what: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = log.read_text(errors="replace") if log.exists() else ""
        for line in body.splitlines():
            if needle in line:
                return line
        if proc.poll() is not None:
            tail = body.strip().splitlines()[-1:] or ["(no output)"]
            raise UserError(f"the {what} exited: {tail[0]}")
        time.sleep(0.1)
    raise UserError(f"the {what} did not start within {timeout:.0f} s (log: {log})")


def _row(ev: pb.DeletionEvent) -> str:
    d = event_to_dict(ev)
    return (f"{d['time'][11:23]}  {d['op']:<7} {d['result']:>4}  {(d['comm'] + '(' + str(d['pid']) + ')'):<16} "
            f"{d['identity']:<8} {d['path']}")


def _watch(addr: str, pod: PretendPod, start_ns: int, deadline: float | None) -> Iterator[str]:
    seen_alerts: dict[int, int] = {}
    last_ns = start_ns
    with grpc.insecure_channel(addr) as ch:
        stub = pbg.CollectorStub(ch)
        while deadline is None or time.monotonic() < deadline:
            for resp in stub.Query(pb.QueryRequest(pod_uid=pod.uid, since_unix_ns=last_ns + 1, limit=1000),
                                   timeout=10):
                for ev in resp.events:
                    last_ns = max(last_ns, ev.time_unix_ns)
                    yield _row(ev)
            for alert in stub.WatchAlerts(pb.WatchAlertsRequest(since_unix_ns=start_ns, follow=False), timeout=10):
                if seen_alerts.get(alert.id) == alert.count:
                    continue
                update = alert.id in seen_alerts
                seen_alerts[alert.id] = alert.count
                sample = text(alert.sample_paths[0]) if alert.sample_paths else text(alert.event.path)
                yield (f"  ALERT{' (update)' if update else ''}  {alert.severity.upper():<8} {alert.rule}: "
                       f"{alert.description} [count {alert.count}] {sample}")
            time.sleep(0.5)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _join(procs: Path) -> None:
    """In the pod's child before exec: die with the demo, then join the pod's cgroup."""
    die_with_parent()
    procs.write_text(str(os.getpid()))


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise UserError("the demo loads eBPF probes and makes a cgroup: run it as root (sudo make demo)")
    work, work_rec = temp_dir("unlinkwatch-demo-")  # recorded: make clean-host removes it after a kill
    port = _free_port()
    addr = f"127.0.0.1:{port}"
    db = work / "events.db"
    procs: list[subprocess.Popen[bytes]] = []
    pod: PretendPod | None = None
    for sig in (signal.SIGTERM, signal.SIGHUP):  # cleaned up like Ctrl-C (a closed terminal sends SIGHUP)
        signal.signal(sig, _interrupt)
    try:
        print(f"unlinkwatch demo: starting a collector on {addr} (SQLite: {db}) ...", flush=True)
        clog, alog = work / "collector.log", work / "agent.log"
        with open(clog, "wb") as f:
            # the store keeps the last hour: the agent records the whole host, and a demo may run for days
            procs.append(subprocess.Popen(_cmd("collector", "--listen", addr, "--db", f"sqlite:///{db}",
                                               "--retention", DEMO_RETENTION),
                                          stdout=f, stderr=subprocess.STDOUT, preexec_fn=die_with_parent))
        _wait_ready(procs[0], clog, "listening", "collector", 30)
        print("unlinkwatch demo: starting the agent (compile, attach, self-test) ...", flush=True)
        with open(alog, "wb") as f:
            procs.append(subprocess.Popen(_cmd("agent", "--collector", addr, "--kube", "off",
                                               "--node-name", socket.gethostname()),
                                          stdout=f, stderr=subprocess.STDOUT, preexec_fn=die_with_parent))
        attached = _wait_ready(procs[1], alog, '"msg": "attached"', "agent", 120)
        mode = attached.split('"mode": "')[1].split('"')[0]
        start_ns = time.time_ns()
        pod = PretendPod(work)
        print(f"unlinkwatch demo: agent attached in {mode} mode; pretend pod {pod.uid}")
        print(f"  cgroup {pod.cgroup_rel}")
        print(f"  from another terminal: unlinkwatch query --collector {addr} --pod-uid {pod.uid}")
        print(f"                        unlinkwatch alerts --collector {addr}    unlinkwatch status --collector {addr}")
        print("  (no Kubernetes here, so the pod's names are unknown: identity shows 'unknown', the UID is from "
              "its cgroup)\n")
        print(f"{'TIME':<12}  {'OP':<7} {'RES':>4}  {'PROCESS':<16} {'IDENTITY':<8} PATH", flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        for line in _watch(addr, pod, start_ns, deadline):
            print(line, flush=True)
        print(f"\nunlinkwatch demo: done. While a demo runs, query it with: "
              f"unlinkwatch query --collector {addr} --pod-uid <uid>")
        return 0
    except KeyboardInterrupt:
        print("\nunlinkwatch demo: stopped")
        return 0
    except grpc.RpcError as e:
        raise UserError(f"the demo's collector stopped answering: {e.code().name}") from None
    finally:
        if pod is not None:
            pod.close()
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
                if p.poll() is None:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)
        work_rec.done()

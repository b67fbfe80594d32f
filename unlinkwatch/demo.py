"""`unlinkwatch demo`: a small pretend cluster on this host. A Kubernetes API on loopback (the real list/watch
protocol, unlinkwatch.kubestub) describes three pods in two namespaces with their owners (ReplicaSet ->
Deployment, Job -> CronJob); each pod is a busybox chroot in a kubelet-style cgroup, so the agent names
them through its normal path (cgroup -> pod UID and container ID -> pod watch). A collector on a temp
SQLite file stores the deletions and raises the default rule pack's alerts. Deletions and alerts are shown
live; --duration ends it by itself; Ctrl-C, SIGTERM and SIGHUP end it cleanly."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from unlinkwatch.errors import UserError
from unlinkwatch.eventjson import event_to_dict, text
from unlinkwatch.kubestub import FakeKubeAPI, make_job, make_pod, make_replicaset, owner_ref
from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.pb import events_pb2_grpc as pbg
from unlinkwatch.runcpod import RuncContainer
from unlinkwatch.runcpod import missing as runc_missing
from unlinkwatch.runstate import die_with_parent, record, temp_dir

DEMO_RETENTION = "1h"  # the store keeps the last hour: the agent records the whole host, and a demo may run for days
# Every pod script starts with these: `sleep` is busybox's (a chroot has only /bin/busybox), and the pods,
# started before the agent as a node's pods are, wait for the demo's go (START) before their scenario.
START = "tmp/.demo-start"
PRELUDE = f'sleep() {{ /bin/busybox sleep "$@"; }}\nwhile [ ! -e /{START} ]; do sleep 1; done\n'


@dataclass
class PodSpec:
    namespace: str
    name: str
    owner: tuple[str, str]  # the direct owner: ("ReplicaSet", "web-7d4b9c") or ("Job", "report-28911520")
    top: str                # the workload the owner belongs to: Deployment or CronJob name
    container: str
    image: str
    files: tuple[str, ...]  # made in its root before it starts
    script: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    container_id: str = field(default_factory=lambda: secrets.token_hex(32))

    @property
    def workload(self) -> str:
        return f"{'Deployment' if self.owner[0] == 'ReplicaSet' else 'CronJob'}/{self.top}"


def _suffix() -> str:
    """A pod name's random suffix as Kubernetes makes it (five characters without vowels or look-alikes)."""
    return "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))


def scenario() -> list[PodSpec]:
    """Routine cleanup, an `rm -rf` of a log tree (folded into one alert), a service-account token and
    /etc/shadow deleted and a shell history moved away (sensitive-path alerts), and a batch job's scratch
    work."""
    logs = tuple(f"var/log/nginx/access.log.{i}" for i in range(1, 121))
    return [
        PodSpec("shop", f"web-7d4b9c-{_suffix()}", ("ReplicaSet", "web-7d4b9c"), "web", "nginx",
                "nginx:1.27", ("app/cache/session-1.tmp", "app/cache/session-2.tmp", *logs),
                PRELUDE + "cd /app\nsleep 2\nrm cache/session-1.tmp cache/session-2.tmp\nsleep 3\n"
                "rm -rf /var/log/nginx\n"
                "while sleep 4; do touch /tmp/nginx.pid.tmp && rm /tmp/nginx.pid.tmp; done\n"),
        PodSpec("shop", f"api-5f6d8b-{_suffix()}", ("ReplicaSet", "api-5f6d8b"), "api", "api",
                "registry.local/shop-api:2.3", ("var/run/secrets/kubernetes.io/serviceaccount/token",
                                                "app/build/out/a.o", "app/build/out/b.o", "root/.ash_history"),
                PRELUDE + "sleep 1\nrm -r /app/build\nsleep 6\n"
                "rm /var/run/secrets/kubernetes.io/serviceaccount/token\nsleep 2\n"
                "/bin/busybox mv /root/.ash_history /tmp/.cache-7f3a\n"
                "while sleep 5; do touch /tmp/heartbeat && rm /tmp/heartbeat; done\n"),
        PodSpec("batch", f"report-28911520-{_suffix()}", ("Job", "report-28911520"), "report",
                "report", "busybox:1.36", ("etc/shadow", *(f"tmp/report-work/part-{i}.csv" for i in range(20))),
                PRELUDE + "sleep 3\nrm -r /tmp/report-work\nsleep 5\ncd /etc && rm shadow\n"
                "while sleep 6; do touch /tmp/out.csv && rm /tmp/out.csv; done\n"),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "unlinkwatch.cli", *args]


def _join(procs: Path) -> None:
    """In the pod's child before exec: die with the demo, then join the pod's cgroup."""
    die_with_parent()
    procs.write_text(str(os.getpid()))


class PretendPod:
    """A pod's container in a kubelet-style cgroup (cgroupfs driver, Burstable QoS): a runc container with a
    busybox root where runc is installed, else a busybox chroot whose processes join that cgroup. The cgroup
    is made before the agent starts, as kubelet makes it before the container runs."""

    def __init__(self, spec: PodSpec, workdir: Path) -> None:
        from unlinkwatch.agent.identity.cgroups import find_cgroup2

        mount = find_cgroup2()
        if mount is None:
            raise UserError("no cgroup2 hierarchy is mounted, so a pretend pod cannot be made")
        busybox = shutil.which("busybox")
        if busybox is None:
            raise UserError("busybox is missing (apt-get install busybox-static, or run `make setup`)")
        self.spec = spec
        self.runc: RuncContainer | None = None
        if runc_missing() is None:
            self.runc = RuncContainer(workdir, pod_uid=spec.uid, container_id=spec.container_id)
            self.runc.prepare(["/bin/busybox", "sh", "-c", spec.script])
            self.root = self.runc.bundle / "rootfs"
            self.cgroup_rel = self.runc.cgroup_path
        else:
            self.root = workdir / spec.name
            self.cgroup_rel = f"/kubepods/burstable/pod{spec.uid}/{spec.container_id}"
            for d in ("bin", "tmp"):
                (self.root / d).mkdir(parents=True, exist_ok=True)
            shutil.copy(busybox, self.root / "bin" / "busybox")
        self.cgroup = Path(mount.mountpoint + self.cgroup_rel)
        for f in spec.files:
            (self.root / f).parent.mkdir(parents=True, exist_ok=True)
            (self.root / f).write_text("demo\n")
        # only the directories made here are removed afterwards (a node may have a real /kubepods)
        self._made = [d for d in (self.cgroup, *self.cgroup.parents) if not d.exists()]
        # recorded (a runc container records its own, with its cgroup): make clean-host removes it after a kill
        self._rec = record("cgroup", path=self.cgroup_rel) if self.runc is None else None
        self.cgroup.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def go(self) -> None:
        """Lets the pod's scenario begin."""
        (self.root / START).touch()

    def start(self) -> None:
        if self.runc is not None:
            self.runc.launch()
            return
        procs = self.cgroup / "cgroup.procs"
        self.proc = subprocess.Popen(
            ["chroot", str(self.root), "/bin/busybox", "sh", "-c", self.spec.script],
            preexec_fn=lambda: _join(procs),  # joins the pod cgroup before exec
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        if self.runc is not None:
            self.runc.delete()  # kills it, removes its cgroup (and empty parents) in every hierarchy
            return
        if self.proc is not None and self.proc.poll() is None:
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
        if self._rec is not None:
            self._rec.done()


def serve_cluster(specs: list[PodSpec], node: str) -> FakeKubeAPI:
    """The pretend cluster's API: each pod with its owner chain, as a real API server serves them."""
    api = FakeKubeAPI(token=secrets.token_hex(16)).start()
    for s in specs:
        kind, owner = s.owner
        if kind == "ReplicaSet":
            api.add_object(make_replicaset(owner, s.namespace, deployment=s.top), "replicasets")
            ref = owner_ref("apps/v1", "ReplicaSet", owner)
        else:
            api.add_object(make_job(owner, s.namespace, cronjob=s.top), "jobs")
            ref = owner_ref("batch/v1", "Job", owner)
        api.add_pod(make_pod(s.name, s.namespace, node=node, uid=s.uid, owner=ref, labels={"app": s.top},
                             containers=[(s.container, s.image, s.container_id)]))
    return api


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


HEADER = f"{'TIME':<12}  {'NAMESPACE/POD':<30} {'WORKLOAD':<18} {'OP':<6} {'PROCESS':<14} PATH"


def _row(ev: pb.DeletionEvent) -> str:
    d = event_to_dict(ev)
    pod = f"{d['namespace']}/{d['pod']}" if d["pod"] else f"({d['identity']}) {d['pod_uid'][:8]}"
    path = d["path"] + (f" -> {d['rename_to']}" if ev.op == pb.OP_RENAME else "")
    return (f"{d['time'][11:23]}  {pod:<30} {d['workload'] or '-':<18} {d['op']:<6} "
            f"{(d['comm'] + '(' + str(d['pid']) + ')'):<14} {path}")


FOLD_AFTER = 6  # a process's run of more deletions than this in one poll is shown as its first 3 and a count


def _folded(events: list[pb.DeletionEvent]) -> Iterator[str]:
    """Rows, with an `rm -rf` storm (one process's run of deletions) folded as the alerts fold it."""
    i = 0
    while i < len(events):
        j = i
        while j < len(events) and (events[j].pod.uid, events[j].process.pid) == (events[i].pod.uid,
                                                                                   events[i].process.pid):
            j += 1
        run = events[i:j]
        if len(run) <= FOLD_AFTER:
            yield from (_row(ev) for ev in run)
        else:
            yield from (_row(ev) for ev in run[:3])
            under = os.path.commonpath([text(ev.path) for ev in run])
            yield (f"{'':12}  ... {len(run) - 3} more by {text(run[0].process.comm)}({run[0].process.pid}) under "
                   f"{under} (unlinkwatch query lists every one)")
        i = j


def _watch(addr: str, specs: list[PodSpec], start_ns: int, deadline: float | None) -> Iterator[str]:
    seen_alerts: dict[int, int] = {}
    last_ns = {s.uid: start_ns for s in specs}
    with grpc.insecure_channel(addr) as ch:
        stub = pbg.CollectorStub(ch)
        while deadline is None or time.monotonic() < deadline:
            new: list[pb.DeletionEvent] = []
            for s in specs:
                for resp in stub.Query(pb.QueryRequest(pod_uid=s.uid, since_unix_ns=last_ns[s.uid] + 1, limit=1000),
                                       timeout=10):
                    for ev in resp.events:
                        last_ns[s.uid] = max(last_ns[s.uid], ev.time_unix_ns)
                        new.append(ev)
            yield from _folded(sorted(new, key=lambda e: e.time_unix_ns))
            for alert in stub.WatchAlerts(pb.WatchAlertsRequest(since_unix_ns=start_ns, follow=False), timeout=10):
                if seen_alerts.get(alert.id) == alert.count:
                    continue
                update = alert.id in seen_alerts
                seen_alerts[alert.id] = alert.count
                sample = text(alert.sample_paths[0]) if alert.sample_paths else text(alert.event.path)
                who = f"{alert.event.pod.namespace}/{alert.event.pod.name}" if alert.event.pod.name else "host"
                yield (f"  ALERT{' (update)' if update else ''}  {alert.severity.upper():<8} {alert.rule} in {who}: "
                       f"{alert.description} [count {alert.count}] {sample}")
            time.sleep(0.5)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise UserError("the demo loads eBPF probes and makes cgroups: run it as root (sudo make demo)")
    for sig in (signal.SIGTERM, signal.SIGHUP):  # cleaned up like Ctrl-C (a closed terminal sends SIGHUP)
        signal.signal(sig, _interrupt)
    work, work_rec = temp_dir("unlinkwatch-demo-")  # recorded: make clean-host removes it after a kill
    addr = f"127.0.0.1:{_free_port()}"
    db = work / "events.db"
    node = socket.gethostname()
    specs = scenario()
    procs: list[subprocess.Popen[bytes]] = []
    pods: list[PretendPod] = []
    api: FakeKubeAPI | None = None
    try:
        api = serve_cluster(specs, node)
        kubeconfig = api.write_kubeconfig(work / "kubeconfig")
        namespaces = sorted({s.namespace for s in specs})
        print(f"unlinkwatch demo: a Kubernetes API on {api.url} with {len(specs)} pods in namespaces "
              f"{' and '.join(namespaces)} (node {node})", flush=True)
        print(f"unlinkwatch demo: starting a collector on {addr} (SQLite: {db}) ...", flush=True)
        clog, alog = work / "collector.log", work / "agent.log"
        with open(clog, "wb") as f:
            procs.append(subprocess.Popen(_cmd("collector", "--listen", addr, "--db", f"sqlite:///{db}",
                                               "--retention", DEMO_RETENTION),
                                          stdout=f, stderr=subprocess.STDOUT, preexec_fn=die_with_parent))
        _wait_ready(procs[0], clog, "listening", "collector", 30)
        pods = [PretendPod(s, work) for s in specs]
        for pod in pods:  # running before the agent starts, as on a node (their scenario waits for go())
            pod.start()
        print("unlinkwatch demo: starting the agent (compile, attach, self-test) ...", flush=True)
        with open(alog, "wb") as f:
            procs.append(subprocess.Popen(_cmd("agent", "--collector", addr, "--kube", "auto",
                                               "--kubeconfig", str(kubeconfig), "--node-name", node),
                                          stdout=f, stderr=subprocess.STDOUT, preexec_fn=die_with_parent))
        attached = _wait_ready(procs[1], alog, '"msg": "attached"', "agent", 120)
        mode = attached.split('"mode": "')[1].split('"')[0]
        start_ns = time.time_ns()
        for pod in pods:
            pod.go()
        kind = "runc containers" if pods[0].runc is not None else f"busybox chroots ({runc_missing()})"
        print(f"unlinkwatch demo: agent attached in {mode} mode; pods ({kind}):")
        for s in specs:
            print(f"  {s.namespace + '/' + s.name:<32} {s.workload:<20} container {s.container} ({s.image})")
        web = specs[0]
        print(f"  from another terminal: unlinkwatch query --collector {addr} --namespace {web.namespace} "
              f"--pod {web.name}")
        print(f"                        unlinkwatch query --collector {addr} --workload {specs[-1].workload}")
        print(f"                        unlinkwatch alerts --collector {addr}    "
              f"unlinkwatch status --collector {addr}\n")
        print(HEADER, flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        for line in _watch(addr, specs, start_ns, deadline):
            print(line, flush=True)
        print(f"\nunlinkwatch demo: done. While a demo runs, query it with: "
              f"unlinkwatch query --collector {addr} --namespace {web.namespace}")
        return 0
    except KeyboardInterrupt:
        print("\nunlinkwatch demo: stopped")
        return 0
    except grpc.RpcError as e:
        raise UserError(f"the demo's collector stopped answering: {e.code().name}") from None
    finally:
        for pod in pods:
            pod.close()
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
                if p.poll() is None:
                    p.kill()
        if api is not None:
            api.stop()
        shutil.rmtree(work, ignore_errors=True)
        work_rec.done()

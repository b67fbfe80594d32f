"""The interleaved overhead comparison: unlinkwatch's configurations and the peers against bare, same run.

Per filesystem: R rounds of (bare, agent per attach mode, pipeline, bpftrace, auditd, minimal bcc), each tracer
started before and stopped after its measurement; then one recording pass per tracer for completeness, drops
and the kernel-side cost from bpf_stats.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import peers, stats, workload
from bench.peers import Tracer, Unavailable
from unlinkwatch import runstate

ROOT = Path(__file__).resolve().parent.parent
UNLINKWATCH = ROOT / ".venv" / "bin" / "unlinkwatch"
ATTACH_MODES = ("tracepoint", "kprobe", "fentry")
# how long an agent may take to attach: its compile takes minutes under the kernel lab's emulation
READY_S = float(os.environ.get("UNLINKWATCH_BENCH_READY_S", "60"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(addr: str, metric: str) -> float | None:
    """Sum of every sample of one Prometheus metric (all label sets, or the one given as `name{labels}`);
    None when unreachable."""
    try:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(metric + " ") or ("{" not in metric and line.startswith(metric + "{")))


class UnlinkwatchAgent(Tracer):
    """`unlinkwatch agent --stdout --kube off --attach MODE`, stdout to /dev/null (or a file when recording)."""

    bpf = True

    def __init__(self, attach: str = "tracepoint", collector: str | None = None, to_file: bool = False) -> None:
        super().__init__()
        self.attach, self.collector, self.to_file = attach, collector, to_file
        # to_file: the JSON lines go to a file on the same disk in every round, as a new user first runs it
        self.name = f"unlinkwatch agent ({attach}{', --stdout to a file' if to_file else ''})"
        self.lost: float | None = None
        self.startup_s: float | None = None

    def check(self) -> None:
        if not UNLINKWATCH.exists():
            raise Unavailable(f"{UNLINKWATCH} is missing (run make setup)")

    def command(self) -> list[str]:
        cmd = [str(UNLINKWATCH), "agent", "--kube", "off", "--attach", self.attach, "--metrics-addr", self.metrics]
        return cmd + (["--collector", self.collector] if self.collector else ["--stdout"])

    def start(self, workdir: Path, record: bool) -> None:
        super().start(workdir, record)
        self.metrics = f"127.0.0.1:{free_port()}"
        self.out = workdir / "agent.jsonl"
        t0 = time.monotonic()
        proc = self._spawn(self.command(), stdout=self.out if (record or self.to_file) and not self.collector else None,
                           env=self.env(), cwd=workdir)
        self.wait_ready(proc, t0)

    def env(self) -> dict[str, str] | None:
        """The agent's environment (None: this one's)."""
        return None

    def wait_ready(self, proc: subprocess.Popen[bytes], t0: float, timeout: float = READY_S) -> None:
        """Ready when the agent logs {"msg": "attached"} on stderr (or its /readyz answers 200)."""
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                raise self._fail(proc, "unlinkwatch agent exited before it attached")
            if any('"attached"' in line for line in self.stderr_lines) or self._readyz():
                self.startup_s = time.monotonic() - t0
                return
            time.sleep(0.02)
        raise self._fail(proc, f"unlinkwatch agent was not ready within {timeout:.0f} s")

    def _readyz(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.metrics}/readyz", timeout=0.5) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.procs:
            self.lost = scrape(self.metrics, "unlinkwatch_agent_events_lost_total")
        super().stop()

    def count_events(self, prefix: str) -> int | None:
        if not self.record:
            return None
        return peers.count_lines(self.out, prefix) if self.out.exists() else 0

    def drops_reported(self) -> int | None:
        return None if self.lost is None else int(self.lost)


class PolicyAgent(UnlinkwatchAgent):
    """The tracepoint agent with a node policy (docs/POLICY.md): `ignore` (one ignore rule covering the
    workload's directory: every unlink dropped in the kernel), `audit100` (100 audit rules of every pattern
    form, none matching the workload) or `block100` (the same as block rules: enforced with BPF LSM where the
    kernel runs it, so the LSM programs' cost shows). `fsdir` is set by compare() before the first run. Its
    events column counts the recorded lines plus the deletions the policy filtered: every deletion is accounted
    for."""

    def __init__(self, kind: str, attach: str = "tracepoint", lsm_dir_cache: bool = True) -> None:
        super().__init__(attach)
        self.kind = kind
        self.lsm_dir_cache = lsm_dir_cache  # off: block rules' checks walk every directory (enforce.h)
        self.name = f"unlinkwatch agent ({attach}, policy {kind}{'' if lsm_dir_cache else ', LSM walks'})"
        self.fsdir: Path | None = None
        self.filtered: float | None = None

    def policy_text(self) -> str:
        if self.kind == "ignore":
            return f'policy:\n  - {{name: bench-dir, action: ignore, paths: ["{self.fsdir}/**"], host: true}}\n'
        forms = ("/nonexistent-{i}/**", "/etc/never-{i}", "**/.never-{i}", "**/*.never{i}")
        action = "block" if self.kind == "block100" else "audit"
        rules = [f'  - {{name: r{i}, action: {action}, paths: ["{forms[i % 4].format(i=i)}"], host: true}}'
                 for i in range(100)]
        return "policy:\n" + "\n".join(rules) + "\n"

    def command(self) -> list[str]:
        return [*super().command(), "--policy", str(self.policy_file)]

    def check(self) -> None:
        super().check()
        if not self.lsm_dir_cache:
            from unlinkwatch.agent.policy.runtime import bpf_lsm_missing

            missing = bpf_lsm_missing()
            if missing:
                raise Unavailable(f"{missing}: nothing to compare")

    def env(self) -> dict[str, str] | None:
        return None if self.lsm_dir_cache else {**os.environ, "UNLINKWATCH_LSM_DIR_CACHE": "off"}

    def start(self, workdir: Path, record: bool) -> None:
        self.policy_file = workdir / "policy.yaml"
        self.policy_file.write_text(self.policy_text())
        super().start(workdir, record)

    def stop(self) -> None:
        if self.procs:
            time.sleep(0.6)  # the agent reads the kernel's per-rule counters every 0.5 s
            self.filtered = scrape(self.metrics, "unlinkwatch_agent_events_filtered_total")
        super().stop()

    def count_events(self, prefix: str) -> int | None:
        lines = super().count_events(prefix)
        return None if lines is None else lines + int(self.filtered or 0)


class UnlinkwatchPipeline(UnlinkwatchAgent):
    """Agent -> gRPC -> `unlinkwatch collector` on SQLite; events counted as rows in the store.

    The agent runs as deploy/daemonset.yaml runs it, with a disk spool. The collector stands in for one on
    another machine (a Deployment, not on the busy node): it runs under SCHED_IDLE, so it takes the CPU time the
    loop and the agent leave and catches up after the loop instead of competing with it on this machine's cores.
    Its CPU (and its commit process's) is reported beside the agent's."""

    def __init__(self) -> None:
        super().__init__("tracepoint")
        self.name = "unlinkwatch agent + collector (SQLite)"

    def command(self) -> list[str]:
        return [*super().command(), "--spool", str(self.spool)]

    def start(self, workdir: Path, record: bool) -> None:
        Tracer.start(self, workdir, record)
        self.db = workdir / "events.db"
        self.spool = workdir / "spool"
        self.collector = f"127.0.0.1:{free_port()}"
        coll = self._spawn(["chrt", "--idle", "0", str(UNLINKWATCH), "collector", "--listen", self.collector, "--db",
                            f"sqlite:///{self.db}"], cwd=workdir)
        deadline = time.monotonic() + 30
        while not _connects(self.collector):
            if coll.poll() is not None or time.monotonic() > deadline:
                raise self._fail(coll, "unlinkwatch collector did not start listening")
            time.sleep(0.05)
        self.metrics = f"127.0.0.1:{free_port()}"
        t0 = time.monotonic()
        self.wait_ready(self._spawn(self.command(), cwd=workdir), t0)

    def count_events(self, prefix: str) -> int | None:
        return count_rows(self.db, prefix)

    def parts(self) -> dict[str, list[int]]:
        collector, agent = self.procs[:2]
        return {"agent": [agent.pid], "collector": [collector.pid], "its commit process": peers.children(collector.pid)}


def _connects(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def count_rows(db: Path, prefix: str, needle: bytes | None = None) -> int | None:
    """Stored events whose file name starts with prefix (paths are absolute, so match `/<prefix>`)."""
    if not db.exists():
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        needle = needle or f"/{prefix}-".encode()  # paths are BLOBs; LIKE does not match them, instr does
        return int(conn.execute("SELECT count(*) FROM events WHERE instr(path, ?) > 0", (needle,)).fetchone()[0])
    except sqlite3.Error:
        return None
    finally:
        conn.close()


@dataclass
class Sample:
    rate: float
    cpu_s: float
    hwm_kib: int
    events: int | None = None
    drops: int | None = None
    kernel_ns: float | None = None
    kernel_ns_by_prog: dict[str, float] = field(default_factory=dict)  # per program, per unlink (the record run)
    parts_cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds of each process of the config
    kernel_ns_range: tuple[float, float] | None = None  # lowest and highest kernel ns of the recording passes


@dataclass
class ConfigResult:
    name: str
    fs: str
    samples: list[Sample] = field(default_factory=list)
    record: Sample | None = None
    unavailable: str | None = None

    def rate(self) -> float | None:
        return stats.median([s.rate for s in self.samples])

    def row(self, bare: float | None, n: int, bare_rates: list[float] | None = None,
            base_rates: list[float] | None = None) -> list[stats.Cell]:
        """The table's row; `bare_rates`: bare's rate in each round, for the per-round slowdowns; `base_rates`: for a
        policy's row, the same agent's without a policy, for the note's per-round ratio to it."""
        if self.unavailable:
            why = self.unavailable.split(": ")[-1][:70]
            return [self.name, None, None, None, None, None, None, None, None, None, f"unavailable: {why}"]
        rec = self.record or (self.samples[-1] if self.samples else None)
        events = rec.events if rec else None
        complete = None if events is None else events / n
        loss = None if events is None else n - events
        cpu = stats.median([s.cpu_s for s in self.samples])
        cpu_us = None if self.name == "bare" or cpu is None else cpu / n * 1e6
        hwm = max((s.hwm_kib for s in self.samples), default=0) / 1024 or None
        kernel = rec.kernel_ns if rec else None
        parts = {name: stats.median([s.parts_cpu_s.get(name, 0.0) for s in self.samples])
                 for name in (self.samples[0].parts_cpu_s if self.samples else {})}
        note = " + ".join(f"{name} {(v or 0.0) / n * 1e6:.1f}" for name, v in parts.items())
        notes = [f"CPU us/event: {note}"] if note else []
        if rec and len(rec.kernel_ns_by_prog) > 1:
            by_prog = sorted(rec.kernel_ns_by_prog.items(), key=lambda kv: -kv[1])
            notes.append("kernel ns: " + ", ".join(f"{name} {ns:,.0f}" for name, ns in by_prog if ns >= 1))
        if rec and rec.kernel_ns_range:
            lo, hi = rec.kernel_ns_range
            notes.append(f"kernel ns over passes {lo:,.0f}-{hi:,.0f}")
        vs_base = stats.paired_slowdown(base_rates or [], [s.rate for s in self.samples])
        if vs_base:
            notes.append(f"per round vs no policy {vs_base}")
        paired = stats.paired_slowdown(bare_rates or [], [s.rate for s in self.samples])
        return [self.name, self.rate(), stats.slowdown(bare, self.rate()),
                None if self.name == "bare" else paired, complete,
                rec.drops if rec else None, loss, cpu_us, hwm, kernel, "; ".join(notes)]


PAIRED = "per round: median (range)"
HEADERS = ["config", "unlinks/s (median)", "slowdown vs bare", PAIRED, "completeness", "drops reported",
           "true loss", "tracer CPU us/event", "peak RSS MiB", "kernel ns/unlink", "note"]


def tracer_pids(tracer: Tracer) -> list[int]:
    pids = tracer.pids()
    if isinstance(tracer, peers.Auditd):  # the kernel thread that hands records to auditd is audit's cost too
        pids += [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/comm") if _comm(p) == "kauditd"]
    return pids


def _comm(p: Path) -> str:
    with contextlib.suppress(OSError):
        return p.read_text().strip()
    return ""


def wait_quiet(pids: list[int], window: float = 0.3, timeout: float = 120.0) -> None:
    """Wait until the tracer processes stop burning CPU: they have drained what the workload produced."""
    deadline = time.monotonic() + timeout
    last = sum(peers.cpu_seconds(p) for p in pids)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = sum(peers.cpu_seconds(p) for p in pids)
        if now - last < 0.02:
            return
        last = now


def bpf_prog_ids(pids: list[int]) -> set[int]:
    """The BPF programs these processes hold: their perf attachments (tracepoints, kprobes) and every program or
    link fd (fentry, LSM), from /proc/PID/fdinfo."""
    ids = {int(str(a["prog_id"])) for pid in pids for a in peers.perf_attachments(pid) if "prog_id" in a}
    for pid in pids:
        for info in Path(f"/proc/{pid}/fdinfo").glob("*"):
            with contextlib.suppress(OSError):
                for line in info.read_text().splitlines():
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
    return ids


def bpf_run_ns_by_prog(pids: list[int]) -> dict[str, float]:
    """run_time_ns of each BPF program these processes hold, by program name (needs kernel.bpf_stats_enabled=1)."""
    ids = bpf_prog_ids(pids)
    if not ids:
        return {}
    proc = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=False)
    out: dict[str, float] = {}
    for p in json.loads(proc.stdout or "[]"):
        if p.get("id") in ids:
            name = str(p.get("name", p["id"]))
            out[name] = out.get(name, 0.0) + float(p.get("run_time_ns", 0))
    return out


def bpf_ns_per_op(pids: list[int], before: dict[str, float], n: int) -> dict[str, float]:
    """Each program's run_time_ns since `before` (bpf_run_ns_by_prog), per one of n operations."""
    after = bpf_run_ns_by_prog(pids)
    return {name: (ns - before.get(name, 0.0)) / n for name, ns in after.items() if ns > before.get(name, 0.0)}


@contextlib.contextmanager
def bpf_stats_enabled() -> Iterator[None]:
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = path.read_text().strip()
    # recorded first: a killed run's value is restored by make clean-host, and a run started after it
    # (which runs clean-host first) saves the machine's own value, not the killed run's 1
    with runstate.recorded("sysctl", path=str(path), restore=before):
        path.write_text("1")
        try:
            yield
        finally:
            path.write_text(before)


class BaselineAgent(UnlinkwatchAgent):
    """The agent of another revision of this repository (`--baseline REV`), checked out in a temporary
    worktree and run with this virtualenv's Python: before and after a change, interleaved in one run.
    Made by baseline_agent() of any agent row (a policy's, say), which this class then comes before."""

    rev: str
    tree: Path | None  # set by baseline_tree()

    def check(self) -> None:
        super().check()
        if self.tree is None:
            raise Unavailable("the baseline's worktree is not checked out (baseline_tree())")

    def command(self) -> list[str]:
        return [str(ROOT / ".venv" / "bin" / "python"), "-m", "unlinkwatch.cli", *super().command()[1:]]

    def env(self) -> dict[str, str]:
        return {**(super().env() or os.environ), "PYTHONPATH": str(self.tree)}


def baseline_agent(rev: str, name: str = "unlinkwatch agent (tracepoint)") -> BaselineAgent:
    """The configuration `name` (an agent's row, exactly as the table names it) run by revision `rev`: a fresh
    instance of that row's class with BaselineAgent before it, named "... , baseline REV)". ValueError for a name
    that is no agent's row (bare, the peers and the collector pipeline have no baseline)."""
    config = next((t for t in configurations() if t.name == name), None)
    if not isinstance(config, UnlinkwatchAgent) or isinstance(config, UnlinkwatchPipeline):
        raise ValueError(f"--baseline-config: {name!r} is not an agent's row (python -m bench --list)")
    kind = type(config)
    cls = BaselineAgent if kind is UnlinkwatchAgent else type(f"Baseline{kind.__name__}", (BaselineAgent, kind), {})
    agent: BaselineAgent = cls.__new__(cls)
    agent.__dict__.update(config.__dict__)  # the fresh row's own state: nothing shared with the row itself
    agent.rev, agent.tree = rev, None
    agent.name = f"{name[:-1]}, baseline {rev})"
    return agent


@contextlib.contextmanager
def baseline_tree(agent: BaselineAgent) -> Iterator[None]:
    """A detached worktree of the baseline revision under /var/tmp, removed afterwards (and by make
    clean-host if the run is killed). The package maps unlinkwatch.agent and .collector to the top-level
    agent/ and collector/ (pyproject's package-dir), so the worktree gets the two links an install makes."""
    with runstate.scratch_dir("uwbench-base-", Path("/var/tmp")) as tmp:
        tree = tmp / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), agent.rev],
                       check=True)
        try:
            for sub in ("agent", "collector"):
                link = tree / "unlinkwatch" / sub
                if not link.exists():
                    link.symlink_to(tree / sub)
            agent.tree = tree
            yield
        finally:
            agent.tree = None
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
            subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)


def measure(tracer: Tracer, binary: Path, n: int, workers: int, fsdir: Path, record: bool,
            op: str = "unlink") -> Sample:
    with scratch_dir() as tmp:
        tracer.start(tmp, record)
        try:
            pids = tracer_pids(tracer)
            parts = tracer.parts() if isinstance(tracer, UnlinkwatchPipeline) else {}
            parts0 = {name: sum(peers.cpu_seconds(p) for p in ps) for name, ps in parts.items()}
            cpu0 = sum(peers.cpu_seconds(p) for p in pids)
            k0 = bpf_run_ns_by_prog(pids) if record else {}
            result = workload.run(binary, n, fsdir, workers=workers, op=op)
            wait_quiet(pids)
            cpu = sum(peers.cpu_seconds(p) for p in pids) - cpu0
            parts_cpu = {name: sum(peers.cpu_seconds(p) for p in ps) - parts0[name] for name, ps in parts.items()}
            by_prog = bpf_ns_per_op(pids, k0, n) if record and tracer.bpf else {}
            kernel = sum(by_prog.values()) if record and tracer.bpf else None
            hwm = sum(peers.status_kib(p, "VmHWM") for p in pids)
        finally:
            tracer.stop()
        if op == "rename":
            workload.remove_files(fsdir, result.prefix)  # untraced: the tracer has stopped
        return Sample(rate=result.unlinks_per_s, cpu_s=cpu, hwm_kib=hwm, events=tracer.count_events(result.prefix),
                      drops=tracer.drops_reported(), kernel_ns=kernel, kernel_ns_by_prog=by_prog,
                      parts_cpu_s=parts_cpu)


def measure_together(tracers: list[Tracer], binary: Path, n: int, workers: int, fsdir: Path,
                     op: str = "unlink") -> dict[str, Sample]:
    """One recording pass with every tracer attached at once (`--kernel-together`): each program's kernel ns from
    the same deletions, free of the drift between passes that one tracer at a time carries. Programs on one hook
    run in the order they were attached: the caller rotates the order between passes. The rate is the loop's
    under all of them, the same for each."""
    with contextlib.ExitStack() as dirs:
        started: list[Tracer] = []
        try:
            for t in tracers:
                t.start(dirs.enter_context(scratch_dir()), True)
                started.append(t)
            pids = {t.name: tracer_pids(t) for t in tracers}
            k0 = {t.name: bpf_run_ns_by_prog(pids[t.name]) for t in tracers}
            result = workload.run(binary, n, fsdir, workers=workers, op=op)
            wait_quiet([p for ps in pids.values() for p in ps])
            by_prog = {t.name: bpf_ns_per_op(pids[t.name], k0[t.name], n) for t in tracers}
            hwm = {t.name: sum(peers.status_kib(p, "VmHWM") for p in pids[t.name]) for t in tracers}
        finally:
            for t in reversed(started):
                t.stop()
        if op == "rename":
            workload.remove_files(fsdir, result.prefix)
        return {t.name: Sample(rate=result.unlinks_per_s, cpu_s=0.0, hwm_kib=hwm[t.name],
                               events=t.count_events(result.prefix), drops=t.drops_reported(),
                               kernel_ns=sum(by_prog[t.name].values()), kernel_ns_by_prog=by_prog[t.name])
                for t in tracers}


def configurations(only: list[str] | None = None, baseline: BaselineAgent | None = None,
                   exact: Sequence[str] = ()) -> list[Tracer]:
    """Every configuration, or bare, the baseline and those whose name contains one of `only` or is one of `exact`
    (`--configs` splits at commas, which some names hold: `--config` takes one name whole). An exact name that
    is no configuration's is refused (ValueError), so a typo does not quietly measure less."""
    everything: list[Tracer] = [Tracer(), *(UnlinkwatchAgent(m) for m in ATTACH_MODES),
                                UnlinkwatchAgent("tracepoint", to_file=True), PolicyAgent("ignore"),
                                PolicyAgent("audit100"), *(PolicyAgent("block100", m) for m in ATTACH_MODES),
                                *(PolicyAgent("block100", m, lsm_dir_cache=False) for m in ATTACH_MODES),
                                UnlinkwatchPipeline(), peers.Bpftrace(), peers.Auditd(),
                                peers.MinimalBcc(), *(peers.HooksOnly(m) for m in peers.HOOK_MODES)]
    if baseline is not None:
        everything.insert(2, baseline)
    unknown = sorted(set(exact) - {t.name for t in everything})
    if unknown:
        raise ValueError(f"no configuration is named {unknown[0]!r} (names as in the table: python -m bench --list)")
    if not only and not exact:
        return everything
    return [t for t in everything if t.name == "bare" or t is baseline or t.name in exact
            or any(o in t.name for o in only or ())]


def usable(tracers: list[Tracer], binary: Path, fsdir: Path, op: str = "unlink") -> dict[str, str]:
    """Try each configuration once on a tiny workload; name -> reason for those that cannot run here."""
    out: dict[str, str] = {}
    for t in tracers:
        try:
            t.check()
            measure(t, binary, 1000, 1, fsdir, record=False, op=op)
        except (Unavailable, workload.WorkloadError) as e:
            out[t.name] = str(e)
            print(f"  {t.name}: unavailable: {e}", file=sys.stderr)
    return out


# recording passes after the timed rounds (bpf_stats on, every event counted): one pass's kernel ns per program
# varied by up to 40 % between two configurations running the same programs, so the table gives the median of three
# (`--kernel-passes` for more) and the note their range
KERNEL_PASSES = 3


def compare(fs: str, binary: Path, n: int, rounds: int, workers: int, only: list[str] | None = None,
            op: str = "unlink", baseline: BaselineAgent | None = None,
            kernel_passes: int = KERNEL_PASSES, exact: Sequence[str] = (), together: bool = False
            ) -> list[ConfigResult]:
    """The timed rounds (one configuration at a time, interleaved), then the recording passes: one configuration
    at a time too, or with `together` every BPF tracer of a pass at once (measure_together), the order rotated."""
    tracers = configurations(only, baseline, exact)
    results = {t.name: ConfigResult(t.name, fs) for t in tracers}
    with workload.FILESYSTEMS[fs](max_files=n) as fsdir:
        for t in tracers:
            if isinstance(t, PolicyAgent):
                t.fsdir = fsdir
        missing = usable(tracers, binary, fsdir, op)
        for name, why in missing.items():
            results[name].unavailable = why
        live = [t for t in tracers if t.name not in missing]
        for r in range(rounds):
            for t in live:
                s = measure(t, binary, n, workers, fsdir, record=False, op=op)
                results[t.name].samples.append(s)
                print(f"  [{fs} round {r + 1}/{rounds}] {t.name}: {s.rate:,.0f} unlinks/s", file=sys.stderr)
        records: dict[str, list[Sample]] = {t.name: [] for t in live if t.name != "bare"}
        joint = [t for t in live if together and t.bpf]
        with bpf_stats_enabled():
            for i in range(kernel_passes):
                if joint:
                    k = i % len(joint)
                    for name, sample in measure_together(joint[k:] + joint[:k], binary, n, workers, fsdir,
                                                         op).items():
                        records[name].append(sample)
                for t in live:
                    if t.name != "bare" and t not in joint:
                        records[t.name].append(measure(t, binary, n, workers, fsdir, record=True, op=op))
        for name, samples in records.items():
            results[name].record = merge_records(samples)
    return list(results.values())


def merge_records(samples: list[Sample]) -> Sample:
    """The recording passes of one configuration as one: the median kernel ns (in total and per program), and the
    worst completeness and drops of any pass."""
    by_prog = {prog: stats.median([s.kernel_ns_by_prog.get(prog, 0.0) for s in samples]) or 0.0
               for prog in dict.fromkeys(p for s in samples for p in s.kernel_ns_by_prog)}
    kernel = [s.kernel_ns for s in samples if s.kernel_ns is not None]
    events = [s.events for s in samples if s.events is not None]
    drops = [s.drops for s in samples if s.drops is not None]
    return Sample(rate=stats.median([s.rate for s in samples]) or 0.0, cpu_s=0.0,
                  hwm_kib=max(s.hwm_kib for s in samples), events=min(events) if events else None,
                  drops=max(drops) if drops else None, kernel_ns=stats.median(kernel), kernel_ns_by_prog=by_prog,
                  kernel_ns_range=(min(kernel), max(kernel)) if len(kernel) > 1 else None)


def table(results: list[ConfigResult], n: int) -> list[list[stats.Cell]]:
    bare = next((r for r in results if r.name == "bare"), None)
    rates = [s.rate for s in bare.samples] if bare else []
    by_name = {r.name: r for r in results}
    rows = []
    for r in results:
        base = by_name.get(policy_base(r.name) or "")
        rows.append(r.row(bare.rate() if bare else None, n, rates, [s.rate for s in base.samples] if base else None))
    return rows


def policy_base(name: str) -> str | None:
    """The row a policy's row is compared with: the same attach mode's agent without a policy (PolicyAgent)."""
    m = re.match(r"(unlinkwatch agent \(\w+), policy ", name)
    return f"{m[1]})" if m else None


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    with runstate.scratch_dir("uwbench-run-", Path("/var/tmp")) as tmp:
        yield tmp


def paced_point(pipe: UnlinkwatchPipeline, binary: Path, fsdir: Path, tmp: Path, rate: float, n: int,
                workers: int = 1, settle_s: float = 10.0) -> dict[str, Any]:
    """Delete n files at `rate`/s while polling the store; latency = first seen in SQLite - unlink time."""
    prefix = workload.new_prefix()
    ts_base = tmp / f"ts-{prefix}"
    box: dict[str, workload.WorkloadResult] = {}
    failed: list[workload.WorkloadError] = []

    def deleter() -> None:
        try:
            box["r"] = workload.run(binary, n, fsdir, workers=workers, rate=rate, prefix=prefix, timestamps=ts_base)
        except workload.WorkloadError as e:
            failed.append(e)

    runner = threading.Thread(target=deleter)
    runner.start()
    seen: dict[str, int] = {}
    needle = f"/{prefix}-".encode()
    conn = sqlite3.connect(f"file:{pipe.db}?mode=ro", uri=True, timeout=30)
    last_id, progress_at = 0, time.monotonic()
    try:
        while len(seen) < n and (runner.is_alive() or time.monotonic() - progress_at < settle_s):
            rows = conn.execute("SELECT id, path FROM events WHERE id > ? ORDER BY id", (last_id,)).fetchall()
            now = time.time_ns()
            for row_id, path in rows:
                last_id = row_id
                at = bytes(path).find(needle)
                if at >= 0:
                    seen.setdefault(bytes(path)[at + len(needle):].decode(), now)
            if rows:
                progress_at = time.monotonic()
            time.sleep(0.02)
    finally:
        conn.close()
        runner.join()
    if failed:
        raise failed[0]
    stamps = workload.read_timestamps(ts_base, workers)
    lat_ms = [(seen[k] - stamps[k]) / 1e6 for k in seen if k in stamps]
    result = box.get("r")
    # Completeness from a final count: the poll above follows ids, which need not be committed in order.
    stored = count_rows(pipe.db, prefix) or 0
    # Diagnostics when something is missing: rows of the run at all (a path whose directory was not
    # resolved lacks the "/" before the name) and the agent's own loss counter.
    any_form = count_rows(pipe.db, prefix, f"{prefix}-".encode()) if stored < n else stored
    lost = {st: scrape(pipe.metrics, f'unlinkwatch_agent_events_lost_total{{stage="{st}"}}')
            for st in ("kernel", "queue", "transport")} if stored < n else {}
    return {"rate": rate, "n": n, "workers": workers, "achieved_per_s": result.unlinks_per_s if result else None,
            "stored": stored, "seen_by_poll": len(seen), "rows_any_path_form": any_form, "agent_lost": lost,
            "completeness": stored / n,
            "p50_ms": stats.percentile(lat_ms, 50), "p99_ms": stats.percentile(lat_ms, 99),
            "max_ms": max(lat_ms, default=None)}


class StartupAgent(UnlinkwatchAgent):
    """The agent as the DaemonSet runs it: the attach mode left to the agent, compiled objects kept in `cache`."""

    def __init__(self, cache: Path) -> None:
        super().__init__("auto")
        self.cache = cache

    def env(self) -> dict[str, str] | None:
        return {**os.environ, "UNLINKWATCH_OBJECT_CACHE": str(self.cache)}


def startup_sample(binary: Path, n: int, cache: Path) -> dict[str, Any]:
    """Exec -> attached, the agent's own start-up figure and whether it compiled or loaded a kept compile from
    `cache`, RSS idle and after n unlinks (tmpfs)."""
    agent = StartupAgent(cache)
    agent.check()
    with scratch_dir() as tmp, workload.tmpfs_mount(max_files=n) as fsdir:
        agent.start(tmp, record=False)
        try:
            pid = agent.pids()[0]
            attached: dict[str, Any] = {}
            deadline = time.monotonic() + 10  # /readyz can answer before the line is read
            while not attached and time.monotonic() < deadline:
                for line in list(agent.stderr_lines):
                    if '"attached"' in line:
                        attached = json.loads(line)
                time.sleep(0.05)
            time.sleep(2)
            idle = peers.status_kib(pid, "VmRSS")
            workload.run(binary, n, fsdir)
            wait_quiet([pid])
            after, hwm = peers.status_kib(pid, "VmRSS"), peers.status_kib(pid, "VmHWM")
        finally:
            agent.stop()
    return {"exec_to_attached_s": agent.startup_s, "agent_reported_s": attached.get("startup_s"),
            "mode": attached.get("mode"), "object": attached.get("object"), "idle_rss_mib": idle / 1024,
            "rss_after_load_mib": after / 1024, "hwm_mib": hwm / 1024, "unlinks": n}


def startup_pair(binary: Path, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A first start (it compiles, into an empty cache) and a restart (it loads that kept compile)."""
    with runstate.scratch_dir("uwbench-objects-", Path("/var/tmp")) as cache:
        cache.chmod(0o700)
        return startup_sample(binary, n, cache), startup_sample(binary, n, cache)


# Exec-heavy workloads (`python -m bench --only exec`): a process per iteration, so what is paid once per
# process (sched_process_exec and _exit, the lineage a process's first deletion sends) dominates.
EXEC_LOOPS = {
    "true": 'i=0; while [ "$i" -lt "$1" ]; do /bin/true; i=$((i+1)); done',  # exec and exit only
    "rm": 'for f in "$2"/e*; do rm "$f"; done',  # each process deletes once: its lineage is synced every time
}
EXEC_HEADERS = ["config", "execs/s (median)", "slowdown vs bare", PAIRED, "completeness", "drops reported",
                "true loss", "tracer CPU us/exec", "peak RSS MiB", "kernel ns/exec", "note"]


def measure_exec(tracer: Tracer, loop: str, n: int, fsdir: Path, record: bool) -> Sample:
    with scratch_dir() as tmp:
        files = fsdir / f"exec-{os.getpid()}"
        files.mkdir()
        if loop == "rm":
            for i in range(n):
                (files / f"e{i:07d}").touch()
        tracer.start(tmp, record)
        try:
            pids = tracer_pids(tracer)
            cpu0 = sum(peers.cpu_seconds(p) for p in pids)
            k0 = bpf_run_ns_by_prog(pids) if record else {}
            t0 = time.perf_counter()
            subprocess.run(["sh", "-c", EXEC_LOOPS[loop], "sh", str(n), str(files)], check=True)
            rate = n / (time.perf_counter() - t0)
            wait_quiet(pids)
            cpu = sum(peers.cpu_seconds(p) for p in pids) - cpu0
            by_prog = bpf_ns_per_op(pids, k0, n) if record and tracer.bpf else {}
            kernel = sum(by_prog.values()) if record and tracer.bpf else None
            hwm = sum(peers.status_kib(p, "VmHWM") for p in pids)
        finally:
            tracer.stop()
            subprocess.run(["rm", "-rf", str(files)], check=False)
        return Sample(rate=rate, cpu_s=cpu, hwm_kib=hwm, kernel_ns=kernel, kernel_ns_by_prog=by_prog)


def exec_compare(loop: str, n: int, rounds: int, baseline: BaselineAgent | None = None) -> list[ConfigResult]:
    """bare, the tracepoint agent (and a baseline revision's), interleaved; kernel ns per exec from bpf_stats."""
    tracers: list[Tracer] = [Tracer(), UnlinkwatchAgent("tracepoint"), *([baseline] if baseline else [])]
    results = {t.name: ConfigResult(t.name, f"exec loop {loop}") for t in tracers}
    with workload.FILESYSTEMS["tmpfs"](max_files=n) as fsdir:
        for r in range(rounds):
            for t in tracers:
                s = measure_exec(t, loop, n, fsdir, record=False)
                results[t.name].samples.append(s)
                print(f"  [exec {loop} round {r + 1}/{rounds}] {t.name}: {s.rate:,.0f} execs/s", file=sys.stderr)
        with bpf_stats_enabled():
            for t in tracers:
                if t.name != "bare":
                    results[t.name].record = measure_exec(t, loop, n, fsdir, record=True)
    return list(results.values())

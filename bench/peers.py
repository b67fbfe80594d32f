"""Tracer configurations measured against bare: the common process handling, bpftrace, auditd, minimal bcc, and
the agent's hooks with empty programs.

Each configuration is a `Tracer`: started before a measurement and stopped after it. `python -m bench.peers
minimal-bcc OUT` is the minimal bcc reference itself (syscall tracepoints -> ring buffer -> Python consumer);
`python -m bench.peers hooks-only` attaches a program that does nothing to every hook the agent's tracepoint mode
runs on a deletion: the floor any tracer of these hooks pays, whatever its programs do; `hooks-only fentry-lsm` does
the same for the fentry mode's hooks and the BPF LSM hooks of block rules (enforce.h), where the kernel has both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from unlinkwatch.agent.probe.program import SYSCALLS

from unlinkwatch import runstate

CLK_TCK = os.sysconf("SC_CLK_TCK")
UNLINK_TRACEPOINTS = ("sys_enter_unlinkat", "sys_enter_unlink", "sys_enter_rmdir")
HEADER_TREE = "/usr/local/share/unlinkwatch/kernel-headers"


class Unavailable(RuntimeError):
    """This configuration cannot run here; the message says why."""


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat; with `reaped`, plus those of
    the children it has waited for."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()
    return sum(int(x) for x in fields[11:15 if reaped else 13]) / CLK_TCK


def children(pid: int) -> list[int]:
    """The live child processes of pid, whichever of its threads started them."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in task.read_text().split()]
    return out


def status_kib(pid: int, key: str) -> int:
    """A `Vm*` line of /proc/<pid>/status in KiB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def perf_attachments(pid: int) -> list[dict[str, object]]:
    """Tracepoint and raw tracepoint attachments owned by pid, from `bpftool perf show`."""
    proc = subprocess.run(["bpftool", "perf", "show", "--json"], capture_output=True, text=True, check=False)
    try:
        rows = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        return []
    return [r for r in rows if r.get("pid") == pid]


def _raise_memlock() -> None:
    # older tools still ask for RLIMIT_MEMLOCK; best effort, the kernel accounts BPF memory by cgroup now
    _soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))


def _child_setup() -> None:
    """Every tracer dies with the bench (a killed run must not leave one attached and recording)."""
    _raise_memlock()
    runstate.die_with_parent()


def count_lines(path: Path, needle: str, also: str | None = None) -> int:
    """Lines of a (possibly huge) text file that contain needle (and `also`, when given)."""
    n = 0
    nb, ab = needle.encode(), also.encode() if also else None
    with path.open("rb") as f:
        for line in f:
            if nb in line and (ab is None or ab in line):
                n += 1
    return n


class Tracer:
    """One configuration. Subclasses start their processes in `start` and register them in `procs`."""

    name = "bare"
    bpf = False  # attaches BPF programs (their kernel-side cost is read from bpf_stats)
    stop_signal = signal.SIGINT

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workdir = Path("/nonexistent")
        self.record = False
        self.stderr_lines: list[str] = []
        self._stderr_threads: list[threading.Thread] = []

    def check(self) -> None:
        """Raise Unavailable with a reason when this configuration cannot run on this machine."""

    def start(self, workdir: Path, record: bool) -> None:
        """Start and wait until ready. record=True: keep the events somewhere `count_events` can count."""
        self.workdir, self.record = workdir, record
        self.stderr_lines = []

    def pids(self) -> list[int]:
        """Its processes and their children (the collector's commit process is the collector's cost)."""
        return [pid for p in self.procs for pid in (p.pid, *children(p.pid))]

    def count_events(self, prefix: str) -> int | None:
        """Events seen for files whose names start with prefix (None: not countable in this mode)."""
        return None

    def drops_reported(self) -> int | None:
        """Losses as the tool itself reports them (None: the tool reports none)."""
        return None

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(self.stop_signal)
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in self._stderr_threads:
            t.join(timeout=5)
        self.procs, self._stderr_threads = [], []

    # helpers for subclasses
    def _spawn(self, cmd: list[str], stdout: Path | None = None, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.Popen[bytes]:
        out = stdout.open("wb") if stdout else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                preexec_fn=_child_setup, env=env, cwd=cwd)
        if stdout and not isinstance(out, int):
            out.close()
        self.procs.append(proc)
        t = threading.Thread(target=self._read_stderr, args=(proc,), daemon=True)
        t.start()
        self._stderr_threads.append(t)
        return proc

    def _spawn_peer(self, *args: str) -> subprocess.Popen[bytes]:
        """`python -m bench.peers ARGS` (a bcc program of this module), compiling against the kept header tree."""
        env = dict(os.environ)
        if Path(HEADER_TREE).is_dir():
            env.setdefault("BCC_KERNEL_SOURCE", HEADER_TREE)
        return self._spawn([sys.executable, "-m", "bench.peers", *args], env=env,
                           cwd=Path(__file__).resolve().parent.parent)

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            self.stderr_lines.append(raw.decode(errors="replace").rstrip("\n"))

    def _fail(self, proc: subprocess.Popen[bytes], what: str) -> Unavailable:
        tail = " | ".join(line for line in self.stderr_lines[-3:] if line.strip()) or "no output"
        self.stop()
        return Unavailable(f"{what} (exit {proc.returncode}): {tail[:400]}")

    def _wait_attached(self, proc: subprocess.Popen[bytes], count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise self._fail(proc, f"{self.name} exited before attaching")
            if len(perf_attachments(proc.pid)) >= count:
                return
            time.sleep(0.1)
        raise self._fail(proc, f"{self.name} did not attach within {timeout:.0f} s")


BPFTRACE_SCRIPT = """\
tracepoint:syscalls:sys_enter_unlinkat,
tracepoint:syscalls:sys_enter_unlink,
tracepoint:syscalls:sys_enter_rmdir
{ printf("%d %s %s\\n", pid, comm, str(args->pathname)); }
"""


class Bpftrace(Tracer):
    """Debian's bpftrace on the same syscall tracepoints, printing pid, comm, filename to a file."""

    name = "bpftrace"
    bpf = True

    def check(self) -> None:
        if not shutil.which("bpftrace"):
            raise Unavailable("bpftrace is not installed (apt-get install bpftrace)")

    def start(self, workdir: Path, record: bool) -> None:
        super().start(workdir, record)
        self.out = workdir / "bpftrace.out"
        proc = self._spawn(["bpftrace", "-o", str(self.out), "-e", BPFTRACE_SCRIPT])
        self._wait_attached(proc, len(UNLINK_TRACEPOINTS))

    def count_events(self, prefix: str) -> int | None:
        return count_lines(self.out, prefix) if self.out.exists() else 0

    def drops_reported(self) -> int | None:
        text = self.out.read_text(errors="replace") if self.out.exists() else ""
        found = re.findall(r"Lost (\d+) events", text + "\n".join(self.stderr_lines))
        return sum(int(n) for n in found)


MINIMAL_BCC_C = r"""
struct event { u32 pid; char comm[16]; char filename[256]; };
BPF_RINGBUF_OUTPUT(events, 4096);
BPF_ARRAY(lost, u64, 1);

static int emit(const char *pathname)
{
	struct event *e = events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		int zero = 0;
		u64 *n = lost.lookup(&zero);
		if (n)
			__sync_fetch_and_add(n, 1);
		return 0;
	}
	e->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_probe_read_user_str(e->filename, sizeof(e->filename), pathname);
	events.ringbuf_submit(e, 0);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_unlinkat) { return emit(args->pathname); }
TRACEPOINT_PROBE(syscalls, sys_enter_unlink) { return emit(args->pathname); }
TRACEPOINT_PROBE(syscalls, sys_enter_rmdir) { return emit(args->pathname); }
"""


def minimal_bcc_main(out_path: str) -> int:
    """The reference: compile, attach, decode each record with ctypes and write one line per event."""
    from bcc import BPF

    b = BPF(text=MINIMAL_BCC_C)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with open(out_path, "w") as out:
        def on_event(_ctx: object, data: object, _size: int) -> None:
            e = b["events"].event(data)
            out.write(f"{e.pid} {e.comm.decode(errors='replace')} {e.filename.decode(errors='replace')}\n")

        b["events"].open_ring_buffer(on_event)
        print(json.dumps({"msg": "attached"}), file=sys.stderr, flush=True)
        while not stop.is_set():
            b.ring_buffer_poll(100)
        b.ring_buffer_consume()
    lost = sum(v.value for v in b["lost"].values())
    print(json.dumps({"msg": "stopped", "lost": lost}), file=sys.stderr, flush=True)
    return 0


class MinimalBcc(Tracer):
    """Reference: a minimal bcc program (syscall tracepoints, ring buffer, Python consumer) as its own process."""

    name = "minimal bcc"
    bpf = True

    def check(self) -> None:
        probe = subprocess.run([sys.executable, "-c", "import bcc"], capture_output=True, check=False)
        if probe.returncode != 0:
            raise Unavailable("the bcc Python module is not importable (apt-get install python3-bpfcc)")

    def start(self, workdir: Path, record: bool) -> None:
        super().start(workdir, record)
        self.out = workdir / "minimal-bcc.out"
        proc = self._spawn_peer("minimal-bcc", str(self.out))
        self._wait_attached(proc, len(UNLINK_TRACEPOINTS))

    def count_events(self, prefix: str) -> int | None:
        return count_lines(self.out, prefix) if self.out.exists() else 0

    def drops_reported(self) -> int | None:
        for line in reversed(self.stderr_lines):
            if '"lost"' in line:
                return int(json.loads(line)["lost"])
        return None


HOOKS_ONLY_C = r"""
int hook(void *ctx) { return 0; }
"""
# the hooks the agent's tracepoint mode runs on a deletion: the six calls' syscall tracepoints at entry and exit,
# and the raw ext4 tracepoint that reads the inode an ext4 unlink destroys
HOOK_CALLS = SYSCALLS
HOOK_RAW = "ext4_unlink_enter"

# the fentry mode's programs (unlink.bpf.c, UW_MODE_FENTRY) and the block rules' BPF LSM programs (enforce.h), each
# returning at once; an LSM program returns the verdict it was given, as enforce.h's do. UNLINK_FN is the kernel's
# unlink function.
HOOKS_ONLY_FENTRY_LSM_C = r"""
struct filename;
struct renamedata;
struct path;
struct dentry;
struct inode;
KFUNC_PROBE(UNLINK_FN, int dfd, struct filename *name) { return 0; }
KRETFUNC_PROBE(UNLINK_FN, int dfd, struct filename *name, int ret) { return 0; }
KFUNC_PROBE(do_rmdir, int dfd, struct filename *name) { return 0; }
KRETFUNC_PROBE(do_rmdir, int dfd, struct filename *name, int ret) { return 0; }
KFUNC_PROBE(do_renameat2, int olddfd, struct filename *from, int newdfd, struct filename *to, unsigned int flags)
{ return 0; }
KRETFUNC_PROBE(do_renameat2, int olddfd, struct filename *from, int newdfd, struct filename *to, unsigned int flags,
               int ret) { return 0; }
KFUNC_PROBE(vfs_rename, struct renamedata *rd) { return 0; }
KRETFUNC_PROBE(vfs_rename, struct renamedata *rd, int ret) { return 0; }
KFUNC_PROBE(vfs_unlink, void *idmap, void *dir, void *dentry) { return 0; }
KFUNC_PROBE(vfs_rmdir, void *idmap, void *dir, void *dentry) { return 0; }
LSM_PROBE(path_unlink, const struct path *dir, struct dentry *dentry, int ret) { return ret; }
LSM_PROBE(path_rmdir, const struct path *dir, struct dentry *dentry, int ret) { return ret; }
LSM_PROBE(path_rename, const struct path *old_dir, struct dentry *old_dentry, const struct path *new_dir,
          struct dentry *new_dentry, unsigned int flags, int ret) { return ret; }
LSM_PROBE(inode_rename, struct inode *old_dir, struct dentry *old_dentry, struct inode *new_dir,
          struct dentry *new_dentry, int ret) { return ret; }
"""
HOOK_MODES = ("tracepoint", "fentry-lsm")


def _attach_tracepoint_hooks(bpf_cls: Any) -> dict[str, int]:
    b = bpf_cls(text=HOOKS_ONLY_C)
    n = 0
    for call in HOOK_CALLS:
        for side in ("enter", "exit"):
            tp = f"syscalls:sys_{side}_{call}"
            if bpf_cls.tracepoint_exists("syscalls", f"sys_{side}_{call}"):
                b.attach_tracepoint(tp=tp, fn_name="hook")
                n += 1
    raw = 0
    with contextlib.suppress(Exception):  # no ext4 in this kernel: the syscall hooks alone
        b.attach_raw_tracepoint(tp=HOOK_RAW, fn_name="hook")
        raw = 1
    _KEEP.append(b)
    return {"tracepoints": n, "raw_tracepoints": raw}


def _attach_fentry_lsm_hooks(bpf_cls: Any) -> dict[str, int]:
    from unlinkwatch.agent.policy.runtime import bpf_lsm_missing
    from unlinkwatch.agent.probe.attach import UNLINK_FUNCTIONS

    missing = bpf_lsm_missing()
    if missing:
        raise RuntimeError(missing)
    fns = [f for f in UNLINK_FUNCTIONS if bpf_cls.get_kprobe_functions(f"^{f}$".encode())]
    if not fns:
        raise RuntimeError(f"none of {', '.join(UNLINK_FUNCTIONS)} in this kernel")
    _KEEP.append(bpf_cls(text=HOOKS_ONLY_FENTRY_LSM_C.replace("UNLINK_FN", fns[0])))  # bcc attaches them at load
    return {"fentry": 10, "lsm": 4}


_KEEP: list[Any] = []


def hooks_only_main(mode: str = "tracepoint") -> int:
    """Attaches the empty programs of `mode` to each hook that exists here, says how many, and waits for
    SIGINT/SIGTERM. A kernel that refuses them: one line on stderr, exit 1."""
    from bcc import BPF

    try:
        counts = _attach_fentry_lsm_hooks(BPF) if mode == "fentry-lsm" else _attach_tracepoint_hooks(BPF)
    except Exception as e:  # bcc raises Exception for a refused load or attach
        print(json.dumps({"msg": "unavailable", "error": str(e).splitlines()[0] if str(e) else repr(e)}),
              file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(json.dumps({"msg": "attached", **counts}), file=sys.stderr, flush=True)
    stop.wait()
    return 0


class HooksOnly(Tracer):
    """The floor: a program that returns at once on every hook the agent's tracepoint mode uses (`mode`
    "tracepoint"), or its fentry mode with block rules enforced ("fentry-lsm": the fentry programs and the BPF LSM
    ones, where the kernel runs both)."""

    bpf = True

    def __init__(self, mode: str = "tracepoint") -> None:
        super().__init__()
        self.mode = mode
        self.name = "hooks only (empty programs)" if mode == "tracepoint" else \
            "hooks only (fentry + LSM, empty programs)"

    def check(self) -> None:
        MinimalBcc().check()

    def start(self, workdir: Path, record: bool) -> None:
        super().start(workdir, record)
        proc = self._spawn_peer("hooks-only", self.mode)
        # compiling under emulation (the kernel lab) takes longer than on a machine
        wait_s = max(60.0, float(os.environ.get("UNLINKWATCH_BENCH_READY_S", "60")))
        deadline = time.monotonic() + wait_s
        while not any('"attached"' in line for line in self.stderr_lines):
            if proc.poll() is not None:
                raise self._fail(proc, f"{self.name} exited before attaching")
            if time.monotonic() > deadline:
                raise self._fail(proc, f"{self.name} did not attach within {wait_s:.0f} s")
            time.sleep(0.1)


AUDIT_KEY = "uwbench"
AUDIT_RULE = ["-a", "always,exit", "-F", "arch=b64", "-S", "unlink,unlinkat,rmdir,rename,renameat,renameat2",
              "-k", AUDIT_KEY]
AUDIT_BACKLOG = 8192  # what Debian's shipped audit.rules sets (-b 8192); the kernel default is 64
AUDIT_LOG_MB = 512    # auditd's log: rotated at this size ...
AUDIT_LOG_FILES = 3   # ... into at most this many files (1.5 GB; about 1.1 M unlinks recorded)


def audit_status() -> dict[str, int]:
    out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=False).stdout
    status: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].lstrip("-").isdigit():
            status[parts[0]] = int(parts[1])
    return status


class Auditd(Tracer):
    """auditd started by hand with a private config and one rule on unlink/unlinkat/rmdir/rename*."""

    name = "auditd"
    stop_signal = signal.SIGTERM

    def check(self) -> None:
        if not (shutil.which("auditd") and shutil.which("auditctl")):
            raise Unavailable("auditd is not installed (apt-get install auditd)")
        status = audit_status()
        if not status:
            raise Unavailable("the kernel's audit subsystem does not answer (auditctl -s)")
        if status.get("pid", 0) != 0:
            raise Unavailable(f"an audit daemon already runs (pid {status['pid']}); not touching it")

    def _config(self) -> Path:
        confdir = self.workdir / "auditconf"
        confdir.mkdir(exist_ok=True)
        conf = confdir / "auditd.conf"
        # The log is bounded: AUDIT_LOG_FILES files of AUDIT_LOG_MB at most (rotated), and auditd suspends
        # logging when the disk runs short instead of filling it.
        settings = {"log_file": str(self.log), "write_logs": "yes", "log_format": "ENRICHED",
                    "flush": "INCREMENTAL_ASYNC", "freq": "50", "max_log_file": str(AUDIT_LOG_MB),
                    "max_log_file_action": "ROTATE", "num_logs": str(AUDIT_LOG_FILES),
                    "space_left_action": "SUSPEND", "admin_space_left_action": "SUSPEND",
                    "disk_full_action": "SUSPEND", "disk_error_action": "SUSPEND", "local_events": "yes",
                    "priority_boost": "4", "q_depth": "2000", "plugin_dir": str(self.workdir / "plugins.d"),
                    "space_left": "2048", "admin_space_left": "1024"}
        (self.workdir / "plugins.d").mkdir(exist_ok=True)
        conf.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        conf.chmod(0o640)
        return confdir

    def start(self, workdir: Path, record: bool) -> None:
        super().start(workdir, record)
        self.log = workdir / "audit.log"
        self.before = audit_status()
        # -n: no fork, so auditd is our child and dies with the bench (-f would log to stderr, not its file).
        # What outlives every process (the kernel's rule, backlog and enabled flag) is recorded before it is
        # set, for make clean-host.
        errfile = workdir / "auditd.stderr"
        self._records = [runstate.record("audit-rule", undo=["-e", str(self.before.get("enabled", 0))]),
                         runstate.record("audit-rule", undo=["-b", str(self.before.get("backlog_limit", 64))]),
                         runstate.record("audit-rule", undo=["-d", *AUDIT_RULE[1:]])]
        with errfile.open("wb") as err:
            proc = subprocess.Popen(["auditd", "-n", "-c", str(self._config())], stdout=subprocess.DEVNULL,
                                    stderr=err, stdin=subprocess.DEVNULL, preexec_fn=_child_setup)
        self.procs.append(proc)
        deadline = time.monotonic() + 20
        while audit_status().get("pid") != proc.pid:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = errfile.read_text(errors="replace").strip()[-300:]
                self.stop()
                raise Unavailable(f"auditd did not register with the kernel: {tail}")
            time.sleep(0.1)
        self.daemon_pid = proc.pid
        self._auditctl("-b", str(AUDIT_BACKLOG))
        self._auditctl(*AUDIT_RULE)
        self._auditctl("-e", "1")
        self.lost_start = audit_status().get("lost", 0)

    def pids(self) -> list[int]:
        return [self.daemon_pid]

    def _auditctl(self, *args: str) -> None:
        subprocess.run(["auditctl", *args], capture_output=True, check=False)

    def count_events(self, prefix: str) -> int | None:
        # one PATH record with nametype=DELETE per removed name (the PARENT record is not counted), in the
        # log and the files it was rotated into
        logs = [self.log, *(Path(f"{self.log}.{i}") for i in range(1, AUDIT_LOG_FILES))]
        return sum(count_lines(p, prefix, "nametype=DELETE") for p in logs if p.exists())

    def drops_reported(self) -> int | None:
        return max(0, self.lost_end - self.lost_start)

    def stop(self) -> None:
        self.lost_end = audit_status().get("lost", 0)
        self._auditctl("-d", *AUDIT_RULE[1:])
        super().stop()  # SIGTERM, then SIGKILL after 60 s
        self._auditctl("-b", str(self.before.get("backlog_limit", 64)))
        self._auditctl("-e", str(self.before.get("enabled", 0)))
        for rec in self._records:
            rec.done()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "minimal-bcc":
        sys.exit(minimal_bcc_main(sys.argv[2]))
    if len(sys.argv) in (2, 3) and sys.argv[1] == "hooks-only" and sys.argv[2:] in ([], *([m] for m in HOOK_MODES)):
        sys.exit(hooks_only_main(*sys.argv[2:]))
    print(f"usage: python -m bench.peers minimal-bcc OUTFILE | hooks-only [{'|'.join(HOOK_MODES)}]", file=sys.stderr)
    sys.exit(2)

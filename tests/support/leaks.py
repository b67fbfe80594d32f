"""The suite's leak check: what the machine has at the start of a pytest session, compared with what it has
once every fixture is torn down. A process, mount, loop device, audit rule, attached BPF program, changed
sysctl, project temp dir or runstate record that the session made and left is a leak (a process counts
when it carries the session's mark in its environment: mark_session()); tests/conftest.py
fails the session with one line per leak (shown as "N leaked" in pytest's summary line)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from unlinkwatch import runstate

SYSCTLS = ("/proc/sys/kernel/bpf_stats_enabled",)


MARK = "UNLINKWATCH_TEST_SESSION"  # in the environment of the session and every process it starts


def mark_session() -> None:
    """Marks this session's processes: the leak check counts only processes that carry the mark, so what
    else runs on the machine (a shell, a monitor) is never taken for a leak."""
    os.environ[MARK] = f"{os.getpid()}-{time.time_ns()}"


def _processes() -> dict[int, int]:
    """pid -> start time of every process that carries this session's mark."""
    mark = f"{MARK}={os.environ.get(MARK, '')}".encode()
    out = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if mark not in (d / "environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        st = runstate.start_time(int(d.name))
        if st is not None:
            out[int(d.name)] = st
    return out


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return pids


def _lines(cmd: list[str]) -> set[str]:
    if shutil.which(cmd[0]) is None:
        return set()
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return {line.strip() for line in p.stdout.splitlines() if line.strip() and not line.startswith("No rules")}


def bpf_owners() -> set[str]:
    """Pids that have BPF programs attached (`bpftool perf show`)."""
    return {line.split()[0] for line in _lines(["bpftool", "perf", "show"])}


def _temp_entries() -> set[str]:
    return {str(p) for root in runstate.TEMP_ROOTS if root.is_dir() for p in root.iterdir()
            if p.name.startswith(runstate.TEMP_PREFIXES)}


@dataclass
class Snapshot:
    processes: dict[int, int] = field(default_factory=dict)
    mounts: set[str] = field(default_factory=set)
    loops: set[str] = field(default_factory=set)
    audit: set[str] = field(default_factory=set)
    bpf: set[str] = field(default_factory=set)
    sysctls: dict[str, str] = field(default_factory=dict)
    temps: set[str] = field(default_factory=set)
    records: set[str] = field(default_factory=set)

    @classmethod
    def take(cls) -> Snapshot:
        return cls(processes=_processes(), mounts=set(runstate._mounts()), loops=_lines(["losetup", "-a"]),
                   audit=_lines(["auditctl", "-l"]), bpf=bpf_owners(),
                   sysctls={s: Path(s).read_text().strip() for s in SYSCTLS if Path(s).exists()},
                   temps=_temp_entries(), records={str(p) for p, _ in runstate.records()})


def _describe(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        args = "?"
    return f"process {pid}: {args[:160]}"


def leaks(before: Snapshot, settle_s: float = 15.0) -> list[str]:
    """What is here now and was not in `before`; waits up to settle_s for things that are on their way out."""
    deadline = time.monotonic() + settle_s
    while True:
        now = Snapshot.take()
        mine = _ancestors()
        found = [_describe(pid) for pid, st in sorted(now.processes.items())
                 if before.processes.get(pid) != st and pid not in mine and runstate.alive(pid, st)]
        found += [f"mount: {m}" for m in sorted(now.mounts - before.mounts)]
        found += [f"loop device: {line}" for line in sorted(now.loops - before.loops)]
        found += [f"audit rule: {line}" for line in sorted(now.audit - before.audit)]
        found += [f"BPF programs attached by {o}" for o in sorted(now.bpf - before.bpf)]
        found += [f"sysctl {s} is {v} (was {before.sysctls.get(s)})" for s, v in sorted(now.sysctls.items())
                  if before.sysctls.get(s) != v]
        found += [f"temp: {t}" for t in sorted(now.temps - before.temps)]
        found += [f"runstate record not undone: {r}" for r in sorted(now.records - before.records)]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)

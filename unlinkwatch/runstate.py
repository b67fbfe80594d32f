"""What a run (the test suite, a benchmark, the demo) makes on the host that cannot die with it.

Processes are tied to their parent (`die_with_parent`, PR_SET_PDEATHSIG): a run killed by SIGKILL takes
them along. What the kernel keeps after every process has gone (mounts, loop devices, audit rules,
sysctls) and what sits on disk (data dirs, images, temp dirs) is recorded here *when it is made*, one
JSON file per thing in STATE_DIR, named after the process that made it. When the run undoes it, the
record goes too; when the run is killed first, the record stays and `make clean-host`
(scripts/clean-host.py, `sweep()` here) undoes it once that process is gone.

Nothing here looks for things by a process name: only what was recorded, and (in `sweep`) mounts, loop
devices and temp dirs under the project's own name prefixes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlinkwatch.mountinfo import read_mountinfo

STATE_DIR = Path(os.environ.get("UNLINKWATCH_RUNSTATE_DIR", "/var/tmp/unlinkwatch-runstate"))
# Temp dirs and images the project names with these prefixes (in /tmp and /var/tmp).
TEMP_PREFIXES = ("uwbench-", "uw-pg-", "uw-am-", "unlinkwatch-demo-", "unlinkwatch-test-", "uwtest-",
                 "unlinkwatch-replay-")
TEMP_ROOTS = (Path("/tmp"), Path("/var/tmp"))
# the order sweep() undoes them in
KINDS = ("runc", "pid", "cgroup", "audit-rule", "sysctl", "mount", "loop", "dir", "file")
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For Popen(preexec_fn=...): the child gets SIGKILL when the thread that started it ends, so a run
    killed part-way takes its agents, collectors, servers and tracers with it. Call it after any change of
    user (Popen does: its preexec_fn runs after user=/group=), which clears the setting."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() == 1:  # the parent died between fork and prctl
        os._exit(1)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a pid from its reuse); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def alive(pid: int, started: int | None) -> bool:
    """The process runs (a zombie has ended: it holds nothing but its exit status)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0] != "Z" and (started is None or int(fields[19]) == started)


@dataclass
class Record:
    """One thing a run made; `done()` when the run has undone it itself."""

    path: Path
    kind: str
    fields: dict[str, Any]

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


_counter = iter(range(1, 1 << 62))


def record(kind: str, owner_pid: int | None = None, **fields: Any) -> Record:
    """Writes the record before the thing is made (a kill between the two leaves a record of nothing,
    which sweep() passes over; the other order could leave a thing with no record)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    pid = owner_pid or os.getpid()  # a shell script records through scripts/clean-host.py with its own pid
    body = {"kind": kind, "owner": pid, "owner_start": start_time(pid), "made": time.time(), **fields}
    path = STATE_DIR / f"{pid}-{next(_counter)}-{kind}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    tmp.replace(path)
    return Record(path, kind, body)


@contextlib.contextmanager
def recorded(kind: str, **fields: Any) -> Iterator[Record]:
    """record(), and done() when the block ends normally or by an exception (the block undoes the thing)."""
    rec = record(kind, **fields)
    try:
        yield rec
    finally:
        rec.done()


def temp_dir(prefix: str, parent: Path | None = None) -> tuple[Path, Record]:
    """A new temp dir (prefix one of TEMP_PREFIXES), recorded; the caller removes it, then `done()`s it."""
    if not prefix.startswith(TEMP_PREFIXES):
        raise ValueError(f"temp dir prefix {prefix!r} is not one of the project's ({', '.join(TEMP_PREFIXES)})")
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    return path, record("dir", path=str(path))


@contextlib.contextmanager
def scratch_dir(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """temp_dir() removed (and its record with it) when the block ends."""
    path, rec = temp_dir(prefix, parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        rec.done()


def records() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for p in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
        try:
            out.append((p, json.loads(p.read_text())))
        except (OSError, ValueError):
            p.unlink(missing_ok=True)  # half-written: its thing was not made yet
    return out


def _run(cmd: list[str]) -> bool:
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def _mounts() -> list[str]:
    """Mount points, deepest first."""
    pts = {os.fsdecode(m.point) for m in read_mountinfo()}
    return sorted(pts, key=lambda p: -p.count("/"))


def _ours(path: str) -> bool:
    p = Path(path)
    return any(p.is_relative_to(root) and len(p.relative_to(root).parts) >= 1
               and p.relative_to(root).parts[0].startswith(TEMP_PREFIXES) for root in TEMP_ROOTS)


def _umount(target: str) -> bool:
    return _run(["umount", target]) or _run(["umount", "-l", target])


def _undo(kind: str, f: dict[str, Any]) -> str | None:
    """Undoes one recorded thing; returns the line to print, None when it was already gone."""
    if kind == "runc":  # a container outlives a killed `runc run`; delete --force kills it and frees its cgroup
        cmd = ["runc", "--root", str(f["root"]), "delete", "--force", str(f["name"])]
        line = None
        if Path(f["root"], str(f["name"])).exists():
            done = _run(cmd)
            line = f"{'deleted' if done else 'could not delete'} runc container {f['name']}"
        # runc removes the container's own cgroup; the pod's above it, made by the run, goes too when empty
        if f.get("cgroup") and remove_everywhere(str(f["cgroup"])):
            line = line or f"removed cgroup {f['cgroup']}"
        return line
    if kind == "cgroup":  # a pod's cgroup made by the run (its processes died with it), with empty parents
        return f"removed cgroup {f['path']}" if remove_everywhere(str(f["path"])) else None
    if kind == "pid":
        pid = int(f["pid"])
        if not alive(pid, f.get("start")):
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return f"killed pid {pid} ({f.get('what', '?')})"
    if kind == "audit-rule":
        undo = [str(a) for a in f["undo"]]  # the auditctl arguments that undo it (-d RULE, -e 0, -b 64)
        return f"auditctl {' '.join(undo)}" if _run(["auditctl", *undo]) else None
    if kind == "sysctl":
        path = Path(f["path"])
        if path.read_text().strip() == str(f["restore"]):
            return None
        path.write_text(str(f["restore"]))
        return f"restored {path} to {f['restore']}"
    if kind == "mount":
        target = str(f["path"])
        if target not in _mounts():
            return None
        return f"unmounted {target}" if _umount(target) else f"could not unmount {target}"
    if kind == "loop":
        return detach_loops(Path(f["image"]))
    if kind in ("dir", "file"):
        path = Path(f["path"])
        if not path.exists() and not path.is_symlink():
            return None
        if kind == "dir":
            for target in _mounts():  # deepest first: never delete through a bind mount into the host
                if target.startswith(str(path) + "/"):
                    _umount(target)
            if _mounted_below(path):
                return f"could not remove {path}: mounts remain below it"
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return f"removed {path}"
    return None


def detach_loops(image: Path) -> str | None:
    """Unmounts and detaches every loop device still backed by image, then removes the image."""
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    lines = []
    for line in out.splitlines():
        m = re.match(r"(/dev/loop\d+): .*\((.*?)( \(deleted\))?\)$", line)
        if m and m.group(2) == str(image):
            dev = m.group(1)
            for target in _mounts():
                if _mount_source(target) == dev and _umount(target):
                    lines.append(f"unmounted {target}")
            _run(["losetup", "-d", dev])  # a `mount -o loop` device goes by itself once unmounted (autoclear)
            still = subprocess.run(["losetup", dev], capture_output=True, text=True, check=False).stdout
            lines.append(f"could not detach {dev} ({image})" if str(image) in still else f"detached {dev} ({image})")
    image.unlink(missing_ok=True)
    return "; ".join(lines) or None


def _rmdir_up(path: str, stop_at: str) -> bool:
    """Remove a cgroup directory and its now-empty parents up to (not including) stop_at; whether any went."""
    p, removed = path, False
    while p.startswith(stop_at + "/"):
        try:
            os.rmdir(p)
            removed = True
        except FileNotFoundError:
            pass  # runc already removed the leaf
        except OSError:
            return removed  # not empty: something else lives there
        p = os.path.dirname(p)
    return removed


def cgroup_mountpoints() -> list[str]:
    """Every cgroup v1 and v2 mount point: runc makes the container's path in each hierarchy."""
    return [os.fsdecode(m.point) for m in read_mountinfo() if m.fstype in ("cgroup", "cgroup2")]


def remove_everywhere(cgroup_path: str) -> bool:
    """Removes a cgroup path (relative to each hierarchy's root) and its empty parents from every hierarchy;
    whether something was removed."""
    removed = False
    for mp in cgroup_mountpoints():
        removed = _rmdir_up(mp.rstrip("/") + cgroup_path, mp.rstrip("/")) or removed
    return removed


def _mount_source(target: str) -> str | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if left.split()[4] == target:
            return right.split()[1]
    return None


def sweep(dry_run: bool = False) -> list[str]:
    """Undoes what runs that are no longer alive left: first every stale record (kinds in KINDS order),
    then mounts and loop devices on the project's own temp paths and those temp dirs themselves, unless a
    live run recorded them. Returns one line per thing removed. Idempotent."""
    lines: list[str] = []
    live_paths: set[str] = set()
    stale: list[tuple[Path, dict[str, Any]]] = []
    for path, f in records():
        if alive(int(f["owner"]), f.get("owner_start")):
            live_paths.update(str(v) for k, v in f.items() if k in ("path", "image"))
        else:
            stale.append((path, f))
    stale.sort(key=lambda pf: KINDS.index(pf[1]["kind"]))
    for path, f in stale:
        if dry_run:
            lines.append(f"would undo {f['kind']}: {json.dumps({k: v for k, v in f.items() if k != 'kind'})}")
            continue
        line = _undo(f["kind"], f)
        if line:
            lines.append(line)
        path.unlink(missing_ok=True)
    if dry_run:
        return lines
    for target in _mounts():
        if _ours(target) and not any(target.startswith(p) for p in live_paths):
            lines.append(f"unmounted {target}" if _umount(target) else f"could not unmount {target}")
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        m = re.match(r"(/dev/loop\d+): .*\((.*?)( \(deleted\))?\)$", line)
        if m and _ours(m.group(2)) and m.group(2) not in live_paths and _run(["losetup", "-d", m.group(1)]):
            lines.append(f"detached {m.group(1)} ({m.group(2)})")
    for root in TEMP_ROOTS:
        for p in sorted(root.glob("*")) if root.is_dir() else []:
            if p.name.startswith(TEMP_PREFIXES) and str(p) not in live_paths and not _mounted_below(p):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                lines.append(f"removed {p}")
    return lines


def _mounted_below(p: Path) -> bool:
    s = str(p)
    return any(m == s or m.startswith(s + "/") for m in _mounts())

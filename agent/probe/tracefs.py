"""tracefs, which syscall tracepoints and kprobe events are attached through. Most hosts mount it at boot; where
none is mounted, the agent (and doctor) mount it for as long as they run and unmount it when they end, so the
machine's mount table is left as they found it. The mount is recorded first (unlinkwatch/runstate.py): should the
process be killed before it unmounts, `make clean-host` does."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

from unlinkwatch import runstate
from unlinkwatch.errors import UserError

log = logging.getLogger("unlinkwatch.tracefs")

TRACEFS = "/sys/kernel/tracing"
_EVENTS = (Path(TRACEFS, "events"), Path("/sys/kernel/debug/tracing/events"))


@dataclass(frozen=True)
class Mounted:
    """A tracefs this process mounted, and its record (None where none could be written: a read-only root)."""

    record: runstate.Record | None


def has_event(system: str, name: str) -> bool:
    """Whether the kernel has the tracepoint system:name (tracefs mounted)."""
    return any((p / system / name).is_dir() for p in _EVENTS)


def _run(cmd: list[str]) -> str:
    """Runs mount(8) or umount(8): "" when it worked, else why not (its error, or that the image lacks it)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        return f"{cmd[0]}: {e.strerror}"
    return done.stderr.strip() or f"exit status {done.returncode}" if done.returncode != 0 else ""


def ensure() -> Mounted | None:
    """Makes tracefs available; the mount when this call made it (release() it when done)."""
    if any(p.is_dir() for p in _EVENTS):
        return None
    try:
        rec: runstate.Record | None = runstate.record("mount", path=TRACEFS)
    except OSError as e:
        log.warning("tracefs mount not recorded: make clean-host cannot undo it after a kill",
                    extra={"fields": {"error": str(e)}})
        rec = None
    cmd = ["mount", "-t", "tracefs", "nodev", TRACEFS]
    why = _run(cmd)
    if why or not _EVENTS[0].is_dir():
        if rec is not None:
            rec.done()
        raise UserError(f"tracefs is not mounted and could not be mounted ({' '.join(cmd)}: "
                        f"{why or 'no events directory after it'}); mount it on the node")
    return Mounted(rec)


def release(mounted: Mounted) -> None:
    """Unmounts the tracefs ensure() mounted; leaves it mounted (and recorded), with a warning, while something
    still uses it."""
    why = _run(["umount", TRACEFS])
    if why:
        log.warning("tracefs left mounted", extra={"fields": {"path": TRACEFS, "error": why}})
        return
    if mounted.record is not None:
        mounted.record.done()

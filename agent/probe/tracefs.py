"""tracefs, which syscall tracepoints and kprobe events are attached through. Most hosts mount it at boot; where
none is mounted, the agent (and doctor) mount it for as long as they run and unmount it when they end, so the
machine's mount table is left as they found it. The mount is recorded first (unlinkwatch/runstate.py): should the
process be killed before it unmounts, `make clean-host` does."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from unlinkwatch import runstate
from unlinkwatch.errors import UserError

log = logging.getLogger("unlinkwatch.tracefs")

TRACEFS = "/sys/kernel/tracing"
_EVENTS = (Path(TRACEFS, "events"), Path("/sys/kernel/debug/tracing/events"))


def ensure() -> runstate.Record | None:
    """Makes tracefs available; the mount's record when this call mounted it (release() it when done)."""
    if any(p.is_dir() for p in _EVENTS):
        return None
    rec = runstate.record("mount", path=TRACEFS)
    done = subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], capture_output=True, check=False)
    if done.returncode != 0 or not _EVENTS[0].is_dir():
        rec.done()
        raise UserError(f"tracefs is not mounted and could not be mounted: mount -t tracefs nodev {TRACEFS}")
    return rec


def release(rec: runstate.Record) -> None:
    """Unmounts the tracefs ensure() mounted; leaves it mounted (and recorded), with a warning, while something
    still uses it."""
    done = subprocess.run(["umount", TRACEFS], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log.warning("tracefs left mounted", extra={"fields": {"path": TRACEFS, "error": done.stderr.strip()}})
        return
    rec.done()

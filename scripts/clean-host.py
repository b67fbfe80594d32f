#!/usr/bin/python3
"""`make clean-host`: removes what killed runs of the suite, the benchmarks, the demo or the Dockerfile replay
left on this machine (unlinkwatch/runstate.py says how it is found). One line per thing removed; idempotent.
Runs with the system Python and the standard library only, so it works before set-up and with a broken venv."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unlinkwatch import runstate


def main() -> int:
    if sys.argv[1:2] == ["--record"]:  # for shell scripts: --record KIND --owner PID key=value ...
        return _record(sys.argv[2:])
    dry = "--dry-run" in sys.argv[1:]
    if os.geteuid() != 0 and not dry:
        print("clean-host: run it as root (it unmounts, detaches loop devices and deletes audit rules)",
              file=sys.stderr)
        return 2
    lines = runstate.sweep(dry_run=dry)
    for line in lines:
        print(f"clean-host: {line}")
    if not lines:
        print("clean-host: nothing left behind")
    return 0


def _record(args: list[str]) -> int:
    kind, owner = args[0], 0
    fields: dict[str, str] = {}
    rest = args[1:]
    while rest:
        if rest[0] == "--owner":
            owner, rest = int(rest[1]), rest[2:]
            continue
        key, _, value = rest[0].partition("=")
        fields[key] = value
        rest = rest[1:]
    print(runstate.record(kind, owner_pid=owner or os.getppid(), **fields).path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

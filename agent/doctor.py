"""`unlinkwatch doctor`: what this kernel offers, which hook the agent would use, and a live self-test."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

from unlinkwatch.errors import UserError

from .policy.model import Policy
from .policy.runtime import bpf_lsm_missing, enforcement
from .probe import attach as probe
from .probe import procseed
from .probe import tracefs as tracefs_mount
from .probe.btf import VMLINUX_BTF, Btf, BtfError
from .probe.program import DEGRADED_EXT4_UNLINK, DEGRADED_LSM_DIRS, DEGRADED_RENAME_LOOKUP, header_tree


def _check(fn: Any) -> tuple[bool, str]:
    try:
        detail = fn()
        return True, str(detail) if detail is not None else ""
    except (UserError, BtfError, OSError) as e:
        return False, str(e)


def gather(attach: str) -> dict[str, Any]:
    """Every check; a tracefs that doctor had to mount is unmounted when they are done."""
    mounted: list[tracefs_mount.Mounted] = []
    try:
        return _gather(attach, mounted)
    finally:
        for rec in mounted:
            tracefs_mount.release(rec)


def _gather(attach: str, mounted: list[tracefs_mount.Mounted]) -> dict[str, Any]:
    report: dict[str, Any] = {"kernel": platform.release(), "checks": {}}
    checks: dict[str, dict[str, Any]] = report["checks"]

    def put(name: str, ok: bool, detail: str) -> None:
        checks[name] = {"ok": ok, "detail": detail}

    put("root", os.geteuid() == 0, "running as root" if os.geteuid() == 0 else "eBPF needs root or CAP_BPF+PERFMON")
    ok, detail = _check(lambda: f"{VMLINUX_BTF} ({Path(VMLINUX_BTF).stat().st_size // 1024} KiB)")
    put("btf", ok, detail)
    btf = Btf.load() if ok else None
    def tracefs() -> str:
        rec = tracefs_mount.ensure()
        if rec is None:
            return "mounted"
        mounted.append(rec)
        return "mounted (by doctor, for its checks)"

    put("tracefs", *_check(tracefs))
    put("kprobes", probe.kprobes_available(),
        "kprobe_events present" if probe.kprobes_available() else "CONFIG_KPROBE_EVENTS not set")
    if btf is not None:
        fns = [f for f in probe.UNLINK_FUNCTIONS if btf.has_func(f)]
        put("unlink_function", bool(fns), ", ".join(fns) or "neither do_unlinkat nor filename_unlinkat")
    put("syscall_tracepoints", Path("/sys/kernel/tracing/events/syscalls/sys_enter_unlinkat").exists(),
        "syscalls:sys_enter_unlinkat")
    put("headers", *_check(lambda: header_tree() or f"/lib/modules/{platform.release()}/build"))
    readable, denied = procseed.survey()
    put("process_seed", denied == 0,
        f"{readable} running processes' executables readable" + (
            f"; {denied} not (CAP_SYS_PTRACE missing, or another user namespace): their deletions will say "
            "process_unknown" if denied else ""))
    if os.geteuid() != 0 or btf is None:
        report["agent_can_run"] = False
        return report
    try:
        lsm_missing = bpf_lsm_missing()
        att = probe.attach(attach, btf=btf, lsm=not lsm_missing)
    except UserError as e:
        put("self_test", False, str(e))
        report["agent_can_run"] = False
        return report
    try:
        cand = att.candidate
        for c, why in att.tried:
            put(f"mode_{c.mode}", False, why)
        put(f"mode_{cand.mode}", True, f"attached to {cand.hook}")
        if cand.mode == "tracepoint":
            put("rename_lookup", bool(att.probe.rename_lookup),
                f"dcache lookup loaded ({att.probe.rename_lookup})" if att.probe.rename_lookup else
                "; ".join(d for d in att.probe.degraded if d.startswith(DEGRADED_RENAME_LOOKUP)))
            ext4 = [d for d in att.probe.degraded if d.startswith(DEGRADED_EXT4_UNLINK)]
            put("destroyed_ext4", not ext4, "; ".join(ext4) or "ext4 unlinks read their inode (ext4_unlink_enter)")
        if att.probe.enforcing:
            walks = [d for d in att.probe.degraded if d.startswith(DEGRADED_LSM_DIRS)]
            put("enforce_dir_cache", not walks, "; ".join(walks) or
                "block rules' checks cache directories (validated by rename_lock and mount_lock)")
        put("ring_buffer", True, f"{att.probe.ringbuf_size >> 20} MiB, BPF_MAP_TYPE_RINGBUF")
        how = "a kept compile loaded" if att.probe.from_cache else "compiled"
        put("self_test", True, f"synthetic unlink seen end to end in {att.startup_s:.2f} s ({how}, attached, tested)")
        enforce = enforcement(Policy(()), lsm_missing, att.probe.enforcing, att.probe.enforce_error)
        report.update(mode=cand.mode, hook=cand.hook, startup_s=round(att.startup_s, 3),
                      object=att.probe.object,
                      misses=probe.MISSES[cand.mode], agent_can_run=True,
                      enforcement={"state": "unavailable" if enforce.state != "enforcing" else "available",
                                   "reason": enforce.reason})
    finally:
        att.close()
    return report


def run(args: argparse.Namespace) -> int:
    report = gather(args.attach)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"kernel {report['kernel']}")
        for name, c in report["checks"].items():
            print(f"  {'ok ' if c['ok'] else 'NO '} {name:<20} {c['detail']}")
        if report.get("agent_can_run"):
            print(f"agent would attach: {report['mode']} ({report['hook']}), start-up {report['startup_s']} s")
            print(f"this mode misses: {report['misses']}")
            e = report["enforcement"]
            print(f"enforcement: {e['state']}" + (f" ({e['reason']})" if e["reason"] else ""))
        else:
            print("the agent cannot run here (see NO above)")
    return 0 if report.get("agent_can_run") else 1

"""The agent compiles in a short-lived loader child and keeps only fds: it maps no compiler, its RSS stays
small, the child is gone once it has attached, and stopping it detaches and unloads everything it held."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import time
from pathlib import Path

from tests.conftest import require_root
from tests.support.agentproc import AgentProcess

BPF_PROG_GET_FD_BY_ID = 13
_SYS_BPF = {"x86_64": 321, "aarch64": 280}


def _prog_ids(pid: int) -> set[int]:
    ids = set()
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            for line in fd.read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def _prog_exists(prog_id: int) -> bool:
    class Attr(ctypes.Structure):
        _fields_ = [("prog_id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(_SYS_BPF[platform.machine()], BPF_PROG_GET_FD_BY_ID, ctypes.byref(Attr(prog_id=prog_id)),
                      ctypes.sizeof(Attr))
    if fd >= 0:
        os.close(fd)
        return True
    return False


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _kprobe_events() -> set[str]:
    for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        f = Path(d, "kprobe_events")
        if f.exists():
            return {line for line in f.read_text().splitlines() if "_bcc_" in line}
    return set()


def test_the_agent_keeps_only_fds_and_stopping_it_unloads_everything() -> None:
    require_root()
    kprobes_before = _kprobe_events()
    agent = AgentProcess()
    try:
        agent.wait_attached()
        pid = agent.proc.pid
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libLLVM" not in maps and "libclang" not in maps and "libbcc" not in maps
        assert _children(pid) == []  # the loader child has exited
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        assert int(status["VmRSS"].split()[0]) < 150 * 1024
        held = _prog_ids(pid)
        assert held and all(_prog_exists(i) for i in held)
    finally:
        assert agent.stop() == 0, "\n".join(agent.log[-20:])
    deadline = time.monotonic() + 10
    while any(_prog_exists(i) for i in held) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [i for i in held if _prog_exists(i)]
    assert _kprobe_events() == kprobes_before


def test_a_kernel_that_refuses_fentry_programs_is_known_before_any_compile() -> None:
    """The fentry check (a two-instruction program loaded and attached) agrees with what an agent left to choose
    its mode does: where the check refuses, the agent skips fentry with that reason and never compiles for it
    (which cost each start about 2.5 s); where it accepts, the agent attaches in fentry mode."""
    require_root()
    from unlinkwatch.agent.probe.attach import UNLINK_FUNCTIONS
    from unlinkwatch.agent.probe.btf import Btf
    from unlinkwatch.agent.probe.program import fentry_refusal

    btf = Btf.load()
    fn = next(f for f in UNLINK_FUNCTIONS if btf.has_func(f))
    started = time.monotonic()
    refusal = fentry_refusal(btf, fn)
    assert time.monotonic() - started < 1.0
    agent = AgentProcess(attach="auto")
    try:
        info = agent.wait_attached()
    finally:
        assert agent.stop() == 0, "\n".join(agent.log[-20:])
    skipped = {json.loads(line)["mode"]: json.loads(line)["reason"] for line in agent.log
               if '"msg": "attach mode unavailable"' in line}
    if refusal:
        assert info["mode"] != "fentry"
        assert skipped["fentry"] == refusal and refusal.startswith("the kernel ")
        assert not any("Failed to load program" in line for line in agent.log)
    else:
        assert info["mode"] == "fentry" and "fentry" not in skipped

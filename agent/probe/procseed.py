"""Seeds the kernel's procs map (agent/bpf/kprobe.h, struct uw_proc) from /proc with the processes that exec'd
before the probe attached, so that their deletions carry an executable and a command line too. An entry is only
added, never replaced (BPF_NOEXIST): one the kernel wrote at an exec after attaching is newer. The command line
is /proc's, which a process may have rewritten since its exec (setproctitle); the kernel's own entries are the
command line as exec'd."""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

from ..decode import C
from . import bpfsys

EXE_MAX = C["UW_EXE_MAX"]
ARGS_MAX = C["UW_ARGS_MAX"]
SEEDED = C["UW_PROC_SEEDED"]
KEY = struct.Struct("<IIQ")  # tgid, pad, start
# exe_file, pstart, ptgid, pad, gen, sent, flags, exe_len, args_len, exe_except, exe, args
VALUE = struct.Struct(f"<QQIIIIIHH{C['UW_POLICY_WORDS']}Q{EXE_MAX}s{ARGS_MAX}s")


@dataclass(frozen=True)
class SeededProc:
    pid: int
    start_ticks: int   # /proc/PID/stat field 22: the start in clock ticks since boot
    exe: bytes         # as the process sees it (below its own root)
    args: bytes        # NUL-terminated arguments, cut at ARGS_MAX
    flags: int         # UW_F_EXE_TRUNCATED, UW_F_ARGS_TRUNCATED


def read_proc(pid: int, proc: str = "/proc") -> SeededProc | None:
    """What /proc says of a process; None for a kernel thread, or a process that is gone."""
    base = f"{proc}/{pid}".encode()
    try:
        with open(base + b"/stat", "rb") as f:
            stat = f.read()
        exe = os.readlink(base + b"/exe")
        root = os.readlink(base + b"/root")
        with open(base + b"/cmdline", "rb") as f:
            args = f.read(ARGS_MAX + 1)
    except OSError:
        return None  # gone, or a kernel thread (no exe)
    start = int(stat[stat.rindex(b")") + 2:].split()[19])
    if root != b"/" and exe.startswith(root + b"/"):
        exe = exe[len(root):]  # the kernel's view: the path below the process's own root
    flags = 0
    if len(exe) >= EXE_MAX:
        exe, flags = exe[:EXE_MAX - 1], flags | C["UW_F_EXE_TRUNCATED"]
    if len(args) > ARGS_MAX:
        args, flags = args[:ARGS_MAX], flags | C["UW_F_ARGS_TRUNCATED"]
    return SeededProc(pid, start, exe, args, flags)


def entry(p: SeededProc) -> tuple[bytes, bytes]:
    """The procs key and value of a seeded process."""
    value = VALUE.pack(0, 0, 0, 0, 0, 0, p.flags, len(p.exe), len(p.args), *([0] * C["UW_POLICY_WORDS"]), p.exe, p.args)
    return KEY.pack(p.pid, 0, SEEDED | p.start_ticks), value


def seed(fd: int, proc: str = "/proc") -> int:
    """Adds every process /proc lists that the map does not hold yet; returns how many were added."""
    info = bpfsys.map_info(fd)
    if (info.key_size, info.value_size) != (KEY.size, VALUE.size):
        raise OSError(f"map procs: key/value {info.key_size}/{info.value_size} bytes, expected "
                      f"{KEY.size}/{VALUE.size} (kprobe.h and agent/probe/procseed.py)")
    added = 0
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        p = read_proc(int(name), proc)
        if p is None:
            continue
        key, value = entry(p)
        try:
            bpfsys.update(fd, key, value, bpfsys.BPF_NOEXIST)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
            continue
        added += 1
    return added


def survey(proc: str = "/proc") -> tuple[int, int]:
    """(processes whose executable this process can read, processes it may not read): what a seed would get."""
    readable = denied = 0
    for name in os.listdir(proc):
        if name.isdigit():
            try:
                os.readlink(f"{proc}/{name}/exe")
            except PermissionError:
                denied += 1
            except OSError:
                pass  # a kernel thread, or gone
            else:
                readable += 1
    return readable, denied

"""`python -m bench.lines`: where a configuration's BPF programs spend their time, line by line.

    python -m bench.lines --config "unlinkwatch agent (tracepoint)" --fs tmpfs -n 400000
    python -m bench.lines --config "unlinkwatch agent (tracepoint, policy ignore)" --top 15

bpf_stats (the overhead step's kernel ns) says how long each program runs, not where. Here perf samples every CPU
(cpu-clock) while the overhead step's loop runs under one configuration, and each sample whose call chain passes
through one of the configuration's programs is charged to the program's source line at that point, through the
kernel's own map from JIT addresses to lines (bpf_prog_info's jited_line_info), and to what that line was running:
the program's own code, or the kernel function it called (a helper such as bpf_probe_read_user_str, a map's
lookup). The source lines are the program as bcc compiled it (bpftool's `dump xlated linum`).

A share is of the program's samples; the header gives the program's samples against those in the operation's
syscall (do_unlinkat, do_renameat2) for scale. Programs run outside it too (the syscall tracepoints run before
and after the call), so the two are not parts of one whole. A sample is 1/FREQ s of one CPU: at 4,000 Hz and a
few hundred thousand deletions, a line needs about 30 samples before its share means more than its noise.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import ctypes
import os
import re
import select
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from unlinkwatch.agent.probe import bpfsys

from bench import overhead, peers, workload
from unlinkwatch import runstate

OP_SYMBOLS = {"unlink": "do_unlinkat", "rename": "do_renameat2"}
FREQ = 4000
OWN = "(own code)"
OBJECT_CACHE = "UNLINKWATCH_OBJECT_CACHE"
# x86's interrupt entries (idtentry: asm_sysvec_*, asm_common_interrupt, ...): a frame of one inside a program is
# an interrupt that arrived while it ran, not a call it made
INTERRUPT_PREFIX = "asm_"


class _ProgInfo(ctypes.Structure):
    """struct bpf_prog_info up to jited_line_info_rec_size (uapi/linux/bpf.h): the fields read here."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32), ("nr_map_ids", ctypes.c_uint32),
                ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
                ("gpl_compatible", ctypes.c_uint32), ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
                ("nr_jited_ksyms", ctypes.c_uint32), ("nr_jited_func_lens", ctypes.c_uint32),
                ("jited_ksyms", ctypes.c_uint64), ("jited_func_lens", ctypes.c_uint64),
                ("btf_id", ctypes.c_uint32), ("func_info_rec_size", ctypes.c_uint32),
                ("func_info", ctypes.c_uint64), ("nr_func_info", ctypes.c_uint32), ("nr_line_info", ctypes.c_uint32),
                ("line_info", ctypes.c_uint64), ("jited_line_info", ctypes.c_uint64),
                ("nr_jited_line_info", ctypes.c_uint32), ("line_info_rec_size", ctypes.c_uint32),
                ("jited_line_info_rec_size", ctypes.c_uint32)]


class _LineInfo(ctypes.Structure):  # struct bpf_line_info
    _fields_ = [("insn_off", ctypes.c_uint32), ("file_name_off", ctypes.c_uint32), ("line_off", ctypes.c_uint32),
                ("line_col", ctypes.c_uint32)]


@dataclass(frozen=True)
class Program:
    """A loaded program's JIT image as address ranges (one per function) and its line table: the JIT address where
    each source line's code begins, in address order."""

    id: int
    name: str
    ranges: tuple[tuple[int, int], ...]          # (start, end) of each function's code
    lines: tuple[tuple[int, int], ...]           # (address, source line number), sorted
    source: dict[int, str] = field(default_factory=dict)

    def holds(self, ip: int) -> bool:
        return any(start <= ip < end for start, end in self.ranges)

    def line_at(self, ip: int) -> int:
        """The source line whose code holds ip (0 when the program has no line before it)."""
        i = bisect.bisect_right(self.lines, (ip, sys.maxsize)) - 1
        return self.lines[i][1] if i >= 0 else 0


def source_lines(xlated: str) -> dict[int, str]:
    """Line number -> source text, from `bpftool prog dump xlated id N linum`'s comment lines
    ("; text [file:F line_num:N line_col:C]")."""
    return {int(m[2]): m[1].strip() for m in re.finditer(r"^; (.*?) \[file:\S* line_num:(\d+)", xlated, re.M)}


def load_program(prog_id: int) -> Program:
    """The program's ranges and line table from the kernel (bpf_prog_info, two calls: counts, then arrays)."""
    fd = bpfsys.call(bpfsys.BPF_PROG_GET_FD_BY_ID, bpfsys.IdAttr(id=prog_id))
    try:
        info = _ProgInfo()
        bpfsys.call(bpfsys.BPF_OBJ_GET_INFO_BY_FD, bpfsys.InfoAttr(fd, ctypes.sizeof(info), ctypes.addressof(info)))
        n_lines, n_funcs = info.nr_jited_line_info, info.nr_jited_ksyms
        lrs = info.line_info_rec_size or ctypes.sizeof(_LineInfo)
        line_buf = (ctypes.c_uint8 * (info.nr_line_info * lrs))()
        jited_lines = (ctypes.c_uint64 * n_lines)()
        ksyms = (ctypes.c_uint64 * n_funcs)()
        lens = (ctypes.c_uint32 * info.nr_jited_func_lens)()
        want = _ProgInfo(nr_line_info=info.nr_line_info, line_info=ctypes.addressof(line_buf),
                         line_info_rec_size=lrs, jited_line_info=ctypes.addressof(jited_lines),
                         nr_jited_line_info=n_lines, jited_line_info_rec_size=8, nr_jited_ksyms=n_funcs,
                         jited_ksyms=ctypes.addressof(ksyms), nr_jited_func_lens=info.nr_jited_func_lens,
                         jited_func_lens=ctypes.addressof(lens))
        bpfsys.call(bpfsys.BPF_OBJ_GET_INFO_BY_FD, bpfsys.InfoAttr(fd, ctypes.sizeof(want), ctypes.addressof(want)))
    finally:
        os.close(fd)
    if not info.nr_line_info:
        raise RuntimeError(f"program {prog_id} ({info.name.decode(errors='replace')}) was loaded without source lines")
    if n_lines != info.nr_line_info:
        raise RuntimeError(f"program {prog_id} has no JIT line table (is bpf_jit_enable on?)")
    lines = sorted((jited_lines[i], _LineInfo.from_buffer(line_buf, i * lrs).line_col >> 10) for i in range(n_lines))
    ranges = tuple((ksyms[i], ksyms[i] + lens[i]) for i in range(min(n_funcs, len(lens))))
    xlated = subprocess.run(["bpftool", "prog", "dump", "xlated", "id", str(prog_id), "linum"],
                            capture_output=True, text=True, check=False).stdout
    return Program(prog_id, info.name.decode(errors="replace"), ranges, tuple(lines), source_lines(xlated))


@dataclass(frozen=True)
class Sample:
    pid: int
    frames: tuple[tuple[int, str], ...]  # (ip, symbol), innermost first


def parse_perf_script(text: str) -> Iterator[Sample]:
    """`perf script -F pid,ip,sym` output: a "PID" line, then one "IP SYMBOL" line per frame, innermost first;
    samples apart by a blank line."""
    for block in text.split("\n\n"):
        rows = [r.split() for r in block.strip().splitlines()]
        if not rows or not rows[0] or not rows[0][0].isdigit():
            continue
        frames = []
        for r in rows[1:]:
            with contextlib.suppress(ValueError):
                frames.append((int(r[0], 16), r[1].split("+")[0] if len(r) > 1 else "[unknown]"))
        yield Sample(int(rows[0][0]), tuple(frames))


@dataclass
class ProgramProfile:
    program: Program
    samples: int = 0
    by_line: Counter[int] = field(default_factory=Counter)
    by_line_callee: Counter[tuple[int, str]] = field(default_factory=Counter)
    interrupted: int = 0  # samples of interrupts that arrived while it ran: not charged to it


@dataclass
class Profile:
    programs: dict[int, ProgramProfile]
    op_samples: int = 0       # samples in the operation's syscall (OP_SYMBOLS)
    workload_samples: int = 0


def attribute(samples: Iterable[Sample], programs: Sequence[Program], pids: set[int] | None = None,
              op_symbol: str = "do_unlinkat") -> Profile:
    """Each sample (of `pids`, or of any process) is charged to the innermost of `programs` on its chain: to the
    line holding the sampled address when the program itself was running, or to the line of the call (the return
    address less one) and the function it called otherwise. A sample of an interrupt that arrived while the
    program ran is counted apart (`interrupted`): its time is the interrupt's."""
    prof = Profile({p.id: ProgramProfile(p) for p in programs})
    for s in samples:
        if pids is not None and s.pid not in pids:
            continue
        prof.workload_samples += 1
        if any(sym == op_symbol for _ip, sym in s.frames):
            prof.op_samples += 1
        for depth, (ip, _sym) in enumerate(s.frames):
            prog = next((p for p in programs if p.holds(ip)), None)
            if prog is None:
                continue
            pp = prof.programs[prog.id]
            callee = OWN if depth == 0 else s.frames[depth - 1][1]
            if callee.startswith(INTERRUPT_PREFIX):
                pp.interrupted += 1
                break
            line = prog.line_at(ip if depth == 0 else ip - 1)
            pp.samples += 1
            pp.by_line[line] += 1
            pp.by_line_callee[(line, callee)] += 1
            break
    return prof


def report(prof: Profile, top: int = 25) -> str:
    out = [f"samples: {prof.workload_samples:,} of the workload, {prof.op_samples:,} in its syscall"]
    for pp in sorted(prof.programs.values(), key=lambda p: -p.samples):
        if not pp.samples:
            continue
        scale = f", {100 * pp.samples / prof.op_samples:.1f} % of the syscall's" if prof.op_samples else ""
        out.append(f"\n{pp.program.name} (id {pp.program.id}): {pp.samples:,} samples{scale}"
                   f" (and {pp.interrupted:,} of interrupts while it ran)")
        out.append(f"{'samples':>8} {'share':>6}  line  source / what it ran")
        for line, n in pp.by_line.most_common(top):
            callees = sorted(((c, k) for (ln, k), c in pp.by_line_callee.items() if ln == line), reverse=True)
            text = pp.program.source.get(line, "?")
            out.append(f"{n:8,} {100 * n / pp.samples:5.1f}% {line:5}  {text[:100]}")
            out.append(" " * 22 + ", ".join(f"{k} {c}" for c, k in callees[:6]))
    return "\n".join(out)


@contextlib.contextmanager
def perf_record(data: Path, freq: int = FREQ, ready_s: float = 60.0) -> Iterator[None]:
    """perf sampling every CPU with call chains while the block runs. perf starts with its events off and the block
    begins only once perf has said they are on (its control and ack pipes): it takes a while to start on a busy
    machine, and a short loop would otherwise run before the first sample."""
    ctl_r, ctl_w = os.pipe()
    ack_r, ack_w = os.pipe()
    try:
        proc = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(freq), "-a", "-g", "-o",
                                 str(data), "-D", "-1", "--control", f"fd:{ctl_r},{ack_w}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(ctl_r, ack_w),
                                preexec_fn=runstate.die_with_parent)
    except BaseException:  # no perf: our ends go too
        os.close(ctl_w)
        os.close(ack_r)
        raise
    finally:
        os.close(ctl_r)
        os.close(ack_w)
    try:
        os.write(ctl_w, b"enable\n")
        ready, _w, _x = select.select([ack_r], [], [], ready_s)
        if not ready or not os.read(ack_r, 64).startswith(b"ack"):  # b"": perf exited
            raise RuntimeError(f"perf record did not start sampling within {ready_s:.0f} s")
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
        os.close(ctl_w)
        os.close(ack_r)
        if proc.returncode not in (0, -signal.SIGINT) or not data.exists():
            raise RuntimeError(f"perf record failed: {err.decode(errors='replace').strip()[-300:]}")


@contextlib.contextmanager
def compiled() -> Iterator[None]:
    """An agent started in the block compiles its programs: one loaded from a kept compile (agent/probe/objcache.py)
    is given no source lines, only its instructions."""
    before = os.environ.get(OBJECT_CACHE)
    os.environ[OBJECT_CACHE] = ""  # empty: no kept compile
    try:
        yield
    finally:
        if before is None:
            del os.environ[OBJECT_CACHE]
        else:
            os.environ[OBJECT_CACHE] = before


def profile(tracer: peers.Tracer, binary: Path, n: int, fsdir: Path, op: str = "unlink",
            freq: int = FREQ) -> Profile:
    """The tracer started, its programs found, the loop run under perf, its samples charged to those programs."""
    with overhead.scratch_dir() as tmp:
        with compiled():
            tracer.start(tmp, False)
        try:
            programs = [load_program(i) for i in sorted(overhead.bpf_prog_ids(overhead.tracer_pids(tracer)))]
            data = tmp / "perf.data"
            prefix = workload.new_prefix()
            with perf_record(data, freq):
                workload.run(binary, n, fsdir, op=op, prefix=prefix)
            script = subprocess.run(["perf", "script", "-i", str(data), "-F", "pid,ip,sym", "--comm", "unlinkbench"],
                                    capture_output=True, text=True, check=False).stdout
        finally:
            tracer.stop()
        if op == "rename":
            workload.remove_files(fsdir, prefix)  # untraced: the tracer has stopped
    return attribute(parse_perf_script(script), programs, op_symbol=OP_SYMBOLS[op])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, metavar="NAME",
                   help="one BPF configuration, named exactly as in the overhead table (python -m bench --list)")
    p.add_argument("--fs", default="tmpfs", choices=sorted(workload.FILESYSTEMS))
    p.add_argument("-n", type=int, default=400_000, help="operations in the sampled loop (default %(default)s)")
    p.add_argument("--op", default="unlink", choices=sorted(OP_SYMBOLS))
    p.add_argument("--freq", type=int, default=FREQ, help="samples per second per CPU (default %(default)s)")
    p.add_argument("--top", type=int, default=25, help="lines shown per program (default %(default)s)")
    args = p.parse_args(argv)
    try:
        (tracer,) = [t for t in overhead.configurations(exact=[args.config]) if t.name == args.config]
    except ValueError as e:
        print(f"bench.lines: {e}", file=sys.stderr)
        return 2
    if not tracer.bpf:
        print(f"bench.lines: {args.config!r} attaches no BPF program", file=sys.stderr)
        return 2
    binary = workload.build()
    with workload.FILESYSTEMS[args.fs](max_files=args.n) as fsdir:
        if isinstance(tracer, overhead.PolicyAgent):
            tracer.fsdir = fsdir
        try:
            tracer.check()
            prof = profile(tracer, binary, args.n, fsdir, args.op, args.freq)
        except (peers.Unavailable, workload.WorkloadError, RuntimeError, OSError) as e:
            print(f"bench.lines: {args.config}: {e}", file=sys.stderr)
            return 1
    print(f"{args.config}, {args.fs}, {args.n:,} x {args.op}, perf at {args.freq} Hz")
    print(report(prof, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())

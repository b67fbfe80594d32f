"""bench/lines.py on the live kernel: the agent's programs found, their JIT line tables read from the kernel, and
perf's samples charged to the source lines that ran."""

from __future__ import annotations

from bench import lines, overhead, workload


def test_a_profile_of_the_agent_charges_the_exits_path_read_to_the_line_that_reads_the_path() -> None:
    n = 100_000
    with workload.tmpfs_mount(max_files=n) as fsdir:
        prof = lines.profile(overhead.UnlinkwatchAgent("tracepoint"), workload.build(), n, fsdir)
    (exit_prog,) = [pp for pp in prof.programs.values() if pp.program.name == "uw_sys_exit"]
    assert exit_prog.samples > 0 and prof.op_samples > 0
    # every line it was charged with is one of the program's own, with its source
    assert all(exit_prog.program.source.get(line) for line in exit_prog.by_line if line)  # 0: code of no line
    reads = [line for (line, callee) in exit_prog.by_line_callee if callee == "bpf_probe_read_user_str"]
    assert reads and all("bpf_probe_read_user_str" in exit_prog.program.source[line] for line in reads)

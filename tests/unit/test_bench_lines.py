"""bench/lines.py's pure parts: perf's samples charged to a program's source lines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import lines

XLATED = """int uw_sys_exit(struct uw_sys_exit_args * args):
; return uw_exit(args->ret); } [file:/virtual/main.c line_num:2206 line_col:23]
   0: (79) r8 = *(u64 *)(r1 +16)
; long n = bpf_probe_read_user_str(s->data, UW_PATH_MAX, uptr); [file:/virtual/main.c line_num:1685 line_col:11]
   1: (85) call bpf_probe_read_user_str#-123
"""

PERF_SCRIPT = """
    4242
\tffffffff81001000 bpf_probe_read_user_str+0x10
\tffffffffa0000125 bpf_prog_7877c5d3bb804791_uw_sys_exit+0x125
\tffffffff81000000 do_syscall_64+0x20

    4242
\tffffffffa0000210 bpf_prog_7877c5d3bb804791_uw_sys_exit+0x210
\tffffffff81000000 do_syscall_64+0x20

    4242
\tffffffff81002000 do_unlinkat+0x30
\tffffffff81000000 do_syscall_64+0x20

    4242
\tffffffff81003000 asm_sysvec_apic_timer_interrupt+0x1a
\tffffffffa0000300 bpf_prog_7877c5d3bb804791_uw_sys_exit+0x300

    99
\tffffffffa0000210 bpf_prog_7877c5d3bb804791_uw_sys_exit+0x210
"""

BASE = 0xFFFFFFFFA0000000
PROG = lines.Program(7, "uw_sys_exit", ((BASE, BASE + 0x400),),
                     ((BASE, 2206), (BASE + 0x100, 1685), (BASE + 0x200, 1214)),
                     {2206: "return uw_exit(args->ret); }", 1685: "long n = bpf_probe_read_user_str(...);"})


def test_the_source_of_each_line_is_read_from_bpftools_annotated_dump() -> None:
    assert lines.source_lines(XLATED) == {
        2206: "return uw_exit(args->ret); }",
        1685: "long n = bpf_probe_read_user_str(s->data, UW_PATH_MAX, uptr);",
    }


def test_an_address_belongs_to_the_last_line_that_begins_at_or_before_it() -> None:
    assert PROG.line_at(BASE) == 2206
    assert PROG.line_at(BASE + 0xFF) == 2206
    assert PROG.line_at(BASE + 0x100) == 1685
    assert PROG.line_at(BASE + 0x3FF) == 1214
    assert PROG.line_at(BASE - 1) == 0
    assert PROG.holds(BASE + 0x3FF) and not PROG.holds(BASE + 0x400)


def test_perf_script_output_reads_as_samples_of_frames_innermost_first() -> None:
    samples = list(lines.parse_perf_script(PERF_SCRIPT))
    assert len(samples) == 5
    assert samples[0].pid == 4242
    assert samples[0].frames[0] == (0xFFFFFFFF81001000, "bpf_probe_read_user_str")
    assert samples[0].frames[1][1] == "bpf_prog_7877c5d3bb804791_uw_sys_exit"


def test_a_call_is_charged_to_the_line_that_made_it_and_own_code_to_its_own_line() -> None:
    prof = lines.attribute(lines.parse_perf_script(PERF_SCRIPT), [PROG], pids={4242})
    pp = prof.programs[7]
    # the return address 0x125 lies in line 1685's code: the call to the helper
    assert pp.by_line_callee[(1685, "bpf_probe_read_user_str")] == 1
    assert pp.by_line_callee[(1214, lines.OWN)] == 1
    assert pp.samples == 2


def test_interrupts_while_a_program_runs_are_counted_apart_and_other_processes_not_at_all() -> None:
    prof = lines.attribute(lines.parse_perf_script(PERF_SCRIPT), [PROG], pids={4242})
    assert prof.programs[7].interrupted == 1
    assert prof.workload_samples == 4  # pid 99's sample is not the workload's
    assert prof.op_samples == 1


def test_the_report_names_each_line_with_its_source_and_what_it_ran() -> None:
    text = lines.report(lines.attribute(lines.parse_perf_script(PERF_SCRIPT), [PROG], pids={4242}))
    assert "uw_sys_exit (id 7): 2 samples, 200.0 % of the syscall's (and 1 of interrupts while it ran)" in text
    assert "long n = bpf_probe_read_user_str(...);" in text
    assert "bpf_probe_read_user_str 1" in text


def test_a_configuration_that_is_not_in_the_table_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert lines.main(["--config", "no such thing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench.lines: no configuration is named 'no such thing'") and err.count("\n") == 1


def test_a_perf_that_cannot_start_leaves_no_descriptor_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError), lines.perf_record(tmp_path / "perf.data"):
        pass
    assert len(os.listdir("/proc/self/fd")) == before

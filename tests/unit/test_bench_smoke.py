"""Smoke test of the benchmark harness: argument parsing, the maths, tables, and the C workload (no root)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench import overhead, stats, workload


def test_quick_mode_uses_small_n_and_three_rounds() -> None:
    args = bench_main.parse_args(["--quick"])
    assert (args.n, args.rounds) == (20_000, 3)
    assert args.steps == list(bench_main.STEPS)


def test_full_mode_defaults_to_200k_unlinks_and_five_rounds() -> None:
    args = bench_main.parse_args(["--only", "overhead", "--rates", "100,200"])
    assert (args.n, args.rounds, args.steps, args.rates) == (200_000, 5, ["overhead"], [100.0, 200.0])


def test_help_prints_every_option_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench_main.parse_args(["--help"])
    assert e.value.code == 0
    assert "--quiet-check" in capsys.readouterr().out


def test_unknown_step_is_refused() -> None:
    with pytest.raises(SystemExit):
        bench_main.parse_args(["--only", "nonsense"])


def test_median_percentile_and_slowdown() -> None:
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([]) is None
    assert stats.percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert stats.percentile([5.0], 50) == 5.0
    assert stats.slowdown(450_000.0, 150_000.0) == pytest.approx(3.0)
    assert stats.slowdown(None, 1.0) is None
    assert stats.ratio(5.0, 10.0) == 0.5


def test_tables_render_in_text_and_markdown() -> None:
    rows: list[list[stats.Cell]] = [["bare", 450_000.0, 1.0, None], ["bpftrace", 71_090.5, 6.33, 1.0]]
    text = stats.render_text(["config", "unlinks/s", "slowdown", "completeness"], rows)
    assert "450,000" in text and "6.33" in text and text.splitlines()[2].startswith("bare ")
    md = stats.render_markdown(["config", "unlinks/s", "slowdown", "completeness"], rows)
    assert md.splitlines()[1] == "|---|---:|---:|---:|"
    assert "| bpftrace | 71,090 | 6.33 | 1.00 |" in md


def test_config_row_reports_completeness_and_true_loss() -> None:
    r = overhead.ConfigResult("x", "tmpfs", samples=[overhead.Sample(rate=100.0, cpu_s=0.002, hwm_kib=2048)],
                              record=overhead.Sample(rate=90.0, cpu_s=0.0, hwm_kib=0, events=990, drops=4))
    row = r.row(bare=200.0, n=1000)
    assert row[1:9] == [100.0, 2.0, None, 0.99, 4, 10, pytest.approx(2.0), 2.0]


def test_the_per_round_slowdown_pairs_each_round_with_that_rounds_bare_run() -> None:
    # the machine slows down in round 2: bare and the tracer together, so each round's own ratio stays 1.25
    bare = overhead.ConfigResult("bare", "tmpfs", samples=[overhead.Sample(rate=r, cpu_s=0.0, hwm_kib=0)
                                                           for r in (300.0, 200.0, 310.0)])
    agent = overhead.ConfigResult("agent", "tmpfs", samples=[overhead.Sample(rate=r, cpu_s=0.0, hwm_kib=0)
                                                             for r in (240.0, 160.0, 248.0)])
    rows = overhead.table([bare, agent], n=1000)
    assert rows[0][3] is None
    assert rows[1][2] == pytest.approx(300.0 / 240.0) and rows[1][3] == "1.25 (1.25-1.25)"
    assert stats.paired_slowdown([300.0, 200.0], [150.0, 200.0]) == "1.50 (1.00-2.00)"
    assert stats.paired_slowdown([], []) is None


def test_a_policy_row_notes_its_time_against_the_same_agent_without_a_policy_round_by_round() -> None:
    def result(name: str, rates: tuple[float, ...]) -> overhead.ConfigResult:
        return overhead.ConfigResult(name, "tmpfs", samples=[overhead.Sample(rate=r, cpu_s=0.0, hwm_kib=0)
                                                             for r in rates])
    audit = overhead.PolicyAgent("audit100").name
    assert overhead.policy_base(audit) == overhead.UnlinkwatchAgent("tracepoint").name
    assert overhead.policy_base(overhead.PolicyAgent("block100", "fentry", lsm_dir_cache=False).name) == \
        overhead.UnlinkwatchAgent("fentry").name
    assert overhead.policy_base("unlinkwatch agent (tracepoint)") is None
    rows = overhead.table([result("bare", (300.0, 200.0)), result("unlinkwatch agent (tracepoint)", (200.0, 100.0)),
                           result(audit, (190.0, 110.0))], n=1000)
    assert "per round vs no policy 0.98 (0.91-1.05)" in str(rows[2][-1])
    assert "vs no policy" not in str(rows[1][-1])


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_workload_compiles_runs_and_reports_json(tmp_path: Path) -> None:
    binary = workload.build(cache_dir=tmp_path / "bin")
    d = tmp_path / "files"
    d.mkdir()
    result = workload.run(binary, 500, d, workers=2, prefix="smoke", timestamps=tmp_path / "ts")
    assert (result.n, result.workers, result.prefix) == (500, 2, "smoke")
    assert result.unlinks_per_s > 0 and list(d.iterdir()) == []
    stamps = workload.read_timestamps(tmp_path / "ts", 2)
    assert len(stamps) == 500 and all(v > 0 for v in stamps.values())
    paced = workload.run(binary, 50, d, rate=1000.0)
    assert paced.seconds >= 0.045
    assert json.loads(json.dumps(result.__dict__))["n"] == 500


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_the_rename_workload_renames_every_file_and_leaves_them_for_removal(tmp_path: Path) -> None:
    binary = workload.build(cache_dir=tmp_path / "bin")
    d = tmp_path / "files"
    d.mkdir()
    result = workload.run(binary, 300, d, workers=2, prefix="ren", op="rename")
    assert result.n == 300 and result.unlinks_per_s > 0
    assert sorted(p.name for p in d.iterdir()) == sorted(f"ren-{w}-{i}~" for w in (0, 1) for i in range(150))
    assert workload.remove_files(d, "ren") == 300 and list(d.iterdir()) == []


def test_the_stdout_to_a_file_and_shipping_configurations_are_rows_of_their_own() -> None:
    from bench.overhead import configurations

    names = [t.name for t in configurations(["a file", "collector"])]
    assert "unlinkwatch agent (tracepoint, --stdout to a file)" in names
    assert "unlinkwatch agent + collector (SQLite)" in names


def test_a_configuration_whose_name_holds_a_comma_can_be_selected_alone_and_a_typo_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    from bench.overhead import configurations

    block = "unlinkwatch agent (fentry, policy block100)"
    names = [t.name for t in configurations(exact=["unlinkwatch agent (fentry)", block])]
    assert names == ["bare", "unlinkwatch agent (fentry)", block]
    assert bench_main.parse_args(["--config", block]).config == [block]
    with pytest.raises(SystemExit) as e:
        bench_main.parse_args(["--config", "agent (fentry)"])
    assert e.value.code == 2 and "no configuration is named 'agent (fentry)'" in capsys.readouterr().err


def test_a_baseline_revision_can_run_a_policys_row_and_keeps_that_rows_environment(
        capsys: pytest.CaptureFixture[str]) -> None:
    block = overhead.baseline_agent("abc123", "unlinkwatch agent (fentry, policy block100, LSM walks)")
    assert isinstance(block, overhead.PolicyAgent) and isinstance(block, overhead.BaselineAgent)
    assert block.name == "unlinkwatch agent (fentry, policy block100, LSM walks, baseline abc123)"
    assert overhead.policy_base(block.name) == "unlinkwatch agent (fentry)"
    block.tree, block.metrics, block.policy_file = Path("/base"), "127.0.0.1:1", Path("/p.yaml")
    cmd = block.command()
    assert cmd[1:3] == ["-m", "unlinkwatch.cli"] and cmd[-2:] == ["--policy", "/p.yaml"]
    assert cmd[cmd.index("--attach") + 1] == "fentry"
    env = block.env()
    assert env["PYTHONPATH"] == "/base" and env["UNLINKWATCH_LSM_DIR_CACHE"] == "off"
    plain = overhead.baseline_agent("abc123")
    assert type(plain) is overhead.BaselineAgent and plain.name == "unlinkwatch agent (tracepoint, baseline abc123)"
    assert bench_main.parse_args(["--baseline", "x", "--baseline-to-file"]).baseline_config == \
        "unlinkwatch agent (tracepoint, --stdout to a file)"
    for bad in ("bare", "unlinkwatch agent + collector (SQLite)", "agent (fentry)"):
        with pytest.raises(SystemExit) as e:
            bench_main.parse_args(["--baseline", "x", "--baseline-config", bad])
        assert e.value.code == 2 and "is not an agent's row" in capsys.readouterr().err


def test_the_quiet_check_refuses_a_busy_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.__main__ as main

    monkeypatch.setattr(main, "cpu_busy", lambda seconds=0.0: 0.5)
    why = main.quiet_refusal()
    assert why is not None and "50%" in why
    monkeypatch.setattr(main, "cpu_busy", lambda seconds=0.0: 0.01)
    monkeypatch.setattr(main, "_all_attachments", lambda: [{"pid": 4242}])
    assert "4242" in (main.quiet_refusal() or "")


def test_the_recording_passes_give_the_median_kernel_ns_and_the_worst_completeness() -> None:
    passes = [overhead.Sample(rate=r, cpu_s=0.0, hwm_kib=h, events=e, drops=d, kernel_ns=k,
                              kernel_ns_by_prog={"exit": k - 100, "enter": 100.0})
              for r, h, e, d, k in ((10.0, 5, 1000, 0, 600.0), (12.0, 7, 998, 2, 900.0), (11.0, 6, 1000, 0, 650.0))]
    merged = overhead.merge_records(passes)
    assert (merged.rate, merged.hwm_kib, merged.events, merged.drops) == (11.0, 7, 998, 2)
    assert merged.kernel_ns == 650.0 and merged.kernel_ns_by_prog == {"exit": 550.0, "enter": 100.0}
    assert merged.kernel_ns_range == (600.0, 900.0)
    row = overhead.ConfigResult("agent", "tmpfs", samples=passes, record=merged).row(None, 1000)
    assert "kernel ns over passes 600-900" in row[-1]


def test_the_number_of_kernel_passes_is_an_option_and_a_bad_one_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main.parse_args([]).kernel_passes == 3
    assert bench_main.parse_args(["--kernel-passes", "7"]).kernel_passes == 7
    with pytest.raises(SystemExit) as e:
        bench_main.parse_args(["--kernel-passes", "0"])
    assert e.value.code == 2 and "1 or more" in capsys.readouterr().err


def test_the_hooks_only_floor_is_a_configuration_of_its_own() -> None:
    from bench.overhead import configurations
    from bench.peers import HOOK_CALLS

    names = [t.name for t in configurations(["hooks only"])]
    assert names == ["bare", "hooks only (empty programs)", "hooks only (fentry + LSM, empty programs)"]
    assert {"unlinkat", "renameat2", "rmdir"} <= set(HOOK_CALLS)


def test_the_fentry_and_lsm_floor_attaches_an_empty_program_to_every_hook_the_agent_uses_there() -> None:
    import re

    from bench.peers import HOOKS_ONLY_FENTRY_LSM_C

    bpf = Path(__file__).resolve().parents[2] / "agent" / "bpf"
    source = (bpf / "unlink.bpf.c").read_text()
    fentry = source[source.index("#elif UW_MODE == UW_MODE_FENTRY"):]
    fentry = fentry[:fentry.index("#endif")]
    agent = set(re.findall(r"^(?:UW_)?(K(?:RET)?FUNC)(?:_PROBE)?\((\w+)", fentry, re.M))
    agent |= {("LSM", h) for h in re.findall(r"^LSM_PROBE\((\w+)", (bpf / "enforce.h").read_text(), re.M)}
    agent = {(kind, "UNLINK_FN" if fn == "UW_UNLINK_FN" else fn) for kind, fn in agent}
    floor = set(re.findall(r"^(K(?:RET)?FUNC|LSM)_PROBE\((\w+)", HOOKS_ONLY_FENTRY_LSM_C, re.M))
    assert ("LSM", "path_unlink") in agent and ("KFUNC", "UNLINK_FN") in agent and len(agent) == 14
    assert floor == agent


class _Probe(overhead.Tracer):
    """A tracer that attaches nothing and notes when it starts and stops (bpf: it would take part in a joint pass)."""

    bpf = True

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self._log = name, log

    def start(self, workdir: Path, record: bool) -> None:
        super().start(workdir, record)
        assert workdir.is_dir() and record
        self._log.append(f"start {self.name}")

    def stop(self) -> None:
        self._log.append(f"stop {self.name}")

    def count_events(self, prefix: str) -> int | None:
        return 7


def test_tracers_measured_together_share_one_run_and_stop_in_the_reverse_order_of_their_start(
        tmp_path: Path) -> None:
    binary = workload.build(cache_dir=tmp_path / "bin")
    d = tmp_path / "files"
    d.mkdir()
    log: list[str] = []
    samples = overhead.measure_together([_Probe("b", log), _Probe("a", log)], binary, 200, 1, d)
    assert log == ["start b", "start a", "stop a", "stop b"]
    assert set(samples) == {"a", "b"} and samples["a"].rate == samples["b"].rate > 0
    assert samples["a"].events == 7 and samples["a"].kernel_ns == 0 and list(d.iterdir()) == []

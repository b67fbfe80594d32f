"""`python -m bench`: every benchmark in order, tables on stdout, results in bench/out/ (JSON and Markdown).

    python -m bench                 # full run: 200 K unlinks, 5 interleaved rounds, tmpfs and ext4
    python -m bench --quick         # a few minutes: 20 K unlinks, 3 rounds, small ingest and query stores
    python -m bench --only overhead,e2e --configs tracepoint,bpftrace --fs tmpfs
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import platform
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from unlinkwatch.agent.probe import tracefs

from bench import overhead, peers, stats, workload

OUT_DIR = Path(__file__).resolve().parent / "out"
KERNEL_STEPS = {"overhead", "e2e", "startup", "exec"}  # the steps that need root: mounts, BPF, audit
GB = 1 << 30
DATA_DIR = Path("/var/tmp")  # where the steps' images, recordings and stores go
KEEP_FREE = 20 * GB          # disk left free besides a step's own data
PG_WAL = 4 * GB              # the bench's PostgreSQL clusters run with max_wal_size=4GB
QUICK_ARGS = {"ingest": ["--events", "50000"], "query": ["--events", "200000", "--pods", "1000", "--queries", "50"]}
OTHERS = ("identity", "ingest", "query", "rules")  # bench/<name>.py with main() -> None, written separately
STEPS = ("overhead", "e2e", "startup", "exec", *OTHERS)
QUIET_BUSY = 0.10      # --quiet-check: the share of all CPUs' time something else may take before the run
QUIET_SAMPLE_S = 3.0


def _passes(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of passes, 1 or more: {text!r}")
    return n


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small N, 3 rounds, short end-to-end ladder")
    p.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps (default: all of {','.join(STEPS)})")
    p.add_argument("--fs", default="tmpfs,ext4", help="filesystems for the overhead comparison")
    p.add_argument("--configs", default="", help="only configurations whose name contains one of these (and bare)")
    p.add_argument("--config", action="append", default=[], metavar="NAME",
                   help="also this configuration, named exactly as in the table, commas and all (repeatable)")
    p.add_argument("--list", action="store_true", help="print the overhead step's configuration names and exit")
    p.add_argument("-n", type=int, default=None, help="unlinks per measurement (default 200000; quick 20000)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 3)")
    p.add_argument("--workers", type=int, default=1, help="parallel deleting processes")
    p.add_argument("--kernel-passes", type=_passes, default=overhead.KERNEL_PASSES,
                   help="recording passes per configuration after the timed rounds (bpf_stats on): the kernel ns "
                        "column is their median, the note their range (default 3)")
    p.add_argument("--kernel-together", action="store_true",
                   help="in each recording pass attach every BPF configuration at once (the order rotated from pass "
                        "to pass): their kernel ns come from the same deletions, for comparing programs (a change "
                        "against --baseline) without the drift between passes")
    p.add_argument("--op", default="unlink", choices=["unlink", "rename"],
                   help="the overhead step's loop: unlinkat, or renameat of each file to a new name")
    p.add_argument("--baseline", metavar="REV",
                   help="also measure the tracepoint agent of this git revision (interleaved: before and after)")
    p.add_argument("--baseline-config", metavar="NAME", default="unlinkwatch agent (tracepoint)",
                   help="the agent row the baseline revision runs in the overhead step, named exactly as in the table "
                        "(default: %(default)s; the exec step's baseline is always that); its row reads "
                        "'..., baseline REV)'")
    p.add_argument("--baseline-to-file", action="store_true",
                   help="the baseline agent writes its --stdout to a file, as the '--stdout to a file' row does "
                        "(--baseline-config 'unlinkwatch agent (tracepoint, --stdout to a file)')")
    p.add_argument("--rates", default=None, help="end-to-end paced rates, unlinks/s, comma-separated")
    p.add_argument("--e2e-workers", type=int, default=2,
                   help="paced deleting processes sharing each end-to-end rate (default 2)")
    p.add_argument("--e2e-seconds", type=float, default=None,
                   help="seconds each end-to-end rate is held (default 10; quick 2)")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="directory for results.json and results.md")
    p.add_argument("--quiet-check", action="store_true",
                   help=f"refuse to run when the machine is busy before it: more than {QUIET_BUSY * 100:.0f}%% of "
                        f"the CPUs busy over {QUIET_SAMPLE_S:.0f} s, or other processes' BPF tracers attached")
    args = p.parse_args(argv)
    args.n = args.n or (20_000 if args.quick else 200_000)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.e2e_seconds = args.e2e_seconds or (2.0 if args.quick else 10.0)
    default_rates = "5000,20000,50000" if args.quick else "5000,10000,25000,50000,75000,100000,150000"
    args.rates = [float(r) for r in (args.rates or default_rates).split(",") if r]
    args.steps = [s for s in args.only.split(",") if s]
    unknown = set(args.steps) - set(STEPS)
    if unknown:
        p.error(f"unknown step(s): {', '.join(sorted(unknown))}; choose from {', '.join(STEPS)}")
    if args.baseline_to_file:
        args.baseline_config = "unlinkwatch agent (tracepoint, --stdout to a file)"
    try:
        overhead.configurations(exact=args.config)
        overhead.baseline_agent("REV", args.baseline_config)
    except ValueError as e:
        p.error(str(e))
    return args


def machine() -> dict[str, Any]:
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    others = sorted({int(str(a["pid"])) for a in _all_attachments()})
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "nproc": os.cpu_count(),
            "memory_gib": round(mem_kib / 1024 / 1024, 1), "kernel": platform.release(),
            "load_before": os.getloadavg()[0], "foreign_bpf_tracers_before": others}


def cpu_busy(seconds: float = QUIET_SAMPLE_S) -> float:
    """The share of all CPUs' time spent not idle (nor waiting for I/O) over `seconds`, from /proc/stat."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def quiet_refusal() -> str | None:
    """Why the machine is too busy for figures worth reporting, or None."""
    busy = cpu_busy()
    if busy > QUIET_BUSY:
        return (f"the machine is busy: {busy:.0%} of its CPUs' time over {QUIET_SAMPLE_S:.0f} s went to other work "
                f"(--quiet-check allows {QUIET_BUSY:.0%}); the figures would be noise")
    others = sorted({int(str(a["pid"])) for a in _all_attachments()})
    if others:
        return f"other processes have BPF tracers attached ({', '.join(map(str, others))}): they slow every row"
    print(f"quiet check: {busy:.1%} of the CPUs busy over {QUIET_SAMPLE_S:.0f} s, no other BPF tracers",
          file=sys.stderr)
    return None


def _all_attachments() -> list[dict[str, object]]:
    import subprocess
    proc = subprocess.run(["bpftool", "perf", "show", "--json"], capture_output=True, text=True, check=False)
    try:
        return list(json.loads(proc.stdout or "[]"))
    except json.JSONDecodeError:
        return []


def e2e_files(args: argparse.Namespace) -> int:
    """Files the end-to-end step's tmpfs holds at once at most (a rate's deletions of one hold)."""
    return int(max(args.rates) * args.e2e_seconds)


def budget(step: str, args: argparse.Namespace) -> tuple[int, int]:
    """(disk bytes, memory bytes) a step needs at most, from its own sizes."""
    if step == "overhead":  # the ext4 image, auditd's bounded log, a recording (~1 KB per unlink); tmpfs inodes
        ext4 = workload.EXT4_IMAGE_MB << 20 if "ext4" in args.fs else 0
        audit = (peers.AUDIT_LOG_MB * peers.AUDIT_LOG_FILES) << 20
        return ext4 + audit + args.n * 1024, args.n * workload.INODE_BYTES + 2 * GB
    if step == "e2e":  # every event stored in SQLite (~1 KB each, WAL included); the tmpfs's files at once
        return sum(int(r * args.e2e_seconds) for r in args.rates) * 1024, \
            e2e_files(args) * workload.INODE_BYTES + 2 * GB
    if step == "ingest":  # SQLite and PostgreSQL, ~1 KB per event each, and PostgreSQL's WAL
        events = int(QUICK_ARGS["ingest"][1]) if args.quick else 500_000
        return events * 2048 + PG_WAL, 3 * GB
    if step == "query":  # 10 M events (quick: 200 K) in SQLite then PostgreSQL, ~1.6 KB per event in all
        events = int(QUICK_ARGS["query"][1]) if args.quick else 10_000_000
        return events * 1600 + PG_WAL, 3 * GB
    return GB // 2, GB  # startup, identity, rules


def mem_available() -> int:
    return next(int(line.split()[1]) << 10 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemAvailable:"))


def short_of(step: str, args: argparse.Namespace) -> str | None:
    """Why the machine cannot run the step now (one line), or None."""
    disk, mem = budget(step, args)
    free, avail = shutil.disk_usage(DATA_DIR).free, mem_available()
    if free < disk + KEEP_FREE:
        return (f"step {step} needs {disk / GB:.1f} GB on {DATA_DIR} and {KEEP_FREE // GB} GB kept free, but only "
                f"{free / GB:.1f} GB is free (try --quick, or free disk)")
    if avail < mem:
        return f"step {step} needs {mem / GB:.1f} GB of memory, but only {avail / GB:.1f} GB is available"
    return None


def run_overhead(args: argparse.Namespace, binary: Path, report: Report) -> None:
    only = [c for c in args.configs.split(",") if c] or None
    for fs in [f for f in args.fs.split(",") if f]:
        print(f"overhead on {fs}: {args.n:,} unlinks x {args.rounds} rounds, {args.workers} worker(s)", file=sys.stderr)
        baseline = overhead.baseline_agent(args.baseline, args.baseline_config) if args.baseline else None
        with overhead.baseline_tree(baseline) if baseline else contextlib.nullcontext():
            results = overhead.compare(fs, binary, args.n, args.rounds, args.workers, only, args.op, baseline,
                                       kernel_passes=args.kernel_passes, exact=args.config,
                                       together=args.kernel_together)
        rows = overhead.table(results, args.n)
        what = "unlinks" if args.op == "unlink" else "renames (the rate column is renames/s)"
        report.add(f"Overhead on {fs} ({args.n:,} {what}, {args.workers} worker(s), medians of {args.rounds} "
                   "interleaved rounds)", overhead.HEADERS, rows, [asdict(r) for r in results])


def run_e2e(args: argparse.Namespace, binary: Path, report: Report) -> None:
    """Paced deletions at rising rates through agent -> collector -> SQLite; completeness and latency."""
    seconds = args.e2e_seconds
    pipe = overhead.UnlinkwatchPipeline()
    rows: list[list[stats.Cell]] = []
    raw: list[dict[str, Any]] = []
    with workload.tmpfs_mount(max_files=e2e_files(args)) as fsdir, overhead.scratch_dir() as tmp:
        try:
            pipe.check()
            pipe.start(tmp, record=True)
        except peers.Unavailable as e:
            report.add("End to end", ["rate"], [[f"unavailable: {e}"]], [])
            return
        try:
            for rate in args.rates:
                try:
                    point = overhead.paced_point(pipe, binary, fsdir, tmp, rate, int(rate * seconds),
                                                 workers=args.e2e_workers)
                except workload.WorkloadError as e:
                    rows.append([f"{rate:,.0f}", f"workload failed: {e}", "", "", "", "", ""])
                    print(f"  e2e {rate:,.0f}/s: workload failed: {e}", file=sys.stderr)
                    break
                raw.append(point)
                lost = point.get("agent_lost") or {}
                rows.append([f"{rate:,.0f}", point["achieved_per_s"], f"{point['stored']:,} / {point['n']:,}",
                             ", ".join(f"{k} {v:.0f}" for k, v in lost.items() if v) or "0",
                             point["p50_ms"], point["p99_ms"], point["max_ms"]])
                print(f"  e2e {rate:,.0f}/s: completeness {point['completeness']:.4f}", file=sys.stderr)
                achieved = point["achieved_per_s"] or 0.0
                if point["completeness"] < 1.0 or achieved < 0.9 * rate:
                    break  # losing events, or the traced workload cannot reach the next rate anyway
        finally:
            pipe.stop()
    ok = [p["achieved_per_s"] or 0.0 for p in raw if p["completeness"] >= 1.0]
    best = f"{max(ok):,.0f}/s" if ok else "none"
    report.add(f"End to end: agent -> collector -> SQLite, paced, {args.e2e_workers} worker(s), {seconds:g} s per "
               f"rate (highest achieved rate with every event stored: {best})",
               ["target rate/s", "achieved/s", "stored / deleted", "agent drops", "p50 ms", "p99 ms", "max ms"],
               rows, raw)


def run_startup(args: argparse.Namespace, binary: Path, report: Report) -> None:
    """The agent as deployed (attach mode left to it, a kept-compile directory): a first start, which compiles,
    and a restart, which loads the kept compile; medians of 3 pairs."""
    runs = 3
    pairs = []
    try:
        for _ in range(runs):
            pairs.append(overhead.startup_pair(binary, n=20_000 if args.quick else 100_000))
    except peers.Unavailable as e:
        report.add("Agent start-up and RSS", ["result"], [[f"unavailable: {e}"]], [])
        return
    rows: list[list[stats.Cell]] = []
    for i, start in enumerate(("first start", "restart")):
        got = [p[i] for p in pairs]
        how = "/".join(sorted({f"{s['mode']}, {s['object']}" for s in got}))
        for k in ("exec_to_attached_s", "agent_reported_s"):
            rows.append([f"{start} ({how}): {k}", stats.median([float(s[k]) for s in got if s[k] is not None])])
    for k in ("idle_rss_mib", "rss_after_load_mib", "hwm_mib"):
        rows.append([f"restart: {k}", stats.median([float(p[1][k]) for p in pairs])])
    report.add(f"Agent start-up and RSS (--attach auto, --kube off, a kept-compile directory; medians of {runs})",
               ["measure", "value"], rows, [s for p in pairs for s in p])


def run_exec(args: argparse.Namespace, report: Report) -> None:
    """A shell loop of /bin/true and one of rm (a process per deleted file) under bare and the agent."""
    n = 1000 if args.quick else 5000
    baseline = overhead.baseline_agent(args.baseline) if args.baseline else None
    for loop in overhead.EXEC_LOOPS:
        print(f"exec loop {loop}: {n:,} processes x {args.rounds} rounds", file=sys.stderr)
        with overhead.baseline_tree(baseline) if baseline else contextlib.nullcontext():
            results = overhead.exec_compare(loop, n, args.rounds, baseline)
        report.add(f"Exec loop `{loop}` ({n:,} processes, tmpfs, medians of {args.rounds} interleaved rounds)",
                   overhead.EXEC_HEADERS, overhead.table(results, n), [asdict(r) for r in results])


def run_other(name: str, quick: bool = False) -> str | None:
    """Run bench/<name>.py's main() if that module exists; the error text if it failed."""
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"bench.{name}":
            return "not present"
        return f"import failed: {e}"
    main: Callable[[], None] = module.main
    # their own parsers get their defaults (or their --quick sizes), not our flags
    saved, sys.argv = sys.argv, [f"bench.{name}", *(QUICK_ARGS.get(name, []) if quick else [])]
    try:
        main()
    except SystemExit as e:
        return None if not e.code else f"exited with {e.code}"
    except Exception:
        return "failed:\n" + traceback.format_exc()
    finally:
        sys.argv = saved
    return None


class Report:
    def __init__(self, args: argparse.Namespace) -> None:
        self.meta = {**machine(), "argv": sys.argv[1:], "n": args.n, "rounds": args.rounds, "workers": args.workers}
        self.sections: list[dict[str, Any]] = []

    def add(self, title: str, headers: list[str], rows: list[list[stats.Cell]], raw: Any) -> None:
        self.sections.append({"title": title, "headers": headers, "rows": rows, "raw": raw})
        print(f"\n== {title}\n{stats.render_text(headers, rows)}\n", flush=True)

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"machine": self.meta, "sections": self.sections},
                                                      indent=1, default=str))
        md = [f"Run {self.meta['date']} on {self.meta['nproc']} cores, {self.meta['memory_gib']} GiB, "
              f"kernel {self.meta['kernel']}; `python -m bench {' '.join(self.meta['argv'])}`", ""]
        for s in self.sections:
            md += [f"### {s['title']}", "", stats.render_markdown(s["headers"], s["rows"]), ""]
        (out / "results.md").write_text("\n".join(md))
        print(f"results: {out / 'results.json'}, {out / 'results.md'}", file=sys.stderr)


def _interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt  # so tracers are stopped, audit state restored and mounts removed on the way out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print("\n".join(t.name for t in overhead.configurations()))
        return 0
    for sig in (signal.SIGTERM, signal.SIGHUP):  # ended like Ctrl-C, with the same cleanup
        signal.signal(sig, _interrupt)
    if os.geteuid() != 0 and KERNEL_STEPS & set(args.steps):
        print("python -m bench: the overhead, e2e and startup steps need root (mounts, BPF, audit)", file=sys.stderr)
        return 2
    for step in args.steps:
        why = short_of(step, args)
        if why:
            print(f"python -m bench: {why}", file=sys.stderr)
            return 2
    if args.quiet_check:
        why = quiet_refusal()
        if why:
            print(f"python -m bench: {why}", file=sys.stderr)
            return 2
    binary = workload.build()
    report = Report(args)
    if report.meta["foreign_bpf_tracers_before"]:
        print(f"warning: other processes have BPF tracepoints attached: {report.meta['foreign_bpf_tracers_before']}"
              " (they slow every configuration, bare included)", file=sys.stderr)
    t0 = time.monotonic()
    failures: dict[str, str] = {}
    # tracefs, where the host has none mounted, is mounted once for the whole run and unmounted after it (recorded
    # for make clean-host): a baseline agent from before the agent unmounted its own, or a peer, would leave it
    mounted = tracefs.ensure() if KERNEL_STEPS & set(args.steps) else None
    try:
        run_steps(args, binary, report, failures)
    finally:
        if mounted is not None:
            tracefs.release(mounted)
    report.meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    report.meta["other_benchmarks"] = {s: failures.get(s, "ok") for s in args.steps if s in OTHERS}
    report.write(args.out)
    return 1 if any(v != "not present" for v in failures.values()) else 0


def run_steps(args: argparse.Namespace, binary: Path, report: Report, failures: dict[str, str]) -> None:
    for step in args.steps:
        disk, mem = budget(step, args)
        print(f"\n### {step} (needs at most {disk / GB:.1f} GB of disk, {mem / GB:.1f} GB of memory)",
              file=sys.stderr, flush=True)
        why = short_of(step, args)  # the steps before it may have used what it needs
        if why:
            failures[step] = why
            print(f"python -m bench: {why}", file=sys.stderr)
            continue
        if step == "overhead":
            run_overhead(args, binary, report)
        elif step == "e2e":
            run_e2e(args, binary, report)
        elif step == "startup":
            run_startup(args, binary, report)
        elif step == "exec":
            run_exec(args, report)
        else:
            err = run_other(step, args.quick)
            if err:
                failures[step] = err
                print(f"bench.{step}: {err}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

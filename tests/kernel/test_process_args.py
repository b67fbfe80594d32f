"""The command line of every deletion, captured in the kernel at exec (sched_process_exec) and looked up by the
deletion path: exec'd, forked without exec, exec'd again, running before the agent (seeded from /proc), cut at
the bound. Runs on the live kernel (tracepoints) and in the kernel lab (kprobe, fentry)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_root
from tests.support.agentproc import AgentProcess, attached_agent, by_pid


def test_rm_reports_the_command_line_it_was_execd_with(agent: AgentProcess, work: Path) -> None:
    f = work / "a file.txt"
    f.touch()
    p = subprocess.run(["rm", "-f", "--", str(f)], check=True)
    assert p.returncode == 0
    (ev,) = agent.wait_for(lambda e: e["path"] == str(f))
    assert ev["args"] == ["rm", "-f", "--", str(f)] and ev["exe"] == shutil.which("rm")
    assert ev["args_truncated"] is False and ev["process_unknown"] is False


def test_a_command_line_longer_than_the_bound_is_cut_and_flagged(agent: AgentProcess, work: Path) -> None:
    f = work / "long"
    f.touch()
    subprocess.run(["rm", "-f", str(f), "x" * 600, "y" * 600], stderr=subprocess.DEVNULL)  # names too long: exit 1
    (ev,) = agent.wait_for(lambda e: e["path"] == str(f))
    assert ev["args"][:3] == ["rm", "-f", str(f)] and ev["args_truncated"] is True
    assert len("\0".join(ev["args"])) == 1024  # the kernel keeps 1 KiB of it, cut in the last argument
    assert ev["args"][-1] == "y" * (1024 - len("\0".join(["rm", "-f", str(f), "x" * 600])) - 1)


def test_a_child_forked_without_exec_carries_its_parents_command_line(agent: AgentProcess, work: Path) -> None:
    f = work / "forked"
    f.touch()
    code = (f"import os\npid = os.fork()\nif pid == 0:\n    os.unlink({str(f)!r})\n    os._exit(0)\n"
            "os.waitpid(pid, 0)\nprint(pid)")
    parent = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child = int(parent.stdout.split()[0])
    (ev,) = agent.wait_for(by_pid(child))
    assert ev["args"] == [sys.executable, "-c", code] and ev["exe"] == os.path.realpath(sys.executable)
    assert ev["process_unknown"] is False


def test_an_exec_in_place_replaces_the_command_line_for_the_same_pid(agent: AgentProcess, work: Path) -> None:
    a, b = work / "before", work / "after"
    a.touch()
    b.touch()
    rm = shutil.which("rm")
    code = f"import os, sys\nos.unlink({str(a)!r})\nsys.stdout.write(str(os.getpid()))\nsys.stdout.flush()\n" \
           f"os.execv({rm!r}, ['rm', {str(b)!r}])"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, second = agent.wait_for(by_pid(int(p.stdout)), count=2)
    assert first["path"] == str(a) and first["args"][:2] == [sys.executable, "-c"]
    assert second["path"] == str(b) and second["args"] == ["rm", str(b)] and second["exe"] == rm


def test_a_process_running_before_the_agent_is_seeded_and_its_fork_is_unknown(work: Path) -> None:
    require_root()
    f, g = work / "seeded", work / "seeded-child"
    f.touch()
    g.touch()
    code = (f"import os, sys\nsys.stdin.readline()\nos.unlink({str(f)!r})\npid = os.fork()\nif pid == 0:\n"
            f"    os.unlink({str(g)!r})\n    os._exit(0)\nos.waitpid(pid, 0)")
    early = subprocess.Popen([sys.executable, "-c", code, "marker"], stdin=subprocess.PIPE, text=True)
    try:
        with attached_agent() as a:
            assert early.stdin is not None
            early.stdin.write("go\n")
            early.stdin.close()
            assert early.wait(30) == 0
            (ev,) = a.wait_for(lambda e: e["path"] == str(f))
            assert ev["pid"] == early.pid and ev["args"] == [sys.executable, "-c", code, "marker"]
            assert ev["exe"] == os.path.realpath(sys.executable) and ev["process_unknown"] is False
            # its child forked after the agent started: /proc gave no executable file to compare, so nothing is
            # guessed
            (child,) = a.wait_for(lambda e: e["path"] == str(g))
            assert child["process_unknown"] is True and child["args"] == [] and child["exe"] == ""
    finally:
        early.kill()


def test_a_process_that_exits_at_once_still_has_its_command_line(agent: AgentProcess, work: Path) -> None:
    files = [work / f"q{i}" for i in range(20)]
    for f in files:
        f.touch()
    procs = [subprocess.Popen(["rm", str(f)]) for f in files]
    assert [p.wait() for p in procs] == [0] * len(files)
    pids = {p.pid for p in procs}
    evs = agent.wait_for(lambda e: e["pid"] in pids, count=len(files))
    assert sorted(e["args"][1] for e in evs) == sorted(str(f) for f in files)
    assert all(e["args"][0] == "rm" and not e["process_unknown"] for e in evs)

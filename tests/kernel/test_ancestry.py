"""The ancestry of every deletion: its parents nearest first, each with pid, comm, exe and command line, sent by
the kernel once per process and cut at the pid namespace's first process (here the host's init) or after 8
parents. Runs on the live kernel (tracepoints) and in the kernel lab (kprobe, fentry); exec sessions into runc
containers are in tests/e2e/test_exec_session.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.agentproc import AgentProcess, by_pid


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_rm_from_sh_c_has_sh_and_its_command_line_as_parent_and_then_this_process(
        agent: AgentProcess, work: Path) -> None:
    f = work / "x"
    f.touch()
    script = f"rm {f}; true"  # `; true`: sh forks rm instead of exec'ing it
    p = subprocess.Popen(["sh", "-c", script])
    assert p.wait(30) == 0
    (ev,) = agent.wait_for(lambda e: e["path"] == str(f))
    sh, me = ev["ancestry"][:2]
    assert ev["args"] == ["rm", str(f)] and ev["ppid"] == p.pid
    assert sh == {"pid": p.pid, "comm": "sh", "exe": os.path.realpath(shutil.which("sh") or ""),
                  "args": ["sh", "-c", script], "unknown": False}
    # this test process started before the agent: its entry was seeded from /proc
    assert me["pid"] == os.getpid() and me["args"] == _cmdline(os.getpid()) and me["unknown"] is False
    assert ev["exec_session"] is False
    last = ev["ancestry"][-1]
    assert (last["pid"] == 1 and not ev["ancestry_truncated"]) or (
        len(ev["ancestry"]) == 8 and ev["ancestry_truncated"])


def test_the_ancestry_stops_after_8_parents_and_says_it_was_cut(agent: AgentProcess, work: Path) -> None:
    f = work / "deep"
    f.touch()
    script = work / "deep.py"
    script.write_text("import os, subprocess, sys\nn = int(sys.argv[1])\n"
                      "if n:\n    subprocess.run([sys.executable, __file__, str(n - 1)], check=True)\n"
                      f"else:\n    os.unlink({str(f)!r})\n")
    subprocess.run([sys.executable, str(script), "10"], check=True)
    (ev,) = agent.wait_for(lambda e: e["path"] == str(f))
    assert ev["args"][-1] == "0"
    assert [a["args"][-1] for a in ev["ancestry"]] == [str(n) for n in range(1, 9)]
    assert ev["ancestry_truncated"] is True and ev["exec_session"] is False


def test_a_parent_forked_without_exec_shows_the_command_line_it_inherited(agent: AgentProcess, work: Path) -> None:
    f = work / "forked-parent"
    f.touch()
    code = (f"import os, subprocess\npid = os.fork()\nif pid == 0:\n"
            f"    subprocess.run(['rm', {str(f)!r}], check=True)\n    os._exit(0)\n"
            "os.waitpid(pid, 0)\nprint(pid)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child = int(out.stdout.split()[0])
    (ev,) = agent.wait_for(lambda e: e["path"] == str(f))
    forked, parent = ev["ancestry"][:2]
    assert forked["pid"] == child and forked["args"] == [sys.executable, "-c", code] and not forked["unknown"]
    assert parent["args"] == [sys.executable, "-c", code] and parent["pid"] != child


def test_each_deletion_of_a_long_lived_process_carries_the_same_ancestry(agent: AgentProcess, work: Path) -> None:
    files = [work / f"n{i}" for i in range(3)]
    for f in files:
        f.touch()
    code = "import os, sys\nfor p in sys.argv[1:]:\n    os.unlink(p)\nprint(os.getpid())"
    out = subprocess.run(["sh", "-c", 'python3 -c "$0" "$@"; true', code, *map(str, files)], capture_output=True,
                         text=True, check=True)
    evs = agent.wait_for(by_pid(int(out.stdout)), count=3)
    assert len({str(e["ancestry"]) for e in evs}) == 1 and evs[0]["ancestry"][0]["comm"] == "sh"

"""The kernel's directory cache (agent/bpf/walk.h) never gives a path that was stale when the deletion began:
every change that moves a directory (a rename of an ancestor, by a syscall or io_uring; a mount moved) is seen,
a root (chroot) is part of the key, and renames racing with deletions leave no stale entry behind. Each test
first deletes once through the directory, so that the cache holds it, then changes it and deletes again."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.probe.program import DEGRADED_DIR_CACHE
from tests.support.agentproc import AgentProcess, by_pid, run_deleter
from unlinkwatch import runstate


def unlinks(agent: AgentProcess, pid: int, count: int) -> list[str]:
    evs = agent.wait_for(lambda e: e["pid"] == pid and e["op"] == "unlink", count=count, timeout=60)
    return [e["path"] for e in sorted(evs, key=lambda e: e["seq"])]


def test_the_cache_is_on_where_every_change_it_must_see_is_attached(agent: AgentProcess) -> None:
    assert not [d for d in agent.info["degraded"] if d.startswith(DEGRADED_DIR_CACHE)]


def test_a_loop_of_deletions_in_one_directory_walks_it_once_and_counts_the_rest_as_hits(
        agent: AgentProcess, work: Path) -> None:
    hit, miss = 'unlinkwatch_agent_dir_cache_total{result="hit"}', 'unlinkwatch_agent_dir_cache_total{result="miss"}'
    hits0, misses0 = agent.metric(hit), agent.metric(miss)
    d = work / "loop"
    d.mkdir()
    for i in range(100):
        (d / f"f{i}").touch()
    pid = run_deleter(f"fd = os.open({str(d)!r}, os.O_RDONLY)\n"
                      "for i in range(100):\n    os.unlink(f'f{i}', dir_fd=fd)")
    assert len(unlinks(agent, pid, 100)) == 100
    # a first walk per CPU the loop ran on; other processes' deletions may add hits
    assert agent.wait_metric(hit, hits0 + 90) - hits0 >= 90
    assert agent.metric(miss) - misses0 >= 1


def test_a_grandparent_renamed_between_deletions_in_the_cwd_gives_the_new_path(
        agent: AgentProcess, work: Path) -> None:
    d = work / "g1" / "p" / "cwd"
    d.mkdir(parents=True)
    for n in ("a", "b", "c"):
        (d / n).touch()
    pid = run_deleter(f"os.unlink('a')\nos.unlink('b')\nos.rename({str(work / 'g1')!r}, {str(work / 'g2')!r})\n"
                      "os.unlink('c')", cwd=d)
    assert unlinks(agent, pid, 3) == [str(d / "a"), str(d / "b"), str(work / "g2" / "p" / "cwd" / "c")]


def deletions_around_a_rename(agent: AgentProcess, work: Path, rename: list[str]) -> list[str] | None:
    """Deletes work/r1/in/a through a dirfd, renames work/r1 to work/r2 with the command `rename` + [old, new] run by
    another process, then deletes b through the same dirfd: the two paths reported, or None when the rename failed
    with exit status 3 (no io_uring)."""
    d = work / "r1" / "in"
    d.mkdir(parents=True)
    for n in ("a", "b"):
        (d / n).touch()
    code = textwrap.dedent(f"""
        import os, subprocess
        fd = os.open({str(d)!r}, os.O_RDONLY)
        os.unlink('a', dir_fd=fd)
        p = subprocess.run({[*rename, str(work / 'r1'), str(work / 'r2')]!r})
        if p.returncode == 0:
            os.unlink('b', dir_fd=fd)
        print(p.returncode)
        print(os.getpid())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if out[-2] == "3":
        return None
    assert out[-2] == "0"
    return unlinks(agent, int(out[-1]), 2)


def test_a_rename_by_another_process_is_seen_by_the_next_deletion_through_a_dirfd(
        agent: AgentProcess, work: Path) -> None:
    got = deletions_around_a_rename(agent, work, [sys.executable, "-c", "import os, sys; os.rename(*sys.argv[1:])"])
    assert got == [str(work / "r1" / "in" / "a"), str(work / "r2" / "in" / "b")]


def test_a_mount_moved_between_deletions_gives_the_new_path(agent: AgentProcess, work: Path) -> None:
    parent = work / "mp"
    parent.mkdir()
    recs = [runstate.record("mount", path=str(parent))]  # for make clean-host, should the run be killed
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "uwtest", str(parent)], check=True)
        subprocess.run(["mount", "--make-private", str(parent)], check=True)  # a move needs a private parent
        (parent / "m1").mkdir()
        (parent / "m2").mkdir()
        recs.append(runstate.record("mount", path=str(parent / "m1")))
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "uwtest", str(parent / "m1")], check=True)
        (parent / "m1" / "sub").mkdir()
        for n in ("a", "b"):
            (parent / "m1" / "sub" / n).touch()
        code = (f"fd = os.open({str(parent / 'm1' / 'sub')!r}, os.O_RDONLY)\nos.unlink('a', dir_fd=fd)\n"
                "import subprocess\n"
                f"subprocess.run(['mount', '--move', {str(parent / 'm1')!r}, {str(parent / 'm2')!r}], check=True)\n"
                "os.unlink('b', dir_fd=fd)")
        pid = run_deleter(code)
        assert unlinks(agent, pid, 2) == [str(parent / "m1" / "sub" / "a"), str(parent / "m2" / "sub" / "b")]
    finally:
        for m in ("m2", "m1"):
            subprocess.run(["umount", "-q", str(parent / m)], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(parent)], check=False)
        for rec in reversed(recs):
            rec.done()


def test_an_io_uring_rename_of_an_ancestor_is_seen_by_the_next_deletion(
        agent: AgentProcess, work: Path, uring: Path) -> None:
    got = deletions_around_a_rename(agent, work, [str(uring), "rename"])
    if got is None:
        pytest.skip("this kernel offers no io_uring")
    assert got == [str(work / "r1" / "in" / "a"), str(work / "r2" / "in" / "b")]


def test_one_directory_seen_from_inside_and_outside_a_chroot_gives_each_view(
        agent: AgentProcess, work: Path) -> None:
    d = work / "jail" / "d"
    d.mkdir(parents=True)
    for n in ("a", "b", "c"):
        (d / n).touch()
    outside = run_deleter("os.unlink('a')", cwd=d)
    inside = run_deleter(f"os.chroot({str(work / 'jail')!r})\nos.chdir('/d')\nos.unlink('b')")
    again = run_deleter("os.unlink('c')", cwd=d)
    assert [agent.wait_for(by_pid(p))[0]["path"] for p in (outside, inside, again)] == [
        str(d / "a"), "/d/b", str(d / "c")]


RACE = """
import os, sys, time
work, n = sys.argv[1], int(sys.argv[2])
names = [os.path.join(work, "A"), os.path.join(work, "B")]
if os.fork() == 0:  # the renamer: flips the ancestor until the deleter is done
    i = 0
    while not os.path.exists(os.path.join(work, "done")):
        os.rename(names[i % 2], names[(i + 1) % 2])
        i += 1
    print(names[i % 2], flush=True)  # where it ended
    os._exit(0)
time.sleep(0.01)
d = None
while d is None:
    for name in names:
        try:
            d = os.open(os.path.join(name, "p", "in"), os.O_RDONLY)
            break
        except FileNotFoundError:
            pass
for i in range(n):
    os.unlink(f"r{i}", dir_fd=d)
open(os.path.join(work, "done"), "w").close()
os.wait()
for i in range(n, n + 20):
    os.unlink(f"r{i}", dir_fd=d)
print(os.getpid(), flush=True)
"""


def test_renames_racing_with_deletions_leave_no_stale_path_once_they_stop(agent: AgentProcess, work: Path) -> None:
    n = 2000
    d = work / "A" / "p" / "in"
    d.mkdir(parents=True)
    for i in range(n + 20):
        (d / f"r{i}").touch()
    out = subprocess.run([sys.executable, "-c", RACE, str(work), str(n)], capture_output=True, text=True,
                         check=True).stdout.split()
    final, pid = out[0], int(out[-1])
    got = unlinks(agent, pid, n + 20)
    during = {str(Path(p).parent.parent.parent) for p in got[:n]}
    assert during <= {str(work / "A"), str(work / "B")}  # each is where the directory was at some point
    assert got[n:] == [f"{final}/p/in/r{i}" for i in range(n, n + 20)]

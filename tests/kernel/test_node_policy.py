"""The node policy in the kernel (`agent --policy FILE`): ignore rules drop deletions before the ring buffer and
count them, audit and block rules mark events would-block, excepts, paths the kernel leaves to the agent,
renames, hot reload. Live here with tracepoints; under the kernel lab in kprobe and fentry mode too."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.support.agentproc import AgentProcess, attached_agent, by_pid, run_deleter

FILTERED = "unlinkwatch_agent_events_filtered_total"


def _policy(root: Path) -> str:
    return f"""
policy:
  - name: keep-one
    action: audit
    paths: ["{root}/cache/keep.txt"]
    host: true
  - name: quiet-cache
    action: ignore
    paths: ["{root}/cache/**"]
    host: true
  - name: protect-shadow
    action: block
    paths: ["{root}/etc/shadow", "**/.bash_history"]
    host: true
  - name: audit-keys
    action: audit
    paths: ["**/*.pem"]
    host: true
    except: {{comm: ["keyrotate"], exe: ["{root}/bin/certtool"]}}
  - name: hosts-not-covered
    action: audit
    paths: ["{root}/pods-only/**"]
  - name: audited-tree
    action: audit
    paths: ["{root}/audited/**"]
    host: true
  - name: short-names
    action: audit
    paths: ["**/k", "**/*.gz"]
    host: true
  - name: quiet-scratch
    action: ignore
    paths: ["{root}/scratch/**"]
    host: true
    except: {{exe: ["{root}/bin/scrubber"]}}
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("policy")
    for sub in ("cache/sub", "cache2", "etc", "bin", "pods-only", "names/sub", "names/sub2", "audited",
                "free/anc/leaf", "scratch"):
        (d / sub).mkdir(parents=True)
    (d / "policy.yaml").write_text(_policy(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(root: Path) -> Iterator[AgentProcess]:
    require_root()
    with attached_agent("--policy", str(root / "policy.yaml")) as a:
        yield a


def _touch(*paths: Path) -> None:
    for p in paths:
        p.touch()


def test_an_ignore_rule_drops_deletions_in_the_kernel_counts_them_and_hides_no_sibling(
        agent: AgentProcess, root: Path) -> None:
    c = root / "cache"
    _touch(c / "a", c / "b", c / "sub" / "c", root / "cache2" / "d", root / "cache.txt")
    (c / "gone").mkdir()
    before = agent.metric(FILTERED)
    lost = agent.metric("unlinkwatch_agent_events_lost_total")
    code = (f"os.unlink({str(c / 'a')!r})\n"                       # absolute
            "os.unlink('b')\n"                                      # relative to the cwd
            f"fd = os.open({str(c / 'sub')!r}, os.O_RDONLY)\nos.unlink('c', dir_fd=fd)\n"  # dirfd
            "os.rmdir('gone')\n"
            f"os.unlink({str(root / 'cache2' / 'd')!r})\n"         # a sibling whose name extends the prefix
            f"os.unlink({str(root / 'cache.txt')!r})\n")
    pid = run_deleter(code, cwd=c)
    evs = agent.wait_for(by_pid(pid), count=2)
    time.sleep(1.0)  # anything the kernel let through would be here by now
    evs = [e for e in agent.events if e["pid"] == pid]
    assert sorted(e["path"] for e in evs) == sorted([str(root / "cache2" / "d"), str(root / "cache.txt")])
    assert all(e["action"] == "allowed" and e["policy"] == "" for e in evs)
    assert agent.wait_metric(FILTERED, before + 4) == before + 4
    assert agent.metric("unlinkwatch_agent_events_lost_total") == lost  # filtered is never counted as lost


def test_a_directory_moved_out_of_an_ignored_tree_is_reported_at_once_and_one_moved_in_is_ignored(
        agent: AgentProcess, root: Path) -> None:
    """Relative deletions are decided at entry through the directory cache: moving an ancestor of the
    directory (which leaves the directory's own dentry as it was) must end that at once."""
    out, into = root / "cache" / "anc" / "leaf", root / "cache2" / "anc2" / "leaf"
    out.mkdir(parents=True)
    into.mkdir(parents=True)
    _touch(*(out / f"x{i}" for i in range(4)), *(into / f"y{i}" for i in range(4)))
    before = agent.metric(FILTERED)
    code = ("for n in ('x0', 'x1'):\n    os.unlink(n)\n"          # ignored; the second through the cache
            f"fd = os.open({str(into)!r}, os.O_RDONLY)\n"
            "for n in ('y0', 'y1'):\n    os.unlink(n, dir_fd=fd)\n"   # reported
            "import subprocess\n"                                       # another process moves the ancestors
            f"subprocess.run(['mv', {str(out.parent)!r}, {str(root / 'cache2')!r}], check=True)\n"
            f"subprocess.run(['mv', {str(into.parent)!r}, {str(root / 'cache')!r}], check=True)\n"
            "for n in ('x2', 'x3'):\n    os.unlink(n)\n"           # now under cache2: reported
            "for n in ('y2', 'y3'):\n    os.unlink(n, dir_fd=fd)\n")  # now under cache: ignored
    pid = run_deleter(code, cwd=out)
    evs = agent.wait_for(by_pid(pid), count=4)
    time.sleep(1.0)
    evs = [e for e in agent.events if e["pid"] == pid and e["op"] == "unlink"]
    assert [e["path"] for e in evs] == [str(into / "y0"), str(into / "y1"),
                                        str(root / "cache2" / "anc" / "leaf" / "x2"),
                                        str(root / "cache2" / "anc" / "leaf" / "x3")]
    assert agent.wait_metric(FILTERED, before + 4) == before + 4


def test_a_directory_moved_into_an_audited_tree_and_out_again_is_decided_by_where_it_is_now(
        agent: AgentProcess, root: Path) -> None:
    """The exit keeps a directory's prefix rules in walk.h's cache slot for its next one-name deletions: moving an
    ancestor (the directory's own dentry stays as it was) must end that at once, both ways."""
    leaf = root / "free" / "anc" / "leaf"
    moved = root / "audited" / "anc" / "leaf"
    _touch(*(leaf / f"z{i}" for i in range(6)))
    code = ("for n in ('z0', 'z1'):\n    os.unlink(n)\n"          # allowed; the second through the cache
            "import subprocess\n"                                    # another process moves the ancestor
            f"subprocess.run(['mv', {str(leaf.parent)!r}, {str(root / 'audited')!r}], check=True)\n"
            "for n in ('z2', 'z3'):\n    os.unlink(n)\n"           # now audited
            f"subprocess.run(['mv', {str(moved.parent)!r}, {str(root / 'free')!r}], check=True)\n"
            "for n in ('z4', 'z5'):\n    os.unlink(n)\n")          # free again
    pid = run_deleter(code, cwd=leaf)
    evs = [e for e in agent.wait_for(by_pid(pid), count=6) if e["op"] == "unlink"]
    assert [(e["path"], e["action"], e["policy"]) for e in evs] == [
        (str(leaf / "z0"), "allowed", ""), (str(leaf / "z1"), "allowed", ""),
        (str(moved / "z2"), "would-block", "audited-tree"), (str(moved / "z3"), "would-block", "audited-tree"),
        (str(leaf / "z4"), "allowed", ""), (str(leaf / "z5"), "allowed", "")]


def test_in_a_directory_holding_an_exact_path_rule_each_name_is_looked_up_whole(
        agent: AgentProcess, root: Path) -> None:
    """The entry keeps a directory's prefix rules for its next deletions only where no exact path lies in it."""
    c = root / "cache"
    _touch(c / "w1", c / "w2", c / "keep.txt", c / "w3")
    before = agent.metric(FILTERED)
    pid = run_deleter("for n in ('w1', 'w2', 'keep.txt', 'w3'):\n    os.unlink(n)\n", cwd=c)
    (ev,) = agent.wait_for(by_pid(pid))
    assert (ev["path"], ev["action"], ev["policy"]) == (str(c / "keep.txt"), "would-block", "keep-one")
    assert agent.wait_metric(FILTERED, before + 3) == before + 3
    time.sleep(0.5)
    assert [e["path"] for e in agent.events if e["pid"] == pid] == [str(c / "keep.txt")]


def test_a_reload_that_drops_an_ignore_rule_reports_the_next_relative_deletion_in_its_directory(
        agent: AgentProcess, root: Path) -> None:
    """The directory's rules the entry keeps belong to one policy generation."""
    c, policy = root / "cache" / "sub", root / "policy.yaml"
    original = policy.read_text()
    _touch(*(c / f"before{i}" for i in range(3)))
    before = agent.metric(FILTERED)
    cpu0 = "os.sched_setaffinity(0, {0})\n"  # one CPU: the cache is per CPU
    run_deleter(cpu0 + "for i in range(3):\n    os.unlink(f'before{i}')\n", cwd=c)
    assert agent.wait_metric(FILTERED, before + 3) == before + 3
    try:
        policy.write_text(original.replace(f'paths: ["{root}/cache/**"]', f'paths: ["{root}/nothing/**"]'))
        deadline = time.monotonic() + 5.0
        while True:
            _touch(c / "after")
            pid = run_deleter(cpu0 + "os.unlink('after')", cwd=c)
            got = agent.wait_for(by_pid(pid), timeout=0.5)
            if got or time.monotonic() > deadline:
                break
        assert [e["path"] for e in got] == [str(c / "after")], "still ignored 5 s after the reload"
    finally:
        policy.write_text(original)
        os.utime(policy)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:  # the original policy in force again, for the tests after
            n = agent.metric(FILTERED)
            _touch(c / "again")
            run_deleter("os.unlink('again')", cwd=c)
            try:
                agent.wait_metric(FILTERED, n + 1, timeout=0.5)
                break
            except AssertionError:
                pass


def _enforcing(agent: AgentProcess) -> bool:
    """Whether block rules stop deletions (BPF LSM: the kernel lab; test_enforcement.py tests it fully)."""
    return agent.metric("unlinkwatch_agent_policy_enforcing") == 1


def _unlink(path: str) -> str:
    """Code for run_deleter: a deletion that a block rule may refuse."""
    return f"try:\n    os.unlink({path!r})\nexcept PermissionError:\n    pass\n"


def test_audit_and_block_rules_report_would_block_or_blocked(agent: AgentProcess, root: Path) -> None:
    _touch(root / "etc" / "shadow", root / "etc" / "shadow2", root / ".bash_history", root / "k.pem")
    code = "".join(_unlink(str(p)) for p in (root / "etc" / "shadow", root / "etc" / "shadow2", ".bash_history"))
    code += "os.unlink('k.pem')"
    pid = run_deleter(code, cwd=root)
    evs = agent.wait_for(by_pid(pid), count=4)
    got = {e["path"]: (e["action"], e["policy"]) for e in evs}
    block = "blocked" if _enforcing(agent) else "would-block"
    assert got == {str(root / "etc" / "shadow"): (block, "protect-shadow"),
                   str(root / "etc" / "shadow2"): ("allowed", ""),
                   str(root / ".bash_history"): (block, "protect-shadow"),
                   str(root / "k.pem"): ("would-block", "audit-keys")}
    # audit only where the kernel cannot enforce
    assert (root / "etc" / "shadow").exists() == _enforcing(agent)


def test_an_excepted_command_name_or_executable_is_not_matched(agent: AgentProcess, root: Path) -> None:
    rm = shutil.which("rm")
    assert rm is not None
    shutil.copy(rm, root / "bin" / "keyrotate")
    shutil.copy(rm, root / "bin" / "certtool")
    _touch(root / "a.pem", root / "b.pem", root / "c.pem")
    for tool, name in (("keyrotate", "a.pem"), ("certtool", "b.pem"), ("keyrotate", "c.pem")):
        subprocess.run([str(root / "bin" / tool), str(root / name)], check=True)
    evs = agent.wait_for(lambda e: e["path"].startswith(str(root)) and e["path"].endswith(".pem")
                         and e["comm"] in ("keyrotate", "certtool"), count=3)
    assert {(e["comm"], e["action"]) for e in evs} == {("keyrotate", "allowed"), ("certtool", "allowed")}


def test_an_ignore_rule_drops_a_loop_of_deletions_but_not_those_of_an_excepted_executable(
        agent: AgentProcess, root: Path) -> None:
    # one-name arguments in one directory: after the first, the entry decides the ignore from the directory cache,
    # before the process's record is looked up; an excepted executable must be known first
    rm = shutil.which("rm")
    assert rm is not None
    shutil.copy(rm, root / "bin" / "scrubber")
    d = root / "scratch"
    ignored = [f"n{i}" for i in range(6)]
    kept = [f"k{i}" for i in range(6)]
    _touch(*(d / n for n in ignored + kept))
    before = agent.metric(FILTERED)
    subprocess.run([rm, *ignored], cwd=d, check=True)
    subprocess.run([str(root / "bin" / "scrubber"), *kept], cwd=d, check=True)
    subprocess.run([str(root / "bin" / "scrubber"), *(f"{n}.again" for n in kept)], cwd=d, check=False,
                   stderr=subprocess.DEVNULL)  # a second process of it: its entry in procs made at exec
    evs = agent.wait_for(lambda e: e["path"].startswith(str(d) + "/k"), count=12)
    assert sorted(e["path"] for e in evs if e["result"] == 0) == sorted(str(d / n) for n in kept)
    assert all(e["comm"] == "scrubber" and e["action"] == "allowed" and e["policy"] == "" for e in evs)
    assert agent.wait_metric(FILTERED, before + len(ignored)) == before + len(ignored)
    time.sleep(0.5)
    assert not [e for e in agent.events if e["path"].startswith(str(d) + "/n")]


def test_a_final_name_rule_matches_names_of_every_length_and_no_others(agent: AgentProcess, root: Path) -> None:
    """policy_names is looked up only for a name whose key's first bytes pass the slot's filter (policy.h): here the
    shortest key is "k/", so a one-byte name's filter word ends in the "/" after it."""
    d = root / "names"
    names = ("k", "kk", "a.gz", "gz", "x.tgz", "sub/k")
    _touch(*(d / n for n in names), d / "sub2" / "k")
    code = "".join(f"os.unlink({n!r})\n" for n in names) + f"os.unlink({str(d / 'sub2' / 'k')!r})\n"
    pid = run_deleter(code, cwd=d)
    evs = agent.wait_for(by_pid(pid), count=len(names) + 1)
    got = {e["path"]: e["policy"] for e in evs}
    assert got == {str(d / "k"): "short-names", str(d / "kk"): "", str(d / "a.gz"): "short-names", str(d / "gz"): "",
                   str(d / "x.tgz"): "", str(d / "sub" / "k"): "short-names", str(d / "sub2" / "k"): "short-names"}


def test_a_rule_without_host_true_leaves_host_processes_alone(agent: AgentProcess, root: Path) -> None:
    _touch(root / "pods-only" / "x")
    pid = run_deleter(f"os.unlink({str(root / 'pods-only' / 'x')!r})")
    (ev,) = agent.wait_for(by_pid(pid))
    assert ev["action"] == "allowed" and ev["policy"] == ""


def test_paths_with_dot_dot_are_decided_by_the_agent_the_same_way(agent: AgentProcess, root: Path) -> None:
    _touch(root / "cache" / "e", root / "etc" / "shadow")
    before = agent.metric(FILTERED)
    code = "os.unlink('cache/sub/../e')\n" + _unlink("./etc//shadow")
    pid = run_deleter(code, cwd=root)
    (ev,) = agent.wait_for(by_pid(pid))
    assert ev["path"] == str(root / "etc" / "shadow") and ev["policy"] == "protect-shadow"
    assert ev["action"] == ("blocked" if _enforcing(agent) else "would-block")
    assert agent.wait_metric(FILTERED, before + 1) == before + 1
    time.sleep(0.5)
    assert [e["path"] for e in agent.events if e["pid"] == pid] == [str(root / "etc" / "shadow")]


def test_a_rename_is_ignored_only_when_both_its_names_are(agent: AgentProcess, root: Path) -> None:
    c = root / "cache"
    _touch(c / "tmp1", c / "tmp2", root / "etc" / "shadow", c / "new-shadow")
    before = agent.metric(FILTERED)
    code = (f"os.rename({str(c / 'tmp1')!r}, {str(c / 'final1')!r})\n"          # both ignored: dropped
            f"os.rename({str(c / 'tmp2')!r}, {str(root / 'out')!r})\n"           # moved out: reported
            f"try:\n    os.rename({str(c / 'new-shadow')!r}, {str(root / 'etc' / 'shadow')!r})\n"  # over a protected
            "except PermissionError:\n    pass\n")
    pid = run_deleter(code)
    evs = agent.wait_for(by_pid(pid), count=2)
    time.sleep(1.0)
    evs = [e for e in agent.events if e["pid"] == pid]
    got = [(e["path"], e["rename_to"], e["action"], e["policy"]) for e in evs]
    assert got[0] == (str(c / "tmp2"), str(root / "out"), "allowed", "")
    over = got[1]
    assert over[:2] == (str(c / "new-shadow"), str(root / "etc" / "shadow")) and len(got) == 2
    if _enforcing(agent):
        assert over[2:] == ("blocked", "protect-shadow") and (c / "new-shadow").exists()
    elif evs[1]["replaced"]:  # tracepoint mode tells a replaced destination only when it is in the dcache
        assert over[2:] == ("would-block", "protect-shadow")
    assert agent.wait_metric(FILTERED, before + 1) == before + 1


def test_a_policy_edit_takes_effect_within_2_s_and_a_bad_one_keeps_the_policy(agent: AgentProcess, root: Path) -> None:
    policy = root / "policy.yaml"
    original = policy.read_text()
    try:
        policy.write_text(original.replace('paths: ["**/*.pem"]', 'paths: ["**/*.key"]'))
        t0 = time.monotonic()
        deadline = t0 + 2.0
        while True:
            _touch(root / "probe.key")
            pid = run_deleter(f"os.unlink({str(root / 'probe.key')!r})")
            (ev,) = agent.wait_for(by_pid(pid))
            if ev["policy"] == "audit-keys" or time.monotonic() > deadline:
                break
        assert ev["policy"] == "audit-keys", "the edited policy was not in force 2 s after the write"
        failures = agent.metric("unlinkwatch_agent_policy_reload_failures_total")
        policy.write_text(original.replace("action: audit", "action: sometimes"))
        agent.wait_metric("unlinkwatch_agent_policy_reload_failures_total", failures + 1, timeout=5)
        assert any("reload refused" in line and "unknown action 'sometimes'" in line for line in agent.log)
        _touch(root / "again.key")
        pid = run_deleter(f"os.unlink({str(root / 'again.key')!r})")
        (ev,) = agent.wait_for(by_pid(pid))
        assert ev["policy"] == "audit-keys"  # the policy in force stayed
    finally:
        policy.write_text(original)
        os.utime(policy)


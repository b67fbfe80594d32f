"""Block rules enforced in the kernel with BPF LSM (agent/bpf/enforce.h): the deletion fails with EPERM, the file
stays, and the event says `blocked`. These tests need a kernel that lists "bpf" among its active LSMs: the kernel
lab boots Debian's 6.1 kernel with it (kprobe, fentry and tracepoint observation); the live kernel here has no BPF
LSM, and they skip there saying so."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from unlinkwatch.agent.policy.runtime import bpf_lsm_missing

from tests.conftest import require_root
from tests.support.agentproc import AgentProcess, Event, attached_agent

EPERM = -errno.EPERM
_MISSING = bpf_lsm_missing()
if _MISSING:
    pytest.skip(f"block rules need BPF LSM, which this kernel cannot run ({_MISSING}); the kernel lab "
                "(tests/vm) runs these under Debian's 6.1 kernel with it", allow_module_level=True)


# exact names of every byte different, on both sides of the lengths a dentry holds in itself (31 and 39 bytes)
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_KEYS = [(_ALPHABET * 2)[:n] for n in (7, 31, 32, 39, 40, 100)]


def _policy(root: Path, action: str = "block") -> str:
    keys = "".join(f', "{root}/keys/{k}"' for k in _KEYS)
    return f"""
policy:
  - name: protect-secrets
    action: {action}
    paths: ["{root}/secret/**", "{root}/etc/shadow", "**/*.pem"{keys}]
    host: true
    except: {{comm: ["keyrotate"], exe: ["{root}/bin/certtool"]}}
  - name: audit-logs
    action: audit
    paths: ["{root}/logs/**"]
    host: true
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("enforce")
    for sub in ("secret/dir", "etc", "bin", "logs", "free", "keys"):
        (d / sub).mkdir(parents=True)
    (d / "policy.yaml").write_text(_policy(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(root: Path) -> Iterator[AgentProcess]:
    require_root()
    with attached_agent("--policy", str(root / "policy.yaml"), "--require-enforcement") as a:
        yield a


def _run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True)


def _event(agent: AgentProcess, pid: int, path: Path) -> Event:
    evs = agent.wait_for(lambda e: e["pid"] == pid and e["path"] == str(path))
    assert evs, f"no event for {path} by pid {pid}"
    return evs[0]


def _rm(agent: AgentProcess, path: Path, *flags: str, cwd: Path | None = None, name: str | None = None) -> Event:
    """`rm` (or `rmdir`) in a child; returns its event after checking the command's own view of the result."""
    p = subprocess.Popen([name or "rm", *flags, str(path) if cwd is None else path.name], cwd=cwd,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = p.communicate()
    ev = _event(agent, p.pid, path)
    ev["_rc"], ev["_err"] = p.returncode, err
    return ev


def test_the_agent_says_it_enforces(agent: AgentProcess) -> None:
    assert agent.metric("unlinkwatch_agent_policy_enforcing") == 1
    assert not any("block rules run as audit" in line for line in agent.log)


def test_rm_of_a_protected_file_fails_with_eperm_the_file_stays_and_the_event_says_blocked(
        agent: AgentProcess, root: Path) -> None:
    for target in (root / "etc" / "shadow", root / "secret" / "key", root / "free" / "tls.pem"):
        target.write_text("x")
        ev = _rm(agent, target)
        assert ev["_rc"] != 0 and "Operation not permitted" in ev["_err"]
        assert target.exists()
        assert (ev["op"], ev["result"], ev["action"], ev["policy"]) == ("unlink", EPERM, "blocked", "protect-secrets")


def test_a_name_is_decided_alike_whether_the_dentry_holds_it_or_points_to_it(agent: AgentProcess, root: Path) -> None:
    """enforce.h reads a name shorter than 32 bytes from the dentry's own bytes (plain loads) and a longer one by a
    probe read: exact names and final-name patterns on both sides of that line, and of 6.14's 40, are decided the
    same way, and a name one byte away from a protected one (first, middle or last) is not protected."""
    for key in _KEYS:
        near = {key[:i] + "_" + key[i + 1:] for i in (0, len(key) // 2, len(key) - 1)}
        for name in (key, *sorted(near)):
            (root / "keys" / name).write_text("x")
            ev = _rm(agent, root / "keys" / name)
            blocked = name == key
            assert (root / "keys" / name).exists() == blocked and ev["_rc"] == int(blocked), (name, ev["_err"])
            assert ev["action"] == ("blocked" if blocked else "allowed")
    for stem in (26, 27, 28, 35, 36, 96):
        for name in ("k" * stem + ".pem", "k" * stem + ".pex"):
            (root / "free" / name).write_text("x")
            ev = _rm(agent, root / "free" / name)
            blocked = name.endswith(".pem")
            assert (root / "free" / name).exists() == blocked and ev["_rc"] == int(blocked), (name, ev["_err"])


def test_rmdir_of_a_protected_directory_fails(agent: AgentProcess, root: Path) -> None:
    ev = _rm(agent, root / "secret" / "dir", name="rmdir")
    assert ev["_rc"] != 0 and (root / "secret" / "dir").is_dir()
    assert (ev["op"], ev["result"], ev["action"]) == ("rmdir", EPERM, "blocked")


def test_relative_and_dirfd_deletions_of_protected_files_are_blocked(agent: AgentProcess, root: Path) -> None:
    (root / "secret" / "rel").write_text("x")
    ev = _rm(agent, root / "secret" / "rel", cwd=root / "secret")
    assert ev["_rc"] != 0 and (root / "secret" / "rel").exists() and ev["action"] == "blocked"
    (root / "secret" / "byfd").write_text("x")
    code = (f"import os\nfd = os.open({str(root / 'secret')!r}, os.O_RDONLY)\n"
            "try:\n    os.unlink('byfd', dir_fd=fd)\nexcept PermissionError:\n    print('EPERM')\n")
    p = subprocess.Popen(["python3", "-c", code], stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate()
    assert out.strip() == "EPERM" and (root / "secret" / "byfd").exists()
    assert _event(agent, p.pid, root / "secret" / "byfd")["action"] == "blocked"


def test_renaming_a_protected_file_away_or_another_file_over_it_fails(agent: AgentProcess, root: Path) -> None:
    shadow, other, new = root / "etc" / "shadow", root / "free" / "other", root / "secret" / "new"
    shadow.write_text("x")
    other.write_text("y")
    moves = [(shadow, root / "free" / "stolen"), (other, shadow), (other, new)]  # the last destroys nothing
    code = "import os\n" + "".join(f"try:\n    os.rename({str(a)!r}, {str(b)!r})\n    print(0)\n"
                                     "except PermissionError:\n    print('EPERM')\n" for a, b in moves)
    p = subprocess.Popen(["python3", "-c", code], stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate()
    assert out.split() == ["EPERM", "EPERM", "0"]
    assert shadow.read_text() == "x" and new.read_text() == "y"
    evs = agent.wait_for(lambda e: e["pid"] == p.pid, count=3)
    assert [(e["path"], e["rename_to"], e["result"], e["action"]) for e in evs] == [
        (str(shadow), str(root / "free" / "stolen"), EPERM, "blocked"),
        (str(other), str(shadow), EPERM, "blocked"),
        (str(other), str(new), 0, "allowed")]


def test_an_excepted_command_name_or_executable_may_delete(agent: AgentProcess, root: Path) -> None:
    rm = shutil.which("rm")
    assert rm is not None
    for tool in ("keyrotate", "certtool"):
        shutil.copy(rm, root / "bin" / tool)
        (root / "secret" / tool).write_text("x")
        assert _run(root / "bin" / tool, root / "secret" / tool).returncode == 0
        assert not (root / "secret" / tool).exists()


def test_an_audit_rule_lets_the_deletion_happen_and_says_would_block(agent: AgentProcess, root: Path) -> None:
    (root / "logs" / "app.log").write_text("x")
    ev = _rm(agent, root / "logs" / "app.log")
    assert ev["_rc"] == 0 and not (root / "logs" / "app.log").exists()
    assert (ev["result"], ev["action"], ev["policy"]) == (0, "would-block", "audit-logs")


def test_io_uring_unlinks_and_renames_of_protected_files_are_blocked(
        agent: AgentProcess, root: Path, uring: Path) -> None:
    """No unlink or rename syscall is made: the LSM hooks still see them (tracepoints do not: no events there)."""
    target, other = root / "secret" / "ring", root / "free" / "ring-other"
    target.write_text("x")
    other.write_text("y")
    runs = [subprocess.Popen([str(uring), *args], stdout=subprocess.PIPE, text=True) for args in (
        ["unlink", str(target)], ["rename", str(target), str(root / "free" / "ring-away")],
        ["rename", str(other), str(target)])]
    outs = [(p.communicate()[0].strip(), p.returncode) for p in runs]
    if any(rc == 3 for _, rc in outs):
        pytest.skip("this kernel offers no io_uring")
    assert outs == [(str(EPERM), 0)] * 3
    assert target.read_text() == "x" and other.exists()
    if agent.info["mode"] != "tracepoint":
        for p, path in zip(runs, (target, target, other), strict=True):
            assert _event(agent, p.pid, path)["action"] == "blocked"


def _deleter(code: str, *wrap: str) -> list[str]:
    """Runs `code` (os imported; `say(x)` prints) in a child, wrapped by the command `wrap` if given: its lines."""
    prog = "import os, subprocess\nsay = lambda x: print(x, flush=True)\n" + code
    p = subprocess.run([*wrap, "python3", "-c", prog], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


_TRY = ("def rm(fd, name):\n"
        "    try:\n        os.unlink(name, dir_fd=fd)\n        say(0)\n"
        "    except PermissionError:\n        say('EPERM')\n")


def test_a_loop_of_deletions_in_one_directory_is_decided_from_the_enforcements_directory_cache(
        agent: AgentProcess, root: Path) -> None:
    """The check after a directory's first walks no more (enforce.h, lsm_dirs): every one of these is a hit, and a
    protected directory's files stay protected from the cached rules."""
    hit = 'unlinkwatch_agent_enforce_dir_cache_total{result="hit"}'
    assert not [d for d in agent.info["degraded"] if "block rules walk every directory" in d]
    hits0 = agent.metric(hit)
    for d in (root / "free" / "loop", root / "secret" / "loop"):
        d.mkdir()
        for i in range(40):
            (d / f"f{i}").touch()
    out = _deleter(_TRY + "".join(f"fd = os.open({str(d)!r}, os.O_RDONLY)\nfor i in range(40):\n    rm(fd, f'f{{i}}')\n"
                                  for d in (root / "free" / "loop", root / "secret" / "loop")))
    assert out == ["0"] * 40 + ["EPERM"] * 40
    assert len(list((root / "secret" / "loop").iterdir())) == 40
    assert agent.wait_metric(hit, hits0 + 70) - hits0 >= 70  # a first walk per CPU and directory


def test_a_directory_moved_into_or_out_of_the_protected_tree_after_its_rules_were_cached_is_decided_anew(
        agent: AgentProcess, root: Path) -> None:
    """A rename of an ancestor (rename_lock's sequence) leaves no cached rules of the old path in force: the next
    deletion through the same dirfd is blocked where the directory now is protected, and allowed where not. (Moving
    a protected directory out is itself blocked: an excepted command name does it.)"""
    inward, outward = root / "free" / "in" / "a" / "b", root / "secret" / "out" / "a" / "b"
    for d in (inward, outward):
        d.mkdir(parents=True)
        for n in ("x1", "x2", "x3"):
            (d / n).touch()
    mv = shutil.which("mv")
    assert mv is not None
    (root / "bin" / "mv").mkdir(exist_ok=True)
    keyrotate = shutil.copy(mv, root / "bin" / "mv" / "keyrotate")
    out = _deleter(_TRY + f"fd = os.open({str(inward)!r}, os.O_RDONLY)\nrm(fd, 'x1')\nrm(fd, 'x2')\n"
                   f"os.rename({str(root / 'free' / 'in')!r}, {str(root / 'secret' / 'in')!r})\nrm(fd, 'x3')\n"
                   f"fd = os.open({str(outward)!r}, os.O_RDONLY)\nrm(fd, 'x1')\nrm(fd, 'x2')\n"
                   f"subprocess.run([{str(keyrotate)!r}, {str(root / 'secret' / 'out')!r}, "
                   f"{str(root / 'free' / 'out')!r}], check=True)\nrm(fd, 'x3')\n")
    assert out == ["0", "0", "EPERM", "EPERM", "EPERM", "0"]
    assert (root / "secret" / "in" / "a" / "b" / "x3").exists()
    assert not (root / "free" / "out" / "a" / "b" / "x3").exists()


def test_a_mount_moved_into_the_protected_tree_after_its_rules_were_cached_is_protected(
        agent: AgentProcess, root: Path) -> None:
    """A mount moved (mount_lock's sequence) leaves no cached rules of its old place in force. In a mount
    namespace of its own, whose mounts go with it."""
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is not installed")
    src, dst = root / "free" / "mnt", root / "secret" / "mnt"
    src.mkdir()
    dst.mkdir()
    out = _deleter(_TRY + f"subprocess.run(['mount', '-t', 'tmpfs', 'uwtest', {str(src)!r}], check=True)\n"
                   f"os.mkdir({str(src / 'd')!r})\n"
                   f"for n in ('x1', 'x2', 'x3'):\n    open({str(src / 'd')!r} + '/' + n, 'w').close()\n"
                   f"fd = os.open({str(src / 'd')!r}, os.O_RDONLY)\nrm(fd, 'x1')\nrm(fd, 'x2')\n"
                   f"subprocess.run(['mount', '--move', {str(src)!r}, {str(dst)!r}], check=True)\nrm(fd, 'x3')\n"
                   f"say(os.path.exists({str(dst / 'd' / 'x3')!r}))\n",
                   "unshare", "-m", "--propagation", "private")
    assert out == ["0", "0", "EPERM", "True"]


def test_the_lsm_hooks_say_what_an_unlink_or_rmdir_destroys(agent: AgentProcess, root: Path) -> None:
    """Where path_unlink and path_rmdir run, they read the victim (enforce.h, uw_lsm_victim) and the kprobe and fentry
    modes' programs on vfs_unlink and vfs_rmdir are detached: an unlink and an rmdir still say what they destroyed,
    and a blocked unlink what it would have (not freed). Tracepoint mode reads ext4's victims in ext4 instead."""
    f, d, kept = root / "free" / "victim", root / "free" / "victim-dir", root / "secret" / "victim"
    f.write_bytes(b"x" * 5000)
    d.mkdir()
    kept.write_bytes(b"y" * 7)
    seen = {p: p.stat() for p in (f, d, kept)}
    # the superblock's device, as a directory's stat shows it (for a file, overlayfs shows its layer's)
    dev = f"{os.major(seen[d].st_dev)}:{os.minor(seen[d].st_dev)}"
    out = _deleter(_TRY + f"say(os.getpid())\nos.unlink({str(f)!r})\nos.rmdir({str(d)!r})\n"
                   f"rm(None, {str(kept)!r})\n")
    pid = int(out[0])
    assert out[1:] == ["EPERM"] and kept.exists()
    if agent.info["mode"] == "tracepoint":  # its victims come from ext4's own tracepoint (test_destroyed.py)
        assert not _event(agent, pid, kept)["freed"]  # which a blocked unlink never reaches
        return
    for p, op, ftype, freed in ((f, "unlink", "file", True), (d, "rmdir", "dir", True),
                                (kept, "unlink", "file", False)):
        ev, s = _event(agent, pid, p), seen[p]
        assert (ev["op"], ev["file_type"], ev["freed"]) == (op, ftype, freed), ev
        assert (ev["inode"], ev["size"]) == (s.st_ino, s.st_size), ev
        if ftype == "file":  # a directory's links are the filesystem's own count (overlayfs keeps 1, stat says 2)
            assert ev["nlink"] == s.st_nlink, ev
        assert ev["dev"] == dev, ev


def test_a_policy_reload_changes_enforcement_within_2_s(agent: AgentProcess, root: Path) -> None:
    policy = root / "policy.yaml"
    original = policy.read_text()
    target = root / "secret" / "reload"
    try:
        policy.write_text(_policy(root, action="audit"))
        deadline = time.monotonic() + 2.0
        while True:
            target.write_text("x")
            allowed = _run("rm", target).returncode == 0
            if allowed or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert allowed, "the audit policy was not in force 2 s after the write"
    finally:
        policy.write_text(original)
        os.utime(policy)
    deadline = time.monotonic() + 2.0
    while True:
        target.write_text("x")
        blocked = _run("rm", target).returncode != 0
        if blocked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert blocked and target.exists(), "block was not in force again 2 s after the write"


def test_deletions_are_allowed_again_once_the_agent_is_killed(agent: AgentProcess, root: Path) -> None:
    """Fail-open, by design: the LSM programs live as long as the agent's links. This test ends the module's agent."""
    target = root / "secret" / "after"
    target.write_text("x")
    assert _run("rm", target).returncode != 0
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(30)
    deadline = time.monotonic() + 10
    while _run("rm", target).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.2)  # the links close as the killed process's files do
    assert not target.exists()

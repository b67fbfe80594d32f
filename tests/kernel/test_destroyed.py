"""What a deletion destroyed (inode, dev, file_type, size, nlink, freed), read in the kernel before it: on a real
ext4 (an image loop-mounted in a private mount namespace, so that the mount and its loop device end with the
process that made them) and on tmpfs. The kprobe and fentry modes read every deletion's inode; the tracepoint
mode reads ext4 unlinks (its unlink tracepoint) and renames over a target in the dcache, and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from unlinkwatch.agent.probe.program import DEGRADED_EXT4_UNLINK, EXT4_MODULE

from tests.support.agentproc import AgentProcess, attached_agent, by_pid, run_deleter

_SCRIPT = r"""
import json, os, subprocess, sys
image, mnt = sys.argv[1], sys.argv[2]
subprocess.run(["mount", "-o", "loop", image, mnt], check=True)
seen = {}
def stat(name):
    s = os.lstat(f"{mnt}/{name}")
    seen[name] = {"inode": s.st_ino, "dev": f"{os.major(s.st_dev)}:{os.minor(s.st_dev)}", "size": s.st_size,
                  "nlink": s.st_nlink}
with open(f"{mnt}/big", "wb") as f:
    f.write(b"x" * (1 << 20))
stat("big"); os.unlink(f"{mnt}/big")
with open(f"{mnt}/linked", "w") as f:
    f.write("abcd")
os.link(f"{mnt}/linked", f"{mnt}/other-name")
stat("linked"); os.unlink(f"{mnt}/linked")
os.symlink("somewhere", f"{mnt}/sym"); stat("sym"); os.unlink(f"{mnt}/sym")
os.mkfifo(f"{mnt}/fifo"); stat("fifo"); os.unlink(f"{mnt}/fifo")
os.mkdir(f"{mnt}/dir"); stat("dir"); os.rmdir(f"{mnt}/dir")
with open(f"{mnt}/target", "w") as f:
    f.write("12345")
with open(f"{mnt}/new", "w") as f:
    f.write("z")
stat("target")
os.chdir(mnt)  # relative: the tracepoint mode's dcache lookup starts here, not in a /tmp of many entries
os.rename("new", "target")
os.chdir("/")
with open(f"{mnt}/jailed", "w") as f:
    f.write("123")
stat("jailed")
child = os.fork()
if child == 0:
    os.chroot(mnt)
    os.unlink("/jailed")
    os._exit(0)
os.waitpid(child, 0)
subprocess.run(["umount", mnt], check=True)
print(json.dumps({"pid": os.getpid(), "child": child, "seen": seen}))
"""


def _ext4_loaded(agent: AgentProcess) -> None:
    """ext4 loaded, and read by the agent: a tracepoint-mode agent that started before the module attaches its
    tracepoint within a second or two of the load (and says so); the deletions of a mount made in the meantime
    would not be read."""
    subprocess.run(["modprobe", "ext4"], capture_output=True, check=False)  # built in: nothing to load
    if not any(d.startswith(DEGRADED_EXT4_UNLINK) for d in agent.info.get("degraded", [])):
        return
    deadline = time.monotonic() + 10
    while not any("the ext4 module loaded" in line for line in agent.log):
        assert time.monotonic() < deadline, "the agent did not attach ext4's tracepoint:\n" + "\n".join(agent.log)
        time.sleep(0.1)


def _ext4_unloaded() -> str:
    """'' once the ext4 module is not loaded (unloaded if nothing uses it), else why it cannot be."""
    if not Path("/proc/modules").exists():
        return "this kernel loads no modules: ext4 is built in, there from boot"
    if EXT4_MODULE.is_dir():
        if not (EXT4_MODULE / "refcnt").exists():
            return "ext4 is built into this kernel, there from boot"
        r = subprocess.run(["modprobe", "-r", "ext4"], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            return f"the ext4 module is in use here and cannot be unloaded ({r.stderr.strip()})"
    return ""


def _on_ext4(work: Path) -> dict[str, Any]:
    image, mnt = work / "ext4.img", work / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["modprobe", "loop"], check=False)  # a module the kernel lab's guest does not load by itself
    out = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", _SCRIPT, str(image),
                          str(mnt)], capture_output=True, text=True, timeout=60)
    image.unlink()
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _facts(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: ev[k] for k in ("inode", "dev", "size", "nlink")}


def _unread(ev: dict[str, Any]) -> bool:
    return all(ev[k] is None for k in ("inode", "dev", "file_type", "size", "nlink", "freed"))


# First in this file: once the module's agent (tracepoint mode) has attached ext4's tracepoint, it holds the module.
def test_ext4_unlinks_are_read_when_the_ext4_module_loads_after_the_agent_started(work: Path) -> None:
    why = _ext4_unloaded()
    if why:
        pytest.skip(why)
    with attached_agent() as a:
        if a.info["mode"] == "tracepoint":  # the other modes read the inode in the VFS, whatever the filesystem
            [ext4] = [d for d in a.info["degraded"] if d.startswith(DEGRADED_EXT4_UNLINK)]
            assert "the ext4 module is not loaded: attached once it is" in ext4
        _ext4_loaded(a)
        run = _on_ext4(work)
        evs = {Path(e["path"]).name: e for e in a.wait_for(by_pid(run["pid"]), count=6)}
        assert _facts(evs["big"]) == run["seen"]["big"] and evs["big"]["freed"] is True
        assert _facts(evs["linked"]) == run["seen"]["linked"] and evs["linked"]["freed"] is False


def test_ext4_deletions_report_the_inode_device_size_and_links_they_destroyed(agent: AgentProcess,
                                                                             work: Path) -> None:
    _ext4_loaded(agent)
    run = _on_ext4(work)
    seen, mnt = run["seen"], work / "mnt"
    evs = {Path(e["path"]).name: e for e in agent.wait_for(by_pid(run["pid"]), count=6)}
    (jailed,) = agent.wait_for(by_pid(run["child"]))
    mode = jailed["attach_mode"]
    big, linked, target = evs["big"], evs["linked"], evs["new"]
    assert big["path"] == f"{mnt}/big" and big["file_type"] == "file" and big["freed"] is True
    assert _facts(big) == seen["big"] and big["size"] == 1 << 20
    assert _facts(linked) == seen["linked"] and linked["nlink"] == 2 and linked["freed"] is False
    for name, ftype in (("sym", "symlink"), ("fifo", "fifo")):
        assert evs[name]["file_type"] == ftype and _facts(evs[name]) == seen[name] and evs[name]["freed"] is True
    # a rename reports the destination it replaced
    assert target["op"] == "rename" and target["replaced"] and target["file_type"] == "file"
    assert _facts(target) == seen["target"] and target["freed"] is True
    # a chrooted process: its path is the chroot's, the inode the same
    assert jailed["path"] == "/jailed" and _facts(jailed) == seen["jailed"] and jailed["freed"] is True
    if mode == "tracepoint":
        assert _unread(evs["dir"])  # ext4 has no rmdir tracepoint: documented as not read in this mode
    else:
        d = evs["dir"]
        assert d["op"] == "rmdir" and d["file_type"] == "dir" and _facts(d) == seen["dir"] and d["freed"] is True


def test_a_tmpfs_unlink_is_read_in_the_kprobe_and_fentry_modes_and_left_null_by_tracepoints(
        agent: AgentProcess, work: Path) -> None:
    m = work / "tmpfs"
    m.mkdir()
    script = (f"import os, subprocess\nsubprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'uwtest', {str(m)!r}],"
              f" check=True)\nopen({str(m)!r} + '/t', 'wb').write(b'0123456789')\nos.unlink({str(m)!r} + '/t')\n"
              "print(os.getpid())")
    out = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", script], check=True,
                         capture_output=True, text=True, timeout=30)
    (ev,) = agent.wait_for(by_pid(int(out.stdout)))
    if ev["attach_mode"] == "tracepoint":
        assert _unread(ev)
        return
    assert ev["file_type"] == "file" and ev["size"] == 10 and ev["nlink"] == 1 and ev["freed"] is True


def test_a_failed_deletion_destroyed_nothing(agent: AgentProcess, work: Path) -> None:
    d = work / "full"
    d.mkdir()
    (d / "x").touch()
    pid = run_deleter(f"""
try:
    os.rmdir({str(d)!r})
except OSError:
    pass
""")
    (ev,) = agent.wait_for(by_pid(pid))
    assert ev["result"] == -39 and ev["freed"] in (None, False)  # ENOTEMPTY

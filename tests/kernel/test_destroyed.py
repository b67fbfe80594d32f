"""What a deletion destroyed (inode, dev, file_type, size, nlink, freed), read in the kernel before it: on a real
ext4 (an image loop-mounted in a private mount namespace, so that the mount and its loop device end with the
process that made them) and on tmpfs. The kprobe and fentry modes read every deletion's inode; the tracepoint
mode reads ext4 unlinks (its unlink tracepoint) and renames over a target in the dcache, and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.agentproc import AgentProcess, by_pid, run_deleter

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


def test_ext4_deletions_report_the_inode_device_size_and_links_they_destroyed(agent: AgentProcess,
                                                                             work: Path) -> None:
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

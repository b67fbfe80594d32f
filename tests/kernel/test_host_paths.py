"""Where a deleted file lived on the node (`host_path`), for processes in other mount namespaces, on bind mounts,
overlayfs layers and filesystems the host never mounted, and chrooted: real mounts, made in private mount
namespaces (unshare), so they end with the processes that made them."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from unlinkwatch.agent.placement.resolver import LINGER_S, SWEEP_S

from tests.support.agentproc import AgentProcess, by_pid, run_deleter
from unlinkwatch import runstate

BUSYBOX = "/bin/busybox"


def _in_private_ns(script: str) -> None:
    """`script` in a new mount namespace (nothing it mounts propagates back); the shell stays a moment after, as
    a container's processes outlive one `rm`."""
    subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-ec", script + "; sleep 1"], check=True,
                   timeout=30)


def _event(agent: AgentProcess, path: str) -> dict[str, object]:
    evs = agent.wait_for(lambda e: e["path"] == path and e["comm"] in ("rm", "busybox"))
    assert evs, f"no event for {path}"
    return evs[0]


def test_a_host_process_in_the_hosts_namespace_has_its_path_as_host_path(agent: AgentProcess, work: Path) -> None:
    f = work / "plain"
    f.touch()
    pid = run_deleter(f"os.unlink({str(f)!r})")
    (ev,) = agent.wait_for(by_pid(pid))
    assert ev["host_path"] == str(f) and ev["volume"] == ""


def test_a_bind_mount_in_another_namespace_maps_to_its_source_on_the_host(agent: AgentProcess, work: Path) -> None:
    src, dst = work / "src", work / "dst"
    for d in (src, dst):
        d.mkdir()
    (src / "a").touch()
    (src / "b").touch()
    _in_private_ns(f"mount --bind {src} {dst}; rm {dst}/a; cd {dst}; rm b")
    assert _event(agent, f"{dst}/a")["host_path"] == f"{src}/a"
    assert _event(agent, f"{dst}/b")["host_path"] == f"{src}/b"  # relative to the cwd


def test_a_filesystem_only_another_namespace_mounted_has_no_host_path(agent: AgentProcess, work: Path) -> None:
    m = work / "private"
    m.mkdir()
    _in_private_ns(f"mount -t tmpfs -o size=1m uwtest {m}; touch {m}/x; rm {m}/x")
    ev = _event(agent, f"{m}/x")
    assert ev["host_path"] == "" and ev["result"] == 0


def test_an_overlayfs_file_maps_to_the_layer_that_held_it(agent: AgentProcess, work: Path) -> None:
    layers = work / "layers"  # a tmpfs of their own: an upper layer cannot be on an overlayfs (the lab's root)
    layers.mkdir()
    rec = runstate.record("mount", path=str(layers))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "uwtest", str(layers)], check=True)
    try:
        lower, upper, wd, merged = (layers / n for n in ("lower", "upper", "work", "merged"))
        for d in (lower, upper, wd, merged):
            d.mkdir()
        (lower / "from-image").write_text("image")
        (upper / "made-here").write_text("container")
        _in_private_ns(f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={wd} {merged}; "
                       f"rm {merged}/from-image {merged}/made-here")
        assert _event(agent, f"{merged}/from-image")["host_path"] == f"{lower}/from-image"  # a whiteout hides it
        assert _event(agent, f"{merged}/made-here")["host_path"] == f"{upper}/made-here"
        assert (lower / "from-image").exists()
    finally:
        subprocess.run(["umount", str(layers)], check=False)
        rec.done()


def test_a_chrooted_process_reports_its_own_path_and_the_hosts(agent: AgentProcess, work: Path) -> None:
    root = work / "jail"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    (root / "x").touch()
    subprocess.run(["chroot", str(root), "/bin/busybox", "sh", "-c", "/bin/busybox rm /x; /bin/busybox sleep 1"],
                   check=True, timeout=30)
    ev = _event(agent, "/x")
    assert ev["host_path"] == f"{root}/x" and ev["raw_path"] == "/x"


def test_a_thread_that_chroots_between_two_deletions_is_placed_by_each_root(agent: AgentProcess, work: Path) -> None:
    """The kernel keeps a thread's last chroot answer with the root it was for: a new root is a new answer."""
    root = work / "jail2"
    root.mkdir()
    (work / "before").touch()
    (root / "after").touch()
    pid = run_deleter(f"os.unlink({str(work / 'before')!r})\nos.chroot({str(root)!r})\nos.unlink('/after')\n"
                      "import time\ntime.sleep(1)")  # alive while the agent reads its root
    evs = sorted(agent.wait_for(lambda e: e["pid"] == pid, count=2), key=lambda e: e["seq"])
    assert [(e["path"], e["host_path"]) for e in evs] == [
        (str(work / "before"), str(work / "before")), ("/after", f"{root}/after")]


def test_a_deletion_before_a_pivot_root_is_never_placed_through_the_new_root(agent: AgentProcess, work: Path) -> None:
    """runc's init deletes dev/ptmx before its pivot_root, and the namespace's table may be read after it: the
    kernel records the mount that was the process's root, so the agent maps each path from its own root, or
    leaves it unplaced when that root is gone; never through the new root."""
    new = work / "newroot"
    (new / "bin").mkdir(parents=True)
    (new / "old").mkdir()
    shutil.copy2(BUSYBOX, new / "bin" / "busybox")
    (new / "post").touch()
    (work / "pre").touch()
    bb = "/bin/busybox"
    _in_private_ns(f"mount --bind {new} {new}; rm {work}/pre; cd {new}; pivot_root . old; "
                   f"exec {bb} sh -c '{bb} umount -l /old; {bb} rm /post; {bb} sleep 1'")
    assert _event(agent, "/post")["host_path"] == f"{new}/post"
    # placed before the pivot: the host's path; after it: unplaced, as the old root is gone
    assert _event(agent, f"{work}/pre")["host_path"] in ("", f"{work}/pre")


def test_a_namespace_whose_processes_are_gone_is_let_go_within_seconds(agent: AgentProcess, work: Path) -> None:
    """The agent's open mount table keeps a namespace, and every mount in it, alive: it lets go of a dead one
    (agent/placement/resolver.py, LINGER_S) so that a finished pod's volumes can be unmounted and detached."""
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                          f"echo $$; sleep 0.5; touch {work}/t; rm {work}/t"], capture_output=True, text=True,
                         check=True, timeout=30)
    table = f"/proc/{int(out.stdout)}/mountinfo"
    assert _event(agent, f"{work}/t")["host_path"] == f"{work}/t"

    def held() -> bool:
        fds = Path(f"/proc/{agent.proc.pid}/fd")
        for fd in os.listdir(fds):
            try:
                if os.readlink(fds / fd) == table:
                    return True
            except FileNotFoundError:  # closed since the listing: the agent letting it go, or another file
                continue
        return False

    assert held(), "the table was opened at the namespace's first exec"
    deadline = time.monotonic() + LINGER_S + SWEEP_S + 5
    while held() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not held()

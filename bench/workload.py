"""The deletion workload: build bench/unlinkbench.c with gcc, run it, and mount the filesystems it runs on."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from unlinkwatch import runstate

SOURCE = Path(__file__).resolve().parent / "unlinkbench.c"
DEFAULT_CACHE = Path(__file__).resolve().parent / "bin"
EXT4_IMAGE_MB = 2048
EXT4_INODES = 2_000_000  # the default (one per 16 KiB) is too few for a million empty files


class WorkloadError(RuntimeError):
    pass


@dataclass(frozen=True)
class WorkloadResult:
    n: int
    workers: int
    rate: float
    seconds: float
    unlinks_per_s: float
    start_realtime_ns: int
    prefix: str


def build(cache_dir: Path = DEFAULT_CACHE, source: Path = SOURCE) -> Path:
    """Compile the workload once; rebuild only when the source is newer than the binary."""
    binary = cache_dir / "unlinkbench"
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".unlinkbench.{os.getpid()}"
    cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise WorkloadError(f"gcc failed: {proc.stderr.strip()}")
    tmp.replace(binary)
    return binary


def new_prefix() -> str:
    """A file-name prefix unique to one run, so events of this run can be told from any other deletion."""
    return "uwb" + uuid.uuid4().hex[:10]


def parse_result(line: str) -> WorkloadResult:
    d = json.loads(line)
    return WorkloadResult(n=int(d["n"]), workers=int(d["workers"]), rate=float(d["rate"]),
                          seconds=float(d["seconds"]), unlinks_per_s=float(d["unlinks_per_s"]),
                          start_realtime_ns=int(d["start_realtime_ns"]), prefix=str(d["prefix"]))


def run(binary: Path, n: int, directory: Path, workers: int = 1, rate: float = 0.0,
        prefix: str | None = None, timestamps: Path | None = None, timeout: float = 600.0,
        op: str = "unlink") -> WorkloadResult:
    """`op` "rename" times renames (each file to its name + "~") instead of unlinks; the result's
    unlinks_per_s is then renames per second, and the files stay for remove_files()."""
    cmd = [str(binary), "-n", str(n), "-d", str(directory), "-w", str(workers), "-r", str(rate),
           "-p", prefix or new_prefix(), "-m", op]
    if timestamps is not None:
        cmd += ["-t", str(timestamps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          preexec_fn=runstate.die_with_parent)
    if proc.returncode != 0:
        raise WorkloadError(f"unlinkbench failed ({proc.returncode}): {proc.stderr.strip()}")
    return parse_result(proc.stdout.strip().splitlines()[-1])


def read_timestamps(base: Path, workers: int) -> dict[str, int]:
    """File name -> CLOCK_REALTIME ns of its unlink, from the per-worker files written with -t."""
    out: dict[str, int] = {}
    for w in range(workers):
        path = Path(f"{base}.{w}")
        data = path.read_bytes()
        for i in range(len(data) // 8):
            out[f"{w}-{i}"] = int.from_bytes(data[i * 8:i * 8 + 8], "little")
    return out


def _run_root(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise WorkloadError(f"{' '.join(cmd)}: {proc.stderr.strip()}")


INODE_BYTES = 1024  # memory an empty tmpfs file holds while it exists (inode and dentry), about


def tmpfs_inodes(max_files: int) -> int:
    """The tmpfs inode cap for a step whose workload has at most max_files files at once (and their dirs)."""
    return max_files + 4096


@contextlib.contextmanager
def tmpfs_mount(max_files: int = 1_000_000, size: str = "2g") -> Iterator[Path]:
    """A private tmpfs mounted on a fresh temp dir; unmounted and removed afterwards (recorded for make
    clean-host, should the run be killed). Its size caps the data and nr_inodes the files: empty files cost
    memory (INODE_BYTES each) that the size cap does not count, so the cap must match the step. `size`: mount's
    size= (a small one makes a disk that fills)."""
    mnt, rec = runstate.temp_dir("uwbench-tmpfs-")
    mount = runstate.record("mount", path=str(mnt))
    try:
        _run_root(["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={tmpfs_inodes(max_files)},mode=0755",
                   "uwbench", str(mnt)])
        try:
            yield mnt
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
    finally:
        mount.done()
        mnt.rmdir()
        rec.done()


@contextlib.contextmanager
def ext4_mount(max_files: int = 1_000_000, image_dir: Path = Path("/var/tmp")) -> Iterator[Path]:
    """A real ext4, whatever the host's / is: an image file made with mkfs.ext4, loop-mounted. The image and
    its loop device are recorded for make clean-host; the device goes with the unmount (autoclear), and when
    the unmount fails it is detached by hand, so it never outlives its file."""
    image = image_dir / f"uwbench-{os.getpid()}.ext4"
    mnt, rec = runstate.temp_dir("uwbench-ext4-")
    loop = runstate.record("loop", image=str(image))
    try:
        with image.open("wb") as f:
            f.truncate(EXT4_IMAGE_MB * 1024 * 1024)
        _run_root(["mkfs.ext4", "-q", "-F", "-N", str(max(EXT4_INODES, tmpfs_inodes(max_files))), str(image)])
        _run_root(["mount", "-o", "loop", str(image), str(mnt)])
        try:
            yield mnt
        finally:
            if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(mnt)], check=False)
    finally:
        runstate.detach_loops(image)  # detaches a device the unmount left; removes the image
        loop.done()
        mnt.rmdir()
        rec.done()


FILESYSTEMS = {"tmpfs": tmpfs_mount, "ext4": ext4_mount}


@contextlib.contextmanager
def plain_dir(parent: Path | None = None) -> Iterator[Path]:
    """A temp dir on whatever filesystem holds it (used by the smoke test, needs no root)."""
    with runstate.scratch_dir("uwbench-", parent) as path:
        yield path


def remove_files(directory: Path, prefix: str) -> int:
    """Removes the files a run left (a rename run's renamed files), once nothing traces them any more."""
    n = 0
    with os.scandir(directory) as it:
        for entry in it:
            if entry.name.startswith(prefix + "-"):
                os.unlink(entry.path)
                n += 1
    return n

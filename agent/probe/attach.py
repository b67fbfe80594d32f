"""The hook chain: try each attach mode the kernel may offer, prove it with a synthetic deletion seen
end to end, and fall back to the next. Kernels rename functions (do_unlinkat became filename_unlinkat
in 7.0); only a live self-test says a hook really works."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from unlinkwatch.errors import UserError

from ..decode import successful_deletion_by
from . import tracefs
from .btf import Btf
from .loader import HeldProbe, Loader
from .program import ProbeConfig, ProbeError, hook_label, kernel_facts
from .ringbuf import RingBuffer

log = logging.getLogger("unlinkwatch.hooks")

UNLINK_FUNCTIONS = ("do_unlinkat", "filename_unlinkat")
RMDIR_WAIT_S = 2.0  # the self-test's directory event, once its file's was seen
# What each mode cannot see, for doctor and the README.
MISSES = {
    "tracepoint": "io_uring IORING_OP_UNLINKAT/RENAMEAT (no syscall); `replaced` of a rename over a target not in "
                  "the dcache; what was destroyed (inode, size, freed) except for ext4 unlinks and renames over a "
                  "target in the dcache",
    "kprobe": "nothing known on the unlink path; ~10x the per-call cost of fentry",
    "fentry": "nothing known on the unlink path",
}


@dataclass(frozen=True)
class Candidate:
    mode: str
    unlink_fn: str

    @property
    def hook(self) -> str:
        return hook_label(self.mode, self.unlink_fn)


@dataclass
class Attached:
    probe: HeldProbe
    ring: RingBuffer
    candidate: Candidate
    startup_s: float
    leftovers: list[bytes]  # records read during the self-test that belong to others: not to be lost
    tried: list[tuple[Candidate, str]] = field(default_factory=list)
    tracefs_mount: tracefs.Mounted | None = None  # attach() mounted tracefs: close() unmounts it

    def close(self) -> None:
        self.ring.close()
        self.probe.close()
        if self.tracefs_mount is not None:
            tracefs.release(self.tracefs_mount)
            self.tracefs_mount = None


def kprobes_available() -> bool:
    return any(Path(d, "kprobe_events").exists() for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"))


def candidates(fns: list[str], forced: str, fentry_refused: str = "") -> tuple[list[Candidate],
                                                                             list[tuple[Candidate, str]]]:
    """The chain in order of preference (cheapest per call first), and the ones skipped with why.
    fns: which of UNLINK_FUNCTIONS the kernel's BTF has, in that order; fentry_refused: why the kernel would
    not run an fentry program on the first of them (program.fentry_refusal), "" when it would."""
    chain: list[Candidate] = []
    skipped: list[tuple[Candidate, str]] = []
    for mode in ("fentry", "kprobe"):
        if not fns:
            skipped.append((Candidate(mode, "?"), f"none of {', '.join(UNLINK_FUNCTIONS)} in BTF"))
            continue
        c = Candidate(mode, fns[0])  # do_unlinkat where it exists, else its 7.0+ successor
        if mode == "fentry" and fentry_refused:
            skipped.append((c, fentry_refused))
        elif mode == "kprobe" and not kprobes_available():
            skipped.append((c, "kernel built without kprobe events (CONFIG_KPROBE_EVENTS)"))
        else:
            chain.append(c)
    chain.append(Candidate("tracepoint", "syscalls"))
    if forced != "auto":
        chosen = [c for c in chain if c.mode == forced]
        if not chosen:
            why = "; ".join(w for c, w in skipped if c.mode == forced) or "not offered by this kernel"
            raise UserError(f"--attach {forced}: {why}")
        return chosen, skipped
    return chain, skipped


def self_test(ring: RingBuffer, timeout_s: float) -> tuple[bool, list[bytes]]:
    """Deletes a file and then its private temp dir, and waits for their events. Returns (the file's
    deletion was seen, others' records). Both of its own deletions are taken out of the ring here, so none of
    the self-test reaches the agent's output; the directory's is waited for RMDIR_WAIT_S at most."""
    tmp = tempfile.mkdtemp(prefix="unlinkwatch-selftest-")
    path = os.path.join(tmp, f"probe-{secrets.token_hex(8)}")
    own = {path.encode(), tmp.encode()}
    pid = os.getpid()
    seen: set[bytes] = set()
    leftovers: list[bytes] = []
    try:
        Path(path).touch()
        os.unlink(path)
        os.rmdir(tmp)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and seen != own:
            for rec in ring.drain():
                raw = successful_deletion_by(rec, pid)
                if raw in own:
                    seen.add(raw)
                    if raw == path.encode():  # the mode works: what is left is the directory's record
                        deadline = min(deadline, time.monotonic() + RMDIR_WAIT_S)
                else:
                    leftovers.append(rec)
            time.sleep(0.01)
        return path.encode() in seen, leftovers
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def attach(forced: str, ringbuf_mb: int = 32, selftest_timeout_s: float = 5.0, btf: Btf | None = None,
           lsm: bool = False) -> Attached:
    """Attaches the first candidate whose self-test passes; UserError when none does. Each candidate is
    compiled and attached by the loader child (loader.py); this process only holds the fds. With lsm, each
    candidate also carries the BPF LSM programs that enforce block rules (probe.enforcing says whether the
    kernel took them); this process is the one they never block. Where tracefs was not mounted, it is mounted
    first (kprobe events and syscall tracepoints are found there) and unmounted by Attached.close(), or here when
    no mode attaches."""
    t0 = time.monotonic()
    mounted = tracefs.ensure()
    try:
        attached = _attach(forced, ringbuf_mb, selftest_timeout_s, btf, lsm, t0)
    except BaseException:
        if mounted is not None:
            tracefs.release(mounted)
        raise
    attached.tracefs_mount = mounted
    return attached


def _attach(forced: str, ringbuf_mb: int, selftest_timeout_s: float, btf: Btf | None, lsm: bool,
            t0: float) -> Attached:
    with Loader() as loader:
        if btf is None:
            fns, offsets, fentry_refused = loader.kernel_facts(UNLINK_FUNCTIONS)  # BTF is read in the child too
        else:
            fns, offsets, fentry_refused = kernel_facts(btf, UNLINK_FUNCTIONS)
        chain, tried = candidates(fns, forced, fentry_refused)
        for cand, why in tried:
            log.info("attach mode unavailable", extra={"fields": {"mode": cand.mode, "reason": why}})
        dir_cache = os.environ.get("UNLINKWATCH_DIR_CACHE", "on") != "off"  # off: the walk alone (comparisons)
        lsm_dir_cache = os.environ.get("UNLINKWATCH_LSM_DIR_CACHE", "on") != "off"  # enforce.h's, likewise
        object_cache = os.environ.get("UNLINKWATCH_OBJECT_CACHE", "")  # compiled objects kept there (objcache.py)
        pages = max(1, ringbuf_mb * (1 << 20) // os.sysconf("SC_PAGE_SIZE"))
        pages = 1 << (pages.bit_length() - 1)  # a power of two, as the kernel requires
        for cand in chain:
            try:
                probe = loader.load(ProbeConfig(mode=cand.mode, unlink_fn=cand.unlink_fn, ringbuf_pages=pages,
                                                lsm=lsm, agent_tgid=os.getpid(), dir_cache=dir_cache,
                                                lsm_dir_cache=lsm_dir_cache,
                                                object_cache=object_cache), offsets)
            except ProbeError as e:
                log.info("attach mode unavailable", extra={"fields": {"mode": cand.mode, "reason": str(e)}})
                tried.append((cand, str(e)))
                continue
            ring: RingBuffer | None = None
            try:
                ring = RingBuffer(probe.ringbuf_fd, probe.ringbuf_size)
                ok, leftovers = self_test(ring, selftest_timeout_s)
            except BaseException:
                if ring is not None:
                    ring.close()
                probe.close()
                raise
            if ok:
                loader.keep()
                return Attached(probe, ring, cand, time.monotonic() - t0, leftovers, tried)
            ring.close()
            probe.close()
            loader.drop()
            tried.append((cand, "attached, but the self-test deletion was not seen"))
            log.warning("self-test failed", extra={"fields": {"mode": cand.mode, "hook": cand.hook}})
    reasons = "; ".join(f"{c.mode}: {why}" for c, why in tried)
    raise UserError(f"no attach mode works on this kernel ({reasons})")

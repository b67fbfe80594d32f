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

from unlinkwatch.agent.btf import Btf
from unlinkwatch.agent.loader import HeldProbe, Loader
from unlinkwatch.agent.probe import ProbeConfig, ProbeError, kernel_offsets
from unlinkwatch.agent.record import Decoder
from unlinkwatch.agent.ringbuf import RingBuffer
from unlinkwatch.errors import UserError
from unlinkwatch.pb import events_pb2 as pb

log = logging.getLogger("unlinkwatch.hooks")

UNLINK_FUNCTIONS = ("do_unlinkat", "filename_unlinkat")
# What each mode cannot see, for doctor and the README.
MISSES = {
    "tracepoint": "io_uring IORING_OP_UNLINKAT/RENAMEAT (no syscall); renames over targets not in the dcache",
    "kprobe": "nothing known on the unlink path; ~10x the per-call cost of fentry",
    "fentry": "nothing known on the unlink path",
}


@dataclass(frozen=True)
class Candidate:
    mode: str
    unlink_fn: str

    @property
    def hook(self) -> str:
        return "syscalls:sys_enter/exit_{unlink,unlinkat,rmdir,rename*}" if self.mode == "tracepoint" \
            else self.unlink_fn


@dataclass
class Attached:
    probe: HeldProbe
    ring: RingBuffer
    candidate: Candidate
    startup_s: float
    leftovers: list[bytes]  # records read during the self-test that belong to others: not to be lost
    tried: list[tuple[Candidate, str]] = field(default_factory=list)

    def close(self) -> None:
        self.ring.close()
        self.probe.close()


def kprobes_available() -> bool:
    return any(Path(d, "kprobe_events").exists() for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"))


def candidates(fns: list[str], forced: str) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """The chain in order of preference (cheapest per call first), and the ones skipped with why.
    fns: which of UNLINK_FUNCTIONS the kernel's BTF has, in that order."""
    chain: list[Candidate] = []
    skipped: list[tuple[Candidate, str]] = []
    for mode in ("fentry", "kprobe"):
        if not fns:
            skipped.append((Candidate(mode, "?"), f"none of {', '.join(UNLINK_FUNCTIONS)} in BTF"))
            continue
        c = Candidate(mode, fns[0])  # do_unlinkat where it exists, else its 7.0+ successor
        if mode == "kprobe" and not kprobes_available():
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


def self_test(ring: RingBuffer, decoder: Decoder, timeout_s: float) -> tuple[bool, list[bytes]]:
    """Deletes a file in a private temp dir and waits for its event. Returns (seen, others' records)."""
    tmp = tempfile.mkdtemp(prefix="unlinkwatch-selftest-")
    name = f"probe-{secrets.token_hex(8)}"
    path = os.path.join(tmp, name)
    leftovers: list[bytes] = []
    try:
        Path(path).touch()
        os.unlink(path)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            records = ring.drain()
            for i, rec in enumerate(records):
                ev = decoder.decode(rec)
                if isinstance(ev, pb.DeletionEvent) and ev.process.pid == os.getpid() \
                        and ev.path == path.encode() and ev.result == 0:
                    leftovers.extend(records[i + 1 :])
                    return True, leftovers
                leftovers.append(rec)
            time.sleep(0.01)
        return False, leftovers
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def attach(forced: str, ringbuf_mb: int = 32, selftest_timeout_s: float = 5.0, btf: Btf | None = None) -> Attached:
    """Attaches the first candidate whose self-test passes; UserError when none does. Each candidate is
    compiled and attached by the loader child (agent/loader.py); this process only holds the fds."""
    t0 = time.monotonic()
    with Loader() as loader:
        if btf is None:
            fns, offsets = loader.kernel_facts(UNLINK_FUNCTIONS)  # BTF is read in the child too
        else:
            fns, offsets = [f for f in UNLINK_FUNCTIONS if btf.has_func(f)], kernel_offsets(btf)
        chain, tried = candidates(fns, forced)
        pages = max(1, ringbuf_mb * (1 << 20) // os.sysconf("SC_PAGE_SIZE"))
        pages = 1 << (pages.bit_length() - 1)  # a power of two, as the kernel requires
        for cand in chain:
            try:
                probe = loader.load(ProbeConfig(mode=cand.mode, unlink_fn=cand.unlink_fn, ringbuf_pages=pages),
                                    offsets)
            except ProbeError as e:
                log.info("attach mode unavailable", extra={"fields": {"mode": cand.mode, "reason": str(e)}})
                tried.append((cand, str(e)))
                continue
            ring: RingBuffer | None = None
            try:
                ring = RingBuffer(probe.ringbuf_fd, probe.ringbuf_size)
                ok, leftovers = self_test(ring, Decoder("", "", cand.mode), selftest_timeout_s)
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

"""Compiling with bcc leaves its in-process LLVM (~85 MiB of libLLVM/libclang pages, plus the heap the
compilation grew) in whatever process did it. So a short-lived child does it: the agent starts
`python -m unlinkwatch.agent.probe.loader`, asks it for one attach mode at a time over a Unix socketpair, and
receives every map, program and attachment fd of the loaded program with SCM_RIGHTS. The agent runs the
live self-test on those fds; on success it tells the child to exit without detaching (the attachments
live as long as the agent's fds), on failure it closes them and the child detaches and removes what it
made before trying the next mode. After start-up the agent needs no bcc: it reads the ring buffer by
mmap (ringbuf.py) and the drop counter by bpf(2) (bpfsys.py)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

from unlinkwatch.errors import UserError

from . import bpfsys
from .bpfsys import PercpuHeads
from .btf import BtfError
from .program import BPF_RAW_TRACEPOINT_OPEN, DEGRADED_EXT4_UNLINK, EXT4_MODULE, ProbeConfig, ProbeError, RawTpOpen

log = logging.getLogger("unlinkwatch.loader")

_MAX_MSG = 1 << 20
_MAX_FDS = 250  # below the kernel's SCM_MAX_FD (253)
EXT4_TRACEPOINT, EXT4_PROG = "ext4_unlink_enter", "prog:uw_ext4_unlink"
LATE_ATTEMPTS = 5  # attempts once the module is there (its tracepoints register just after its sysfs entry)
LATE_EVERY_S = 1.0


class HeldProbe:
    """The agent's side of a loaded program: the fds the loader handed over. close() detaches it."""

    def __init__(self, cfg: ProbeConfig, meta: dict[str, Any], fds: dict[str, int]) -> None:
        self.cfg = cfg
        self.fds = fds
        self.degraded: list[str] = list(meta.get("degraded", []))
        self.rename_lookup: str = meta.get("rename_lookup", "")
        self.hook: str = meta.get("hook", "")
        self.enforcing: bool = bool(meta.get("enforcing", False))  # block rules enforced by BPF LSM programs
        self.enforce_error: str = meta.get("enforce_error", "")
        self.from_cache: bool = bool(meta.get("from_cache", False))  # loaded from a kept compile (objcache.py)
        self.object = "cached" if self.from_cache else "compiled"  # as the "attached" line and doctor say it
        self._tracefs_events: list[tuple[str, str]] = [(f, e) for f, e in meta.get("tracefs_events", [])]
        # a tracepoint whose module was not loaded when the programs attached: attach_late() tries again
        self._late_tries = LATE_ATTEMPTS if EXT4_PROG in fds and any(
            d.startswith(DEGRADED_EXT4_UNLINK) for d in self.degraded) else 0
        self._late_next = 0.0
        self.ringbuf_size: int = cfg.ringbuf_pages * os.sysconf("SC_PAGE_SIZE")
        try:
            self.ringbuf_fd = fds["map:events"]
            self._lost = PercpuHeads(fds["map:lost"], 1)
            # the directory caches' counters: the scratch's first words (unlink.bpf.c, struct uw_counts)
            self._counts = PercpuHeads(fds["map:scratch"], 4)
        except (KeyError, OSError) as e:
            self.close()
            raise ProbeError(f"{cfg.mode}: the loader handed over no usable ring buffer / counters ({e})") from e

    def attach_late(self, now: float | None = None) -> str:
        """ext4's unlink tracepoint attached, if the start had to do without it and the ext4 module has loaded
        since: what the agent says in its log ("" when nothing was attached). Called every LOST_POLL_S or so;
        looks at most every LATE_EVERY_S, and gives up after LATE_ATTEMPTS refusals with the module there."""
        now = time.monotonic() if now is None else now
        if not self._late_tries or now < self._late_next:
            return ""
        self._late_next = now + LATE_EVERY_S
        if not EXT4_MODULE.is_dir():
            return ""
        name = ctypes.create_string_buffer(EXT4_TRACEPOINT.encode())
        try:
            link = bpfsys.call(BPF_RAW_TRACEPOINT_OPEN, RawTpOpen(name=ctypes.addressof(name),
                                                                  prog_fd=self.fds[EXT4_PROG]))
        except OSError as e:
            self._late_tries -= 1
            log.debug("ext4_unlink_enter refused", extra={"fields": {"error": os.strerror(e.errno or 0)}})
            return ""
        self._late_tries = 0
        self.fds[f"raw_tracepoint:{EXT4_TRACEPOINT}"] = link
        self.degraded = [d for d in self.degraded if not d.startswith(DEGRADED_EXT4_UNLINK)]
        return f"the ext4 module loaded: ext4 unlinks report what they destroy from now on ({EXT4_TRACEPOINT})"

    def kernel_lost(self) -> int:
        return self._lost.sums()[0]

    def dir_caches(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(found, walked) in the kernel's two directory caches: the base directories of relative deletions
        (walk.h), and the directories of block rules' checks (enforce.h; (0, 0) without enforcement)."""
        dirc_hits, dirc_walks, lsm_hits, lsm_walks = self._counts.sums()
        return (dirc_hits, dirc_walks), (lsm_hits, lsm_walks)

    def close(self) -> None:
        fds, self.fds = self.fds, {}
        for fd in fds.values():  # the last fd of each attachment detaches it
            with contextlib.suppress(OSError):
                os.close(fd)
        for path, event in self._tracefs_events:  # kprobe events made through tracefs outlive their fds
            try:
                with open(path, "a") as f:
                    f.write(f"-:{event}\n")
            except OSError as e:
                log.warning("could not remove kprobe event", extra={"fields": {"event": event, "error": str(e)}})
        self._tracefs_events = []


class Loader:
    """The agent's end of the loader child. load() one mode at a time; then keep() or drop() it."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pending: ProbeConfig | None = None

    def start(self) -> None:
        """Starts the child (again, if the last one died)."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._stop_child()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        try:
            out: int | None = sys.stderr.fileno()  # never our stdout, which may carry --stdout events
        except (AttributeError, OSError, ValueError):
            out = subprocess.DEVNULL
        with theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "unlinkwatch.agent.probe.loader", str(theirs.fileno()), level],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=out)
        self._sock = ours

    def kernel_facts(self, functions: tuple[str, ...]) -> tuple[list[str], dict[str, int], str]:
        """Which of `functions` the kernel has, the struct offsets for the -D flags, and why fentry cannot be
        used on the first of them ("" when it can), read from BTF by the child: parsing BTF in Python grows the
        heap by ~40 MiB for a moment, which the agent need not."""
        self.start()
        assert self._sock is not None
        try:
            self._sock.send(json.dumps({"op": "btf", "functions": list(functions)}).encode())
            data = self._sock.recv(_MAX_MSG)
        except OSError as e:
            self._stop_child()
            raise UserError(f"the eBPF loader failed: {e}") from e
        if not data:
            raise UserError(f"the eBPF loader exited (rc={self._stop_child()}) while reading BTF")
        reply = json.loads(data)
        if not reply["ok"]:
            raise BtfError(reply["error"])
        return list(reply["funcs"]), {k: int(v) for k, v in reply["offsets"].items()}, str(reply["fentry"])

    def load(self, cfg: ProbeConfig, offsets: dict[str, int]) -> HeldProbe:
        """Compiles, loads and attaches one mode in the child; ProbeError when this kernel refuses it."""
        self.start()
        assert self._sock is not None
        req = {"op": "load", "cfg": asdict(cfg), "offsets": offsets}
        try:
            self._sock.send(json.dumps(req).encode())
            data, fds, flags, _ = socket.recv_fds(self._sock, _MAX_MSG, _MAX_FDS)
        except OSError as e:
            self._stop_child()
            raise ProbeError(f"{cfg.mode}: the loader failed: {e}") from e
        if not data:
            rc = self._stop_child()
            raise ProbeError(f"{cfg.mode}: the loader exited (rc={rc}) while compiling")
        reply = {} if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) else json.loads(data)
        if reply.get("ok") and len(reply["names"]) != len(fds):
            reply = {}
        if not reply:
            for fd in fds:
                os.close(fd)
            self._sock.send(b'{"op": "drop"}')
            raise ProbeError(f"{cfg.mode}: the loader's reply was truncated")
        if not reply["ok"]:  # the child logged bcc's full output at debug level
            if reply.get("user_error"):
                raise UserError(reply["error"])
            raise ProbeError(reply["error"])
        self._pending = cfg
        return HeldProbe(cfg, reply, dict(zip(reply["names"], fds, strict=True)))

    def drop(self) -> None:
        """The held probe failed its self-test (its fds already closed): the child detaches its own copies."""
        if self._sock is not None and self._pending is not None:
            with contextlib.suppress(OSError):
                self._sock.send(b'{"op": "drop"}')
        self._pending = None

    def keep(self) -> None:
        """The held probe passed: the child exits without detaching anything, leaving it to the agent."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.send(b'{"op": "keep"}')
        self._pending = None
        self._stop_child()

    def close(self) -> None:
        """Nothing kept: on end of file the child detaches whatever it still holds and exits."""
        self._pending = None
        self._stop_child()

    def _stop_child(self) -> int | None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(sock: socket.socket) -> None:
    from .program import Probe

    current: Probe | None = None
    try:
        while True:
            data = sock.recv(_MAX_MSG)
            if not data:
                return  # the agent is done (or gone): whatever is still held is detached below
            req = json.loads(data)
            if req["op"] == "btf":
                sock.send(json.dumps(_kernel_facts(req["functions"])).encode())
                continue
            if current is not None:  # any request after a load means the agent did not keep it
                if req["op"] == "keep":
                    os._exit(0)  # no cleanup: bcc's would detach the agent's attachments (same perf events)
                current.close()
                current = None
            if req["op"] != "load":
                continue
            cfg = ProbeConfig(**{**req["cfg"], "extra_cflags": tuple(req["cfg"]["extra_cflags"])})
            try:
                current = Probe(cfg, req["offsets"])
            except ProbeError as e:
                sock.send(json.dumps({"ok": False, "error": str(e)}).encode())
                continue
            except UserError as e:
                sock.send(json.dumps({"ok": False, "error": str(e), "user_error": True}).encode())
                continue
            names, fds, events = current.handover()
            reply = {"ok": True, "names": names, "degraded": current.degraded, "hook": current.hook,
                     "rename_lookup": current.rename_lookup, "tracefs_events": events,
                     "enforcing": current.enforcing, "enforce_error": current.enforce_error,
                     "from_cache": current.from_cache}
            socket.send_fds(sock, [json.dumps(reply).encode()], fds)
    finally:
        if current is not None:
            current.close()


def _kernel_facts(functions: list[str]) -> dict[str, Any]:
    from .btf import Btf
    from .program import kernel_facts

    try:
        funcs, offsets, fentry = kernel_facts(Btf.load(), functions)
        return {"ok": True, "funcs": funcs, "offsets": offsets, "fentry": fentry}
    except BtfError as e:
        return {"ok": False, "error": str(e)}


def main(argv: list[str]) -> int:
    from unlinkwatch.logs import setup_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the agent decides
    setup_logging(argv[1] if len(argv) > 1 else "info")
    sock = socket.socket(fileno=int(argv[0]))
    try:
        _serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the agent went away mid-load; _serve detached what it held
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

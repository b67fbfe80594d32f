"""`unlinkwatch agent`: wires the stages probe -> decode -> identity -> ship (and/or --stdout)."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from prometheus_client import Counter

from unlinkwatch.codec import EventWriter
from unlinkwatch.errors import UserError
from unlinkwatch.pb import events_pb2 as pb

from .decode import CgroupMkdir, Decoder, Deletion, MntNs
from .identity import IdentityConfig, IdentityResolver
from .metrics import AgentMetrics
from .placement.resolver import Placement
from .policy.maps import PolicyMaps, PolicyMapsError
from .policy.model import load_policy
from .policy.runtime import PolicyRuntime, bpf_lsm_missing, enforcement
from .probe import attach as probe
from .probe import bpfsys, procseed
from .ship.encode import OP_NAME, IdentityCodes, JsonLines
from .ship.stdout import StdoutLines

log = logging.getLogger("unlinkwatch.agent")
_POLICY_USER = pb.EVENT_FLAG_POLICY_USER

IDLE_POLL_S = 0.02  # the ring is drained at least this often: bounds deletion-to-output latency
LOST_POLL_S = 0.5
# records per call of Pipeline.process: a batch's deletions and lines are live at once, and a bigger batch costs
# more per record (fresh memory for each), not less. The ring is still drained whole at each pass: what is copied
# out is space the kernel can reserve again, so a burst waits in the agent's memory rather than being dropped.
BATCH_RECORDS = 4096
HEALTHY_WITHIN_S = 10.0


def node_name(flag: str | None) -> str:
    return flag or os.environ.get("NODE_NAME") or socket.gethostname()


@dataclass
class Outputs:
    stdout: TextIO | None
    submit: Callable[[int, list[bytes], list[pb.IdentityUpdate]], None] | None  # Shipper.submit_wire
    set_kernel_lost: Callable[[int], None] | None


class Pipeline:
    """One pass of the loop: records -> deletions with identity and sequence numbers -> outputs, encoded
    straight to JSON lines and protobuf bytes (ship/encode.py, unlinkwatch/codec.py)."""

    def __init__(self, decoder: Decoder, identity: IdentityResolver, metrics: AgentMetrics, out: Outputs,
                 policy: PolicyRuntime | None = None, placement: Placement | None = None) -> None:
        self.decoder = decoder
        self.policy = policy
        self.placement = placement
        if placement is not None:
            decoder.host_mnt_ns = placement.host_ns
        self.identity = identity
        self.metrics = metrics
        self.out = out
        self.seq = 0
        self._json = JsonLines(decoder.node, decoder.agent_id, decoder.attach_mode)
        self._stdout = StdoutLines(out.stdout) if out.stdout is not None else None
        self._wire = EventWriter(decoder.node, decoder.agent_id, decoder.attach_mode)
        self._codes = IdentityCodes()

    def process(self, records: list[bytes]) -> int:
        self.decoder.tick()
        place = None
        if self.placement is not None:
            self.placement.tick()
            place = self.placement.place
        split, identify = self.decoder.split, self.identity.identify
        codes_of, make_codes = self._codes.get, self._codes.make
        line = self._json.pieces if self._stdout is not None else None
        encode = self._wire.encode if self.out.submit is not None else None
        lines: list[bytes] = []  # each line in three pieces
        wire: list[bytes] = []
        counts: dict[tuple[int, bool], int] = {}
        first_seq = seq = self.seq
        for rec in records:
            d = split(rec)
            if d is None:
                continue
            if type(d) is CgroupMkdir:
                self.identity.on_cgroup_mkdir(d.cgroup_id, d.path)
                if self.policy is not None:
                    self.policy.on_cgroup_mkdir(d.cgroup_id, d.path)
                continue
            if type(d) is MntNs:
                if self.placement is not None:
                    self.placement.announce(d.pid, d.mnt_ns)
                continue
            assert type(d) is Deletion
            if d.flags & _POLICY_USER and self.policy is not None:
                d = self.policy.apply(d)  # type: ignore[assignment]
                if d is None:
                    continue  # an ignore rule, decided here: counted as filtered
            ident = identify(d.cgroup_id)
            if place is not None and not d.host_path and d.mnt_ns:  # outside the host's namespace or root
                where, volume = place(d.path, d.pid, d.ppid, d.mnt_ns, d.chroot, ident.uid, ident.pod,
                                      d.root_mnt_id)
                d = d._replace(host_path=where, volume=volume)
                if d.rename_to:  # the destination, which a rename over a file destroys
                    d = d._replace(rename_to_host_path=place(d.rename_to, d.pid, d.ppid, d.mnt_ns, d.chroot,
                                                             ident.uid, ident.pod, d.root_mnt_id)[0])
            codes = codes_of(ident) or make_codes(ident)
            seq += 1
            if line is not None:
                lines += line(d, codes[1], seq)
            if encode is not None:
                wire.append(encode(d, codes[0], seq))
            key = (d.op, d.result == 0)
            counts[key] = counts.get(key, 0) + 1
        self.seq = seq
        if self.placement is not None and self.placement.unplaced:
            self.metrics.unplaced.inc(self.placement.unplaced)
            self.placement.unplaced = 0
        for (op, ok), n in counts.items():  # once per batch, not per event
            self.metrics.events.labels(OP_NAME[op], "success" if ok else "failure").inc(n)
        updates = self.identity.drain_updates()
        if self._stdout is not None and lines:
            lost = self._stdout.write(lines)
            if lost:
                self.metrics.stdout_lost.inc(lost)
        if self.out.submit is not None and (wire or updates):
            self.out.submit(first_seq + 1, wire, updates)
        return seq - first_seq


def run(args: argparse.Namespace) -> int:
    node = node_name(args.node_name)
    agent_id = args.agent_id or f"{node}:{secrets.token_hex(6)}"
    if args.ebpf:
        from .probe.btf import Btf
        from .probe.program import ProbeConfig, render_source

        mode = "tracepoint" if args.attach == "auto" else args.attach
        print(render_source(ProbeConfig(mode=mode), Btf.load()))
        return 0
    if not args.stdout and not args.collector:
        raise UserError("nothing to do: give --collector ADDR (or $UNLINKWATCH_COLLECTOR), --stdout, or both")
    check_flags(args)
    policy = load_policy(args.policy) if args.policy else None  # a bad file: FILE:LINE: problem, before any work
    lsm_missing = bpf_lsm_missing() if policy is not None else "no --policy given"
    if args.require_enforcement and lsm_missing:
        raise UserError(f"--require-enforcement: block rules cannot be enforced here: {lsm_missing}")

    metrics = AgentMetrics()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    heartbeat = [float("-inf")]  # not ready until attached
    http = None
    if args.metrics_addr:  # bound before the probes load: a port that is taken stops the start at once
        from unlinkwatch.observability import serve_http

        try:
            http = serve_http(args.metrics_addr, metrics.registry,
                              ready=lambda: time.monotonic() - heartbeat[0] < HEALTHY_WITHIN_S)
        except OSError as e:  # the port is taken, the address is not this host's
            raise UserError(f"--metrics-addr: cannot listen on {args.metrics_addr}: {e.strerror or e}") from None

    attached = probe.attach(args.attach, ringbuf_mb=args.ringbuf_mb, lsm=not lsm_missing)
    enforce = enforcement(policy, lsm_missing, attached.probe.enforcing, attached.probe.enforce_error)
    if args.require_enforcement and enforce.state != "enforcing":
        attached.close()
        raise UserError(f"--require-enforcement: block rules cannot be enforced here: {enforce.reason}")
    cand = attached.candidate
    seeded = seed_processes(attached)
    metrics.attach_mode.labels(cand.mode, cand.hook).set(1)
    metrics.startup_seconds.set(attached.startup_s)
    heartbeat[0] = time.monotonic()  # ready from here: before "attached" is logged
    identity = IdentityResolver(IdentityConfig(node=node, kube=args.kube, kubeconfig=args.kubeconfig), metrics,
                                count_metrics=True)  # it counts identity states in bulk
    identity.start()  # after attaching, so a cgroup made during the start-up scan is still seen

    decoder = Decoder(node, agent_id, cand.mode)
    runtime = None
    if policy is not None:
        try:
            maps = PolicyMaps(attached.probe.fds)
        except (PolicyMapsError, OSError) as e:
            attached.close()
            raise UserError(f"the node policy cannot be loaded into the kernel: {e}") from e
        runtime = PolicyRuntime(args.policy, policy, maps, decoder, identity, metrics, enforce)
        runtime.start()

    # said once the node policy is in force: from this line on, every deletion is decided by it
    log.info("attached", extra={"fields": {"mode": cand.mode, "hook": cand.hook, "agent": agent_id, "node": node,
                                           "startup_s": round(attached.startup_s, 3), "processes_seeded": seeded,
                                           "object": attached.probe.object,
                                           "misses": probe.MISSES[cand.mode],
                                           "degraded": attached.probe.degraded}})

    shipper: Any = None
    if args.collector:
        from .ship.shipper import Shipper, ShipperConfig

        shipper = Shipper(ShipperConfig(
            collector=args.collector, agent_id=agent_id, node=node, attach_mode=cand.mode,
            spool_dir=args.spool, spool_max_bytes=args.spool_max_mb << 20, tls_cert=args.tls_cert,
            tls_key=args.tls_key, tls_ca=args.tls_ca, tls_server_name=args.tls_server_name,
            node_policy=runtime.node_policy if runtime is not None else None), metrics)
        shipper.start()
    out = Outputs(stdout=sys.stdout if args.stdout else None,
                  submit=shipper.submit_wire if shipper else None,
                  set_kernel_lost=shipper.set_kernel_lost if shipper else None)
    pipeline = Pipeline(decoder, identity, metrics, out, runtime, placement(args.kubelet_root, attached.probe.fds))

    try:
        _loop(attached, pipeline, metrics, out, stop, heartbeat)
    finally:
        if shipper is not None:
            shipper.close(timeout=5.0)
        identity.stop()
        attached.close()
        if pipeline.placement is not None:
            pipeline.placement.close()
        if http is not None:
            http.close()
    return 0


def check_flags(args: argparse.Namespace) -> None:
    """What the flags say, checked before the probes load (one line, exit 2, no work done)."""
    mb = args.ringbuf_mb
    if not 1 <= mb <= 1024 or mb & (mb - 1):
        raise UserError(f"--ringbuf-mb: {mb} is not a power of two from 1 to 1024")
    if args.spool_max_mb < 1:
        raise UserError(f"--spool-max-mb: {args.spool_max_mb} is not a size in MB (1 or more)")
    if args.metrics_addr:
        from unlinkwatch.observability import split_addr

        try:
            split_addr(args.metrics_addr)
        except ValueError as e:
            raise UserError(f"--metrics-addr: {e}") from None
    if args.spool and args.collector:
        from .ship.spool import Spool

        Spool(args.spool, args.spool_max_mb << 20)  # made or found now: one it cannot use stops the start here


def placement(kubelet_root: str, fds: dict[str, int]) -> Placement | None:
    """The host-path and volume stage (agent/placement/); without the host's mount table, deletions outside the
    host's namespace have an empty host_path."""
    seen = fds.get("map:mnt_seen")

    def forget(mnt_ns: int) -> None:
        if seen is not None:
            bpfsys.delete(seen, struct.pack("<I", mnt_ns))

    try:
        return Placement(kubelet_root=os.fsencode(kubelet_root), forget=forget)
    except OSError as e:
        log.warning("host paths unavailable: the host's mount table cannot be read",
                    extra={"fields": {"error": str(e)}})
        return None


def seed_processes(attached: probe.Attached) -> int:
    """The processes that exec'd before the probe attached, from /proc into the kernel (agent/probe/procseed.py);
    without them their deletions say process_unknown, and the agent still runs."""
    try:
        return procseed.seed(attached.probe.fds["map:procs"])
    except (KeyError, OSError) as e:
        log.warning("processes running before the agent are not seeded: their deletions will say "
                    "process_unknown", extra={"fields": {"error": str(e)}})
        return 0


def _count_hits(counter: Counter, now: tuple[int, int], seen: tuple[int, int]) -> tuple[int, int]:
    """A kernel cache's (hit, miss) totals into its counter's labels: what came since `seen`; returns `now`."""
    for result, n, before in zip(("hit", "miss"), now, seen, strict=True):
        if n > before:
            counter.labels(result).inc(n - before)
    return now


def _loop(attached: probe.Attached, pipeline: Pipeline, metrics: AgentMetrics, out: Outputs,
          stop: threading.Event, heartbeat: list[float]) -> None:
    pipeline.process(attached.leftovers)
    lost_seen = 0
    dirc_seen = lsm_dirs_seen = (0, 0)
    next_lost = 0.0
    # the kernel wakes this wait for the rare record that needs it at once (a new mount namespace); the others
    # wait for the timer
    ring_ready = select.epoll()
    ring_ready.register(attached.probe.ringbuf_fd, select.EPOLLIN)
    while not stop.is_set():
        records = attached.ring.drain()
        now = time.monotonic()
        heartbeat[0] = now
        _process(pipeline, records)
        if now >= next_lost:
            if pipeline.policy is not None:
                pipeline.policy.tick(now)
            lost = attached.probe.kernel_lost()
            if lost > lost_seen:
                metrics.lost.labels("kernel").inc(lost - lost_seen)
                log.warning("kernel ring buffer full: events lost",
                            extra={"fields": {"lost_total": lost, "new": lost - lost_seen}})
                lost_seen = lost
            if out.set_kernel_lost is not None:
                out.set_kernel_lost(lost_seen)
            late = attached.probe.attach_late(now)
            if late:
                log.info(late)
            dirc, lsm_dirs = attached.probe.dir_caches()
            dirc_seen = _count_hits(metrics.dir_cache, dirc, dirc_seen)
            lsm_dirs_seen = _count_hits(metrics.enforce_dir_cache, lsm_dirs, lsm_dirs_seen)
            if not records:
                pipeline.process([])  # flush late identity joins while idle
            next_lost = now + LOST_POLL_S
        if not records:
            ring_ready.poll(IDLE_POLL_S)
    ring_ready.close()
    _process(pipeline, attached.ring.drain())  # what arrived before the signal


def _process(pipeline: Pipeline, records: list[bytes]) -> None:
    for start in range(0, len(records), BATCH_RECORDS):
        pipeline.process(records[start : start + BATCH_RECORDS])

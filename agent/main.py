"""`unlinkwatch agent`: wires the stages probe -> decode -> identify -> ship (and/or --stdout)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from unlinkwatch.agent import hooks
from unlinkwatch.agent.identity import IdentityConfig, IdentityResolver
from unlinkwatch.agent.metrics import AgentMetrics
from unlinkwatch.agent.record import CgroupMkdir, Decoder
from unlinkwatch.errors import UserError
from unlinkwatch.eventjson import OP_NAMES, event_to_dict
from unlinkwatch.pb import events_pb2 as pb

log = logging.getLogger("unlinkwatch.agent")

IDLE_POLL_S = 0.02  # the ring is drained at least this often: bounds deletion-to-output latency
LOST_POLL_S = 0.5
HEALTHY_WITHIN_S = 10.0


def node_name(flag: str | None) -> str:
    return flag or os.environ.get("NODE_NAME") or socket.gethostname()


@dataclass
class Outputs:
    stdout: TextIO | None
    submit: Callable[[list[pb.DeletionEvent], list[pb.IdentityUpdate]], None] | None
    set_kernel_lost: Callable[[int], None] | None


class Pipeline:
    """One pass of the loop: records -> events with identity and sequence numbers -> outputs."""

    def __init__(self, decoder: Decoder, identity: IdentityResolver, metrics: AgentMetrics, out: Outputs) -> None:
        self.decoder = decoder
        self.identity = identity
        self.metrics = metrics
        self.out = out
        self.seq = 0
        self._own_pid = os.getpid()

    def process(self, records: list[bytes]) -> int:
        events: list[pb.DeletionEvent] = []
        for rec in records:
            item = self.decoder.decode(rec)
            if isinstance(item, pb.DeletionEvent):
                if item.process.pid == self._own_pid and b"/unlinkwatch-selftest-" in item.path:
                    continue  # our own start-up self-test
                self.identity.fill(item)
                self.seq += 1
                item.seq = self.seq
                events.append(item)
            elif isinstance(item, CgroupMkdir):
                self.identity.on_cgroup_mkdir(item.cgroup_id, item.path)
        counts: dict[tuple[str, str], int] = {}
        for ev in events:
            key = (OP_NAMES.get(ev.op, "unspecified"), "success" if ev.result == 0 else "failure")
            counts[key] = counts.get(key, 0) + 1
        for key, n in counts.items():
            self.metrics.events.labels(*key).inc(n)  # once per batch, not per event
        updates = self.identity.drain_updates()
        if self.out.stdout is not None and events:
            self.out.stdout.write("".join(json.dumps(event_to_dict(ev)) + "\n" for ev in events))
            self.out.stdout.flush()
        if self.out.submit is not None and (events or updates):
            self.out.submit(events, updates)
        return len(events)


def run(args: argparse.Namespace) -> int:
    node = node_name(args.node_name)
    agent_id = args.agent_id or f"{node}:{secrets.token_hex(6)}"
    if args.ebpf:
        from unlinkwatch.agent.btf import Btf
        from unlinkwatch.agent.probe import ProbeConfig, render_source

        mode = "tracepoint" if args.attach == "auto" else args.attach
        print(render_source(ProbeConfig(mode=mode), Btf.load()))
        return 0
    if not args.stdout and not args.collector:
        raise UserError("nothing to do: give --collector ADDR (or $UNLINKWATCH_COLLECTOR), --stdout, or both")

    metrics = AgentMetrics()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    attached = hooks.attach(args.attach, ringbuf_mb=args.ringbuf_mb)
    cand = attached.candidate
    metrics.attach_mode.labels(cand.mode, cand.hook).set(1)
    metrics.startup_seconds.set(attached.startup_s)
    log.info("attached", extra={"fields": {"mode": cand.mode, "hook": cand.hook, "agent": agent_id, "node": node,
                                           "startup_s": round(attached.startup_s, 3),
                                           "misses": hooks.MISSES[cand.mode],
                                           "degraded": attached.probe.degraded}})

    identity = IdentityResolver(IdentityConfig(node=node, kube=args.kube, kubeconfig=args.kubeconfig), metrics,
                                count_metrics=True)  # it counts identity states in bulk
    identity.start()  # after attaching, so a cgroup made during the start-up scan is still seen

    shipper: Any = None
    if args.collector:
        from unlinkwatch.agent.ship import Shipper, ShipperConfig

        shipper = Shipper(ShipperConfig(
            collector=args.collector, agent_id=agent_id, node=node, attach_mode=cand.mode,
            spool_dir=args.spool, spool_max_bytes=args.spool_max_mb << 20, tls_cert=args.tls_cert,
            tls_key=args.tls_key, tls_ca=args.tls_ca, tls_server_name=args.tls_server_name), metrics)
        shipper.start()
    out = Outputs(stdout=sys.stdout if args.stdout else None,
                  submit=shipper.submit if shipper else None,
                  set_kernel_lost=shipper.set_kernel_lost if shipper else None)
    pipeline = Pipeline(Decoder(node, agent_id, cand.mode), identity, metrics, out)

    heartbeat = [time.monotonic()]
    http = None
    if args.metrics_addr:
        from unlinkwatch.observability import serve_http

        http = serve_http(args.metrics_addr, metrics.registry,
                          ready=lambda: time.monotonic() - heartbeat[0] < HEALTHY_WITHIN_S)
    try:
        _loop(attached, pipeline, metrics, out, stop, heartbeat)
    finally:
        if shipper is not None:
            shipper.close(timeout=5.0)
        identity.stop()
        attached.close()
        if http is not None:
            http.close()
    return 0


def _loop(attached: hooks.Attached, pipeline: Pipeline, metrics: AgentMetrics, out: Outputs,
          stop: threading.Event, heartbeat: list[float]) -> None:
    pipeline.process(attached.leftovers)
    lost_seen = 0
    next_lost = 0.0
    while not stop.is_set():
        records = attached.ring.drain()
        now = time.monotonic()
        heartbeat[0] = now
        if records:
            pipeline.process(records)
        if now >= next_lost:
            lost = attached.probe.kernel_lost()
            if lost > lost_seen:
                metrics.lost.labels("kernel").inc(lost - lost_seen)
                log.warning("kernel ring buffer full: events lost",
                            extra={"fields": {"lost_total": lost, "new": lost - lost_seen}})
                lost_seen = lost
            if out.set_kernel_lost is not None:
                out.set_kernel_lost(lost_seen)
            if not records:
                pipeline.process([])  # flush late identity joins while idle
            next_lost = now + LOST_POLL_S
        if not records:
            stop.wait(IDLE_POLL_S)
    pipeline.process(attached.ring.drain())  # what arrived before the signal

"""Collector ingest throughput: the store alone, and through the real gRPC Ingest path into a collector
process (`unlinkwatch collector`), for SQLite and PostgreSQL.

    python -m bench.ingest [--events 500000] [--backend sqlite|postgres|both] [--streams 2]
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from unlinkwatch.collector.ingest.batch import commit_batch
from unlinkwatch.collector.store import open_store

from bench.peers import children, cpu_seconds
from tests.support.collector import free_port, start_subprocess
from tests.support.eventgen import batches
from unlinkwatch import runstate

INGEST = "/unlinkwatch.v1.Collector/Ingest"


def store_alone(db: str, n: int) -> tuple[float, float]:
    """(events per wall-clock second, events per CPU second of this process): the second figure is what
    one core would do undisturbed, useful on a shared machine."""
    bs = list(batches("bench-store:1", n, 4096, pods=1000))
    store = open_store(db)
    try:
        t, c = time.perf_counter(), time.process_time()
        for b in bs:
            commit_batch(store, b, time.time_ns())
        return n / (time.perf_counter() - t), n / (time.process_time() - c)
    finally:
        store.close()


class ServerCpu:
    """CPU seconds used by a database server (its postmaster, every child, and the children it reaped)
    between two snapshots: backends come and go with the collector's connections."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._start = self._snapshot()

    def _snapshot(self) -> tuple[dict[int, float], float]:
        return {k: cpu_seconds(k) for k in children(self.pid)}, cpu_seconds(self.pid, reaped=True)

    def restart(self) -> None:
        self._start = self._snapshot()

    def used(self) -> float:
        (kids0, own0), (kids1, own1) = self._start, self._snapshot()
        return own1 - own0 + sum(c - kids0.get(k, 0.0) for k, c in kids1.items())


def through_grpc(db: str, n: int, streams: int, server: ServerCpu | None = None) -> tuple[float, dict[str, float]]:
    """K agents (streams) each send n/K events as 4096-event batches, pre-serialized, acks awaited.
    Returns events/s and the CPU microseconds per event of the collector, its commit processes, this
    load client and the database server (`server`, when there is one) during the run (all on the same
    machine)."""
    from unlinkwatch.pb import events_pb2 as pb

    per = n // streams
    payloads = [[b.SerializeToString() for b in batches(f"bench-grpc:{k}", per, 4096, pods=1000)]
                for k in range(streams)]
    port = free_port()
    proc = start_subprocess(db, port)
    acked = [0] * streams

    def agent(k: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.stream_stream(INGEST, request_serializer=lambda b: b, response_deserializer=pb.Ack.FromString)
            for ack in call(iter(payloads[k]), timeout=600):
                acked[k] += ack.stored

    try:
        threads = [threading.Thread(target=agent, args=(k,)) for k in range(streams)]
        kids = children(proc.pid)
        before = (cpu_seconds(proc.pid), sum(cpu_seconds(k) for k in kids), time.process_time())
        if server:
            server.restart()
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        dt = time.perf_counter() - t
        after = (cpu_seconds(proc.pid), sum(cpu_seconds(k) for k in kids), time.process_time())
        assert sum(acked) == per * streams, f"stored {sum(acked)} of {per * streams}"
        total = per * streams
        split = {name: (a - b) / total * 1e6 for name, a, b in zip(("collector", "commit", "client"), after, before,
                                                                    strict=True)}
        if server:
            split["database"] = server.used() / total * 1e6
        return total / dt, split
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


Backend = tuple[str, Callable[[], str], Callable[[], None], Callable[[], "ServerCpu | None"]]


def _backends(which: str, tmp: Path) -> list[Backend]:
    """(name, new database URL, stop, CPU meter of the database server) per backend."""
    out: list[Backend] = []
    if which in ("sqlite", "both"):
        counter = iter(range(1000))
        out.append(("sqlite", lambda: f"sqlite:///{tmp}/bench-{next(counter)}.db", lambda: None, lambda: None))
    if which in ("postgres", "both"):
        from tests.support.postgres import PostgresCluster

        cluster = PostgresCluster(fsync=True)
        out.append(("postgres", cluster.new_database, cluster.stop, lambda: ServerCpu(cluster.postmaster_pid())))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=500_000)
    p.add_argument("--backend", default="both", choices=["sqlite", "postgres", "both"])
    p.add_argument("--streams", type=int, default=2, help="concurrent agents for the gRPC measurement")
    args = p.parse_args()
    with runstate.scratch_dir("uwbench-ingest-") as d:
        for name, new_db, stop, server in _backends(args.backend, Path(d)):
            try:
                alone, per_cpu = store_alone(new_db(), args.events)
                print(f"ingest {name:8s} store alone      {alone:10,.0f} events/s  ({args.events:,} events; "
                      f"{per_cpu:,.0f} per CPU-second of the collector process)")
                rpc, cpu = through_grpc(new_db(), args.events, args.streams, server())
                print(f"ingest {name:8s} gRPC Ingest x{args.streams}    {rpc:10,.0f} events/s  "
                      f"({args.events:,} events, collector process, acks awaited; CPU us/event: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()) + ")")
            finally:
                stop()


if __name__ == "__main__":
    main()

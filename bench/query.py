"""Per-pod query latency over a large store (default 10 M events): p50/p95 of `query --pod-uid` and
`--namespace --pod` (limit 1000, the CLI default), through the store and through gRPC.

    python -m bench.query [--events 10000000] [--pods 10000] [--backend sqlite|postgres|both] [--queries 200]
    python -m bench.query --db sqlite:////var/tmp/q10m.db   # build once, reuse on later runs

The rows are generated from per-pod templates and bulk-loaded through the store (bulk_insert). With
`--db URL` the store at URL is used and kept: it is loaded only when it holds no events yet, so a 10 M store
is built once and measured again after each change (same --events and --pods, or the figures mislead).
The first pass (pod-uid through the store) reads with cold caches; the passes after it query the same
pods, so they measure a warm store (the page cache and the database's own cache hold those rows)."""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from unlinkwatch.collector.ingest.batch import bulk_load
from unlinkwatch.collector.query import EventFilter, query
from unlinkwatch.collector.store import Store, open_store

from tests.support.collector import start_inprocess
from tests.support.eventgen import T0, make_event, pod_uid
from unlinkwatch import runstate
from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.pb import events_pb2_grpc as pbg

AGENTS = 20  # nodes; each pod lives on one of them


def generate(n: int, pods: int, chunk: int = 50_000) -> Iterator[tuple[str, list[pb.DeletionEvent]]]:
    """Chunks of events spread over `pods` pods with every field set, in time order."""
    rng = random.Random(7)
    templates = []
    for p in range(pods):
        ev = make_event(f"node{p % AGENTS}:bench", 1, pods=1, rng=random.Random(p))
        ev.pod.uid, ev.pod.name, ev.pod.namespace = pod_uid(p), f"web-{p}", f"ns{p % 50}"
        ev.pod.workload = f"Deployment/web-{p // 3}"
        ev.identity = pb.IDENTITY_STATE_RESOLVED
        templates.append(ev)
    seqs = [0] * AGENTS
    for start in range(0, n, chunk):
        by_agent: dict[int, list[pb.DeletionEvent]] = {}
        for i in range(start, min(n, start + chunk)):
            p = rng.randrange(pods)
            a = p % AGENTS
            seqs[a] += 1
            ev = pb.DeletionEvent()
            ev.CopyFrom(templates[p])
            ev.seq, ev.time_unix_ns = seqs[a], T0 + i * 1000
            ev.path = b"/var/lib/app/cache/f%d.tmp" % i
            by_agent.setdefault(a, []).append(ev)
        for a, evs in by_agent.items():
            yield f"node{a}:bench", evs


def load(store: Store, n: int, pods: int) -> float:
    t = time.perf_counter()
    done = 0
    for agent, evs in generate(n, pods):
        bulk_load(store, agent, evs)
        done += len(evs)
        if done % 1_000_000 < len(evs):
            print(f"  loaded {done:,} ({done / (time.perf_counter() - t):,.0f}/s)", flush=True)
    analyze = getattr(store, "analyze", None)
    if analyze:
        analyze()
    return time.perf_counter() - t


def percentiles(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {q[49] * 1000:6.2f} ms  p95 {q[94] * 1000:6.2f} ms  max {max(samples) * 1000:6.2f} ms"


def measure(run: Callable[[int], int], pods: int, queries: int) -> tuple[list[float], int]:
    rng = random.Random(11)
    samples, rows = [], 0
    for _ in range(queries):
        p = rng.randrange(pods)
        t = time.perf_counter()
        rows += run(p)
        samples.append(time.perf_counter() - t)
    return samples, rows // queries


def bench(name: str, db: str, n: int, pods: int, queries: int) -> None:
    store = open_store(db)
    try:
        have = store.count()
        if have:
            print(f"query {name:8s} reusing {have:,} stored events")
        else:
            secs = load(store, n, pods)
            print(f"query {name:8s} loaded {n:,} events in {secs:.0f} s ({n / secs:,.0f}/s)")
        def by_uid(p: int) -> EventFilter:
            return EventFilter(pod_uid=pod_uid(p))

        def by_name(p: int) -> EventFilter:
            return EventFilter(namespace=f"ns{p % 50}", pod=f"web-{p}")

        def first(p: int) -> int:
            return len(query(store, by_uid(p), None, 1000)[0])

        s, avg = measure(first, pods, queries)  # the same pods as every pass below: they then find it warm
        print(f"query {name:8s} store pod-uid 1st  {percentiles(s)}  ({avg} rows/query; caches cold)")
        def by_path(p: int) -> EventFilter:  # one file: the path index's range is that one path
            return EventFilter(path_glob=f"/var/lib/app/cache/f{p * (n // pods)}.tmp")

        def by_tree(p: int) -> EventFilter:  # a directory and everything below it (`/x/**` matches /x too)
            return EventFilter(path_glob="/var/lib/app/cache/**", since_ns=T0 + p * (n // pods) * 1000)

        for label, make in (("pod-uid", by_uid), ("namespace+pod", by_name), ("path", by_path),
                            ("path /dir/**", by_tree)):
            def run(p: int, make: Callable[[int], EventFilter] = make) -> int:
                return len(query(store, make(p), None, 1000)[0])

            s, avg = measure(run, pods, queries)
            print(f"query {name:8s} store {label:14s} {percentiles(s)}  ({avg} rows/query)")
        c = start_inprocess(store)
        try:
            with grpc.insecure_channel(c.addr) as ch:
                stub = pbg.CollectorStub(ch)

                def via_grpc(p: int) -> int:
                    req = pb.QueryRequest(pod_uid=pod_uid(p), limit=1000)
                    return sum(len(r.events) for r in stub.Query(req, timeout=30))

                s, avg = measure(via_grpc, pods, queries)
                print(f"query {name:8s} gRPC  pod-uid        {percentiles(s)}  ({avg} rows/query)")
        finally:
            c.close(close_store=False)
    finally:
        store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--pods", type=int, default=10_000)
    p.add_argument("--backend", default="both", choices=["sqlite", "postgres", "both"])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--db", help="measure this store (sqlite:///... or postgresql://...), loading it only if empty")
    args = p.parse_args()
    if args.db:
        bench("postgres" if args.db.startswith("postgres") else "sqlite", args.db, args.events, args.pods,
              args.queries)
        return
    with runstate.scratch_dir("uwbench-query-", Path("/var/tmp")) as d:
        if args.backend in ("sqlite", "both"):
            bench("sqlite", f"sqlite:///{Path(d)}/query.db", args.events, args.pods, args.queries)
        if args.backend in ("postgres", "both"):
            from tests.support.postgres import PostgresCluster

            cluster = PostgresCluster(fsync=True)
            try:
                bench("postgres", cluster.new_database(), args.events, args.pods, args.queries)
            finally:
                cluster.stop()


if __name__ == "__main__":
    main()

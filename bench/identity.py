"""Identity cost: per-event fill() for a known cgroup (goal <= 2 us) and memory after pod churn."""

from __future__ import annotations

import gc
import tempfile
import time
import tracemalloc
import uuid

from unlinkwatch.agent.identity import IdentityConfig, IdentityResolver
from unlinkwatch.agent.identity.kube import ContainerInfo, PodInfo

from unlinkwatch.pb import events_pb2 as pb

EVENTS = 200_000
PODS, CONTAINERS_PER_POD = 500, 4


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0  # 0 would read as "never deleted"

    def __call__(self) -> float:
        return self.now


def _pod(n: int) -> tuple[PodInfo, list[str]]:
    uid = str(uuid.uuid4())
    cids = [uuid.uuid4().hex * 2 for _ in range(CONTAINERS_PER_POD)]
    containers = {c: ContainerInfo(c, f"c{i}", "registry.example/app:1.2.3") for i, c in enumerate(cids)}
    labels = {"app": f"app{n % 17}", "pod-template-hash": "5d8f7c9b4", "tier": "web"}
    return PodInfo(uid, f"app{n}-5d8f7c9b4-x2x9q", "prod", f"Deployment/app{n % 17}", labels, containers), cids


def fill_cost(r: IdentityResolver) -> float:
    info, cids = _pod(0)
    r.index.upsert(info)
    r.on_cgroup_mkdir(42, f"/kubepods/burstable/pod{info.uid}/{cids[0]}")
    ev = pb.DeletionEvent(cgroup_id=42)
    r.fill(ev)
    assert ev.identity == pb.IDENTITY_STATE_RESOLVED
    best = float("inf")
    for _ in range(5):  # best of five: the figure is the code's cost, not the machine's noise
        events = [pb.DeletionEvent(cgroup_id=42) for _ in range(EVENTS)]
        t0 = time.perf_counter()
        for e in events:
            r.fill(e)
        best = min(best, (time.perf_counter() - t0) / EVENTS)
    return best * 1e6


def churn_memory(r: IdentityResolver, clock: _Clock) -> tuple[int, int, dict[str, int]]:
    next_id = 1000
    rounds: list[int] = []
    peak_stats: dict[str, int] = {}
    for _ in range(3):
        uids = []
        for n in range(PODS):
            info, cids = _pod(n)
            r.index.upsert(info)
            uids.append(info.uid)
            for cid in cids:
                next_id += 1
                r.on_cgroup_mkdir(next_id, f"/kubepods/burstable/pod{info.uid}/{cid}")
                r.fill(pb.DeletionEvent(cgroup_id=next_id))
        peak_stats = r.stats()
        for uid in uids:
            r.index.delete(uid)
        r.maintain()
        clock.now += r.cfg.grace_seconds + 1
        r.maintain()
        gc.collect()
        rounds.append(tracemalloc.get_traced_memory()[0])
    return rounds[0], rounds[-1], peak_stats


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        r = IdentityResolver(IdentityConfig(node="bench", kube="off", cgroup2_root=root))
        us = fill_cost(r)
        print(f"identity fill() for a known cgroup: {us:.2f} us/event (goal <= 2 us), "
              f"best of 5 x {EVENTS:,} events")
        clock = _Clock()
        r2 = IdentityResolver(IdentityConfig(node="bench", kube="off", cgroup2_root=root), clock=clock)
        tracemalloc.start()
        first, last, peak = churn_memory(r2, clock)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"churn {PODS} pods x {CONTAINERS_PER_POD} containers, 3 rounds: live at peak {peak}; "
              f"traced memory peak {traced_peak / 2**20:.1f} MiB, after round 1 {first / 2**10:.0f} KiB, "
              f"after round 3 {last / 2**10:.0f} KiB; caches now {r2.stats()}")


if __name__ == "__main__":
    main()

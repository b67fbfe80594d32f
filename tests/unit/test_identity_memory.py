"""Memory stays bounded while pods and containers churn through the identity caches."""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from pathlib import Path

from unlinkwatch.agent.identity import IdentityConfig, IdentityResolver
from unlinkwatch.agent.identity.kube import pod_info

from unlinkwatch.kubestub import make_pod
from unlinkwatch.pb import events_pb2 as pb

PODS, CONTAINERS_PER_POD = 500, 4


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def churn(r: IdentityResolver, clock: Clock, round_no: int) -> None:
    """500 pods with 2,000 containers start, delete files, end; then the grace period passes."""
    next_id = 1_000_000 * (round_no + 1)
    uids = []
    for p in range(PODS):
        uid = str(uuid.uuid4())
        uids.append(uid)
        cids = [uuid.uuid4().hex + uuid.uuid4().hex for _ in range(CONTAINERS_PER_POD)]
        pod = make_pod(f"churn-{round_no}-{p}", uid=uid, labels={"app": f"a{p % 7}", "round": str(round_no)},
                       containers=[(f"c{i}", "busybox:1.36", cid) for i, cid in enumerate(cids)])
        r.index.upsert(pod_info(pod, f"Deployment/d{p % 13}"))
        for cid in cids:
            next_id += 1
            r.on_cgroup_mkdir(next_id, f"/kubepods/burstable/pod{uid}/{cid}")
            for _ in range(3):
                ev = pb.DeletionEvent(cgroup_id=next_id)
                r.fill(ev)
                assert ev.identity == pb.IDENTITY_STATE_RESOLVED
    for uid in uids:
        r.index.delete(uid)
    r.maintain()  # the cgroup directories are gone: marked removed
    clock.now += r.cfg.grace_seconds + 1
    r.maintain()  # past the grace period: forgotten
    r.drain_updates()


def test_caches_return_to_empty_after_500_pods_and_2000_containers_churn(tmp_path: Path) -> None:
    clock = Clock()
    r = IdentityResolver(IdentityConfig(node="n", kube="off", cgroup2_root=str(tmp_path)), clock=clock)
    churn(r, clock, 0)
    assert r.stats() == {"cgroups": 0, "pods": 0, "containers": 0, "cached": 0, "pending": 0}


def test_memory_does_not_grow_across_churn_rounds(tmp_path: Path) -> None:
    clock = Clock()
    r = IdentityResolver(IdentityConfig(node="n", kube="off", cgroup2_root=str(tmp_path)), clock=clock)
    churn(r, clock, 0)  # warm-up: interpreter caches, dict sizes
    gc.collect()
    tracemalloc.start()
    try:
        churn(r, clock, 1)
        gc.collect()
        base, _ = tracemalloc.get_traced_memory()
        for n in range(2, 5):
            churn(r, clock, n)
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - base < 256 * 1024, (base, after, peak)


def test_live_caches_are_capped_even_without_removals(tmp_path: Path) -> None:
    r = IdentityResolver(IdentityConfig(node="n", kube="off", cgroup2_root=str(tmp_path)), max_cached=1000)
    for i in range(5000):
        r.on_cgroup_mkdir(10_000 + i, f"/kubepods/pod{uuid.uuid4()}/{'a' * 64}")
        r.fill(pb.DeletionEvent(cgroup_id=10_000 + i))
    assert r.stats()["cgroups"] <= 1000 and r.stats()["cached"] <= 1000

"""The identify stage: cgroup id -> pod and container fields of each event, and late-join updates."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from unlinkwatch.eventjson import IDENTITY_NAMES
from unlinkwatch.pb import events_pb2 as pb

from ..metrics import AgentMetrics
from . import podpath
from .cgroups import ROOT_CGROUP_ID, Cgroup2Mount, CgroupPaths, find_cgroup2
from .kube import ContainerInfo, PodIndex, PodInfo, PodWatcher

log = logging.getLogger("unlinkwatch.agent.identity")

RESOLVED, UNKNOWN, HOST = pb.IDENTITY_STATE_RESOLVED, pb.IDENTITY_STATE_UNKNOWN, pb.IDENTITY_STATE_HOST
PATH_RETRY_SECONDS = 1.0  # an id with no known path is looked up again at most this often
CONTAINER_WAIT_SECONDS = 30.0  # a pod's status may name a new container late; then update with pod fields only


@dataclass
class IdentityConfig:
    node: str
    kube: str = "auto"  # "auto" | "off"
    kubeconfig: str | None = None
    cgroup2_root: str | None = None  # auto from mountinfo
    grace_seconds: float = 300.0


@dataclass(slots=True, eq=False)
class Identity:
    """The identity of one cgroup id: the event fields it gives (`template`: cgroup_id, container, pod and
    identity state of a DeletionEvent) and what it was built from. A rebuilt identity is a new object, so
    downstream stages may cache what they derive from one by the object itself."""

    template: pb.DeletionEvent
    state: int
    uid: str = ""
    container_id: str = ""
    pod: PodInfo | None = None  # the index's object at build time: a different one means rebuild
    retry_at: float = 0.0  # for ids with no path yet: when to look again


def _set_pod(msg: pb.Pod, info: PodInfo) -> None:
    msg.name, msg.namespace, msg.workload = info.name, info.namespace, info.workload
    for k, v in info.labels.items():
        msg.labels[k] = v


def _set_container(msg: pb.Container, c: ContainerInfo) -> None:
    msg.name, msg.image = c.name, c.image


class IdentityResolver:
    def __init__(self, cfg: IdentityConfig, metrics: AgentMetrics | None = None, *,
                 clock: Callable[[], float] = time.monotonic, max_cached: int = 65536,
                 sweep_seconds: float = 10.0, watch_timeout_seconds: int = 240, count_metrics: bool = False) -> None:
        self.cfg = cfg
        self.metrics = metrics
        # The agent's pipeline counts identity states itself; opt in to have drain_updates() do it in bulk.
        self.count_metrics = count_metrics
        self._clock = clock
        mount = Cgroup2Mount(cfg.cgroup2_root) if cfg.cgroup2_root else find_cgroup2()
        self.cgroups = CgroupPaths(mount, cfg.grace_seconds, max_entries=max_cached, clock=clock)
        self.index = PodIndex(cfg.grace_seconds, clock=clock)
        self._pods = self.index.pods  # the same dict, one attribute lookup less per event
        self.watcher: PodWatcher | None = None
        if cfg.kube == "auto":
            self.watcher = PodWatcher(cfg.node, self.index, cfg.kubeconfig,
                                      watch_timeout_seconds=watch_timeout_seconds)
        if metrics is not None:
            metrics.pods_known.set_function(self.index.live_count)
        self.max_cached = max_cached
        self.sweep_seconds = sweep_seconds
        self._cache: dict[int, Identity] = {}
        self._pending: dict[tuple[str, str], float] = {}  # (pod uid, container id) emitted UNKNOWN -> first time
        self._counts = [0] * 5  # events by IdentityState; flushed to metrics in drain_updates
        self._flushed = [0] * 5
        self._stop = threading.Event()
        self._maint: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        t0 = time.perf_counter()
        if self.cgroups.mount is None:
            log.warning("no cgroup2 mount found: every event's identity will be unknown")
        found = self.cgroups.scan()
        log.info("cgroup scan: %d cgroups in %.1f ms", found, (time.perf_counter() - t0) * 1e3)
        if self.watcher is not None:
            self.watcher.start()
        self._maint = threading.Thread(target=self._maintain_loop, name="identity-sweep", daemon=True)
        self._maint.start()

    def stop(self) -> None:
        self._stop.set()
        if self.watcher is not None:
            self.watcher.stop()
        if self._maint is not None:
            self._maint.join(timeout=5)
        self.cgroups.close()

    # --- inputs ---------------------------------------------------------------------------------
    def on_cgroup_mkdir(self, cgroup_id: int, path: str) -> None:
        self.cgroups.on_mkdir(cgroup_id, path)
        self._cache.pop(cgroup_id, None)

    # --- the event path ---------------------------------------------------------------------------
    def identify(self, cgroup_id: int) -> Identity:
        """The identity of one event's cgroup (counted as one event); never blocks (no locks, no API calls)."""
        c = self._cache.get(cgroup_id)
        if (c is None or (c.uid and self._pods.get(c.uid) is not c.pod)
                or (c.retry_at and c.retry_at <= self._clock())):
            c = self._build(cgroup_id)
        self._counts[c.state] += 1
        if c.state == UNKNOWN and c.uid and self.watcher is not None:
            self._pending.setdefault((c.uid, c.container_id), self._clock())
        return c

    def fill(self, ev: pb.DeletionEvent) -> None:
        """Set container, pod and identity of a DeletionEvent from its cgroup_id."""
        ev.MergeFrom(self.identify(ev.cgroup_id).template)

    def _build(self, cgroup_id: int) -> Identity:
        t = pb.DeletionEvent()
        if cgroup_id == ROOT_CGROUP_ID:
            return self._store(cgroup_id, Identity(_with_state(t, HOST), HOST))
        path = self.cgroups.lookup(cgroup_id) if cgroup_id else None
        if path is None:  # removed before we learnt its path, or not visible here
            return self._store(cgroup_id, Identity(_with_state(t, UNKNOWN), UNKNOWN,
                                                  retry_at=self._clock() + PATH_RETRY_SECONDS))
        pp = podpath.parse(path)
        if pp is None:
            return self._store(cgroup_id, Identity(_with_state(t, HOST), HOST))
        t.pod.uid, t.container.id = pp.pod_uid, pp.container_id
        info = self.index.pods.get(pp.pod_uid)
        cont = info.containers.get(pp.container_id) if info is not None and pp.container_id else None
        if info is None and pp.container_id:
            found = self.index.container(pp.container_id)
            if found is not None:
                info, cont = found
        state = UNKNOWN
        if info is not None:
            _set_pod(t.pod, info)
            if cont is not None:
                _set_container(t.container, cont)
            if cont is not None or not pp.container_id or pp.runtime == "crio-conmon":
                state = RESOLVED
        return self._store(cgroup_id, Identity(_with_state(t, state), state, pp.pod_uid, pp.container_id,
                                              self.index.pods.get(pp.pod_uid)))

    def _store(self, cgroup_id: int, c: Identity) -> Identity:
        c.template.cgroup_id = cgroup_id
        if len(self._cache) >= self.max_cached:
            self._cache.clear()  # rare: rebuilt lazily, and bounded memory matters more
        self._cache[cgroup_id] = c
        return c

    # --- late joins -------------------------------------------------------------------------------
    def drain_updates(self) -> list[pb.IdentityUpdate]:
        """One update per pod/container emitted UNKNOWN whose names are known now."""
        out: list[pb.IdentityUpdate] = []
        now = self._clock()
        for key, first in list(self._pending.items()):
            uid, cid = key
            info = self.index.pods.get(uid)
            cont = info.containers.get(cid) if info is not None and cid else None
            if info is None and cid:
                found = self.index.container(cid)
                if found is not None:
                    info, cont = found
            if info is None:
                if now - first >= self.cfg.grace_seconds:
                    self._pending.pop(key, None)  # never learnt: stays unknown
                continue
            if cid and cont is None and now - first < CONTAINER_WAIT_SECONDS:
                continue
            upd = pb.IdentityUpdate(pod_uid=uid, container_id=cid)
            upd.pod.uid = uid
            _set_pod(upd.pod, info)
            upd.container.id = cid
            if cont is not None:
                _set_container(upd.container, cont)
            out.append(upd)
            self._pending.pop(key, None)
        self._flush_metrics()
        return out

    def _flush_metrics(self) -> None:
        if self.metrics is None or not self.count_metrics:
            return
        for state, name in IDENTITY_NAMES.items():
            delta = self._counts[state] - self._flushed[state]
            if delta > 0:
                self.metrics.identity.labels(name).inc(delta)
                self._flushed[state] += delta

    # --- upkeep -----------------------------------------------------------------------------------
    def maintain(self) -> None:
        """One upkeep pass: expire removed cgroups and deleted pods past the grace period; bound caches."""
        self.cgroups.sweep()
        self.index.sweep()
        for cid in [k for k in list(self._cache) if k != ROOT_CGROUP_ID and self.cgroups.lookup_cached(k) is None]:
            c = self._cache.get(cid)
            if c is not None and not c.retry_at:
                self._cache.pop(cid, None)

    def _maintain_loop(self) -> None:
        while not self._stop.wait(self.sweep_seconds):
            try:
                self.maintain()
            except Exception:  # upkeep must never take the agent down
                log.exception("identity upkeep failed")

    def stats(self) -> dict[str, int]:
        return {"cgroups": len(self.cgroups), "pods": len(self.index.pods), "containers": len(self.index.by_container),
                "cached": len(self._cache), "pending": len(self._pending)}

    def counts(self) -> dict[str, int]:
        return {name: self._counts[state] for state, name in IDENTITY_NAMES.items()}


def _with_state(t: pb.DeletionEvent, state: int) -> pb.DeletionEvent:
    t.identity = state  # type: ignore[assignment]
    return t

"""A pod's top workload (`Deployment/web` through its ReplicaSet, `CronJob/x` through its Job), cached."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

# fetch(kind, namespace, name) -> the object as a dict, or None when it cannot be read (gone, forbidden, down).
Fetch = Callable[[str, str, str], Mapping[str, Any] | None]

_CRONJOB_JOB = re.compile(r"^(.+)-\d{8,}$")  # the CronJob controller names Jobs <cronjob>-<scheduled minute>


def controller_ref(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the controlling owner reference (else the first one), or None."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    if not refs:
        return None
    ref = next((r for r in refs if r.get("controller")), refs[0])
    kind, name = ref.get("kind"), ref.get("name")
    if not isinstance(kind, str) or not isinstance(name, str):
        return None
    return kind, name


def _guess_deployment(pod: Mapping[str, Any], rs_name: str) -> str:
    """Without the ReplicaSet: a Deployment's ReplicaSet is named <deployment>-<pod-template-hash>."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    h = labels.get("pod-template-hash")
    if isinstance(h, str) and h and rs_name.endswith("-" + h):
        return "Deployment/" + rs_name[: -len(h) - 1]
    return "ReplicaSet/" + rs_name


def _guess_cronjob(job_name: str) -> str:
    m = _CRONJOB_JOB.match(job_name)
    return f"CronJob/{m.group(1)}" if m else f"Job/{job_name}"


class OwnerResolver:
    """Resolves and caches the top owner; lookups happen on the watcher thread, never on the event path."""

    def __init__(self, fetch: Fetch, ttl_seconds: float = 600.0, failure_ttl_seconds: float = 30.0,
                 max_entries: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._ttl = ttl_seconds
        self._failure_ttl = failure_ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, str], tuple[float, str]] = {}
        self.fetches = 0

    def workload(self, pod: Mapping[str, Any]) -> str:
        meta = pod.get("metadata") or {}
        name = str(meta.get("name") or "")
        ns = str(meta.get("namespace") or "")
        ref = controller_ref(pod)
        if ref is None or ref[0] == "Node":  # bare pods; static pods' mirrors are owned by their Node
            return f"Pod/{name}"
        kind, owner = ref
        if kind == "ReplicaSet":
            return self._cached(("ReplicaSet", ns, owner), lambda: self._via("ReplicaSet", ns, owner,
                                                                              _guess_deployment(pod, owner)))
        if kind == "Job":
            return self._cached(("Job", ns, owner), lambda: self._via("Job", ns, owner, _guess_cronjob(owner)))
        return f"{kind}/{owner}"

    def _via(self, kind: str, ns: str, name: str, guess: str) -> tuple[str, bool]:
        """(top owner, whether it came from the API) for a ReplicaSet or Job."""
        self.fetches += 1
        obj = self._fetch(kind, ns, name)
        if obj is None:
            return guess, False
        ref = controller_ref(obj)
        if ref is None:
            return f"{kind}/{name}", True
        return f"{ref[0]}/{ref[1]}", True

    def _cached(self, key: tuple[str, str, str], compute: Callable[[], tuple[str, bool]]) -> str:
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value, authoritative = compute()
        with self._lock:
            if len(self._cache) >= self._max:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= self._max:
                    self._cache.clear()
            self._cache[key] = (now + (self._ttl if authoritative else self._failure_ttl), value)
        return value

    def __len__(self) -> int:
        return len(self._cache)

"""Which claim a persistent volume's directory belongs to: the kubelet names it by the bound PV, the pod spec
names the claim, and the claim's spec.volumeName links the two (one GET per claim, cached)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .owners import Fetch


def pod_claims(pod: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """The pod's volumes that are claims: volume name -> (claim name, the event's volume label)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    out: dict[str, tuple[str, str]] = {}
    for v in spec.get("volumes") or []:
        name = str(v.get("name", ""))
        if "persistentVolumeClaim" in v:
            claim = str((v.get("persistentVolumeClaim") or {}).get("claimName", ""))
            out[name] = (claim, f"persistentVolumeClaim/{claim}")
        elif "ephemeral" in v:  # a generic ephemeral volume: its claim is named <pod>-<volume>
            out[name] = (f"{meta.get('name', '')}-{name}", f"ephemeral/{name}")
    return out


class ClaimResolver:
    """The PV each claim is bound to, cached for good once bound (a bound claim's volume never changes); a claim
    not bound yet, or not readable (no RBAC, API down), is asked again at most once per failure_ttl. Runs on the
    watcher thread, never on the event path."""

    def __init__(self, fetch: Fetch, failure_ttl_seconds: float = 30.0, max_entries: int = 10000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._failure_ttl = failure_ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._bound: dict[tuple[str, str], str] = {}
        self._failed: dict[tuple[str, str], float] = {}
        self.fetches = 0

    def pvs(self, pod: Mapping[str, Any]) -> dict[str, str]:
        """PV name -> volume name, for the pod's claim volumes whose claim is bound."""
        ns = str((pod.get("metadata") or {}).get("namespace") or "")
        out: dict[str, str] = {}
        for volume, (claim, _label) in pod_claims(pod).items():
            pv = self._pv(ns, claim)
            if pv:
                out[pv] = volume
        return out

    def _pv(self, ns: str, claim: str) -> str:
        key = (ns, claim)
        now = self._clock()
        with self._lock:
            pv = self._bound.get(key)
            if pv is not None:
                return pv
            if self._failed.get(key, 0.0) > now:
                return ""
        self.fetches += 1
        obj = self._fetch("PersistentVolumeClaim", ns, claim)
        pv = str(((obj or {}).get("spec") or {}).get("volumeName") or "")
        with self._lock:
            if len(self._bound) + len(self._failed) >= self._max:
                self._bound.clear()
                self._failed.clear()
            if pv:
                self._bound[key] = pv
                self._failed.pop(key, None)
            else:
                self._failed[key] = now + self._failure_ttl
        return pv

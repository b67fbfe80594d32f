"""Persistent volumes named by their claim: the pod spec's claim volumes, the claim's bound PV (one GET, cached),
and the kubelet directory of a PV or a subPath mapped to the claim's label."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unlinkwatch.agent.identity.claims import ClaimResolver, pod_claims
from unlinkwatch.agent.identity.kube import pod_info
from unlinkwatch.agent.placement.volumes import pod_volume

from unlinkwatch.kubestub import make_pod


def _pod() -> dict[str, Any]:
    pod = make_pod("db-0", "prod", uid="u1", containers=[("db", "postgres:16", "c" * 64)])
    pod["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}},
                              {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                              {"name": "cache", "emptyDir": {}}]
    return pod


class _Api:
    def __init__(self, claims: dict[tuple[str, str], str]) -> None:
        self.claims = claims
        self.asked: list[tuple[str, str, str]] = []

    def fetch(self, kind: str, ns: str, name: str) -> Mapping[str, Any] | None:
        self.asked.append((kind, ns, name))
        pv = self.claims.get((ns, name))
        return None if pv is None else {"spec": {"volumeName": pv} if pv else {}}


def test_claim_volumes_are_labelled_by_the_claim_and_an_ephemeral_one_by_its_volume() -> None:
    assert pod_claims(_pod()) == {"data": ("data-db-0", "persistentVolumeClaim/data-db-0"),
                                  "scratch": ("db-0-scratch", "ephemeral/scratch")}


def test_a_bound_claim_is_asked_once_and_an_unbound_or_unreadable_one_again_after_a_while() -> None:
    now = [0.0]
    api = _Api({("prod", "data-db-0"): "pv-1", ("prod", "db-0-scratch"): ""})  # the ephemeral claim: not bound yet
    r = ClaimResolver(api.fetch, failure_ttl_seconds=30, clock=lambda: now[0])
    assert r.pvs(_pod()) == {"pv-1": "data"}
    assert r.pvs(_pod()) == {"pv-1": "data"}
    assert api.asked == [("PersistentVolumeClaim", "prod", "data-db-0"),
                         ("PersistentVolumeClaim", "prod", "db-0-scratch")]
    api.claims[("prod", "db-0-scratch")] = "pv-2"
    now[0] = 31.0
    assert r.pvs(_pod()) == {"pv-1": "data", "pv-2": "scratch"}
    assert len(api.asked) == 3


def test_a_pvs_directory_and_a_subpath_of_a_claim_volume_are_named_by_the_claim() -> None:
    info = pod_info(_pod(), "StatefulSet/db", pvs={"pv-1": "data"})
    args = (info.volumes, info.claims, info.pvs)
    assert pod_volume("csi/pv-1", *args) == "persistentVolumeClaim/data-db-0"
    assert pod_volume("subPath/data", *args) == "persistentVolumeClaim/data-db-0"
    assert pod_volume("csi/pv-unknown", *args) == "csi/pv-unknown"  # a claim not read (no RBAC): the PV's name
    assert pod_volume("subPath/cache", *args) == "emptyDir/cache"
    assert pod_volume("emptyDir/cache", *args) == "emptyDir/cache"

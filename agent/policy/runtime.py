"""The node policy while the agent runs: loaded into the kernel at start, reloaded when its file changes (in
place or by a ConfigMap's `..data` swap; a bad file keeps the policy in force), each cgroup's rules kept current
from the cgroup tree and the pod watch, the per-rule counts of what the kernel dropped, and the decision for
the deletions the kernel left to user space (UW_F_POLICY_USER)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.yamlnodes import file_version

from ..decode import Decoder, Deletion
from ..identity import podpath
from ..identity.cgroups import ROOT_CGROUP_ID
from ..identity.resolver import IdentityResolver
from ..metrics import AgentMetrics
from .image import HOST, PENDING, POD, build, cgroup_rules, decide, unknown_rules
from .maps import PolicyMaps
from .model import Policy, PolicyError, load_policy

log = logging.getLogger("unlinkwatch.agent.policy")

SYNC_S = 1.0  # cgroups' rules and the reload check, at most this far apart
LSM_FILE = "/sys/kernel/security/lsm"


@dataclass(frozen=True)
class Enforcement:
    state: str   # enforcing | audit-only | off
    reason: str = ""


def bpf_lsm_missing(lsm_file: str = LSM_FILE) -> str:
    """Why this kernel cannot run BPF LSM programs, or "" when "bpf" is among its active LSMs."""
    try:
        lsms = Path(lsm_file).read_text().strip().split(",")
    except OSError:
        return f"BPF LSM: {lsm_file} is unreadable (is securityfs mounted?)"
    if "bpf" not in lsms:
        return f"BPF LSM is not active in this kernel ({lsm_file}: {','.join(lsms)}; boot with lsm=...,bpf)"
    return ""


def enforcement(policy: Policy | None, lsm_missing: str, probe_enforcing: bool, probe_error: str = "") -> Enforcement:
    """Whether block rules stop deletions here: enforcing when the probe's LSM programs are attached, else
    audit-only with the reason (the kernel has no BPF LSM, or refused the programs); off without a policy."""
    if policy is None:
        return Enforcement("off")
    if probe_enforcing:
        return Enforcement("enforcing")
    return Enforcement("audit-only", lsm_missing or probe_error or "the BPF LSM programs were not attached")


class PolicyRuntime:
    def __init__(self, path: str, policy: Policy, maps: PolicyMaps, decoder: Decoder, identity: IdentityResolver,
                 metrics: AgentMetrics, enforce: Enforcement) -> None:
        self.path = path
        self.policy = policy
        self.maps = maps
        self.decoder = decoder
        self.identity = identity
        self.metrics = metrics
        self.enforcement = enforce
        self.reload_failures = 0
        self._stat = file_version(self.path)
        self._masks: dict[int, int] = {}  # cgroup id -> rules, under the policy in force
        self._slot = 0
        self._retired: tuple[int, Policy] | None = None  # (slot, policy) replaced at the last reload
        self._seen: dict[tuple[int, int], int] = {}  # (slot, rule) -> kernel count already added to the metric
        self._next_sync = 0.0
        self._by_kind: dict[tuple[object, ...], int] = {}  # cgroup_rules() by what a cgroup is, this policy

    def start(self) -> None:
        self._load(self.policy)
        self.metrics.policy_rules.set(len(self.policy.rules))
        self.metrics.policy_enforcing.set(1 if self.enforcement.state == "enforcing" else 0)
        blocks = [r.name for r in self.policy.rules if r.action == "block"]
        if blocks and self.enforcement.state != "enforcing":
            log.warning("block rules run as audit: %s", self.enforcement.reason,
                        extra={"fields": {"rules": blocks}})

    def node_policy(self) -> pb.NodePolicy:
        return pb.NodePolicy(enforcement=self.enforcement.state, reason=self.enforcement.reason, source=self.path,
                             rules=len(self.policy.rules), generation=self.maps.gen,
                             reload_failures=self.reload_failures)

    # --- the loop's tick -------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """From the agent's loop: reload when the file changed, keep cgroups' rules current, count drops."""
        if now >= self._next_sync:
            self._next_sync = now + SYNC_S
            self.reload_if_changed()
            self.sync_cgroups()
        self.count_filtered()

    def reload_if_changed(self) -> bool:
        stat = file_version(self.path)
        if stat == self._stat:
            return False
        self._stat = stat
        try:
            policy = load_policy(self.path)
        except PolicyError as e:
            self.reload_failures += 1
            self.metrics.policy_reload_failures.inc()
            log.error("node policy reload refused; the policy in force stays",
                      extra={"fields": {"error": str(e), "rules": len(self.policy.rules)}})
            return False
        self.count_filtered()
        old_slot, old = self._slot, self.policy
        self._masks = {}
        self.policy = policy
        self._load(policy)
        self._retired = (old_slot, old)
        self.metrics.policy_rules.set(len(policy.rules))
        log.info("node policy reloaded", extra={"fields": {"source": self.path, "rules": len(policy.rules),
                                                           "generation": self.maps.gen}})
        return True

    def sync_cgroups(self) -> int:
        """Each known cgroup's rules under the policy in force; returns how many changed."""
        changed = 0
        live = self._live_cgroups()
        for cgid, path in live.items():
            mask = self._cgroup_mask(path)
            if self._masks.get(cgid) != mask:
                self._masks[cgid] = mask
                self.maps.set_cgroup(cgid, mask)
                changed += 1
        for cgid in [c for c in self._masks if c not in live]:
            del self._masks[cgid]
            self.maps.forget_cgroup(cgid)
        return changed

    def on_cgroup_mkdir(self, cgroup_id: int, path: str) -> None:
        """A new cgroup: classified at once (until then the kernel applies the rules for unknown cgroups)."""
        mask = self._cgroup_mask(path if path.startswith("/") else "/" + path)
        self._masks[cgroup_id] = mask
        self.maps.set_cgroup(cgroup_id, mask)

    def count_filtered(self) -> None:
        """The kernel's drops per ignore rule (only those count) into the metric, as increments."""
        for slot, policy in ((self._slot, self.policy), *((self._retired,) if self._retired else ())):
            ignores = _ignore_rules(policy)
            for i, n in zip(ignores, self.maps.filtered(slot, ignores), strict=True):
                seen = self._seen.get((slot, i), 0)
                if n > seen:
                    self.metrics.filtered.labels(policy.rules[i].name).inc(n - seen)
                    self._seen[(slot, i)] = n
        if self._retired is not None:  # counted once more after its slot went out of force: then cleared
            slot, policy = self._retired
            ignores = _ignore_rules(policy)
            self.maps.zero_filtered(slot, ignores)
            for i in ignores:
                self._seen.pop((slot, i), None)
            self._retired = None

    # --- user space's share ------------------------------------------------------------------------------
    def apply(self, d: Deletion) -> Deletion | None:
        """A deletion the kernel could not decide: the same decision here. None when an ignore rule drops it
        (counted as filtered, never as lost)."""
        mask = self._masks.get(d.cgroup_id)
        if mask is None:  # as the kernel: a cgroup not classified yet
            mask = unknown_rules(self.policy)
        destroyed = bool(d.flags & pb.EVENT_FLAG_REPLACED) or bool(d.rename_flags & 2)
        rule = decide(self.policy, mask, d.op, d.path, d.comm, d.exe, d.rename_to, destroyed)
        if rule < 0:
            return d._replace(action=pb.ACTION_UNSPECIFIED, policy="")
        r = self.policy.rules[rule]
        if r.action == "ignore":
            self.metrics.filtered.labels(r.name).inc()
            return None
        return d._replace(action=pb.ACTION_WOULD_BLOCK, policy=r.name)

    # --- internals ------------------------------------------------------------------------------------------
    def _load(self, policy: Policy) -> None:
        self._by_kind = {}
        masks = {cgid: self._cgroup_mask(path) for cgid, path in self._live_cgroups().items()}
        self._slot, gen = self.maps.load(build(policy), masks)
        self._masks = masks
        names = self.decoder.policy_names
        names[gen & 0xFF] = policy.names()
        for old in [g for g in names if g not in ((gen - 1) & 0xFF, gen & 0xFF)]:
            del names[old]  # records of the generation before may still be in the ring; older ones not

    def _live_cgroups(self) -> dict[int, str]:
        live = dict(self.identity.cgroups.items())
        live.setdefault(ROOT_CGROUP_ID, "/")
        return live

    def _cgroup_mask(self, path: str) -> int:
        """The rules for one cgroup, by what it is: each kind (host, pending pod, namespace and labels) is
        computed once per policy, since every cgroup is looked at again each second."""
        pp = podpath.parse(path)
        info = self.identity.index.pods.get(pp.pod_uid) if pp is not None else None
        if pp is None:
            key: tuple[object, ...] = (HOST,)
        elif info is None:
            key = (PENDING,)
        else:
            key = (POD, info.namespace, tuple(sorted(info.labels.items())))
        mask = self._by_kind.get(key)
        if mask is None:
            if info is None:
                mask = cgroup_rules(self.policy, HOST if pp is None else PENDING)
            else:
                mask = cgroup_rules(self.policy, POD, info.namespace, dict(info.labels))
            self._by_kind[key] = mask
        return mask


def _ignore_rules(policy: Policy) -> list[int]:
    return [i for i, r in enumerate(policy.rules) if r.action == "ignore"]

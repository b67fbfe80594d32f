"""What the kernel's policy maps hold for a policy (agent/bpf/policy.h), and the same decision in user space
for the deletions the kernel could not decide (UW_F_POLICY_USER). Pure: no maps, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from unlinkwatch.pb import events_pb2 as pb

from ..decode import C
from .model import Policy, PolicyRule

# kernel op (kprobe.h enum uw_op) by proto Op
KERNEL_OP = {pb.OP_UNLINK: 1, pb.OP_RMDIR: 2, pb.OP_RENAME: 3}
HOST, POD, PENDING = "host", "pod", "pending"  # what the agent knows of a cgroup
USES = {k: C[f"UW_USES_{k}"] for k in ("PATHS", "NAMES", "COMMS", "EXES", "CGROUPS")}


def _bits(rules: tuple[PolicyRule, ...], keep: Callable[[PolicyRule], bool]) -> int:
    return sum(1 << i for i, r in enumerate(rules) if keep(r))


def _closed(entries: dict[bytes, int]) -> dict[bytes, int]:
    """Each LPM entry's set with the sets of the shorter entries it extends: the kernel reads one entry, the
    longest that matches, so it must carry every rule a shorter match would have given."""
    return {e: mask | _or(m for f, m in entries.items() if len(f) < len(e) and e.startswith(f))
            for e, mask in entries.items()}


def _or(masks: Iterable[int]) -> int:
    out = 0
    for m in masks:
        out |= m
    return out


@dataclass(frozen=True)
class KernelImage:
    """The maps' contents for one policy: LPM keys are the key bytes (their prefix length is their length)."""

    nrules: int
    paths: dict[bytes, int]   # exact path + NUL, or a prefix "/x/" -> rules
    names: dict[bytes, int]   # reversed final name + "/", or a reversed ending -> rules
    exes: dict[bytes, int]    # exe path + NUL -> rules excepting it
    comms: dict[bytes, int]   # command name (at most 15 bytes) -> rules excepting it
    ops: dict[int, int]       # kernel op -> rules
    ignore: int
    block: int
    unknown: int              # the rules for a cgroup the agent has not classified yet
    uses: int = 0             # kprobe.h UW_USES_*: the lookups a deletion needs
    dirs: frozenset[bytes] = frozenset()  # "D/" of each directory holding an exact path (UW_POLICY_DIRS)


def build(policy: Policy) -> KernelImage:
    rules = policy.rules
    paths: dict[bytes, int] = {}
    names: dict[bytes, int] = {}
    exes: dict[bytes, int] = {}
    comms: dict[bytes, int] = {}
    for i, r in enumerate(rules):
        bit = 1 << i
        for p in r.paths:
            if p.kind == "exact":
                paths[p.value + b"\0"] = paths.get(p.value + b"\0", 0) | bit
            elif p.kind == "prefix":
                paths[p.value] = paths.get(p.value, 0) | bit
                if p.value != b"/":  # the directory itself
                    paths[p.value[:-1] + b"\0"] = paths.get(p.value[:-1] + b"\0", 0) | bit
            else:
                key = p.value[::-1] + (b"/" if p.kind == "name" else b"")
                names[key] = names.get(key, 0) | bit
        for exe in r.except_exe:
            exes[exe + b"\0"] = exes.get(exe + b"\0", 0) | bit
        for comm in r.except_comm:
            comms[comm] = comms.get(comm, 0) | bit
    ops = {k: _bits(rules, _has_op(op)) for op, k in KERNEL_OP.items()}
    every = (1 << len(rules)) - 1
    selective = any(cgroup_rules(policy, kind) != every for kind in (HOST, PENDING)) or any(
        not r.selector.selects_all_pods for r in rules) or unknown_rules(policy) != every
    uses = ((USES["PATHS"] if paths else 0) | (USES["NAMES"] if names else 0) | (USES["COMMS"] if comms else 0)
            | (USES["EXES"] if exes else 0) | (USES["CGROUPS"] if selective else 0))
    return KernelImage(len(rules), _closed(paths), _closed(names), exes, comms, ops,
                       ignore=_bits(rules, lambda r: r.action == "ignore"),
                       block=_bits(rules, lambda r: r.action == "block"),
                       unknown=unknown_rules(policy), uses=uses, dirs=exact_dirs(paths))


HEAD_BITS = C["UW_NAME_HEAD_BITS"]
HEAD_MUL = C["UW_NAME_HEAD_MUL"]


def name_heads(names: Iterable[bytes]) -> tuple[int, int]:
    """policy_name_heads for these policy_names keys (kprobe.h, struct uw_name_heads): the length of the shortest
    key (at most 8; 0: no filter) and the filter as one integer, bit b set for each key's first `len` bytes."""
    keys = list(names)
    n = min(8, min((len(k) for k in keys), default=0))
    bits = 0
    if n:
        for k in keys:
            bits |= 1 << head_bit(k[:n])
    return n, bits


def head_bit(head: bytes) -> int:
    """The filter's bit for a key's first bytes, as uw_name_maybe() computes it."""
    x = (int.from_bytes(head, "little") * HEAD_MUL) & 0xFFFFFFFFFFFFFFFF
    return x >> (64 - HEAD_BITS)


def exact_dirs(paths: dict[bytes, int]) -> frozenset[bytes]:
    """The directories ("D/") that hold an exact path entry: in any other, every name's path matches what the
    directory's own prefix ("D/") matches, so the kernel may decide a one-name argument from the directory."""
    return frozenset(e[: e.rindex(b"/") + 1] for e in paths if e.endswith(b"\0"))


def unknown_rules(policy: Policy) -> int:
    """A cgroup not classified yet (made an instant ago) could be a host's or any pod's: every audit and block
    rule applies (nothing protected slips through), and an ignore rule only where it would apply to anything
    (all pods and the host), so that nothing is hidden that should have been reported."""
    return _bits(policy.rules, lambda r: r.action != "ignore" or (r.selector.selects_all_pods and r.selector.host))


def cgroup_rules(policy: Policy, kind: str, namespace: str = "", labels: dict[str, str] | None = None) -> int:
    """The rules for processes of one cgroup: a host cgroup gets the rules with `host: true`; a pod's those
    whose selectors take it; a pod whose metadata is not known yet (PENDING) those that take every pod, plus
    every audit and block rule."""
    if kind == HOST:
        return _bits(policy.rules, lambda r: r.selector.host)
    if kind == PENDING:
        return _bits(policy.rules, lambda r: r.selector.selects_all_pods or r.action != "ignore")
    return _bits(policy.rules, lambda r: r.selector.selects_all_pods or r.selector.pod(namespace, labels))


def _has_op(op: int) -> Callable[[PolicyRule], bool]:
    return lambda r: op in r.ops


def _first(mask: int) -> int:
    """The index of the lowest set bit, -1 for none."""
    return (mask & -mask).bit_length() - 1


def _path_rules(policy: Policy, path: bytes) -> int:
    return _bits(policy.rules, lambda r: r.path_matches(path))


def _who(policy: Policy, op: int, cgroup: int, comm: bytes, exe: bytes) -> int:
    return cgroup & _bits(policy.rules, lambda r: op in r.ops and comm[:15] not in r.except_comm
                          and exe not in r.except_exe)


def decide(policy: Policy, cgroup: int, op: int, path: bytes, comm: bytes, exe: bytes, rename_to: bytes = b"",
           destroyed: bool = False) -> int:
    """The index of the rule that decides a deletion, -1 for none: what uw_decide() in the kernel computes, for
    the deletions it left to user space. `destroyed`: a rename that replaced or exchanged its destination."""
    who = _who(policy, op, cgroup, comm, exe)
    rule = _first(_path_rules(policy, path) & who)
    if op != pb.OP_RENAME:
        return rule
    dst = _first(_path_rules(policy, rename_to) & who) if rename_to else -1
    ignored = [i >= 0 and policy.rules[i].action == "ignore" for i in (rule, dst)]
    if ignored[0] and ignored[1]:
        return rule
    if rule >= 0 and not ignored[0]:
        return rule
    if dst >= 0 and not ignored[1] and destroyed:
        return dst
    return -1

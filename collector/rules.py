"""Alert rules: load and validate the YAML file (errors say FILE:LINE: problem) and match events.

Pure: no threads, no I/O beyond reading the file. docs/RULES.md describes the format.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

import yaml

from unlinkwatch.errors import UserError
from unlinkwatch.eventjson import ACTION_BY_NAME, FILE_TYPE_BY_NAME, OP_BY_NAME
from unlinkwatch.pathglob import GlobError, GlobSet, compile_ancestor_matcher, compile_command_matcher, compile_matcher
from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.yamlnodes import NodeReader, read_file

SEVERITIES = ("info", "low", "medium", "high", "critical")
RESULTS = ("success", "failure", "any")
COND_KEYS = ("paths", "rename_to", "ops", "result", "namespaces", "pod_labels", "comm", "exe", "args", "ancestors",
             "exec_session", "action", "policy", "volumes", "host_paths", "freed", "min_size", "file_types")
RULE_KEYS = ("name", "severity", "description", "match", "except", "enabled")
TOP_KEYS = ("rules", "fold_window", "fold_samples")  # plus "x-..." keys: free, e.g. for YAML anchors
DEFAULT_FOLD_WINDOW_NS = 10_000_000_000
DEFAULT_FOLD_SAMPLES = 5
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNIT_NS = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}

Check = Callable[[pb.DeletionEvent], bool]
_RENAME_EXCHANGE = 2


def second_path(ev: pb.DeletionEvent) -> bytes | None:
    """The other path whose content an event destroyed or changed, which `paths` match besides `path`: the
    destination of a rename that replaced it, or of an exchange (both names then hold new content)."""
    if ev.op == pb.OP_RENAME and ev.rename_to and (
            ev.flags & pb.EVENT_FLAG_REPLACED or ev.rename_flags & _RENAME_EXCHANGE):
        return ev.rename_to
    return None


class RulesError(UserError):
    """A rules file that does not parse or validate; the message is `FILE:LINE: problem`."""


@dataclass(frozen=True)
class Condition:
    """A conjunction of checks over one event (the keys of a `match` or of one `except` entry)."""

    checks: tuple[Check, ...]
    paths: Callable[[bytes], bool] | None  # kept apart from checks: tested first, and indexed by the RuleSet
    globs: tuple[str, ...] = ()

    def test(self, ev: pb.DeletionEvent, path: bytes, path_known: bool = False) -> bool:
        """Whether the event matches with `path` as its path (the event's own, or its second_path())."""
        if not path_known and self.paths is not None and not self.paths(path):
            return False
        for check in self.checks:  # noqa: SIM110 - a loop: all() over a generator costs more than the checks
            if not check(ev):
                return False
        return True


@dataclass(frozen=True)
class Rule:
    name: str
    severity: str
    description: str
    line: int
    match: Condition
    excepts: tuple[Condition, ...]

    def matched_path(self, ev: pb.DeletionEvent) -> bytes:
        """The path of a matching event this rule fired on: its own, or the destination a rename destroyed
        (what an alert shows: `mv /tmp/x /etc/shadow` alerts on /etc/shadow)."""
        other = second_path(ev)
        if other is not None and not self.matches(ev, ev.path):
            return other
        return ev.path

    def matches(self, ev: pb.DeletionEvent, path: bytes, path_known: bool = False) -> bool:
        if not self.match.test(ev, path, path_known):
            return False
        for e in self.excepts:  # noqa: SIM110 - same: this runs per event
            if e.test(ev, path):
                return False
        return True


class RuleSet:
    """The rules in force plus folding settings; immutable once built, swapped whole on reload."""

    def __init__(self, rules: tuple[Rule, ...], fold_window_ns: int = DEFAULT_FOLD_WINDOW_NS,
                 fold_samples: int = DEFAULT_FOLD_SAMPLES, source: str = "") -> None:
        self.rules = rules
        self.fold_window_ns = fold_window_ns
        self.fold_samples = fold_samples
        self.source = source
        self._globset = GlobSet((g, k) for k, r in enumerate(rules) for g in r.match.globs)
        self._anypath = tuple(k for k, r in enumerate(rules) if r.match.paths is None)
        self._path_known = tuple(r.match.paths is not None for r in rules)

    def matching(self, ev: pb.DeletionEvent, path: bytes | None = None) -> list[Rule]:
        """The rules this event triggers, in file order (`path`: the event's, when the caller has it). A
        GlobSet finds the rules whose paths match in about one regex call instead of one per rule: path
        matching is the main cost of evaluation. A rename that replaced or exchanged its destination is
        matched with each of its two paths in turn (each with its rules' exceptions)."""
        if path is None:
            path = ev.path
        ks = self._globset.tags(path)
        other = second_path(ev)
        if other is not None:
            ks = ks + self._globset.tags(other)
        if self._anypath:
            ks = ks + list(self._anypath)
        if not ks:
            return []
        if len(ks) > 1:
            ks = sorted(set(ks))
        rules = self.rules
        if other is not None:
            return [rules[k] for k in ks if rules[k].matches(ev, path) or rules[k].matches(ev, other)]
        known = self._path_known
        return [rules[k] for k in ks if rules[k].matches(ev, path, known[k])]

    def matching_batch(self, events: Sequence[pb.DeletionEvent],
                       paths: Sequence[bytes] | None = None) -> list[tuple[pb.DeletionEvent, list[Rule]]]:
        """(event, the rules it triggers) for each event of a batch that triggers any, in order; `paths`:
        the events' paths, when the caller has them already. Most events trigger nothing, so the GlobSet
        first picks the few whose path some rule may match, for a fraction of matching()'s cost per event."""
        if paths is None:
            paths = [ev.path for ev in events]
        picked: Iterable[int] = range(len(events)) if self._anypath else self._globset.candidates(paths)
        if not self._anypath:
            seconds = [(i, p) for i, ev in enumerate(events) if ev.op == pb.OP_RENAME and (p := second_path(ev))]
            if seconds:
                more = self._globset.candidates([p for _, p in seconds])
                picked = sorted(set(picked).union(seconds[j][0] for j in more))
        out = []
        for i in picked:
            ev = events[i]
            rules = self.matching(ev, paths[i])
            if rules:
                out.append((ev, rules))
        return out


class _Loader(NodeReader):
    """Walks PyYAML nodes so every problem is reported with the line it is on."""

    error = RulesError

    def globs(self, node: yaml.Node, what: str, absolute: bool) -> Callable[[bytes], bool]:
        items = self.strings(node, what)
        for g in items:
            if absolute and not (g.startswith("/") or g.startswith("**")):
                raise self.fail(node, f"{what}: glob {g!r} must start with '/' or '**' (paths are absolute)")
        try:
            return compile_matcher(items)
        except GlobError as e:
            raise self.fail(node, f"{what}: {e}") from None

    def command_globs(self, node: yaml.Node, what: str) -> Callable[[Sequence[bytes]], bool]:
        try:
            return compile_command_matcher(self.strings(node, what))
        except GlobError as e:
            raise self.fail(node, f"{what}: {e}") from None

    def condition(self, node: yaml.Node, what: str, default_result: str | None) -> Condition:
        keys = self.mapping(node, what, COND_KEYS)
        if not keys:
            raise self.fail(node, f"{what} must have at least one of: {', '.join(COND_KEYS)}")
        checks: list[Check] = []
        paths: Callable[[bytes], bool] | None = None
        path_globs: tuple[str, ...] = ()
        if "paths" in keys:
            paths = self.globs(keys["paths"][1], f"{what}.paths", True)
            path_globs = tuple(self.strings(keys["paths"][1], f"{what}.paths"))
        if "rename_to" in keys:
            to = self.globs(keys["rename_to"][1], f"{what}.rename_to", True)
            checks.append(lambda ev: bool(ev.rename_to) and to(ev.rename_to))
        if "ops" in keys:
            ops: set[int] = set()
            for name in self.strings(keys["ops"][1], f"{what}.ops"):
                if name not in OP_BY_NAME:
                    raise self.fail(keys["ops"][1], f"{what}.ops: unknown op {name!r} (unlink, rmdir, rename)")
                ops.add(OP_BY_NAME[name])
            frozen_ops = frozenset(ops)
            checks.append(lambda ev: ev.op in frozen_ops)
        result = default_result
        if "result" in keys:
            result = self.scalar(keys["result"][1]) if isinstance(keys["result"][1], yaml.ScalarNode) else None
            if result not in RESULTS:
                raise self.fail(keys["result"][1], f"{what}.result must be one of: {', '.join(RESULTS)}")
        if result == "success":
            checks.append(lambda ev: ev.result == 0)
        elif result == "failure":
            checks.append(lambda ev: ev.result != 0)
        if "namespaces" in keys:
            ns = self.globs(keys["namespaces"][1], f"{what}.namespaces", False)
            checks.append(lambda ev: bool(ev.pod.namespace) and ns(ev.pod.namespace.encode()))
        if "pod_labels" in keys:
            checks.append(self.labels(keys["pod_labels"][1], f"{what}.pod_labels"))
        if "comm" in keys:
            comm = self.globs(keys["comm"][1], f"{what}.comm", False)
            checks.append(lambda ev: comm(ev.process.comm))
        if "exe" in keys:
            exe = self.globs(keys["exe"][1], f"{what}.exe", False)
            checks.append(lambda ev: exe(ev.process.exe))
        if "args" in keys:
            args = self.command_globs(keys["args"][1], f"{what}.args")
            checks.append(lambda ev: args(ev.process.args))
        if "ancestors" in keys:
            checks.append(self.ancestors(keys["ancestors"][1], f"{what}.ancestors"))
        if "exec_session" in keys:
            want = self.boolean(keys["exec_session"][1], f"{what}.exec_session")
            checks.append(lambda ev: ev.exec_session == want)
        if "action" in keys:
            actions: set[int] = set()
            for name in self.strings(keys["action"][1], f"{what}.action"):
                if name not in ACTION_BY_NAME:
                    raise self.fail(keys["action"][1], f"{what}.action: unknown action {name!r} "
                                                        "(allowed, would-block, blocked)")
                actions.add(ACTION_BY_NAME[name])
            frozen_actions = frozenset(actions)
            checks.append(lambda ev: ev.action in frozen_actions)
        if "policy" in keys:
            policy = self.globs(keys["policy"][1], f"{what}.policy", False)
            checks.append(lambda ev: bool(ev.policy) and policy(ev.policy.encode()))
        if "volumes" in keys:  # the pod volume the file was in: "emptyDir/cache", "hostPath/*", "rootfs"
            volumes = self.globs(keys["volumes"][1], f"{what}.volumes", False)
            checks.append(lambda ev: bool(ev.volume) and volumes(ev.volume.encode()))
        if "host_paths" in keys:  # where it lived on the node
            host_paths = self.globs(keys["host_paths"][1], f"{what}.host_paths", True)
            checks.append(lambda ev: bool(ev.host_path) and host_paths(ev.host_path))
        # what was destroyed: these match only where the kernel read it (file_type set)
        if "freed" in keys:
            freed = self.boolean(keys["freed"][1], f"{what}.freed")
            checks.append(lambda ev: bool(ev.file_type) and ev.freed == freed)
        if "min_size" in keys:
            min_size = self.size(keys["min_size"][1], f"{what}.min_size")
            checks.append(lambda ev: bool(ev.file_type) and ev.size >= min_size)
        if "file_types" in keys:
            types: set[int] = set()
            for name in self.strings(keys["file_types"][1], f"{what}.file_types"):
                if name not in FILE_TYPE_BY_NAME:
                    raise self.fail(keys["file_types"][1], f"{what}.file_types: unknown type {name!r} "
                                                            f"({', '.join(FILE_TYPE_BY_NAME)})")
                types.add(FILE_TYPE_BY_NAME[name])
            frozen_types = frozenset(types)
            checks.append(lambda ev: ev.file_type in frozen_types)
        return Condition(tuple(checks), paths, path_globs)

    def ancestors(self, node: yaml.Node, what: str) -> Check:
        """Any ancestor's comm matches a glob, or its exe one that starts with '/'."""
        try:
            chain = compile_ancestor_matcher(self.strings(node, what))
        except GlobError as e:
            raise self.fail(node, f"{what}: {e}") from None
        return lambda ev: chain(ev.ancestry)

    def labels(self, node: yaml.Node, what: str) -> Check:
        pairs = self.label_globs(node, what)

        def check(ev: pb.DeletionEvent) -> bool:
            labels = ev.pod.labels
            return all(k in labels and rx.match(labels[k].encode()) is not None for k, rx in pairs)

        return check

    def excepts(self, node: yaml.Node, what: str) -> tuple[Condition, ...]:
        if isinstance(node, yaml.SequenceNode):  # a list: each entry excuses when ALL its keys match
            if not node.value:
                raise self.fail(node, f"{what} must not be empty")
            return tuple(self.condition(item, f"{what}[{i}]", None) for i, item in enumerate(node.value))
        keys = self.mapping(node, what, COND_KEYS)  # a mapping: each key on its own excuses
        out = []
        for knode, vnode in keys.values():
            single = yaml.MappingNode("tag:yaml.org,2002:map", [(knode, vnode)], node.start_mark, node.end_mark)
            out.append(self.condition(single, f"{what}", None))
        if not out:
            raise self.fail(node, f"{what} must not be empty")
        return tuple(out)

    def rule(self, node: yaml.Node, index: int) -> Rule | None:
        keys, name, what = self.rule_head(node, index, RULE_KEYS, ("severity", "match"))
        severity = self.string(keys["severity"][1], f"{what}.severity")
        if severity not in SEVERITIES:
            raise self.fail(keys["severity"][1], f"{what}.severity must be one of: {', '.join(SEVERITIES)}")
        description = self.string(keys["description"][1], f"{what}.description") if "description" in keys else name
        match = self.condition(keys["match"][1], f"{what}.match", "success")
        excepts = self.excepts(keys["except"][1], f"{what}.except") if "except" in keys else ()
        if "enabled" in keys:
            enabled = self.scalar(keys["enabled"][1])
            if not isinstance(enabled, bool):
                raise self.fail(keys["enabled"][1], f"{what}.enabled must be true or false")
            if not enabled:
                return None
        return Rule(name, severity, description, node.start_mark.line + 1, match, excepts)

    def document(self) -> RuleSet:
        keys, rules = self.named_list(TOP_KEYS, "rules", self.rule)
        window = parse_duration(self, keys["fold_window"][1]) if "fold_window" in keys else DEFAULT_FOLD_WINDOW_NS
        samples = DEFAULT_FOLD_SAMPLES
        if "fold_samples" in keys:
            samples = self.scalar(keys["fold_samples"][1])
            if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= 100:
                raise self.fail(keys["fold_samples"][1], "fold_samples must be an integer from 1 to 100")
        return RuleSet(tuple(rules), window, samples, self.filename)


def parse_duration(loader: _Loader, node: yaml.Node) -> int:
    """`10s`, `500ms`, `1m`, `1h` or a number of seconds, as nanoseconds; 0 turns folding off."""
    val = loader.scalar(node) if isinstance(node, yaml.ScalarNode) else None
    m = _DURATION.fullmatch(str(val)) if isinstance(val, str | int | float) and not isinstance(val, bool) else None
    if m is None:
        raise loader.fail(node, f"fold_window: {val!r} is not a duration like 10s, 500ms or 1m")
    return int(float(m[1]) * _UNIT_NS[m[2] or "s"])


def parse_rules(text: str, filename: str) -> RuleSet:
    return _Loader(text, filename).document()


def load_rules(path: str) -> RuleSet:
    """Read and validate a rules file. Raises RulesError (a UserError) with `FILE:LINE: problem`."""
    return parse_rules(read_file(path, RulesError), path)


def default_rules_text() -> str:
    return resources.files("unlinkwatch").joinpath("rules/default.yaml").read_text(encoding="utf-8")


def load_default_rules() -> RuleSet:
    """The default pack shipped in the package (unlinkwatch/rules/default.yaml)."""
    return parse_rules(default_rules_text(), "unlinkwatch/rules/default.yaml")

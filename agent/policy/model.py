"""The node policy file: parse and validate (`FILE:LINE: problem`), and the path patterns the kernel can decide.
Pure. docs/POLICY.md describes the format."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from unlinkwatch.errors import UserError
from unlinkwatch.eventjson import OP_BY_NAME
from unlinkwatch.pathglob import GlobError, compile_globs, tokens
from unlinkwatch.yamlnodes import NodeReader, read_file

ACTIONS = ("ignore", "audit", "block")
OPS = ("unlink", "rmdir", "rename")
RULE_KEYS = ("name", "action", "paths", "ops", "namespaces", "pod_labels", "host", "except", "enabled")
EXCEPT_KEYS = ("comm", "exe")
TOP_KEYS = ("policy",)
MAX_RULES = 128  # one bit each in the kernel's rule sets (kprobe.h, UW_POLICY_RULES)
KEY_BYTES = 255  # path bytes in a kernel policy key (kprobe.h, UW_POLICY_KEY)
COMM_LEN = 15  # the kernel keeps 15 bytes of a command name
_GLOB_CHARS = frozenset("*?[")


class PolicyError(UserError):
    """A policy file that does not parse or validate: `FILE:LINE: problem`."""


@dataclass(frozen=True)
class Pattern:
    """A path pattern in a form the kernel decides: `exact` (/etc/shadow), `prefix` (/x/** : the directory and
    everything below it; value is "/x/"), `name` (**/.bash_history: the final name) or `suffix` (**/*.pem: the
    final name ends with it)."""

    kind: str
    value: bytes
    text: str

    def matches(self, path: bytes) -> bool:
        """The same decision the kernel makes, on a canonical absolute path."""
        if self.kind == "exact":
            return path == self.value
        if self.kind == "prefix":
            return path.startswith(self.value) or path == self.value[:-1] or self.value == b"/"
        name = path[path.rfind(b"/") + 1:]
        return name == self.value if self.kind == "name" else name.endswith(self.value)


def classify(glob: str) -> Pattern:
    """The kernel form of one `paths` glob; GlobError naming what is allowed when there is none."""
    toks = tokens(glob)  # escapes (\\xNN, \\*) are literal bytes here
    kinds = [k for k, _ in toks]

    def lit(ts: list[tuple[str, bytes]]) -> bytes | None:
        return b"".join(v for _, v in ts) if all(k == "lit" for k, _ in ts) else None

    whole = lit(toks)
    if whole is not None and whole.startswith(b"/"):
        if len(whole) > KEY_BYTES - 1:
            raise GlobError(f"{glob!r} is longer than {KEY_BYTES - 1} bytes")
        return Pattern("exact", whole, glob)
    if kinds[-1:] == ["**"] and len(toks) >= 2:
        head = lit(toks[:-1])
        if head is not None and head.startswith(b"/") and head.endswith(b"/"):
            if len(head) > KEY_BYTES - 1:
                raise GlobError(f"{glob!r}: the prefix is longer than {KEY_BYTES - 1} bytes")
            return Pattern("prefix", head, glob)
    if kinds[:1] == ["**"] and toks[1:2] == [("lit", b"/")]:
        rest = toks[2:]
        star = rest[:1] == [("*", b"")]
        name = lit(rest[1:] if star else rest)
        if name is not None and b"/" not in name and (star or name):
            if len(name) > KEY_BYTES - 2:
                raise GlobError(f"{glob!r}: the name is longer than {KEY_BYTES - 2} bytes")
            return Pattern("suffix" if star else "name", name, glob)
    raise GlobError(f"{glob!r} cannot be decided in the kernel: use an exact path (/etc/shadow), a directory "
                    "and everything below it (/var/log/audit/**), a final name (**/.bash_history) or a final "
                    "name's ending (**/*.pem)")


@dataclass(frozen=True)
class Selector:
    """Which pods a rule covers (namespaces and labels, both globs), and whether host processes are covered."""

    namespaces: re.Pattern[bytes] | None = None
    pod_labels: tuple[tuple[str, re.Pattern[bytes]], ...] = ()
    host: bool = False

    @property
    def selects_all_pods(self) -> bool:
        return self.namespaces is None and not self.pod_labels

    def pod(self, namespace: str, labels: dict[str, str] | None) -> bool:
        if self.namespaces is not None and self.namespaces.match(namespace.encode()) is None:
            return False
        return all(labels is not None and k in labels and rx.match(labels[k].encode()) is not None
                   for k, rx in self.pod_labels)


@dataclass(frozen=True)
class PolicyRule:
    name: str
    action: str  # ignore | audit | block
    line: int
    paths: tuple[Pattern, ...]
    ops: frozenset[int]  # proto Op values
    selector: Selector = field(default_factory=Selector)
    except_comm: tuple[bytes, ...] = ()
    except_exe: tuple[bytes, ...] = ()

    def path_matches(self, path: bytes) -> bool:
        return any(p.matches(path) for p in self.paths)


@dataclass(frozen=True)
class Policy:
    rules: tuple[PolicyRule, ...]
    source: str = ""

    def names(self) -> list[str]:
        return [r.name for r in self.rules]


class _Reader(NodeReader):
    error = PolicyError

    def rule(self, node: yaml.Node, index: int) -> PolicyRule | None:
        keys, name, what = self.rule_head(node, index, RULE_KEYS, ("action", "paths"))
        action = self.string(keys["action"][1], f"{what}.action")
        if action not in ACTIONS:
            raise self.fail(keys["action"][1], f"{what}.action: unknown action {action!r} "
                                                f"(expected one of: {', '.join(ACTIONS)})")
        pnode = keys["paths"][1]
        patterns = []
        for glob in self.strings(pnode, f"{what}.paths"):
            try:
                patterns.append(classify(glob))
            except GlobError as e:
                raise self.fail(pnode, f"{what}.paths: {e}") from None
        ops = frozenset(OP_BY_NAME.values())
        if "ops" in keys:
            onode = keys["ops"][1]
            names = self.strings(onode, f"{what}.ops")
            for op in names:
                if op not in OPS:
                    raise self.fail(onode, f"{what}.ops: unknown op {op!r} (expected one of: {', '.join(OPS)})")
            ops = frozenset(OP_BY_NAME[op] for op in names)
        namespaces = None
        if "namespaces" in keys:
            nnode = keys["namespaces"][1]
            try:
                namespaces = compile_globs(tuple(self.strings(nnode, f"{what}.namespaces")))
            except GlobError as e:
                raise self.fail(nnode, f"{what}.namespaces: {e}") from None
        labels = self.label_globs(keys["pod_labels"][1], f"{what}.pod_labels") if "pod_labels" in keys else ()
        host = self.boolean(keys["host"][1], f"{what}.host") if "host" in keys else False
        comms: tuple[bytes, ...] = ()
        exes: tuple[bytes, ...] = ()
        if "except" in keys:
            enode = keys["except"][1]
            ex = self.mapping(enode, f"{what}.except", EXCEPT_KEYS)
            if not ex:
                raise self.fail(enode, f"{what}.except must name comm or exe")
            if "comm" in ex:
                comms = tuple(self._comm(ex["comm"][1], f"{what}.except.comm"))
            if "exe" in ex:
                exes = tuple(self._exe(ex["exe"][1], f"{what}.except.exe"))
        if "enabled" in keys and not self.boolean(keys["enabled"][1], f"{what}.enabled"):
            return None
        return PolicyRule(name, action, node.start_mark.line + 1, tuple(patterns), ops,
                          Selector(namespaces, labels, host), comms, exes)

    def _comm(self, node: yaml.Node, what: str) -> list[bytes]:
        out = []
        for comm in self.strings(node, what):
            if _GLOB_CHARS & set(comm):
                raise self.fail(node, f"{what}: {comm!r}: command names are exact (no globs) in the kernel")
            out.append(comm.encode()[:COMM_LEN])  # what the kernel keeps of a longer name
        return out

    def _exe(self, node: yaml.Node, what: str) -> list[bytes]:
        out = []
        for exe in self.strings(node, what):
            if _GLOB_CHARS & set(exe) or not exe.startswith("/"):
                raise self.fail(node, f"{what}: {exe!r}: executables are exact absolute paths in the kernel")
            if len(exe.encode()) > KEY_BYTES - 1:
                raise self.fail(node, f"{what}: {exe!r} is longer than {KEY_BYTES - 1} bytes")
            out.append(exe.encode())
        return out

    def document(self) -> Policy:
        _keys, rules = self.named_list(TOP_KEYS, "policy", self.rule)
        if len(rules) > MAX_RULES:
            raise PolicyError(f"{self.filename}:{rules[MAX_RULES].line}: more than {MAX_RULES} rules")
        return Policy(tuple(rules), self.filename)


def parse_policy(text: str, filename: str) -> Policy:
    return _Reader(text, filename).document()


def load_policy(path: str) -> Policy:
    """Read and validate a policy file. Raises PolicyError (a UserError) with `FILE:LINE: problem`."""
    return parse_policy(read_file(path, PolicyError), path)

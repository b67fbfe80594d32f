"""Reading a YAML file node by node, so that every problem is reported as `FILE:LINE: problem` (one line, no
traceback): shared by the collector's alert rules and the agent's node policy."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import yaml

from unlinkwatch.errors import UserError
from unlinkwatch.pathglob import GlobError, compile_globs


class Named(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def line(self) -> int: ...


N = TypeVar("N", bound=Named)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


_SIZE_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30,
               "Ti": 1 << 40}


def read_file(path: str, error: Callable[[str], UserError]) -> str:
    """A YAML file's text; one that cannot be read raises `error("PATH:1: cannot read: why")`."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}:1: cannot read: {e.strerror if isinstance(e, OSError) else e}") from None


def file_version(path: str) -> tuple[int, ...] | None:
    """What a reloader compares to see that a file changed: follows symlinks, so a ConfigMap update (a new
    `..data` target) is a new inode. None while the file is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class NodeReader:
    """PyYAML nodes of one file; `error` is the UserError subclass its problems raise."""

    error: type[UserError] = UserError

    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        self.yaml = yaml.SafeLoader(text)

    def fail(self, node: yaml.Node | None, problem: str) -> UserError:
        line = node.start_mark.line + 1 if node is not None else 1
        return self.error(f"{self.filename}:{line}: {problem}")

    def root(self, expected: str) -> yaml.Node:
        """The document's single root node; YAML syntax errors and an empty file as FILE:LINE errors."""
        try:
            root = self.yaml.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark is not None else 1
            raise self.error(f"{self.filename}:{line}: YAML: {e.problem or e.context}") from None
        except yaml.YAMLError as e:
            raise self.error(f"{self.filename}:1: YAML: {e}") from None
        if root is None:
            raise self.error(f"{self.filename}:1: the file is empty (expected {expected})")
        return root

    def named_list(self, top_keys: tuple[str, ...], key: str, item: Callable[[yaml.Node, int], N | None],
                   ) -> tuple[dict[str, tuple[yaml.Node, yaml.Node]], list[N]]:
        """The file's top-level mapping and its list under `key`, each entry parsed by `item` (None: left out),
        with unique names."""
        root = self.root(f"a mapping with {key!r}")
        keys = self.mapping(root, "the file", top_keys)
        if key not in keys:
            raise self.fail(root, f"missing top-level {key!r} list")
        lnode = keys[key][1]
        if not isinstance(lnode, yaml.SequenceNode):
            raise self.fail(lnode, f"{key!r} must be a list")
        items = [r for i, n in enumerate(lnode.value) if (r := item(n, i)) is not None]
        seen: dict[str, int] = {}
        for r in items:
            if r.name in seen:
                raise self.error(f"{self.filename}:{r.line}: duplicate rule name {r.name!r} (first on line "
                                 f"{seen[r.name]})")
            seen[r.name] = r.line
        return keys, items

    def rule_head(self, node: yaml.Node, index: int, allowed: tuple[str, ...], required: tuple[str, ...],
                  ) -> tuple[dict[str, tuple[yaml.Node, yaml.Node]], str, str]:
        """A list entry's keys, its checked name, and how problems name it (`rule 'x'`); the `required` keys
        present."""
        keys = self.mapping(node, f"rule #{index + 1}", allowed)
        if "name" not in keys:
            raise self.fail(node, f"rule #{index + 1}: missing 'name'")
        name = self.string(keys["name"][1], "name")
        if not _NAME.fullmatch(name):
            raise self.fail(keys["name"][1], f"rule name {name!r}: use letters, digits and . _ : -")
        what = f"rule {name!r}"
        for key in required:
            if key not in keys:
                raise self.fail(node, f"{what}: missing {key!r}")
        return keys, name, what

    def scalar(self, node: yaml.Node) -> Any:
        return self.yaml.construct_object(node, deep=True)

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            key = self.scalar(k) if isinstance(k, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise self.fail(k, f"{what}: keys must be strings")
            if key in out:
                raise self.fail(k, f"{what}: duplicate key {key!r}")
            if allowed and key not in allowed and not (what == "the file" and key.startswith("x-")):
                raise self.fail(k, f"{what}: unknown key {key!r} (expected one of: {', '.join(allowed)})")
            out[key] = (k, v)
        return out

    def string(self, node: yaml.Node, what: str) -> str:
        val = self.scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(val, bool | int | float):
            val = str(node.value)  # YAML 1.1 reads `off`, `yes`, `1` as non-strings; the text is meant
        if not isinstance(val, str) or not val:
            raise self.fail(node, f"{what} must be a non-empty string")
        return val

    def strings(self, node: yaml.Node, what: str) -> list[str]:
        if isinstance(node, yaml.ScalarNode):
            return [self.string(node, what)]  # a single item is accepted for a one-element list
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, f"{what} must be a non-empty list of strings")
        return [self.string(item, f"{what} item") for item in node.value]

    def boolean(self, node: yaml.Node, what: str) -> bool:
        val = self.scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(val, bool):
            raise self.fail(node, f"{what} must be true or false")
        return val

    def size(self, node: yaml.Node, what: str) -> int:
        """Bytes: an integer, or a Kubernetes quantity (512Ki, 1Mi, 2Gi; 10k, 5M, 1G)."""
        val = self.scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(val, int) and not isinstance(val, bool) and val >= 0:
            return val
        m = re.fullmatch(r"(\d+)\s*(Ki|Mi|Gi|Ti|k|M|G|T)?", val) if isinstance(val, str) else None
        if m is None:
            raise self.fail(node, f"{what} must be a size in bytes: 4096, 512Ki, 1Mi, 2Gi, 10M")
        return int(m[1]) * _SIZE_UNITS[m[2] or ""]

    def label_globs(self, node: yaml.Node, what: str) -> tuple[tuple[str, re.Pattern[bytes]], ...]:
        """`{label: glob over its value}` as (label, compiled glob) pairs; never empty."""
        want: list[tuple[str, re.Pattern[bytes]]] = []
        for key, (_, vnode) in self.mapping(node, what, ()).items():
            val = self.scalar(vnode) if isinstance(vnode, yaml.ScalarNode) else None
            if isinstance(val, bool | int | float):
                val = str(vnode.value)  # `tier: 1` or `canary: true` mean the label's text
            if not isinstance(val, str):
                raise self.fail(vnode, f"{what}.{key} must be a string (a glob over the label's value)")
            try:
                want.append((key, compile_globs((val,))))
            except GlobError as e:
                raise self.fail(vnode, f"{what}.{key}: {e}") from None
        if not want:
            raise self.fail(node, f"{what} must not be empty")
        return tuple(want)

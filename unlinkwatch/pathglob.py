"""Path globs shared by alert rules and `query --path`, matched against whole bytes paths.

Semantics (docs/RULES.md has the table; command lines, compile_command_matcher(), differ only in that `*` spans
`/`):
- `*` any run of bytes inside one segment (never `/`; dotfiles included), `?` one character inside a segment.
- `**` as a whole segment spans zero or more segments: `/a/**/b` matches `/a/b` and `/a/x/y/b`; `**/x`
  matches `x` at any depth; a trailing `/**` matches the directory itself and everything below it.
  `**` inside a segment (`a**b`) spans segments too.
- `[abc]`, `[a-z]`, `[!a-z]` (or `[^a-z]`): one byte from (or not from) the class, never `/`.
- `\\xNN` is the literal byte NN (paths that are not UTF-8 print that way); `\\c` is a literal `c`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from itertools import compress
from typing import Protocol

from unlinkwatch.eventjson import untext

_SEGMENT_CHAR = rb"(?:[\x00-\x2e\x30-\x7f]|[\xc2-\xf4][\x80-\xbf]{1,3}|[\x80-\xff])"  # one char, not "/"
_HEX = frozenset("0123456789abcdefABCDEF")


class GlobError(ValueError):
    """A glob that cannot be compiled; the message says why."""


def tokens(glob: str) -> list[tuple[str, bytes]]:
    """Split a glob into ("lit", bytes) | ("*", b"") | ("**", b"") | ("?", b"") | ("[", body) tokens."""
    out: list[tuple[str, bytes]] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "\\":
            if glob[i + 1 : i + 2] == "x" and len(glob) >= i + 4 and set(glob[i + 2 : i + 4]) <= _HEX:
                out.append(("lit", bytes([int(glob[i + 2 : i + 4], 16)])))
                i += 4
            elif i + 1 < n:
                out.append(("lit", glob[i + 1].encode()))
                i += 2
            else:
                raise GlobError(f"glob {glob!r} ends with a lone backslash")
            continue
        if c == "*":
            j = i
            while j < n and glob[j] == "*":
                j += 1
            out.append(("**" if j - i >= 2 else "*", b""))
            i = j
        elif c == "?":
            out.append(("?", b""))
            i += 1
        elif c == "[":
            start = i + 2 if glob[i + 1 : i + 2] in ("!", "^") else i + 1
            j = glob.find("]", start + 1)  # a "]" first in the class is a literal member
            if j < 0:
                raise GlobError(f"glob {glob!r} has an unclosed '['")
            out.append(("[", untext(glob[i + 1 : j])))
            i = j + 1
        else:
            out.append(("lit", c.encode()))
            i += 1
    return out


def _class(body: bytes) -> bytes:
    negate = body[:1] in (b"!", b"^")
    if negate:
        body = body[1:]
    esc = bytearray()
    for b in body:
        ch = bytes([b])
        esc += b"\\" + ch if ch in b"\\[]&~|^" else ch
    return (rb"[^/" if negate else rb"(?!/)[") + bytes(esc) + b"]"


def glob_regex(glob: str) -> bytes:
    """The regex source (bytes, unanchored) for one glob; anchor it with \\Z to match whole paths."""
    toks = tokens(glob)
    out = bytearray()
    n = len(toks)
    for k, (kind, val) in enumerate(toks):
        prev_slash = k == 0 or toks[k - 1] == ("lit", b"/")
        next_slash = k + 1 < n and toks[k + 1] == ("lit", b"/")
        if kind == "lit":
            if val == b"/" and k > 0 and toks[k - 1][0] == "**" and (k - 1 == 0 or toks[k - 2] == ("lit", b"/")):
                continue  # the slash after a whole-segment "**" is part of its group below
            out += re.escape(val)
        elif kind == "*":
            out += rb"[^/]*"
        elif kind == "?":
            out += _SEGMENT_CHAR
        elif kind == "[":
            out += _class(val)
        elif prev_slash and next_slash:
            out += rb"(?:[^/]*/)*"  # "a/**/b" also matches "a/b"; "**/x" matches "x" and "/x"
        elif prev_slash and k + 1 == n:
            if k > 0 and out.endswith(b"/"):
                del out[-1]
                out += rb"(?:/.*)?" if k > 1 else rb"/.*"  # "/a/**" matches "/a" itself; "/**" is all
            else:
                out += rb".*"
        else:
            out += rb"[^/]*(?:/[^/]*)*"
    return bytes(out)


@lru_cache(maxsize=4096)
def compile_glob(glob: str) -> re.Pattern[bytes]:
    """Compile one glob to a regex matching whole bytes paths. Raises GlobError."""
    return compile_globs((glob,))


@lru_cache(maxsize=1024)
def _compile_many(globs: tuple[str, ...]) -> re.Pattern[bytes]:
    alts = b"|".join(b"(?:" + glob_regex(g) + b")" for g in globs)
    try:
        return re.compile(b"(?:" + alts + rb")\Z", re.DOTALL)
    except re.error as e:
        raise GlobError(f"glob {' '.join(globs)!r} does not compile: {e}") from e


def compile_globs(globs: Iterable[str]) -> re.Pattern[bytes]:
    """One regex for several globs (matches when any does): one regex call per path, not one per glob."""
    return _compile_many(tuple(globs))


def match(glob: str, path: bytes) -> bool:
    return compile_glob(glob).match(path) is not None


def literal_prefix(glob: str) -> bytes:
    """The longest leading directory part of a glob with no wildcard: a coarse prefilter (kernel or SQL)."""
    head = bytearray()
    for kind, val in tokens(glob):
        if kind != "lit":
            return bytes(head[: head.rfind(b"/") + 1]) if b"/" in head else b""
        head += val
    return bytes(head)


class GlobSet:
    """Which of many tagged globs match a path, at a cost that hardly grows with their number.

    Anchored globs are bucketed by their first path segment and each bucket is one regex with a named group
    per tag; floating globs are found by their literal last segment (`**/.bash_history`) or gated by a
    literal they need (`**/.ssh/**` needs ".ssh"). Python's regex engine tries alternatives one by one,
    so one regex over every glob costs a microsecond or more per path; this costs a fraction of that.
    """

    def __init__(self, globs: Iterable[tuple[str, int]]) -> None:
        buckets: dict[bytes | None, list[tuple[str, int]]] = {}
        self._by_last: dict[bytes, list[tuple[re.Pattern[bytes], int]]] = {}
        self._gated: list[tuple[bytes, re.Pattern[bytes], int]] = []
        for glob, tag in globs:
            toks = tokens(glob)
            if toks and toks[0] == ("lit", b"/"):
                first, literal = bytearray(), True
                for kind, val in toks[1:]:
                    if val == b"/":
                        break
                    literal = literal and kind == "lit"
                    first += val
                key: bytes | None = bytes(first) if literal and first else None  # None: "/*/x", "/**"
                buckets.setdefault(key, []).append((glob, tag))
                continue
            rx = compile_glob(glob)
            tail = toks[2:] if toks[:2] == [("**", b""), ("lit", b"/")] else []
            if tail and all(kind == "lit" for kind, _ in tail):
                lit = b"".join(v for _, v in tail)
                self._by_last.setdefault(lit.rsplit(b"/", 1)[-1], []).append((rx, tag))
            else:
                self._gated.append((_needed_literal(toks), rx, tag))
        wild = buckets.pop(None, [])
        self._buckets = {k: _TagChain(v + wild) for k, v in buckets.items()}
        self._wild = _TagChain(wild)
        # candidates(): every anchored glob in one regex, and a gate that any floating match must pass
        # (its literal last segment ends the path, or the literal it needs is in it).
        anchored = [g for ch in (*self._buckets.values(), self._wild) for g in ch.globs]
        self._anchored = compile_globs(sorted(set(anchored))) if anchored else None
        gates = [re.escape(lit) + rb"(?![^\x00])" for lit in self._by_last]  # then a NUL (joined) or the end
        gates += [re.escape(lit) for lit, _, _ in self._gated]
        self._every = any(not lit for lit, _, _ in self._gated)
        self._gate = re.compile(b"|".join(gates)) if gates else None

    def candidates(self, paths: Sequence[bytes]) -> list[int]:
        """The indexes of the paths that some glob may match, in order: every path with a tag is among them,
        and few without one are. Costs a C-level regex call per path (instead of tags()' Python), and
        floating globs are ruled out for a whole batch with one search over its paths joined by NUL, a byte
        no path contains."""
        if self._every:
            return list(range(len(paths)))
        hits: list[int] = []
        if self._anchored is not None:
            hits = list(compress(range(len(paths)), map(self._anchored.match, paths)))
        gate = self._gate
        if gate is not None and gate.search(b"\0".join(paths)) is not None:
            more = compress(range(len(paths)), map(gate.search, paths))
            hits = sorted(set(hits).union(more))
        return hits

    def tags(self, path: bytes) -> list[int]:
        """The tags with at least one glob matching the whole path (a tag may appear twice)."""
        if path[:1] == b"/":
            end = path.find(b"/", 1)
            chain = self._buckets.get(path[1:end] if end > 0 else path[1:], self._wild)
        else:
            chain = self._wild
        out = chain.tags(path) if chain.size else []
        if self._by_last:
            hit = self._by_last.get(path[path.rfind(b"/") + 1 :])
            if hit:
                out = out + [tag for rx, tag in hit if rx.match(path) is not None]
        for lit, rx, tag in self._gated:
            if lit in path and rx.match(path) is not None:
                out = [*out, tag]
        return out


def _needed_literal(toks: list[tuple[str, bytes]]) -> bytes:
    """The longest literal run every match must contain (b"" when there is none)."""
    runs: list[bytes] = []
    run, after_star2 = bytearray(), False
    for kind, val in [*toks, ("end", b"")]:
        if kind == "lit":
            run += val
            continue
        lit = bytes(run)
        if after_star2:
            lit = lit.removeprefix(b"/")  # "**/" may match zero segments, and with them the slash
        if kind == "**":
            lit = lit.removesuffix(b"/")  # "/**" also matches the directory itself
        runs.append(lit)
        run, after_star2 = bytearray(), kind == "**"
    return max(runs, key=len)


class _TagChain:
    """One regex over tagged globs; a match's lastgroup is the first matching tag, and the regex over the
    tags after it finds the next one."""

    def __init__(self, globs: list[tuple[str, int]]) -> None:
        by_tag: dict[int, list[str]] = {}
        for glob, tag in globs:
            by_tag.setdefault(tag, []).append(glob)
        self._tags = sorted(by_tag)
        self.globs = [g for g, _ in globs]
        self._src = [b"(?P<t%d>(?:%s)\\Z)" % (i, b"|".join(glob_regex(g) for g in by_tag[t]))
                     for i, t in enumerate(self._tags)]
        self._rx: dict[int, re.Pattern[bytes]] = {}
        self.size = len(self._tags)

    def _from(self, start: int) -> re.Pattern[bytes]:
        rx = self._rx.get(start)
        if rx is None:
            rx = self._rx[start] = re.compile(b"|".join(self._src[start:]), re.DOTALL)
        return rx

    def tags(self, path: bytes) -> list[int]:
        m = self._from(0).match(path)
        if m is None or m.lastgroup is None:
            return []  # the common case: one regex call
        out: list[int] = []
        while True:
            i = int(m.lastgroup[1:])
            out.append(self._tags[i])
            if i + 1 >= self.size:
                return out
            m = self._from(i + 1).match(path)
            if m is None or m.lastgroup is None:
                return out


def compile_matcher(globs: Iterable[str]) -> Callable[[bytes], bool]:
    """A predicate true when any glob matches; globs without wildcards become one set lookup."""
    literal: set[bytes] = set()
    wild: list[str] = []
    for g in globs:
        toks = tokens(g)
        if all(kind == "lit" for kind, _ in toks):
            literal.add(b"".join(v for _, v in toks))
        else:
            wild.append(g)
    lits = frozenset(literal)
    if not wild:
        return lits.__contains__
    rx = compile_globs(wild)
    if not lits:
        return lambda s: rx.match(s) is not None
    return lambda s: s in lits or rx.match(s) is not None


class NamedProcess(Protocol):
    """What an ancestor matcher reads of a process (a protobuf Process, a decoded one)."""

    @property
    def comm(self) -> bytes: ...
    @property
    def exe(self) -> bytes: ...


def compile_ancestor_matcher(globs: Iterable[str]) -> Callable[[Iterable[NamedProcess]], bool]:
    """A predicate on a chain of processes true when one of them matches a glob: its comm, or its executable
    for a glob that starts with '/' (query --ancestor, the rules' `ancestors`)."""
    items = list(globs)
    comm_globs = [g for g in items if not g.startswith("/")]
    exe_globs = [g for g in items if g.startswith("/")]
    comm = compile_matcher(comm_globs) if comm_globs else None
    exe = compile_matcher(exe_globs) if exe_globs else None
    return lambda chain: any((comm is not None and comm(p.comm)) or (exe is not None and exe(p.exe)) for p in chain)


def command_line(args: Sequence[bytes]) -> bytes:
    """A command line as one string to match: its arguments joined by single spaces."""
    return b" ".join(args)


def compile_command_matcher(globs: Iterable[str]) -> Callable[[Sequence[bytes]], bool]:
    """A predicate on a command line (its arguments) true when any glob matches the arguments joined by spaces.
    Unlike paths, `*` here matches any text, `/` included (`rm -rf *` matches `rm -rf /var/lib/x`); `?`, the
    classes and `\\xNN` are as in paths. `**` means the same as `*`."""
    parts: list[bytes] = []
    for g in globs:
        rx = b""
        for kind, value in tokens(g):
            if kind == "lit":
                rx += re.escape(value)
            elif kind == "[":
                negate = value[:1] in (b"!", b"^")
                body = b"".join(b"\\" + bytes([c]) if bytes([c]) in b"\\[]&~|^" else bytes([c])
                                for c in (value[1:] if negate else value))
                rx += (b"[^" if negate else b"[") + body + b"]"
            elif kind == "?":
                rx += b"."
            else:  # "*" and "**"
                rx += b".*"
        parts.append(rx)
    pattern = re.compile(b"(?:" + b"|".join(parts) + b")\\Z", re.S)
    return lambda args: pattern.match(command_line(args)) is not None

"""Path globs shared by alert rules and `query --path`, matched against whole bytes paths.

Semantics (docs/RULES.md has the table):
- `*` any run of bytes inside one segment (never `/`; dotfiles included), `?` one character inside a segment.
- `**` as a whole segment spans zero or more segments: `/a/**/b` matches `/a/b` and `/a/x/y/b`; `**/x`
  matches `x` at any depth; a trailing `/**` matches the directory itself and everything below it.
  `**` inside a segment (`a**b`) spans segments too.
- `[abc]`, `[a-z]`, `[!a-z]` (or `[^a-z]`): one byte from (or not from) the class, never `/`.
- `\\xNN` is the literal byte NN (paths that are not UTF-8 print that way); `\\c` is a literal `c`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from unlinkwatch.eventjson import untext

_SEGMENT_CHAR = rb"(?:[\x00-\x2e\x30-\x7f]|[\xc2-\xf4][\x80-\xbf]{1,3}|[\x80-\xff])"  # one char, not "/"
_HEX = frozenset("0123456789abcdefABCDEF")


class GlobError(ValueError):
    """A glob that cannot be compiled; the message says why."""


def _tokens(glob: str) -> list[tuple[str, bytes]]:
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
    toks = _tokens(glob)
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
    for kind, val in _tokens(glob):
        if kind != "lit":
            return bytes(head[: head.rfind(b"/") + 1]) if b"/" in head else b""
        head += val
    return bytes(head)

"""Path globs shared by alert rules and `query --path`: `*` and `?` stay within one segment, `**` spans
segments (zero or more), `[...]` is a character class. Paths are bytes; globs are text (\\xNN for bytes)."""

from __future__ import annotations

import re
from functools import lru_cache

from unlinkwatch.eventjson import untext


def _translate(glob: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(glob)
    while i < n:
        c = glob[i : i + 1]
        if glob.startswith(b"**", i):
            j = i + 2
            while glob.startswith(b"*", j):
                j += 1
            at_seg_start = i == 0 or glob[i - 1 : i] == b"/"
            if at_seg_start and glob.startswith(b"/", j):
                out += rb"(?:[^/]*/)*"   # "a/**/b" also matches "a/b"
                j += 1
            elif at_seg_start and j == n:
                out += rb".*"            # "a/**" matches "a/" and everything below
            else:
                out += rb"[^/]*(?:/[^/]*)*"
            i = j
            continue
        if c == b"*":
            out += rb"[^/]*"
        elif c == b"?":
            out += rb"[^/]"
        elif c == b"[":
            j = glob.find(b"]", i + 2)
            if j < 0:
                out += re.escape(c)
            else:
                body = glob[i + 1 : j]
                if body.startswith(b"!"):
                    body = b"^" + body[1:]
                out += b"[" + body.replace(b"\\", b"\\\\") + b"]"
                i = j
        else:
            out += re.escape(c)
        i += 1
    return bytes(out)


@lru_cache(maxsize=4096)
def compile_glob(glob: str) -> re.Pattern[bytes]:
    """Compile a glob to a regex over whole bytes paths. A trailing "/**" also matches the directory itself."""
    raw = untext(glob)
    rx = _translate(raw)
    if raw.endswith(b"/**"):
        rx = _translate(raw[:-3]) + rb"(?:/.*)?"
    return re.compile(rx + rb"\Z", re.DOTALL)


def match(glob: str, path: bytes) -> bool:
    return compile_glob(glob).match(path) is not None


def literal_prefix(glob: str) -> bytes:
    """The longest leading directory part of a glob with no wildcard: a coarse prefilter (kernel or SQL)."""
    raw = untext(glob)
    cut = len(raw)
    for ch in (b"*", b"?", b"["):
        k = raw.find(ch)
        if k >= 0:
            cut = min(cut, k)
    if cut == len(raw):
        return raw
    head = raw[:cut]
    return head[: head.rfind(b"/") + 1] if b"/" in head else b""

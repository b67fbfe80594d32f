"""Addresses of the kernel's own data symbols, from /proc/kallsyms: enforce.h's directory cache reads the sequence
counts of rename_lock and mount_lock, the two the kernel's d_path() validates its walk with. Pure but for the read.

A kernel built without CONFIG_KALLSYMS_ALL lists functions only, and a reader without CAP_SYSLOG (or under
kptr_restrict=2) sees zeros: both give no address, and the caller runs without the cache."""

from __future__ import annotations

import re

KALLSYMS = "/proc/kallsyms"


def parse(text: str, names: tuple[str, ...]) -> dict[str, int]:
    """{name: address} for the data symbols of the kernel image (not a module's) among `names`; a name listed
    with a zero address (hidden) or not at all is left out."""
    if not names:
        return {}
    alt = "|".join(re.escape(n) for n in names)
    out: dict[str, int] = {}
    for m in re.finditer(rf"^([0-9a-fA-F]+) [bBdD] ({alt})$", text, re.M):
        addr = int(m.group(1), 16)
        if addr and m.group(2) not in out:
            out[m.group(2)] = addr
    return out


def addresses(names: tuple[str, ...], path: str = KALLSYMS) -> dict[str, int]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return parse(f.read(), names)
    except OSError:
        return {}

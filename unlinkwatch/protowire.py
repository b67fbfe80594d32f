"""Protobuf wire-format pieces for code that writes message bytes directly (the agent's event encoder,
the collector's query responses): base-128 varints, table-driven below 2**14."""

from __future__ import annotations

_B = [bytes([i]) for i in range(256)]
MIN14 = [_B[i] if i < 0x80 else bytes(((i & 0x7F) | 0x80, i >> 7)) for i in range(1 << 14)]  # 0 .. 2**14-1


def varint(n: int) -> bytes:
    """The varint of an unsigned integer."""
    if n < 0x4000:
        return MIN14[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)

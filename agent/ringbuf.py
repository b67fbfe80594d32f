"""Consumes a BPF ring buffer map by mmap, the way libbpf does, but hands back every record that is
ready in one call: no per-record callback and no wake-up per record (the probes submit without
wake-ups; the agent drains on a short timer)."""

from __future__ import annotations

import mmap
import os
import struct

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class RingBuffer:
    def __init__(self, map_fd: int, size: int) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        self._mask = size - 1
        # consumer page (read-write), then producer page + data mapped twice (read-only) for wrap-free reads
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._data = memoryview(self._prod)[page:]
        self._page = page

    def pending_bytes(self) -> int:
        return int(_U64.unpack_from(self._prod, 0)[0] - _U64.unpack_from(self._cons, 0)[0])

    def drain(self, max_records: int = 65536) -> list[bytes]:
        """Copies out up to max_records ready records and releases their space to the kernel."""
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(self._prod, 0)[0]
        out: list[bytes] = []
        data, mask, unpack = self._data, self._mask, _U32.unpack_from
        while cons < prod and len(out) < max_records:
            off = cons & mask
            length = unpack(data, off)[0]
            if length & _BUSY:
                break  # reserved but not yet committed
            size = length & ~(_BUSY | _DISCARD)
            if not length & _DISCARD:
                out.append(bytes(data[off + _HDR : off + _HDR + size]))
            cons += (size + _HDR + 7) & ~7
        _U64.pack_into(self._cons, 0, cons)
        return out

    def close(self) -> None:
        self._data.release()
        self._prod.close()
        self._cons.close()

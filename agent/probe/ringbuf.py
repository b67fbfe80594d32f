"""Consumes a BPF ring buffer map by mmap, the way libbpf does, but hands back every record that is
ready in one call: no per-record callback and no wake-up per record (the probes submit without
wake-ups; the agent drains on a short timer).

The data area is mapped once, not twice as libbpf does: the kernel inserts every page of the mapping
at mmap time, so each mapping of the area counts whole in the agent's RSS. A record that wraps past the
end is copied in two pieces instead (headers are 8-byte aligned and never wrap).

The positions and headers the kernel shares with us are read and written as single aligned native
loads and stores (memoryview casts). struct's "<Q" packs and unpacks byte by byte: a position read in
the middle of the kernel's update, or a consumer position the kernel reads half written, is off by
16 MiB or more, and the kernel then refuses reservations as if the ring were full."""

from __future__ import annotations

import mmap
import os

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8


class RingBuffer:
    def __init__(self, map_fd: int, size: int) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        self._size = size
        self._mask = size - 1
        # consumer page (read-write), then producer page + data (read-only)
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(map_fd, page + size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._data = memoryview(self._prod)[page:]
        self._page = page
        # single-instruction access to what the kernel shares: consumer_pos, producer_pos, 32-bit headers
        self._cons_pos = memoryview(self._cons).cast("Q")
        self._prod_pos = memoryview(self._prod)[:8].cast("Q")
        self._words = self._data.cast("I")

    def pending_bytes(self) -> int:
        return int(self._prod_pos[0] - self._cons_pos[0])

    def drain(self, max_records: int = 65536) -> list[bytes]:
        """Copies out up to max_records ready records and releases their space to the kernel."""
        cons = self._cons_pos[0]
        prod = self._prod_pos[0]
        out: list[bytes] = []
        data, mask, ring, words = self._data, self._mask, self._size, self._words
        while cons < prod and len(out) < max_records:
            off = cons & mask
            length = words[off >> 2]
            if length & _BUSY:
                break  # reserved but not yet committed
            size = length & ~(_BUSY | _DISCARD)
            if not length & _DISCARD:
                start = off + _HDR
                end = start + size
                if end <= ring:
                    out.append(bytes(data[start:end]))
                elif start >= ring:  # the header filled the area's last 8 bytes: the data starts over
                    out.append(bytes(data[start - ring : end - ring]))
                else:  # wraps: the tail of the area, then its head
                    out.append(bytes(data[start:ring]) + bytes(data[: end - ring]))
            cons += (size + _HDR + 7) & ~7
        self._cons_pos[0] = cons
        return out

    def close(self) -> None:
        for view in (self._words, self._prod_pos, self._cons_pos, self._data):
            view.release()
        self._prod.close()
        self._cons.close()

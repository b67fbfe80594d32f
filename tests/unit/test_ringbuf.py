"""The ring buffer reader against a memfd laid out like a BPF ring buffer map (consumer page, producer
page, data area): records are read in order, discarded ones skipped, busy ones waited for, and a record
that wraps past the end of the (singly mapped) data area comes back whole."""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator

import pytest
from unlinkwatch.agent.probe.ringbuf import RingBuffer

PAGE = os.sysconf("SC_PAGE_SIZE")
SIZE = 4 * PAGE
BUSY, DISCARD = 1 << 31, 1 << 30


class FakeRing:
    def __init__(self) -> None:
        self.fd = os.memfd_create("ringbuf-test")
        os.ftruncate(self.fd, 2 * PAGE + SIZE)
        self.mem = mmap.mmap(self.fd, 2 * PAGE + SIZE)
        self.prod = 0

    def set_cons(self, pos: int) -> None:
        struct.pack_into("<Q", self.mem, 0, pos)
        self.prod = pos
        struct.pack_into("<Q", self.mem, PAGE, pos)

    def cons(self) -> int:
        return int(struct.unpack_from("<Q", self.mem, 0)[0])

    def put(self, payload: bytes, flags: int = 0) -> None:
        off = self.prod % SIZE
        struct.pack_into("<I", self.mem, 2 * PAGE + off, len(payload) | flags)
        for i, b in enumerate(payload):
            self.mem[2 * PAGE + (off + 8 + i) % SIZE] = b
        self.prod += (len(payload) + 8 + 7) & ~7
        struct.pack_into("<Q", self.mem, PAGE, self.prod)

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)


@pytest.fixture
def fake() -> Iterator[FakeRing]:
    f = FakeRing()
    yield f
    f.close()


def test_records_come_in_order_and_discarded_ones_are_skipped(fake: FakeRing) -> None:
    rb = RingBuffer(fake.fd, SIZE)
    fake.put(b"one")
    fake.put(b"gone", DISCARD)
    fake.put(b"three" * 10)
    assert rb.drain() == [b"one", b"three" * 10]
    assert fake.cons() == fake.prod and rb.pending_bytes() == 0
    rb.close()


def test_a_busy_record_stops_the_drain_until_committed(fake: FakeRing) -> None:
    rb = RingBuffer(fake.fd, SIZE)
    fake.put(b"a")
    start = fake.prod
    fake.put(b"b", BUSY)
    assert rb.drain() == [b"a"] and fake.cons() == start
    struct.pack_into("<I", fake.mem, 2 * PAGE + start % SIZE, 1)  # committed
    assert rb.drain() == [b"b"]
    rb.close()


@pytest.mark.parametrize("back", [8, 16, 40, 1000])
def test_a_record_wrapping_past_the_end_comes_back_whole(fake: FakeRing, back: int) -> None:
    fake.set_cons(3 * SIZE - back)  # positions keep counting up across laps
    rb = RingBuffer(fake.fd, SIZE)
    payload = bytes(range(256)) * 8
    fake.put(payload)
    fake.put(b"after")
    assert rb.drain() == [payload, b"after"]
    rb.close()

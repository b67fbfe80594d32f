"""The ingest byte budget shared by all streams: waits when spent, never leaks what a stream held."""

from __future__ import annotations

import threading
import time

from unlinkwatch.collector.ingest.budget import ByteBudget, StreamHold


def test_a_take_that_does_not_fit_waits_for_a_release_and_one_larger_than_all_passes_alone() -> None:
    b = ByteBudget(100)
    assert b.acquire(60, lambda: False)
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(b.acquire(50, lambda: False, poll_s=0.01)))
    t.start()
    time.sleep(0.1)
    assert not got and b.used == 60
    b.release(60)
    t.join(5)
    assert got == [True] and b.used == 50
    b.release(50)
    assert b.acquire(500, lambda: False) and b.used == 500  # nothing else held: let through
    b.release(500)


def test_a_waiting_take_gives_up_when_told_and_takes_nothing() -> None:
    b = ByteBudget(10)
    b.acquire(10, lambda: False)
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert not b.acquire(5, stop.is_set, poll_s=0.01)
    assert b.used == 10


def test_closing_a_stream_returns_what_it_held_even_when_a_take_races_the_close() -> None:
    b = ByteBudget(100)
    h = StreamHold(b)
    assert h.take(30, lambda: False) and h.take(30, lambda: False)
    h.give_back(30)
    assert b.used == 30
    other = StreamHold(b)
    assert other.take(70, lambda: False)
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(h.take(50, lambda: False)))  # waits: 100 used
    t.start()
    time.sleep(0.1)
    h.close()  # the waiting take gives up, and the 30 still held come back
    t.join(5)
    assert result == [False] and b.used == 70
    assert not h.take(1, lambda: False) and b.used == 70  # a take after close returns at once
    other.close()
    assert b.used == 0 and b.peak == 100

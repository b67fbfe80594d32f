"""Ships events to the collector: batches by size and time, a bounded queue, an optional disk spool, and
one bidirectional Ingest stream (batches out, acks in) that reconnects with exponential backoff and jitter.

Delivery is at least once: a batch leaves the queue (and the spool) only on its ack; replays after a
reconnect or restart are deduplicated by the collector on (agent, seq).

With a spool, a batch is written to it while no stream delivers acks (an outage, the first connection), once its
ack is SPOOL_AFTER_S late (a collector that hangs or falls behind), when the batches held in memory pass
HOLD_MAX_BYTES, and when the agent stops. A batch acknowledged in time never touches the disk: writing every batch
cost the shipping agent about 2 us of CPU an event (a 1.2 KB event's bytes into the page cache, then freed on the
ack). What an agent killed outright (SIGKILL, out of memory) held for less than SPOOL_AFTER_S is lost with it, as
what the kernel's ring and the pending batch held always was.

A spool write that fails (a full disk, an I/O error) leaves its batch in memory, counted in
unlinkwatch_agent_spool_write_errors_total and logged once until a write succeeds again; writes are retried
SPOOL_RETRY_S later. Meanwhile what is held in memory beyond HOLD_MAX_BYTES counts against the spool's bound, so a
broken disk and a collector down together drop the oldest batches (counted) instead of growing without end."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from unlinkwatch.codec import batch_bytes
from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.tlsconfig import channel

from ..metrics import AgentMetrics
from .spool import Spool, SpoolFile

log = logging.getLogger("unlinkwatch.agent.ship")
INGEST = "/unlinkwatch.v1.Collector/Ingest"
MAX_BATCH_BYTES = 4 << 20
WINDOW = 8               # batches in flight before waiting for acks
HEARTBEAT_S = 10.0       # an empty batch when idle, so the collector sees the agent and its loss counters
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.2, 5.0
SPOOL_AFTER_S = 1.0      # with a spool: a batch unacknowledged this long after it was made goes to disk
HOLD_MAX_BYTES = 64 << 20  # with a spool: unwritten batches held in memory beyond this go to disk at once
SPOOL_RETRY_S = 1.0      # with a spool: after a failed write, the next one this much later


@dataclass
class ShipperConfig:
    collector: str
    agent_id: str
    node: str
    attach_mode: str
    spool_dir: str | None = None
    spool_max_bytes: int = 512 << 20
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_server_name: str | None = None
    batch_max_events: int = 4096
    batch_max_delay_s: float = 0.2
    queue_max_events: int = 1_000_000
    queue_max_bytes: int = 256 << 20  # without a spool: batches waiting in memory beyond this drop the oldest
    node_policy: Callable[[], pb.NodePolicy] | None = None  # this node's policy, sent with each batch
    spool_after_s: float = SPOOL_AFTER_S
    hold_max_bytes: int = HOLD_MAX_BYTES


@dataclass
class _Entry:
    batch_id: int
    events: int
    data: bytes | None          # None: read it back from the spool file
    file: SpoolFile | None
    own: bool                   # False for batches spooled by an earlier run (another agent id)
    sent_at: float = 0.0
    made_at: float = 0.0
    index: int = 0              # its place in the spool's order, reserved when it was made; 0: never spooled
    size: int = 0               # bytes of its batch
    done: bool = False          # acknowledged or dropped


def _unwritten(e: _Entry) -> bool:
    """A batch for the spool that is only in memory yet (counted in Shipper._held)."""
    return bool(e.index) and e.file is None


class Shipper:
    def __init__(self, cfg: ShipperConfig, metrics: AgentMetrics) -> None:
        self.cfg, self._m = cfg, metrics
        self._cond = threading.Condition()
        self._pending: list[bytes] = []   # serialized DeletionEvents, seqs _pending_seq, _pending_seq + 1, ...
        self._pending_seq = 0
        self._updates: list[pb.IdentityUpdate] = []
        self._first_pending_at = 0.0
        self._outbox: deque[_Entry] = deque()
        self._inflight: deque[_Entry] = deque()
        self._queued = 0                  # events in outbox + inflight
        self._queued_bytes = 0            # their batches' bytes
        self._held = 0                    # bytes of spoolable batches in memory and not yet on disk
        self._acking = False              # a stream delivers acks (False: the next batches go to disk at once)
        self._writing = threading.Lock()  # one _spool_late() at a time: close() may run while the batcher ends
        self._spool_retry_at = 0.0        # after a failed spool write: no other before this (monotonic)
        self._next_batch = 1
        self._last_seq = 0
        self._lost = {"kernel": 0, "queue": 0, "transport": 0}
        self._lost_sent: tuple[int, int, int] = (0, 0, 0)
        self._last_batch_at = time.monotonic()
        self._closing = threading.Event()
        self._stopped = threading.Event()
        self._stream_gen = 0
        self._call: Any = None  # the live stream call, cancelled by close()
        self._spool = Spool(cfg.spool_dir, cfg.spool_max_bytes) if cfg.spool_dir else None
        self._threads = [threading.Thread(target=self._batch_loop, name="ship-batch", daemon=True),
                         threading.Thread(target=self._send_loop, name="ship-send", daemon=True)]
        self._channel = channel(cfg.collector, cfg.tls_cert, cfg.tls_key, cfg.tls_ca, cfg.tls_server_name, options=[
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(BACKOFF_CAP_S * 1000)), ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000)])

    # -- the agent side: never blocks ------------------------------------------------------------------
    def start(self) -> None:
        if self._spool:
            old = self._spool.load()
            for f in old:
                self._outbox.append(_Entry(f.batch_id, f.events, None, f, own=False, size=f.size))
                self._queued += f.events
                self._queued_bytes += f.size
            if old:
                log.info("resending spooled batches", extra={"fields": {"batches": len(old),
                                                                         "events": sum(f.events for f in old)}})
            self._m.spool_bytes.set(self._spool.bytes)
        for t in self._threads:
            t.start()

    def submit(self, events: list[pb.DeletionEvent], updates: list[pb.IdentityUpdate]) -> None:
        """submit_wire() for DeletionEvent objects (tests, tools); their seqs must be consecutive."""
        self.submit_wire(events[0].seq if events else 0, [e.SerializeToString() for e in events], updates)

    def submit_wire(self, first_seq: int, events: list[bytes], updates: list[pb.IdentityUpdate]) -> None:
        """Serialized DeletionEvents numbered first_seq, first_seq + 1, ... continuing the previous
        submission (the pipeline numbers events consecutively), and late identity updates."""
        with self._cond:
            if not self._pending and not self._updates:
                self._first_pending_at = time.monotonic()
            if events:
                if not self._pending:
                    self._pending_seq = first_seq
                self._pending.extend(events)
                self._last_seq = max(self._last_seq, first_seq + len(events) - 1)
            self._updates.extend(updates)
            over = len(self._pending) - self.cfg.queue_max_events
            if over > 0:  # the batcher cannot keep up: drop the oldest, counted
                del self._pending[:over]
                self._pending_seq += over
                self._lose("queue", over)
            if len(self._pending) >= self.cfg.batch_max_events or self._closing.is_set():
                self._cond.notify_all()

    def set_kernel_lost(self, total: int) -> None:
        with self._cond:
            self._lost["kernel"] = max(self._lost["kernel"], total)

    def lost(self) -> dict[str, int]:
        with self._cond:
            return dict(self._lost)

    def backlog(self) -> int:
        """Events not yet acknowledged (pending, queued or in flight)."""
        with self._cond:
            return len(self._pending) + self._queued

    def _lose(self, stage: str, n: int) -> None:
        self._lost[stage] += n
        self._m.lost.labels(stage).inc(n)

    # -- batching --------------------------------------------------------------------------------------
    def _batch_loop(self) -> None:
        cfg = self.cfg
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    has = bool(self._pending or self._updates)
                    due = has and (len(self._pending) >= cfg.batch_max_events or self._closing.is_set()
                                   or now - self._first_pending_at >= cfg.batch_max_delay_s)
                    idle = (not has and not self._outbox and not self._inflight
                            and (now - self._last_batch_at >= HEARTBEAT_S or self._loss_changed()))
                    if due or idle or (self._closing.is_set() and not has) or self._late(now):
                        break
                    self._cond.wait(cfg.batch_max_delay_s / 2 if has else 0.25 if self._held else 0.5)
                if self._closing.is_set() and not has:
                    return
                batch = due or idle  # else only batches held in memory are due on disk
                if batch:
                    first_seq = self._pending_seq if self._pending else self._last_seq + 1
                    events = self._take_events()
                    updates, self._updates = self._updates, []
                    if self._pending or self._updates:
                        self._first_pending_at = time.monotonic()
                    batch_id, self._next_batch = self._next_batch, self._next_batch + 1
            if batch:
                data = batch_bytes(pb.EventBatch(agent=cfg.agent_id, node=cfg.node, batch_id=batch_id,
                                                  identity_updates=updates, attach_mode=cfg.attach_mode,
                                                  first_seq=first_seq,
                                                  policy=cfg.node_policy() if cfg.node_policy else None), events)
                self._enqueue(batch_id, len(events), data, spool=bool(events or updates))
            if self._spool:
                self._spool_late()

    def _take_events(self) -> list[bytes]:
        """Up to batch_max_events and MAX_BATCH_BYTES from the head of the pending list (lock held)."""
        n, size = 0, 0
        limit = min(self.cfg.batch_max_events, len(self._pending))
        while n < limit:
            size += len(self._pending[n]) + 6
            if size > MAX_BATCH_BYTES and n:
                break
            n += 1
        events = self._pending[:n]
        del self._pending[:n]
        self._pending_seq += n
        return events

    def _loss_changed(self) -> bool:
        return (self._lost["kernel"], self._lost["queue"], self._lost["transport"]) != self._lost_sent

    def _enqueue(self, batch_id: int, n: int, data: bytes, spool: bool) -> None:
        e = _Entry(batch_id, n, data, None, own=True, made_at=time.monotonic(),
                   index=self._spool.reserve() if self._spool and spool else 0, size=len(data))
        if self._spool and e.index and not self._acking:  # nothing acknowledges it soon: to disk before it is queued
            e.file = self._put(self._spool, e, data)
            if e.file:
                e.data = None
        with self._cond:
            self._outbox.append(e)
            self._queued += n
            self._queued_bytes += e.size
            if _unwritten(e):
                self._held += len(data)
            self._last_batch_at = time.monotonic()
            self._make_room()
            self._m.queue_depth.set(self._queued + len(self._pending))
            if self._spool:
                self._m.spool_bytes.set(self._spool.bytes)
            self._cond.notify_all()

    def _due(self, e: _Entry, now: float, held: int) -> bool:
        """Whether a batch held in memory is due on disk, with `held` bytes held (lock held): no stream delivers
        acks, more than hold_max_bytes are held, or its ack is spool_after_s late."""
        return not self._acking or held > self.cfg.hold_max_bytes or now - e.made_at >= self.cfg.spool_after_s

    def _late(self, now: float) -> bool:
        """Whether the oldest batch held in memory is due on disk (lock held)."""
        if not self._held or now < self._spool_retry_at:
            return False
        oldest = next((e for e in (*self._inflight, *self._outbox) if _unwritten(e)), None)
        return oldest is not None and self._due(oldest, now, self._held)

    def _spool_late(self, everything: bool = False) -> None:
        """Writes the batches _late() finds due (all that are held, with `everything`), oldest first, outside the
        lock; a batch acknowledged while it was written has its file removed at once."""
        assert self._spool is not None
        with self._writing:
            self._write_due(self._spool, everything)

    def _write_due(self, spool: Spool, everything: bool) -> None:
        with self._cond:
            if not self._held:
                return
            now, held, due = time.monotonic(), self._held, []
            for e in (*self._inflight, *self._outbox):
                if _unwritten(e) and e.data is not None and (everything or self._due(e, now, held)):
                    due.append((e, e.data))
                    held -= len(e.data)
        for e, data in due:
            f = self._put(spool, e, data, now_or_never=everything)
            if f is None:
                break  # the rest stay in memory too, until the retry
            with self._cond:
                if e.done:
                    spool.remove(f)
                    continue
                e.file = f
                self._held -= len(data)
                if e not in self._inflight:
                    e.data = None  # read back from its file when it is sent
        if due:
            self._m.spool_bytes.set(spool.bytes)

    def _put(self, spool: Spool, e: _Entry, data: bytes, now_or_never: bool = False) -> SpoolFile | None:
        """The batch written to the spool, or None when the disk refused it; after a refusal no write is tried
        before the retry time, unless `now_or_never` (the agent stops)."""
        if time.monotonic() < self._spool_retry_at and not now_or_never:
            return None
        try:
            f = spool.put(e.index, e.batch_id, e.events, data)
        except OSError as err:
            self._m.spool_write_errors.inc()
            if not self._spool_retry_at:
                log.error("spool write failed; batches stay in memory", extra={"fields": {
                    "spool": str(spool.dir), "error": err.strerror or str(err), "retry_in_s": SPOOL_RETRY_S}})
            self._spool_retry_at = time.monotonic() + SPOOL_RETRY_S
            return None
        if self._spool_retry_at:
            log.info("spool writable again", extra={"fields": {"spool": str(spool.dir)}})
            self._spool_retry_at = 0.0
        return f

    def _finish(self, e: _Entry) -> bool:
        """An acknowledged or dropped batch's file removed and its memory released (lock held); True if it had a
        file."""
        e.done = True
        self._queued_bytes -= e.size
        if e.file is None:
            if _unwritten(e) and e.data is not None:
                self._held -= len(e.data)
            return False
        if self._spool:
            self._spool.remove(e.file)
        return True

    def _make_room(self) -> None:
        """Drop the oldest batches not in flight while the spool (or, without one, the queue: events or bytes) is
        over its bound.
        The spool's bound covers what is on disk and what is held in memory beyond hold_max_bytes (only while
        writes fail does that stay for long)."""
        def over() -> bool:
            if self._spool:
                return self._spool.bytes + max(0, self._held - self.cfg.hold_max_bytes) > self._spool.max_bytes
            return self._queued > self.cfg.queue_max_events or self._queued_bytes > self.cfg.queue_max_bytes

        while over() and len(self._outbox) > 1:
            old = self._outbox.popleft()
            self._drop(old, "queue")

    def _drop(self, e: _Entry, stage: str) -> None:
        self._queued -= e.events
        self._finish(e)
        self._lose(stage, e.events)
        log.warning("dropped a batch", extra={"fields": {"stage": stage, "events": e.events}})

    # -- sending ---------------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        attempt = 0
        while not self._stopped.is_set():
            with self._cond:
                self._stream_gen += 1
                gen = self._stream_gen
            stream = self._channel.stream_stream(INGEST, request_serializer=lambda b: b,
                                                 response_deserializer=pb.Ack.FromString)
            call = stream(self._requests(gen))
            self._call = call
            try:
                for ack in call:
                    self._on_ack(ack)
                    attempt = 0
                    self._m.connected.set(1)
                err: grpc.RpcError | None = None
            except grpc.RpcError as e:
                err = e
            self._m.connected.set(0)
            self._requeue(err)
            if self._stopped.is_set():
                return
            attempt += 1
            delay = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(attempt, 10)))
            if attempt in (1, 5, 20) or attempt % 100 == 0:
                log.warning("collector stream down; retrying", extra={"fields": {
                    "collector": self.cfg.collector, "attempt": attempt, "retry_in_s": round(delay, 3),
                    "error": err.code().name if isinstance(err, grpc.Call) else str(err)}})
            self._stopped.wait(delay)

    def _requests(self, gen: int) -> Iterator[bytes]:
        while True:
            with self._cond:
                while not (self._outbox and len(self._inflight) < WINDOW):
                    if self._stopped.is_set() or gen != self._stream_gen:
                        return
                    self._cond.wait(0.25)
                if gen != self._stream_gen:
                    return
                e = self._outbox.popleft()
                self._inflight.append(e)
                lost = (self._lost["kernel"], self._lost["queue"], self._lost["transport"])
                self._lost_sent = lost
            data = e.data if e.data is not None else (self._spool.read(e.file) if self._spool and e.file else None)
            if data is None:  # an unreadable spool file: its events are gone, and counted
                with self._cond:
                    self._queued -= e.events
                    self._lose("queue", e.events)
                    e.events = 0
                data = pb.EventBatch(agent=self.cfg.agent_id, batch_id=e.batch_id).SerializeToString()
            if e.own:  # loss counters as of now: a later occurrence of a message field merges into the first
                data += pb.EventBatch(lost=pb.LossCounters(kernel=lost[0], queue=lost[1],
                                                           transport=lost[2])).SerializeToString()
            e.sent_at = time.monotonic()
            yield data

    def _on_ack(self, ack: pb.Ack) -> None:
        with self._cond:
            if not self._inflight:
                return
            e = self._inflight.popleft()
            if ack.batch_id != e.batch_id:
                log.warning("ack out of order", extra={"fields": {"want": e.batch_id, "got": ack.batch_id}})
            self._queued -= e.events
            self._acking = True
            if self._finish(e) and self._spool:
                self._m.spool_bytes.set(self._spool.bytes)
            self._m.queue_depth.set(self._queued + len(self._pending))
            self._cond.notify_all()
        self._m.batches.inc()
        self._m.ship_latency.observe(time.monotonic() - e.sent_at)

    def _requeue(self, err: grpc.RpcError | None) -> None:
        """Unacknowledged batches go back to the head of the queue, in order; a batch the collector
        rejects as malformed would be rejected forever, so it is dropped and counted as transport loss."""
        with self._cond:
            self._stream_gen += 1
            self._acking = False  # the batches held go to disk at the batcher's next look
            if (err is not None and isinstance(err, grpc.Call)
                    and err.code() == grpc.StatusCode.INVALID_ARGUMENT and self._inflight):
                self._drop(self._inflight.popleft(), "transport")
            while self._inflight:
                self._outbox.appendleft(self._inflight.pop())
            self._cond.notify_all()

    # -- shutdown --------------------------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Flush what it can to the collector within timeout; with a spool the rest stays on disk for the
        next start, without one it is counted as lost in transport."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing.set()
            self._cond.notify_all()
        self._threads[0].join(max(0.1, deadline - time.monotonic()))
        with self._cond:
            while (self._outbox or self._inflight) and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            self._stopped.set()
            self._stream_gen += 1
            self._cond.notify_all()
        if self._call is not None:
            self._call.cancel()
        self._threads[1].join(5)
        if self._spool:  # what is still held waits on disk for the next start
            self._spool_late(everything=True)
        with self._cond:
            left = [e for e in (*self._inflight, *self._outbox) if e.file is None and e.events]
            for e in left:
                self._lose("transport", e.events)
            unsent = len(self._pending)
            if unsent and not self._spool:
                self._lose("transport", unsent)
        if left or unsent:
            log.warning("agent stopped with unacknowledged events", extra={"fields": {
                "lost": sum(e.events for e in left) + (0 if self._spool else unsent),
                "spooled": self._spool.bytes if self._spool else 0}})
        self._channel.close()

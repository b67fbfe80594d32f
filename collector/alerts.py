"""Alert engine: rules over new events, folding into one alert per (rule, actor, window), alert history,
the WatchAlerts fan-out, hot reload of the rules file.

Folding (docs/RULES.md): the first deletion that matches a rule for an actor (a pod; on the host, the
node + parent pid + comm) opens a group and is announced at once (the "first notice", with the count of
that ingest batch); later matches within `fold_window` of the first only grow the group; when the window
closes, one summary with the same alert id, the total count and sample paths follows, unless nothing
was added. So `rm -rf` of 10,000 files is one alert (one id), announced within a batch, summarised once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from unlinkwatch.eventjson import text
from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.yamlnodes import file_version

from .metrics import CollectorMetrics
from .rules import RulesError, RuleSet, load_default_rules, load_rules
from .sinks import AlertSink, Delivery

log = logging.getLogger("unlinkwatch.alerts")

HISTORY_LIMIT = 10_000  # alerts replayed by watch(); also the in-memory history when there is no store
SUBSCRIBER_QUEUE = 10_000


class AlertStore(Protocol):
    def save_alerts(self, alerts: Sequence[pb.Alert]) -> None:
        """Insert or replace by `id` (a summary replaces its first notice)."""
        ...

    def alerts_since(self, since_unix_ns: int, limit: int) -> list[pb.Alert]: ...


def fold_key(ev: pb.DeletionEvent) -> tuple[str, ...]:
    """Who did it: the pod, else the container, else (host) node + parent pid + comm, so that
    `xargs rm` and `find -exec rm` (one process per file) fold like one `rm -rf`."""
    uid = ev.pod.uid
    if uid:
        return ("pod", uid)
    cid = ev.container.id
    if cid:
        return ("container", cid)
    return ("host", ev.node, str(ev.process.ppid), text(ev.process.comm))


@dataclass
class _Group:
    alert: pb.Alert
    deadline: float  # monotonic time at which the window closes
    emitted: int     # count at the last emission
    samples: set[bytes]
    first_ns: int    # kept outside the protobuf: plain ints are cheaper in the per-event path
    count: int = 1


class _MemoryHistory:
    """Alert history when the collector runs without a store: the latest version of recent alerts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._alerts: OrderedDict[int, pb.Alert] = OrderedDict()

    def save_alerts(self, alerts: Sequence[pb.Alert]) -> None:
        with self._lock:
            for a in alerts:
                self._alerts[a.id] = a
            while len(self._alerts) > HISTORY_LIMIT:
                self._alerts.popitem(last=False)

    def alerts_since(self, since_unix_ns: int, limit: int) -> list[pb.Alert]:
        with self._lock:
            out = [a for a in self._alerts.values() if a.time_unix_ns >= since_unix_ns]
        return sorted(out, key=lambda a: (a.time_unix_ns, a.id))[:limit]


class AlertEngine:
    def __init__(self, rules_file: str | None, sinks: Sequence[AlertSink], metrics: CollectorMetrics,
                 store: AlertStore | None, *, poll_interval_s: float = 1.0) -> None:
        self.rules_file = rules_file
        self.metrics = metrics
        self.poll_interval_s = poll_interval_s
        self._store: AlertStore = store if store is not None else _MemoryHistory()
        self._deliveries = [Delivery(s, metrics) for s in sinks]
        self._rules = RuleSet(())
        self._groups: dict[tuple[str, tuple[str, ...]], _Group] = {}
        self._lock = threading.Lock()          # groups and id counter
        self._publish_lock = threading.Lock()  # keeps each alert's first notice before its summary
        self._subscribers: set[queue.Queue[pb.Alert]] = set()
        self._next_id = time.time_ns() // 1000  # microseconds: ids stay unique across restarts
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stat: tuple[int, ...] | None = None

    @property
    def rules(self) -> RuleSet:
        return self._rules

    # --- rules -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the rules (RulesError, a UserError, on a bad file), then start the reload and delivery threads."""
        if self.rules_file is None:
            self._set_rules(load_default_rules())
        else:
            self._stat = file_version(self.rules_file)
            self._set_rules(load_rules(self.rules_file))
            self._spawn(self._watch_rules_file, "alert-rules-reload")
        for d in self._deliveries:
            d.start()
        self._spawn(self._close_expired_loop, "alert-fold")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _set_rules(self, rules: RuleSet) -> None:
        self._rules = rules  # one reference swap: evaluate() sees the old set or the new, never a mix
        self.metrics.rules_loaded.set(len(rules.rules))
        log.info("alert rules loaded", extra={"fields": {"source": rules.source, "rules": len(rules.rules)}})

    def reload_if_changed(self) -> bool:
        """Reload when the file changed; a bad file keeps the previous rules (logged and counted)."""
        assert self.rules_file is not None
        stat = file_version(self.rules_file)
        if stat == self._stat:
            return False
        self._stat = stat
        try:
            self._set_rules(load_rules(self.rules_file))
        except RulesError as e:
            self.metrics.rules_reload_failures.inc()
            log.error("alert rules reload rejected; previous rules stay in force",
                      extra={"fields": {"error": str(e), "rules": len(self._rules.rules)}})
            return False
        return True

    def _watch_rules_file(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.reload_if_changed()
            except Exception:  # the watcher must survive anything a file system can do
                log.exception("alert rules watcher error")

    # --- evaluation and folding ----------------------------------------------------------------------
    def evaluate(self, events: Sequence[pb.DeletionEvent], paths: Sequence[bytes] | None = None) -> None:
        """Match new events (`paths`: theirs, when the caller has them); never blocks on sinks (they have
        their own queues and threads)."""
        rules = self._rules
        if not rules.rules:
            return
        window = rules.fold_window_ns
        now = time.monotonic()
        opened: list[_Group] = []
        closed: list[_Group] = []
        hits = rules.matching_batch(events, paths)
        with self._lock:
            for ev, matched in hits:
                actor = fold_key(ev)
                for rule in matched:
                    key = (rule.name, actor)
                    g = self._groups.get(key)
                    if g is not None and (window == 0 or ev.time_unix_ns - g.first_ns >= window):
                        closed.append(self._groups.pop(key))  # out of the window: a new alert starts
                        g = None
                    path = rule.matched_path(ev)
                    if g is None:
                        self._next_id += 1
                        alert = pb.Alert(id=self._next_id, time_unix_ns=ev.time_unix_ns, rule=rule.name,
                                         severity=rule.severity, description=rule.description, count=1,
                                         sample_paths=[path], event=ev)
                        g = _Group(alert, now + window / 1e9, 0, {path}, ev.time_unix_ns)
                        self._groups[key] = g
                        opened.append(g)
                        continue
                    g.count += 1
                    if len(g.samples) < rules.fold_samples and path not in g.samples:
                        g.samples.add(path)
                        g.alert.sample_paths.append(path)
            if window == 0:
                closed.extend(self._groups.pop(k) for k in list(self._groups))
        self._emit(closed, opened)

    def _emit(self, closed: list[_Group], opened: list[_Group]) -> None:
        out: list[pb.Alert] = []
        with self._lock:
            for g in [*closed, *opened]:
                if g.count > g.emitted:  # a group with nothing new since its first notice stays quiet
                    g.emitted = g.alert.count = g.count
                    snapshot = pb.Alert()
                    snapshot.CopyFrom(g.alert)
                    out.append(snapshot)
        for g in opened:
            self.metrics.alerts.labels(g.alert.rule, g.alert.severity).inc()
        if out:
            self._publish(out)

    def flush(self) -> None:
        """Close every open group now (summaries go out); used at shutdown and by tests."""
        with self._lock:
            closed = list(self._groups.values())
            self._groups.clear()
        self._emit(closed, [])

    def _close_expired(self) -> None:
        now = time.monotonic()
        with self._lock:
            expired = [k for k, g in self._groups.items() if g.deadline <= now]
            closed = [self._groups.pop(k) for k in expired]
        if closed:
            self._emit(closed, [])

    def _close_expired_loop(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self._close_expired()
            except Exception:
                log.exception("alert folding error")

    # --- outputs -----------------------------------------------------------------------------------
    def _publish(self, alerts: list[pb.Alert]) -> None:
        with self._publish_lock:
            try:
                self._store.save_alerts(alerts)
            except Exception:  # history is best effort; live outputs still get the alert
                log.exception("saving alerts failed")
            for sub in list(self._subscribers):
                for a in alerts:
                    try:
                        sub.put_nowait(a)
                    except queue.Full:
                        break  # a stalled watcher loses live alerts rather than stalling ingest
            for d in self._deliveries:
                d.offer(alerts)

    def watch(self, since_unix_ns: int, follow: bool, is_active: Callable[[], bool]) -> Iterator[pb.Alert]:
        """History since T (latest version of each alert), then, with follow, live alerts and updates."""
        sub: queue.Queue[pb.Alert] = queue.Queue(SUBSCRIBER_QUEUE)
        if follow:
            with self._publish_lock:
                self._subscribers.add(sub)  # before reading history, so nothing falls between the two
        try:
            latest: dict[int, pb.Alert] = {}
            for a in self._store.alerts_since(since_unix_ns, HISTORY_LIMIT):
                prev = latest.get(a.id)
                if prev is None or a.count >= prev.count:  # a store that appends keeps both versions
                    latest[a.id] = a
            seen = {(a.id, a.count) for a in latest.values()}
            yield from latest.values()
            while follow and is_active() and not self._stop.is_set():
                try:
                    a = sub.get(timeout=0.5)
                except queue.Empty:
                    continue
                if (a.id, a.count) not in seen:
                    yield a
        finally:
            with self._publish_lock:
                self._subscribers.discard(sub)

    def close(self) -> None:
        """Emit pending summaries, deliver what is queued (bounded wait), stop the threads."""
        self.flush()
        self._stop.set()
        for d in self._deliveries:
            d.close()
        for t in self._threads:
            t.join(2.0)

"""What SQLite and PostgreSQL share: the same tables, the same commit (dedup, late identity joins, agent
accounting), the same reads. A backend supplies only what truly differs between the two: connections and
transactions, the schema's types, how rows go in (multi-row INSERT or COPY), how a batch's new identities
are registered, and its "column is one of" condition."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from unlinkwatch.pb import events_pb2 as pb

from .model import (
    AGENT_COLS,
    IDENT_COLUMNS,
    MAX_AGENT_NUM,
    AgentState,
    BatchResult,
    CommitOutcome,
    EventRow,
    IdentKey,
    Prepared,
    account,
    apply_identity,
    fresh_rows,
    ident_key,
    new_events_of,
    row_counts,
)

# One schema, each backend giving its type names. `ident` numbers one (node, pod, container) identity; an
# event's id is `agent number << 40 | seq` (model.py), so the primary key itself rejects replays.
SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
  num {serial} PRIMARY KEY, agent {text} NOT NULL UNIQUE, node {text} NOT NULL DEFAULT '',
  attach_mode {text} NOT NULL DEFAULT '', last_seen_ns {int64} NOT NULL DEFAULT 0,
  events {int64} NOT NULL DEFAULT 0, max_seq {int64} NOT NULL DEFAULT 0,
  lost_kernel {int64} NOT NULL DEFAULT 0, lost_queue {int64} NOT NULL DEFAULT 0,
  lost_transport {int64} NOT NULL DEFAULT 0, gaps {int64} NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS idents (
  num {serial} PRIMARY KEY, node {text} NOT NULL, pod_uid {text} NOT NULL, namespace {text} NOT NULL,
  pod {text} NOT NULL, workload {text} NOT NULL, container {text} NOT NULL, container_id {text} NOT NULL,
  UNIQUE (node, pod_uid, namespace, pod, workload, container, container_id));
CREATE INDEX IF NOT EXISTS idents_pod_uid ON idents (pod_uid);
CREATE INDEX IF NOT EXISTS idents_ns_pod ON idents (namespace, pod);
CREATE INDEX IF NOT EXISTS idents_workload ON idents (workload);
CREATE INDEX IF NOT EXISTS idents_container_id ON idents (container_id);
CREATE TABLE IF NOT EXISTS events (
  id {int64} PRIMARY KEY, time_ns {int64} NOT NULL, op {int16} NOT NULL, result {int32} NOT NULL,
  path {blob} NOT NULL, ident {int32} NOT NULL, identity {int16} NOT NULL, data {blob} NOT NULL);
CREATE INDEX IF NOT EXISTS events_time ON events ({time_key});
CREATE INDEX IF NOT EXISTS events_ident ON events (ident, {time_key});
CREATE INDEX IF NOT EXISTS events_path ON events (path);
CREATE TABLE IF NOT EXISTS alerts (rowid_ {serial64} PRIMARY KEY, alert_id {int64} UNIQUE,
  time_ns {int64} NOT NULL, data {blob} NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_time ON alerts (time_ns);
"""


class SqlStore:
    """The store over one SQL database. Connections: one writer (commits, under a lock), one registry
    connection in autocommit for agent and identity numbers (so rows are built outside the write lock while
    another batch commits; an unused number is harmless), and one reader per thread."""

    PH: ClassVar[str]                                    # the parameter marker
    NO_INDEX: ClassVar[str] = "{}"                       # a column its planner must not use an index for
    CONFLICT: ClassVar[tuple[type[Exception], ...]] = ()  # a concurrent writer inserted some of our ids
    LOCK_ROWS: ClassVar[str] = ""                         # suffix of a SELECT that locks the agents' rows
    _w: Any  # the write connection: execute(sql, params) returns a cursor

    # -- what a backend supplies ------------------------------------------------------------------------
    def _connect_reader(self) -> Any:
        raise NotImplementedError

    def _connect_registry(self) -> Any:
        """A connection in autocommit mode."""
        raise NotImplementedError

    def _connect_writer(self) -> Any:
        """The write connection again, after the server dropped it (_usable)."""
        raise NotImplementedError

    def _insert(self, rows: Sequence[EventRow]) -> int:
        """Insert rows inside the open write transaction; returns how many were inserted."""
        raise NotImplementedError

    def _register_idents(self, reg: Any, keys: list[IdentKey]) -> dict[IdentKey, int]:
        """Register keys on the registry connection in one transaction and return their numbers."""
        raise NotImplementedError

    def _begin(self) -> None:
        """Open the write transaction."""

    def _commit_tx(self) -> None:
        raise NotImplementedError

    def _rollback_tx(self) -> None:
        raise NotImplementedError

    def _end_read(self) -> None:
        """End the implicit transaction reads opened on the writer, where the backend opens one."""

    @staticmethod
    def in_clause(column: str, values: list[Any]) -> tuple[str, list[object]]:
        """The condition "column is one of values" and its parameters."""
        raise NotImplementedError

    def _usable(self, conn: Any) -> bool:
        """False once the server has dropped the connection (a restart, a failover, a killed backend): it is
        opened again before its next use. SQLite's connections are files: always usable."""
        return True

    # -- set-up -----------------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Called by the backend once the writer is connected and the schema exists."""
        ph = self.PH
        self._wlock = threading.Lock()
        self._local = threading.local()
        self._readers: list[Any] = []
        self._reglock = threading.Lock()
        self._reg: Any = None
        where = " AND ".join(f"{c} = {ph}" for c in IDENT_COLUMNS)
        self.INSERT_IDENT = (f"INSERT INTO idents ({', '.join(IDENT_COLUMNS)}) "
                             f"VALUES ({', '.join([ph] * len(IDENT_COLUMNS))}) ON CONFLICT DO NOTHING")
        self.SELECT_IDENT = f"SELECT num FROM idents WHERE {where}"
        self._update_agent = (f"UPDATE agents SET {', '.join(f'{c} = {ph}' for c in AGENT_COLS[1:])} "
                              f"WHERE agent = {ph}")
        self._load_caches()

    def _load_caches(self) -> None:
        self._agent_nums: dict[str, int] = {a: n for n, a in self._w.execute("SELECT num, agent FROM agents")}
        self._idents: dict[IdentKey, int] = {
            tuple(r[1:]): r[0] for r in self._w.execute(f"SELECT num, {', '.join(IDENT_COLUMNS)} FROM idents")}
        self._end_read()

    # -- numbering (any thread, no write lock) ----------------------------------------------------------
    @property
    def idents(self) -> dict[IdentKey, int]:
        """The identity numbers known to this process (read it, never write it)."""
        return self._idents

    def _registry(self) -> Any:
        if self._reg is not None and not self._usable(self._reg):
            with contextlib.suppress(Exception):
                self._reg.close()
            self._reg = None
        if self._reg is None:
            self._reg = self._connect_registry()
        return self._reg

    def _begin_write(self) -> None:
        """The write transaction opened (write lock held), on a new connection if the server dropped the last one;
        the caches are reloaded then, since the numbers of a transaction cut short by the drop no longer exist."""
        if not self._usable(self._w):
            with contextlib.suppress(Exception):
                self._w.close()
            self._w = self._connect_writer()
            with self._reglock:
                self._load_caches()
        self._begin()

    def agent_num(self, agent: str) -> int:
        num = self._agent_nums.get(agent)
        if num is None:
            ph = self.PH
            with self._reglock:
                reg = self._registry()
                reg.execute(f"INSERT INTO agents (agent) VALUES ({ph}) ON CONFLICT DO NOTHING", (agent,))
                row = reg.execute(f"SELECT num FROM agents WHERE agent = {ph}", (agent,)).fetchone()
                num = int(row[0])
                if num > MAX_AGENT_NUM:
                    raise ValueError("too many agents for the storage id space")
                self._agent_nums[agent] = num
        return num

    def new_idents(self, keys: list[IdentKey]) -> dict[IdentKey, int]:
        """All of a batch's new identities in one transaction: one transaction per identity waited for the
        write lock each time (SQLite), or cost a commit and WAL flush each (PostgreSQL), which took seconds
        when a node with a thousand pods first reported."""
        with self._reglock:
            found = self._register_idents(self._registry(), keys)
            self._idents.update(found)
        return {k: found[k] for k in keys}

    def _ident_in_tx(self, key: IdentKey) -> int:
        """The identity's number, registered inside the write transaction (late joins) and not cached: the
        transaction may still roll back."""
        num = self._idents.get(key)
        if num is None:
            self._w.execute(self.INSERT_IDENT, key)
            num = int(self._w.execute(self.SELECT_IDENT, key).fetchone()[0])
        return num

    # -- commits ----------------------------------------------------------------------------------------
    def _rollback(self) -> None:
        if not self._usable(self._w):
            return  # the server dropped the connection and the transaction with it: _begin_write() reopens it
        self._rollback_tx()
        with self._reglock:
            self._load_caches()  # numbers handed out inside the failed transaction no longer exist

    def commit_prepared(self, items: Sequence[Prepared], now_ns: int) -> list[CommitOutcome]:
        """Commit batches in order as one transaction (group commit); each is deduplicated and accounted as if
        alone. If the group fails, each batch is retried alone, so a failure is only its own."""
        with self._wlock:
            try:
                return self._commit_group(items, now_ns)
            except Exception as e:
                self._rollback()
                if len(items) == 1:
                    return [e]
            except BaseException:
                self._rollback()
                raise
            out: list[CommitOutcome] = []
            for p in items:
                try:
                    out.append(self._commit_group([p], now_ns)[0])
                except Exception as e:
                    self._rollback()
                    out.append(e)
                except BaseException:
                    self._rollback()
                    raise
            return out

    def _commit_group(self, items: Sequence[Prepared], now_ns: int) -> list[CommitOutcome]:
        try:
            return self._commit(items, now_ns)
        except self.CONFLICT:
            self._rollback()  # another collector wrote some of these ids between our check and insert: redo
            return self._commit(items, now_ns)

    def _commit(self, items: Sequence[Prepared], now_ns: int) -> list[CommitOutcome]:
        """The batches in order in one transaction, each as if alone (its dedup check sees the rows of the
        batches before it), then one commit. Rows go in first; the agents' rows are read (and, where the
        backend locks rows, locked) after, all at once in name order, so two groups in flight (two writers)
        never wait on each other in a cycle."""
        self._begin_write()
        w, ph = self._w, self.PH
        done: list[tuple[Prepared, int, dict[tuple[int, bool], int], set[int]]] = []
        for p in items:
            existing: set[int] = set()
            if p.rows:
                existing = {i for (i,) in w.execute(f"SELECT id FROM events WHERE id BETWEEN {ph} AND {ph}",
                                                    (p.lo, p.hi))}
            fresh = fresh_rows(p.rows, existing)
            stored = self._insert(fresh)
            for upd in p.batch.identity_updates:
                self._apply_update(upd)
            done.append((p, stored, p.counts if fresh is p.rows else row_counts(fresh), existing))
        clause, args = self.in_clause("agent", sorted({p.batch.agent for p in items}))
        states = {r[0]: AgentState(*r) for r in w.execute(
            f"SELECT {', '.join(AGENT_COLS)} FROM agents WHERE {clause} ORDER BY agent{self.LOCK_ROWS}", args)}
        out: list[CommitOutcome] = []
        for p, stored, counts, existing in done:
            batch = p.batch
            state = account(states.get(batch.agent) or AgentState(agent=batch.agent), batch, stored, now_ns,
                            p.top_seq)
            states[batch.agent] = state
            out.append(BatchResult(new_events=new_events_of(batch.events, stored, existing),
                                   duplicates=len(p.rows) - stored, state=state, counts=counts,
                                   existing=frozenset(existing)))
        for name, st in states.items():
            w.execute(self._update_agent, (*[getattr(st, c) for c in AGENT_COLS[1:]], name))
        self._commit_tx()
        return out

    def _apply_update(self, upd: pb.IdentityUpdate) -> None:
        w, ph = self._w, self.PH
        conds = [(c, v) for c, v in (("pod_uid", upd.pod_uid), ("container_id", upd.container_id)) if v]
        if not conds:
            return
        nums = [n for (n,) in w.execute("SELECT num FROM idents WHERE " + " AND ".join(f"{c} = {ph}" for c, _ in conds),
                                        [v for _, v in conds])]
        if not nums:
            return
        clause, args = self.in_clause("ident", nums)
        changed = []
        for i, data in w.execute(f"SELECT id, data FROM events WHERE {clause} AND identity = {ph}",
                                 [*args, pb.IDENTITY_STATE_UNKNOWN]).fetchall():
            ev = pb.DeletionEvent.FromString(data)
            apply_identity(ev, upd)
            changed.append((self._ident_in_tx(ident_key(ev)), ev.identity, ev.SerializeToString(), i))
        if changed:
            w.cursor().executemany(f"UPDATE events SET ident = {ph}, identity = {ph}, data = {ph} WHERE id = {ph}",
                                   changed)

    def bulk_insert(self, rows: Sequence[EventRow]) -> int:
        """Insert rows without per-batch accounting (benchmarks, imports); returns rows written."""
        with self._wlock:
            try:
                self._begin_write()
                n = self._insert(rows)
                self._commit_tx()
            except BaseException:
                self._rollback()
                raise
            return n

    def save_alerts(self, alerts: Sequence[pb.Alert]) -> None:
        """Insert or replace by alert id: a folded alert is saved at first notice and again with its count."""
        ph = self.PH
        with self._wlock:
            try:
                self._begin_write()
                self._w.cursor().executemany(
                    f"INSERT INTO alerts (alert_id, time_ns, data) VALUES ({ph}, {ph}, {ph}) "
                    "ON CONFLICT (alert_id) DO UPDATE SET data = excluded.data",
                    [(a.id or None, a.time_unix_ns, a.SerializeToString()) for a in alerts])
                self._commit_tx()
            except BaseException:
                self._rollback()
                raise

    def delete_before(self, cutoff_ns: int, chunk: int = 50_000) -> int:
        """Delete events (and alerts) older than cutoff in chunks, so ingest never waits long; returns rows."""
        ph = self.PH
        total = 0
        while True:
            with self._wlock:
                try:
                    self._begin_write()
                    cur = self._w.execute(f"DELETE FROM events WHERE id IN (SELECT id FROM events "
                                          f"WHERE time_ns < {ph} ORDER BY time_ns LIMIT {ph})", (cutoff_ns, chunk))
                    n = int(cur.rowcount)
                    self._w.execute(f"DELETE FROM alerts WHERE time_ns < {ph}", (cutoff_ns,))
                    self._commit_tx()
                except BaseException:
                    self._rollback()
                    raise
            total += n
            if n < chunk:
                return total

    def analyze(self) -> None:
        with self._wlock:
            self._begin_write()
            self._w.execute("ANALYZE")
            self._commit_tx()

    # -- reads ------------------------------------------------------------------------------------------
    def _reader(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or not self._usable(conn):
            conn = self._connect_reader()
            self._local.conn = conn
            with self._wlock:
                self._readers.append(conn)
        return conn

    def read(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        """Rows of a read-only query on this thread's reader connection (the query module's access); once more
        on a new connection when the server had dropped that one (a restart, a failover)."""
        conn = self._reader()
        try:
            return list(conn.execute(sql, args).fetchall())
        except Exception:
            if self._usable(conn):
                raise
        return list(self._reader().execute(sql, args).fetchall())

    def agents(self) -> list[AgentState]:
        rows = self.read(f"SELECT {', '.join(AGENT_COLS)} FROM agents ORDER BY node, agent")
        return [AgentState(*r) for r in rows]

    def alerts_since(self, since_unix_ns: int, limit: int) -> list[pb.Alert]:
        rows = self.read(f"SELECT data FROM alerts WHERE time_ns >= {self.PH} ORDER BY time_ns, rowid_ "
                         f"LIMIT {self.PH}", (since_unix_ns, limit))
        return [pb.Alert.FromString(d) for (d,) in rows]

    def count(self) -> int:
        rows = self.read("SELECT count(*) FROM events")
        return int(rows[0][0]) if rows else 0

    def close(self) -> None:
        with self._wlock:
            for c in self._readers:
                c.close()
            self._readers.clear()
            with self._reglock:  # not while a stream thread registers an identity on it (sqlite3 would crash)
                if self._reg is not None:
                    self._reg.close()
            self._w.close()

"""The embedded store: one SQLite file in WAL mode; one writer connection, one reader connection per thread."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Sequence

from unlinkwatch.collector.ingest import (
    EVENT_COLUMNS,
    IDENT_COLUMNS,
    MAX_AGENT_NUM,
    AgentState,
    EventRow,
    IdentKey,
    account,
    apply_identity,
    event_rows,
    ident_key,
)
from unlinkwatch.collector.store import (
    AGENT_COLS,
    BatchCommits,
    BatchResult,
    CommitOutcome,
    Prepared,
    SqlReads,
    new_events_of,
    row_counts,
)
from unlinkwatch.errors import UserError
from unlinkwatch.pb import events_pb2 as pb

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
  num INTEGER PRIMARY KEY, agent TEXT NOT NULL UNIQUE, node TEXT NOT NULL DEFAULT '',
  attach_mode TEXT NOT NULL DEFAULT '', last_seen_ns INTEGER NOT NULL DEFAULT 0,
  events INTEGER NOT NULL DEFAULT 0, max_seq INTEGER NOT NULL DEFAULT 0,
  lost_kernel INTEGER NOT NULL DEFAULT 0, lost_queue INTEGER NOT NULL DEFAULT 0,
  lost_transport INTEGER NOT NULL DEFAULT 0, gaps INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS idents (
  num INTEGER PRIMARY KEY, node TEXT NOT NULL, pod_uid TEXT NOT NULL, namespace TEXT NOT NULL, pod TEXT NOT NULL,
  workload TEXT NOT NULL, container TEXT NOT NULL, container_id TEXT NOT NULL,
  UNIQUE (node, pod_uid, namespace, pod, workload, container, container_id));
CREATE INDEX IF NOT EXISTS idents_pod_uid ON idents (pod_uid);
CREATE INDEX IF NOT EXISTS idents_ns_pod ON idents (namespace, pod);
CREATE INDEX IF NOT EXISTS idents_workload ON idents (workload);
CREATE INDEX IF NOT EXISTS idents_container_id ON idents (container_id);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY, time_ns INTEGER NOT NULL, op INTEGER NOT NULL, result INTEGER NOT NULL,
  path BLOB NOT NULL, ident INTEGER NOT NULL, identity INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_time ON events (time_ns);
CREATE INDEX IF NOT EXISTS events_ident ON events (ident, time_ns);
CREATE INDEX IF NOT EXISTS events_path ON events (path);
CREATE TABLE IF NOT EXISTS alerts (rowid_ INTEGER PRIMARY KEY, alert_id INTEGER UNIQUE, time_ns INTEGER NOT NULL,
  data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_time ON alerts (time_ns);
"""
ROWS_PER_INSERT = 512  # rows per INSERT statement; see insert_rows
WAL_RESTART_BYTES = 256 << 20  # see SqliteStore._checkpoint_loop
RESTART_WAIT_MS = 2000


def _insert_sql(n: int) -> str:
    one = f"({', '.join('?' * len(EVENT_COLUMNS))})"
    return f"INSERT OR IGNORE INTO events ({', '.join(EVENT_COLUMNS)}) VALUES {', '.join([one] * n)}"


INSERT_EVENTS = _insert_sql(1)
INSERT_EVENTS_MANY = _insert_sql(ROWS_PER_INSERT)


def insert_rows(conn: sqlite3.Connection, rows: Sequence[EventRow]) -> None:
    """Insert rows, ROWS_PER_INSERT per statement. One row per statement spends about as long in the
    sqlite3 module's per-row work as in SQLite, and each statement gives up and takes back the GIL, which
    the busy stream threads then make it wait for; a statement of 512 rows does both once."""
    full = len(rows) - len(rows) % ROWS_PER_INSERT
    if full:
        chain = itertools.chain.from_iterable
        conn.executemany(INSERT_EVENTS_MANY,
                         (tuple(chain(rows[i:i + ROWS_PER_INSERT])) for i in range(0, full, ROWS_PER_INSERT)))
    if full < len(rows):
        conn.executemany(INSERT_EVENTS, rows[full:])


IDENT_WHERE = " AND ".join(f"{c} = ?" for c in IDENT_COLUMNS)
INSERT_IDENT = (f"INSERT OR IGNORE INTO idents ({', '.join(IDENT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(IDENT_COLUMNS))})")
SELECT_IDENT = f"SELECT num FROM idents WHERE {IDENT_WHERE}"


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    # 16 KiB pages for a new file (no effect on an existing one): an index insert rewrites whole pages into the
    # WAL, and with bigger pages a commit touches fewer of them; measured +30% store throughput over 4 KiB.
    conn.execute("PRAGMA page_size=16384")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes, fast commits
    conn.execute("PRAGMA cache_size=-262144")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA mmap_size=1073741824")
    conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run in the store's own thread, off ingest
    return conn


class SqliteStore(BatchCommits, SqlReads):
    PH = "?"
    INSERT_IDENT, SELECT_IDENT = INSERT_IDENT, SELECT_IDENT
    _w: sqlite3.Connection

    @staticmethod
    def _ident_in(nums: list[int]) -> tuple[str, list[object]]:
        return f"ident IN ({', '.join('?' * len(nums))})", list(nums)

    def __init__(self, path: str, checkpoints: bool = True, checkpoint_every_s: float = 0.5,
                 wal_restart_bytes: int = WAL_RESTART_BYTES) -> None:
        self.path = path
        self._checkpoint_every_s, self._wal_restart_bytes = checkpoint_every_s, wal_restart_bytes
        try:
            self._w = _connect(path)
            self._w.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise UserError(f"--db: cannot open SQLite database {path!r}: {e}") from None
        self._wlock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._reglock = threading.Lock()
        self._reg: sqlite3.Connection | None = None
        self._load_caches()
        self._closing = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if checkpoints:
            self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="sqlite-checkpoint",
                                                  daemon=True)
            self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        """PASSIVE checkpoints copy the WAL into the database without stopping the writer. Under constant
        ingest they never catch up with the newest frames, so SQLite never starts the WAL over and the file
        grows without bound (18 GB for 8 M events, measured). Past wal_restart_bytes, a RESTART checkpoint
        holds new write transactions back (up to RESTART_WAIT_MS) while it copies the few frames the passive
        ones left, so the next commit writes the WAL from its start."""
        conn = _connect(self.path)
        conn.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        try:
            while not self._closing.wait(self._checkpoint_every_s):
                _busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if frames * page > self._wal_restart_bytes:
                    conn.execute("PRAGMA wal_checkpoint(RESTART)")
        finally:
            conn.close()

    def _load_caches(self) -> None:
        self._agent_nums: dict[str, int] = {a: n for n, a in self._w.execute("SELECT num, agent FROM agents")}
        self._idents: dict[IdentKey, int] = {
            tuple(r[1:]): r[0] for r in self._w.execute(f"SELECT num, {', '.join(IDENT_COLUMNS)} FROM idents")}

    # -- writing ---------------------------------------------------------------------------------------
    # Agent and identity numbers are registered on a connection of their own, committed at once, so rows
    # can be built outside the write lock while another batch is being inserted (an unused number is
    # harmless). Inside a write transaction only _ident_in_tx may add one, to avoid waiting on ourselves.
    def _registry(self) -> sqlite3.Connection:
        if self._reg is None:
            self._reg = _connect(self.path)
        return self._reg

    def _agent_num(self, agent: str) -> int:
        num = self._agent_nums.get(agent)
        if num is None:
            with self._reglock:
                reg = self._registry()
                reg.execute("INSERT OR IGNORE INTO agents (agent) VALUES (?)", (agent,))
                num = int(reg.execute("SELECT num FROM agents WHERE agent = ?", (agent,)).fetchone()[0])
                if num > MAX_AGENT_NUM:
                    raise ValueError("too many agents for the storage id space")
                self._agent_nums[agent] = num
        return num

    def _new_idents(self, keys: list[IdentKey]) -> dict[IdentKey, int]:
        """One write transaction for all of a batch's new identities: each transaction waits for the write
        lock, which the commit process holds for most of the time under load."""
        with self._reglock:
            reg = self._registry()
            reg.execute("BEGIN IMMEDIATE")
            try:
                reg.executemany(INSERT_IDENT, keys)
                reg.execute("COMMIT")
            except BaseException:
                reg.execute("ROLLBACK")
                raise
            out = {k: int(reg.execute(SELECT_IDENT, k).fetchone()[0]) for k in keys}
            self._idents.update(out)
            return out

    def _load_state(self, agent: str) -> AgentState:
        row = self._w.execute(f"SELECT {', '.join(AGENT_COLS)} FROM agents WHERE agent = ?", (agent,)).fetchone()
        return AgentState(*row) if row else AgentState(agent=agent)

    def _begin(self) -> None:
        self._w.execute("BEGIN IMMEDIATE")

    def _rollback(self) -> None:
        self._w.execute("ROLLBACK")
        with self._reglock:
            self._load_caches()  # numbers handed out inside the failed transaction no longer exist

    def commit_prepared(self, items: Sequence[Prepared], now_ns: int) -> list[CommitOutcome]:
        with self._wlock:
            try:
                self._begin()
                out: list[CommitOutcome] = [self._commit_one(p, now_ns) for p in items]
                self._w.execute("COMMIT")
                return out
            except Exception as e:
                self._rollback()
                if len(items) == 1:
                    return [e]
            except BaseException:
                self._rollback()
                raise
            return [self._commit_alone(p, now_ns) for p in items]

    def _commit_alone(self, p: Prepared, now_ns: int) -> CommitOutcome:
        try:
            self._begin()
            res = self._commit_one(p, now_ns)
            self._w.execute("COMMIT")
            return res
        except Exception as e:
            self._rollback()
            return e
        except BaseException:
            self._rollback()
            raise

    def _commit_one(self, p: Prepared, now_ns: int) -> BatchResult:
        """One batch inside the open write transaction."""
        w, batch, rows = self._w, p.batch, p.rows
        events = batch.events
        existing: set[int] = set()
        counts = p.counts
        if rows:
            existing = {i for (i,) in w.execute("SELECT id FROM events WHERE id BETWEEN ? AND ?", (p.lo, p.hi))}
            if existing:
                rows = [r for r in rows if r[0] not in existing]
                counts = row_counts(rows)
        before = w.total_changes
        insert_rows(w, rows)
        stored = w.total_changes - before  # repeats inside one batch are ignored too
        for upd in batch.identity_updates:
            self._apply_update(upd)
        state = account(self._load_state(batch.agent), batch, stored, now_ns, p.top_seq)
        w.execute(f"UPDATE agents SET {', '.join(c + ' = ?' for c in AGENT_COLS[1:])} WHERE num = ?",
                  (*[getattr(state, c) for c in AGENT_COLS[1:]], p.agent_num))
        new_events = new_events_of(events, stored, existing)
        return BatchResult(new_events=new_events, duplicates=len(p.rows) - stored, state=state, counts=counts,
                           existing=frozenset(existing))

    def _apply_update(self, upd: pb.IdentityUpdate) -> None:
        conds = [(c, v) for c, v in (("pod_uid", upd.pod_uid), ("container_id", upd.container_id)) if v]
        if not conds:
            return
        nums = [n for (n,) in self._w.execute(
            "SELECT num FROM idents WHERE " + " AND ".join(f"{c} = ?" for c, _ in conds), [v for _, v in conds])]
        if not nums:
            return
        marks = ", ".join("?" * len(nums))
        changed = []
        for i, data in self._w.execute(f"SELECT id, data FROM events WHERE ident IN ({marks}) AND identity = ?",
                                       [*nums, pb.IDENTITY_STATE_UNKNOWN]).fetchall():
            ev = pb.DeletionEvent.FromString(data)
            apply_identity(ev, upd)
            key = ident_key(ev)
            changed.append((self._ident_in_tx(key), ev.identity, ev.SerializeToString(), i))
        self._w.executemany("UPDATE events SET ident = ?, identity = ?, data = ? WHERE id = ?", changed)

    def bulk_insert(self, agent: str, events: Sequence[pb.DeletionEvent]) -> int:
        rows = event_rows(self._agent_num(agent), events, self._idents, self._new_idents, agent=agent)
        with self._wlock:
            self._begin()
            try:
                before = self._w.total_changes
                insert_rows(self._w, rows)
                self._w.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return self._w.total_changes - before

    def save_alerts(self, alerts: Sequence[pb.Alert]) -> None:
        with self._wlock:
            # a folded alert is saved at first notice and again, same id, with its final count
            self._w.executemany("INSERT INTO alerts (alert_id, time_ns, data) VALUES (?, ?, ?) "
                                "ON CONFLICT(alert_id) DO UPDATE SET data = excluded.data",
                                [(a.id or None, a.time_unix_ns, a.SerializeToString()) for a in alerts])

    def delete_before(self, cutoff_ns: int, chunk: int = 50_000) -> int:
        total = 0
        while True:
            with self._wlock:
                n = self._w.execute("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time_ns < ? "
                                    "ORDER BY time_ns LIMIT ?)", (cutoff_ns, chunk)).rowcount
                self._w.execute("DELETE FROM alerts WHERE time_ns < ?", (cutoff_ns,))
            total += n
            if n < chunk:
                return total

    # -- reading ---------------------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
            with self._wlock:
                self._readers.append(conn)
        return conn

    def analyze(self) -> None:
        with self._wlock:
            self._w.execute("ANALYZE")

    def close(self) -> None:
        self._closing.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=10)
        with self._wlock:
            for c in self._readers:
                c.close()
            self._readers.clear()
            with self._reglock:  # not while a stream thread registers an identity on it (sqlite3 would crash)
                if self._reg is not None:
                    self._reg.close()
            self._w.close()

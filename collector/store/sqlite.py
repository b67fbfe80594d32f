"""The embedded store: one SQLite file in WAL mode (what differs from PostgreSQL; the rest is sql.SqlStore)."""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

from unlinkwatch.errors import UserError

from .model import EVENT_COLUMNS, EventRow, IdentKey
from .sql import SCHEMA as SQL_SCHEMA
from .sql import SqlStore

# INTEGER PRIMARY KEY makes `id` the rowid, which every SQLite index carries: events_time needs no id.
SCHEMA = SQL_SCHEMA.format(serial="INTEGER", serial64="INTEGER", int64="INTEGER", int32="INTEGER", int16="INTEGER",
                           text="TEXT", blob="BLOB", time_key="time_ns")
log = logging.getLogger("unlinkwatch.collector.store")
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


class SqliteStore(SqlStore):
    PH = "?"
    NO_INDEX = "+{}"  # SQLite's unary plus: the condition still holds, the index on the column is not used
    _w: sqlite3.Connection

    def __init__(self, path: str, checkpoints: bool = True, checkpoint_every_s: float = 0.5,
                 wal_restart_bytes: int = WAL_RESTART_BYTES) -> None:
        self.path = path
        self._checkpoint_every_s, self._wal_restart_bytes = checkpoint_every_s, wal_restart_bytes
        try:
            self._w = _connect(path)
            self._w.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise UserError(f"--db: cannot open SQLite database {path!r}: {e}") from None
        self._setup()
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
        failing = False
        try:
            while not self._closing.wait(self._checkpoint_every_s):
                try:
                    _busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames * page > self._wal_restart_bytes:
                        conn.execute("PRAGMA wal_checkpoint(RESTART)")
                except sqlite3.Error as e:  # a full disk: tried again next time, or the WAL would grow for good
                    if not failing:
                        log.warning("WAL checkpoint failed; retrying", extra={"fields": {"error": str(e)}})
                    failing = True
                    continue
                if failing:
                    log.info("WAL checkpoints work again")
                    failing = False
        finally:
            conn.close()

    # Connections are in autocommit mode (isolation_level=None): transactions are explicit.
    def _connect_reader(self) -> sqlite3.Connection:
        return _connect(self.path)

    def _connect_registry(self) -> sqlite3.Connection:
        return _connect(self.path)

    def _begin(self) -> None:
        self._w.execute("BEGIN IMMEDIATE")

    def _commit_tx(self) -> None:
        self._w.execute("COMMIT")

    def _rollback_tx(self) -> None:
        if self._w.in_transaction:
            self._w.execute("ROLLBACK")

    @staticmethod
    def in_clause(column: str, values: list[Any]) -> tuple[str, list[object]]:
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    def _insert(self, rows: Sequence[EventRow]) -> int:
        before = self._w.total_changes
        insert_rows(self._w, rows)
        return self._w.total_changes - before

    def _register_idents(self, reg: sqlite3.Connection, keys: list[IdentKey]) -> dict[IdentKey, int]:
        """One write transaction: each waits for the write lock, which the commit process holds for most of
        the time under load."""
        reg.execute("BEGIN IMMEDIATE")
        try:
            reg.executemany(self.INSERT_IDENT, keys)
            reg.execute("COMMIT")
        except BaseException:
            reg.execute("ROLLBACK")
            raise
        return {k: int(reg.execute(self.SELECT_IDENT, k).fetchone()[0]) for k in keys}

    def close(self) -> None:
        self._closing.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=10)
        super().close()

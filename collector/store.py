"""The store interface shared by SQLite and PostgreSQL, query filters, and `--db URL` dispatch.

Query order: oldest first by (time, storage id), which reads naturally for "what did pod X delete since
10:00"; page tokens carry the last (time, id) returned."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol

from unlinkwatch.collector.ingest import (
    MAX_SEQ,
    AgentState,
    EventRow,
    IdentKey,
    event_rows,
    seq_of,
    validate_header,
)
from unlinkwatch.errors import UserError
from unlinkwatch.pathglob import compile_glob, literal_prefix
from unlinkwatch.pb import events_pb2 as pb

DEFAULT_DB = "sqlite:///unlinkwatch.db"
_ID, _PATH, _OP_RESULT = itemgetter(0), itemgetter(4), itemgetter(2, 3)  # EVENT_COLUMNS positions
MAX_QUERY_LIMIT = 100_000


@dataclass
class BatchResult:
    new_events: Sequence[pb.DeletionEvent]  # the batch's own event list when all are new (no copy)
    duplicates: int
    state: AgentState
    counts: dict[tuple[int, bool], int] = field(default_factory=dict)  # (op, succeeded) -> new events
    existing: frozenset[int] = frozenset()  # storage ids of the batch that were stored before (replays)


@dataclass
class Prepared:
    """A validated batch with its event rows built (outside the write lock), ready to commit. What can be
    worked out from the rows alone is worked out here too: the commit holds the write lock and the GIL."""
    batch: pb.EventBatch
    agent_num: int
    rows: list[EventRow]
    lo: int = 0           # lowest and highest storage id of the rows
    hi: int = 0
    counts: dict[tuple[int, bool], int] = field(default_factory=dict)  # (op, succeeded) -> rows

    @classmethod
    def of(cls, batch: pb.EventBatch, agent_num: int, rows: list[EventRow]) -> Prepared:
        if not rows:
            return cls(batch, agent_num, rows)
        ids = list(map(_ID, rows))
        return cls(batch, agent_num, rows, min(ids), max(ids), row_counts(rows))

    def paths(self) -> list[bytes]:
        return list(map(_PATH, self.rows))

    @property
    def top_seq(self) -> int:
        return self.hi & MAX_SEQ


def new_events_of(events: Sequence[pb.DeletionEvent], stored: int,
                  existing_ids: Set[int]) -> Sequence[pb.DeletionEvent]:
    """The events of a batch that were new: not stored before and not a repeat inside the batch. When all
    `stored` were (the usual case), the batch's own list, not a copy."""
    if stored == len(events):
        return events
    skip = {seq_of(i) for i in existing_ids}
    out = []
    for ev in events:
        if ev.seq not in skip:
            skip.add(ev.seq)
            out.append(ev)
    return out


def row_counts(rows: Sequence[EventRow]) -> dict[tuple[int, bool], int]:
    out: dict[tuple[int, bool], int] = {}
    for (op, result), n in Counter(map(_OP_RESULT, rows)).items():  # counted in C, then folded by success
        key = (op, result == 0)
        out[key] = out.get(key, 0) + n
    return out


CommitOutcome = BatchResult | Exception


@dataclass(frozen=True)
class EventFilter:
    namespace: str = ""
    pod: str = ""
    pod_uid: str = ""
    container: str = ""
    workload: str = ""
    node: str = ""
    path_glob: str = ""
    since_ns: int = 0
    until_ns: int = 0   # exclusive; 0 = no bound

    @classmethod
    def from_request(cls, q: pb.QueryRequest) -> EventFilter:
        return cls(namespace=q.namespace, pod=q.pod, pod_uid=q.pod_uid, container=q.container,
                   workload=q.workload, node=q.node, path_glob=q.path_glob, since_ns=q.since_unix_ns,
                   until_ns=q.until_unix_ns)

    def equalities(self) -> list[tuple[str, str]]:
        """(column, value) for every exact-match filter that is set."""
        cols = (("namespace", self.namespace), ("pod", self.pod), ("pod_uid", self.pod_uid),
                ("container", self.container), ("workload", self.workload), ("node", self.node))
        return [(c, v) for c, v in cols if v]

    def path_range(self) -> tuple[bytes, bytes | None] | None:
        """[low, high) byte range of paths sharing the glob's literal prefix (None: no prefilter)."""
        if not self.path_glob:
            return None
        prefix = literal_prefix(self.path_glob)
        if not prefix:
            return None
        return prefix, prefix_upper(prefix)

    def path_matches(self, path: bytes) -> bool:
        return not self.path_glob or compile_glob(self.path_glob).match(path) is not None


def prefix_upper(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with prefix (None: unbounded)."""
    p = prefix.rstrip(b"\xff")
    return p[:-1] + bytes([p[-1] + 1]) if p else None


@dataclass(frozen=True)
class Cursor:
    time_ns: int
    id: int

    def token(self) -> str:
        return f"{self.time_ns}:{self.id}"

    @classmethod
    def parse(cls, token: str) -> Cursor | None:
        if not token:
            return None
        t, sep, i = token.partition(":")
        if not sep or not t.isdigit() or not i.isdigit():
            raise ValueError(f"bad page token: {token!r}")
        return cls(int(t), int(i))


AGENT_COLS = ("agent", "node", "attach_mode", "last_seen_ns", "events", "max_seq", "lost_kernel", "lost_queue",
              "lost_transport", "gaps")


class SqlReads:
    """The read side both stores share. A store supplies _reader() (its connection for this thread, whose
    execute() returns a cursor), its placeholder PH and _ident_in (its "ident is one of" condition)."""

    PH: str

    def _reader(self) -> Any:
        raise NotImplementedError

    @staticmethod
    def _ident_in(nums: list[int]) -> tuple[str, list[object]]:
        raise NotImplementedError

    def query(self, f: EventFilter, after: Cursor | None, limit: int) -> tuple[list[pb.DeletionEvent], Cursor | None]:
        return parse_events(self.query_raw(f, after, limit))

    def query_raw(self, f: EventFilter, after: Cursor | None, limit: int) -> tuple[list[bytes], Cursor | None]:
        conn = self._reader()
        return query_events(lambda sql, a: conn.execute(sql, a).fetchall(), self.PH, self._ident_in, f, after, limit)

    def agents(self) -> list[AgentState]:
        rows = self._reader().execute(f"SELECT {', '.join(AGENT_COLS)} FROM agents ORDER BY node, agent")
        return [AgentState(*r) for r in rows]

    def alerts_since(self, since_unix_ns: int, limit: int) -> list[pb.Alert]:
        rows = self._reader().execute(f"SELECT data FROM alerts WHERE time_ns >= {self.PH} "
                                      f"ORDER BY time_ns, rowid_ LIMIT {self.PH}", (since_unix_ns, limit))
        return [pb.Alert.FromString(d) for (d,) in rows]

    def count(self) -> int:
        row = self._reader().execute("SELECT count(*) FROM events").fetchone()
        return int(row[0]) if row else 0


class BatchCommits:
    """What both stores share around commit_prepared(): rows built outside the write lock, and a single
    batch committed as a group of one. A store supplies _agent_num, _idents, _new_idents, commit_prepared, and
    for late joins its write connection _w and the SQL of INSERT_IDENT and SELECT_IDENT."""

    _idents: dict[IdentKey, int]
    _w: Any              # the write connection: execute(sql, params) returns a cursor
    INSERT_IDENT: str    # one identity (IDENT_COLUMNS), nothing when it is there already
    SELECT_IDENT: str    # its number

    def _ident_in_tx(self, key: IdentKey) -> int:
        """The identity's number, registered inside the write transaction (late joins) and not cached: the
        transaction may still roll back."""
        num = self._idents.get(key)
        if num is None:
            self._w.execute(self.INSERT_IDENT, key)
            num = int(self._w.execute(self.SELECT_IDENT, key).fetchone()[0])
        return num

    def _agent_num(self, agent: str) -> int:
        raise NotImplementedError

    def _new_idents(self, keys: list[IdentKey]) -> dict[IdentKey, int]:
        raise NotImplementedError

    def commit_prepared(self, items: Sequence[Prepared], now_ns: int) -> list[CommitOutcome]:
        raise NotImplementedError

    def prepare(self, batch: pb.EventBatch, blobs: Sequence[bytes] | None = None) -> Prepared:
        """Raises InvalidBatch for a batch that breaks the protocol (nothing of it is stored)."""
        validate_header(batch)
        num = self._agent_num(batch.agent)
        return Prepared.of(batch, num, event_rows(num, batch.events, self._idents, self._new_idents, blobs,
                                                  batch.agent))

    def commit_batch(self, batch: pb.EventBatch, now_ns: int) -> BatchResult:
        res = self.commit_prepared([self.prepare(batch)], now_ns)[0]  # rows built outside the lock
        if isinstance(res, Exception):
            raise res
        return res


class Store(Protocol):
    def commit_batch(self, batch: pb.EventBatch, now_ns: int) -> BatchResult:
        """Store the batch's new events and identity updates and the agent's accounting, atomically."""
        ...

    def prepare(self, batch: pb.EventBatch, blobs: Sequence[bytes] | None = None) -> Prepared:
        """The batch's rows (any thread, no lock held); `blobs` are the events' bytes as received."""
        ...

    def commit_prepared(self, items: Sequence[Prepared], now_ns: int) -> list[CommitOutcome]:
        """Commit batches in order as one transaction (group commit); each is deduplicated and accounted as
        commit_batch would. If the group fails, each batch is retried alone, so a failure is only its own."""
        ...

    def bulk_insert(self, agent: str, events: Sequence[pb.DeletionEvent]) -> int:
        """Fast load without per-batch accounting (benchmarks, imports); returns rows written."""
        ...

    def query(self, f: EventFilter, after: Cursor | None, limit: int) -> tuple[list[pb.DeletionEvent], Cursor | None]:
        """Up to `limit` matching events oldest first, and the cursor to continue from (None at the end)."""
        ...

    def query_raw(self, f: EventFilter, after: Cursor | None, limit: int) -> tuple[list[bytes], Cursor | None]:
        """As query, with each event as its stored serialized DeletionEvent (no parse)."""
        ...

    def agents(self) -> list[AgentState]: ...

    def save_alerts(self, alerts: Sequence[pb.Alert]) -> None: ...

    def alerts_since(self, since_unix_ns: int, limit: int) -> list[pb.Alert]: ...

    def delete_before(self, cutoff_ns: int, chunk: int = 50_000) -> int:
        """Delete events older than cutoff in chunks (so ingest is never blocked long); returns rows deleted."""
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...


Fetch = Callable[[str, list[object]], list[Any]]


def query_events(fetch: Fetch, placeholder: str, ident_in: Callable[[list[int]], tuple[str, list[object]]],
                 f: EventFilter, after: Cursor | None, limit: int) -> tuple[list[bytes], Cursor | None]:
    """The query of both stores: identity numbers first, then time and path-prefix conditions, then paging.
    `placeholder` is the store's parameter marker; `ident_in` makes its "ident is one of these" condition.
    Events come back as their stored bytes (parse_events makes messages of them)."""
    ph = placeholder
    where: list[str] = []
    args: list[object] = []
    eq = f.equalities()
    if eq:
        nums = [n for (n,) in fetch("SELECT num FROM idents WHERE " + " AND ".join(f"{c} = {ph}" for c, _ in eq),
                                    [v for _, v in eq])]
        if not nums:
            return [], None
        clause, values = ident_in(nums)
        where.append(clause)
        args += values
    if f.since_ns:
        where.append(f"time_ns >= {ph}")
        args.append(f.since_ns)
    if f.until_ns:
        where.append(f"time_ns < {ph}")
        args.append(f.until_ns)
    rng = f.path_range()
    if rng:
        where.append(f"path >= {ph}")
        args.append(rng[0])
        if rng[1] is not None:
            where.append(f"path < {ph}")
            args.append(rng[1])
    return read_paged(fetch, ph, where, args, f, after, limit)


def read_paged(fetch: Fetch, placeholder: str, where: list[str], args: list[object], f: EventFilter,
               after: Cursor | None, limit: int) -> tuple[list[bytes], Cursor | None]:
    """Reads in chunks until `limit` rows pass the exact glob match (the SQL path range is only a prefilter).
    Shared by both stores; `placeholder` is their parameter marker ("?" or "%s")."""
    out: list[bytes] = []
    last = scan = after
    chunk = limit + 1 if not f.path_glob else max(256, 2 * limit)
    while True:
        w, a = list(where), list(args)
        if scan is not None:
            w.append(f"(time_ns, id) > ({placeholder}, {placeholder})")
            a += [scan.time_ns, scan.id]
        sql = "SELECT id, time_ns, path, data FROM events" + (" WHERE " + " AND ".join(w) if w else "")
        rows = fetch(sql + f" ORDER BY time_ns, id LIMIT {placeholder}", [*a, chunk])
        for i, t, path, data in rows:
            if f.path_matches(path):
                if len(out) == limit:
                    return out, last
                out.append(bytes(data))
                last = Cursor(t, i)
            scan = Cursor(t, i)
        if len(rows) < chunk:
            return out, None


def parse_events(page: tuple[list[bytes], Cursor | None]) -> tuple[list[pb.DeletionEvent], Cursor | None]:
    blobs, cursor = page
    parse = pb.DeletionEvent.FromString
    return [parse(b) for b in blobs], cursor


def open_store(url: str | None, background: bool = True) -> Store:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db` or `postgresql://...`. `background`: the
    store's own maintenance thread (SQLite's WAL checkpoints); one process per database runs it."""
    url = url or DEFAULT_DB
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://"):]
        if not rest.startswith("/") or rest == "/":
            raise UserError(f"--db: bad SQLite URL {url!r} (use sqlite:///relative.db or sqlite:////abs/path.db)")
        from unlinkwatch.collector.store_sqlite import SqliteStore

        # SQLAlchemy's convention: three slashes then a relative path; four slashes for an absolute one.
        return SqliteStore(rest[1:], checkpoints=background)
    if url.startswith(("postgresql://", "postgres://")):
        from unlinkwatch.collector.store_postgres import PostgresStore

        return PostgresStore(url)
    raise UserError(f"--db: unsupported URL {url!r} (use sqlite:///PATH or postgresql://...)")


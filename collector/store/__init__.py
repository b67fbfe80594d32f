"""The store stage: persistence only. SQLite embedded (the default) or PostgreSQL, one schema and one commit
(sql.py), each backend supplying what differs (sqlite.py, postgres.py); `--db URL` picks one. Ingest builds
the rows it commits (collector/ingest), the query stage reads through `read` (collector/query)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from unlinkwatch.errors import UserError
from unlinkwatch.pb import events_pb2 as pb

from .model import AgentState, CommitOutcome, EventRow, IdentKey, Prepared

DEFAULT_DB = "sqlite:///unlinkwatch.db"


class Store(Protocol):
    PH: ClassVar[str]  # the parameter marker of read()'s SQL
    NO_INDEX: ClassVar[str]  # "{}" formatted with a column: the column in a condition no index serves

    @property
    def idents(self) -> dict[IdentKey, int]:
        """Identity numbers known to this process (read only)."""
        ...

    def agent_num(self, agent: str) -> int:
        """The agent's number, registered on first sight (any thread, no lock held)."""
        ...

    def new_idents(self, keys: list[IdentKey]) -> dict[IdentKey, int]:
        """Numbers for identities not in `idents` yet, registered together (any thread, no lock held)."""
        ...

    def commit_prepared(self, items: Sequence[Prepared], now_ns: int) -> list[CommitOutcome]:
        """Commit batches in order as one transaction (group commit): each batch's new events and identity
        updates and its agent's accounting, atomically; if the group fails, each batch is retried alone, so a
        failure is only its own."""
        ...

    def bulk_insert(self, rows: Sequence[EventRow]) -> int:
        """Fast load without per-batch accounting (benchmarks, imports); returns rows written."""
        ...

    def read(self, sql: str, args: Sequence[object]) -> list[Any]:
        """Rows of a read-only statement (the query stage's access); `PH` is its parameter marker."""
        ...

    def agents(self) -> list[AgentState]: ...

    def save_alerts(self, alerts: Sequence[pb.Alert]) -> None:
        """Insert or replace by `id` (a summary replaces its first notice)."""
        ...

    def alerts_since(self, since_unix_ns: int, limit: int) -> list[pb.Alert]: ...

    def delete_before(self, cutoff_ns: int, chunk: int = 50_000) -> int:
        """Delete events older than cutoff in chunks (so ingest is never blocked long); returns rows deleted."""
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...

    @staticmethod
    def in_clause(column: str, values: list[Any]) -> tuple[str, list[object]]:
        """The condition "column is one of values" in this backend's SQL, and its parameters."""
        ...


def open_store(url: str | None, background: bool = True) -> Store:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db` or `postgresql://...`. `background`: the
    store's own maintenance thread (SQLite's WAL checkpoints); one process per database runs it."""
    url = url or DEFAULT_DB
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://"):]
        if not rest.startswith("/") or rest == "/":
            raise UserError(f"--db: bad SQLite URL {url!r} (use sqlite:///relative.db or sqlite:////abs/path.db)")
        from .sqlite import SqliteStore

        # SQLAlchemy's convention: three slashes then a relative path; four slashes for an absolute one.
        return SqliteStore(rest[1:], checkpoints=background)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    raise UserError(f"--db: unsupported URL {url!r} (use sqlite:///PATH or postgresql://...)")

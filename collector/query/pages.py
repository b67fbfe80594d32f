"""Reading events a page at a time: identity numbers first, then time and path-prefix conditions, then the
exact glob, in chunks until the page is full. The SQL is the same for both stores; a store gives its
parameter marker and its "one of" condition (collector/store)."""

from __future__ import annotations

from unlinkwatch.pb import events_pb2 as pb

from ..store import Store
from .filters import Cursor, EventFilter


def read_events(store: Store, f: EventFilter, after: Cursor | None,
                limit: int) -> tuple[list[bytes], Cursor | None]:
    """Up to `limit` matching events oldest first, as their stored serialized DeletionEvents (no parse), and
    the cursor to continue from (None at the end)."""
    ph = store.PH
    where: list[str] = []
    args: list[object] = []
    eq = f.equalities()
    if eq:
        nums = [n for (n,) in store.read("SELECT num FROM idents WHERE " + " AND ".join(f"{c} = {ph}" for c, _ in eq),
                                         [v for _, v in eq])]
        if not nums:
            return [], None
        clause, values = store.in_clause("ident", nums)
        where.append(clause)
        args += values
    if f.rename_to_glob:
        where.append(f"op = {ph}")
        args.append(pb.OP_RENAME)
    if f.since_ns:
        where.append(f"time_ns >= {ph}")
        args.append(f.since_ns)
    if f.until_ns:
        where.append(f"time_ns < {ph}")
        args.append(f.until_ns)
    rng = f.path_range()
    if rng:
        # A narrow range is read through the path index. A wide one (`/var/log/**` on a busy store) would be
        # read whole and sorted by time for every page; it is read in time order instead, filtered by path.
        col = "path" if _narrow(store, rng) else store.NO_INDEX.format("path")
        where.append(f"{col} >= {ph}")
        args.append(rng[0])
        if rng[1] is not None:
            where.append(f"{col} < {ph}")
            args.append(rng[1])
    return _paged(store, where, args, f, after, limit)


WIDE_PATH_RANGE = 5_000  # stored paths in a glob's prefix range past which the range is not read by path


def _narrow(store: Store, rng: tuple[bytes, bytes | None]) -> bool:
    """Whether the path range holds fewer than WIDE_PATH_RANGE events (a bounded count on the path index)."""
    ph = store.PH
    cond = f"path >= {ph}" + (f" AND path < {ph}" if rng[1] is not None else "")
    args: list[object] = [rng[0]] if rng[1] is None else [rng[0], rng[1]]
    (n,), = store.read(f"SELECT count(*) FROM (SELECT 1 FROM events WHERE {cond} LIMIT {ph}) AS r",
                       [*args, WIDE_PATH_RANGE])
    return int(n) < WIDE_PATH_RANGE


def _paged(store: Store, where: list[str], args: list[object], f: EventFilter, after: Cursor | None,
           limit: int) -> tuple[list[bytes], Cursor | None]:
    """Reads in chunks until `limit` rows pass the exact glob match (the SQL path range is only a prefilter)."""
    ph = store.PH
    out: list[bytes] = []
    last = scan = after
    chunk = limit + 1 if not f.exact() else max(256, 2 * limit)
    while True:
        w, a = list(where), list(args)
        if scan is not None:
            w.append(f"(time_ns, id) > ({ph}, {ph})")
            a += [scan.time_ns, scan.id]
        sql = "SELECT id, time_ns, path, data FROM events" + (" WHERE " + " AND ".join(w) if w else "")
        rows = store.read(sql + f" ORDER BY time_ns, id LIMIT {ph}", [*a, chunk])
        for i, t, path, data in rows:
            if f.row_matches(path, data):
                if len(out) == limit:
                    return out, last
                out.append(bytes(data))
                last = Cursor(t, i)
            scan = Cursor(t, i)
        if len(rows) < chunk:
            return out, None


def query(store: Store, f: EventFilter, after: Cursor | None,
          limit: int) -> tuple[list[pb.DeletionEvent], Cursor | None]:
    """read_events() with each event parsed."""
    blobs, cursor = read_events(store, f, after, limit)
    parse = pb.DeletionEvent.FromString
    return [parse(b) for b in blobs], cursor

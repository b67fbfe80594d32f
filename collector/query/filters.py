"""What a query asks for: the filters of `unlinkwatch query` (QueryRequest) and the page cursor.

Query order: oldest first by (time, storage id), which reads naturally for "what did pod X delete since
10:00"; page tokens carry the last (time, id) returned."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from unlinkwatch.eventjson import ACTION_BY_NAME
from unlinkwatch.pathglob import (
    NamedProcess,
    compile_ancestor_matcher,
    compile_command_matcher,
    compile_glob,
    literal_prefix,
)
from unlinkwatch.pb import events_pb2 as pb

MAX_QUERY_LIMIT = 100_000


@dataclass(frozen=True)
class EventFilter:
    namespace: str = ""
    pod: str = ""
    pod_uid: str = ""
    container: str = ""
    workload: str = ""
    node: str = ""
    path_glob: str = ""
    rename_to_glob: str = ""
    action: int = -1    # proto Action; -1 = any
    policy_glob: str = ""
    args_glob: str = ""  # the command line (arguments joined by spaces; `*` spans `/`)
    ancestor_glob: str = ""  # some ancestor's comm (exe, for a glob starting with '/')
    exec_session: bool = False  # only exec sessions
    volume_glob: str = ""  # the pod volume ("emptyDir/cache"; '*' matches within a part, so "hostPath/*")
    host_path_glob: str = ""  # where the file lived on the node
    since_ns: int = 0
    until_ns: int = 0   # exclusive; 0 = no bound

    @classmethod
    def from_request(cls, q: pb.QueryRequest) -> EventFilter:
        return cls(namespace=q.namespace, pod=q.pod, pod_uid=q.pod_uid, container=q.container,
                   workload=q.workload, node=q.node, path_glob=q.path_glob, rename_to_glob=q.rename_to_glob,
                   action=_action(q.action), policy_glob=q.policy_glob, args_glob=q.args_glob,
                   ancestor_glob=q.ancestor_glob, exec_session=q.exec_session, volume_glob=q.volume_glob,
                   host_path_glob=q.host_path_glob,
                   since_ns=q.since_unix_ns, until_ns=q.until_unix_ns)

    def equalities(self) -> list[tuple[str, str]]:
        """(column, value) for every exact-match filter that is set."""
        cols = (("namespace", self.namespace), ("pod", self.pod), ("pod_uid", self.pod_uid),
                ("container", self.container), ("workload", self.workload), ("node", self.node))
        return [(c, v) for c, v in cols if v]

    def path_range(self) -> tuple[bytes, bytes | None] | None:
        """[low, high) byte range holding every path the glob can match (None: no prefilter).

        Every match starts with the glob's literal prefix, except the directory itself when a trailing
        `/**` matches it: `/x/**` matches `/x`, which sorts before `/x/`, so the range then starts at `/x`
        (it also admits `/x-old` or `/x.bak`, which the exact match drops)."""
        if not self.path_glob:
            return None
        prefix = literal_prefix(self.path_glob)
        if not prefix:
            return None
        low = prefix
        if len(prefix) > 1 and prefix.endswith(b"/") and self.path_matches(prefix[:-1]):
            low = prefix[:-1]
        return low, prefix_upper(prefix)

    def path_matches(self, path: bytes) -> bool:
        return not self.path_glob or compile_glob(self.path_glob).match(path) is not None

    def exact(self) -> bool:
        """Whether rows need a check in Python after SQL (a glob's exact match, a rename's destination)."""
        return bool(self.path_glob or self._in_event())

    def _in_event(self) -> bool:
        """Whether a filter reads what only the stored event holds."""
        return bool(self.rename_to_glob or self.action >= 0 or self.policy_glob or self.args_glob
                    or self.ancestor_glob or self.exec_session or self.volume_glob or self.host_path_glob)

    def row_matches(self, path: bytes, data: bytes) -> bool:
        """The exact match of a row that passed the SQL conditions. The destination, the policy's verdict and the
        command line are not columns: they are read from the stored event (for renames only the SQL keeps only
        renames when it is asked for a destination)."""
        if not self.path_matches(path):
            return False
        if not self._in_event():
            return True
        ev = pb.DeletionEvent.FromString(bytes(data))
        if self.rename_to_glob and compile_glob(self.rename_to_glob).match(ev.rename_to) is None:
            return False
        if self.action >= 0 and ev.action != self.action:
            return False
        if self.args_glob and not _command_matcher(self.args_glob)(ev.process.args):
            return False
        if self.exec_session and not ev.exec_session:
            return False
        if self.ancestor_glob and not _ancestor_matcher(self.ancestor_glob)(ev.ancestry):
            return False
        if self.volume_glob and compile_glob(self.volume_glob).match(ev.volume.encode()) is None:
            return False
        if self.host_path_glob and compile_glob(self.host_path_glob).match(ev.host_path) is None:
            return False
        return not self.policy_glob or compile_glob(self.policy_glob).match(ev.policy.encode()) is not None


@lru_cache(maxsize=64)
def _command_matcher(glob: str) -> Callable[[Sequence[bytes]], bool]:
    return compile_command_matcher((glob,))


@lru_cache(maxsize=64)
def _ancestor_matcher(glob: str) -> Callable[[Iterable[NamedProcess]], bool]:
    return compile_ancestor_matcher((glob,))


def _action(name: str) -> int:
    if not name:
        return -1
    if name not in ACTION_BY_NAME:
        raise ValueError(f"unknown action {name!r} (allowed, would-block, blocked)")
    return int(ACTION_BY_NAME[name])


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

"""The query side of the collector's API, over any store: Query (pages of stored event bytes, never parsed)
and AgentStatus (each agent's accounting)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from unlinkwatch.codec import query_response
from unlinkwatch.pb import events_pb2 as pb

from ..metrics import CollectorMetrics
from ..store import Store
from ..store.model import AgentState
from .filters import MAX_QUERY_LIMIT, Cursor, EventFilter
from .pages import read_events

DEFAULT_QUERY_LIMIT = 1000
EVENTS_PER_RESPONSE = 1000


def agent_info(st: AgentState, policy: pb.NodePolicy | None = None) -> pb.AgentInfo:
    return pb.AgentInfo(
        agent=st.agent, node=st.node, last_seen_unix_ns=st.last_seen_ns, events=st.events,
        lost=pb.LossCounters(kernel=st.lost_kernel, queue=st.lost_queue, transport=st.lost_transport),
        sequence_gaps=st.gaps, attach_mode=st.attach_mode, coverage=st.coverage, policy=policy,
    )


class QueryService:
    def __init__(self, store: Store, metrics: CollectorMetrics,
                 policies: dict[str, pb.NodePolicy] | None = None) -> None:
        self._store, self._m = store, metrics
        self._policies = policies if policies is not None else {}

    def events(self, request: pb.QueryRequest, is_active: Callable[[], bool]) -> Iterator[bytes]:
        """Serialized QueryResponses built straight from the stored event bytes (no parse, no re-serialize).
        ValueError for a bad page token."""
        t0 = time.perf_counter()
        cursor = Cursor.parse(request.page_token)
        f = EventFilter.from_request(request)
        remaining = min(request.limit or DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT)
        first = True
        while True:
            n = min(remaining, EVENTS_PER_RESPONSE)
            blobs, cursor = read_events(self._store, f, cursor, n)
            remaining -= len(blobs)
            done = cursor is None or remaining <= 0
            if first:
                self._m.query_latency.observe(time.perf_counter() - t0)
                first = False
            yield query_response(blobs, cursor.token() if cursor and done else "")
            if done or not is_active():
                return

    def status(self) -> pb.AgentStatusResponse:
        return pb.AgentStatusResponse(agents=[agent_info(st, self._policies.get(st.agent))
                                              for st in self._store.agents()])

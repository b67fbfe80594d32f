"""The query stage, beside the store: filters and cursors (filters.py), paged reads (pages.py), the Query and
AgentStatus answers (service.py)."""

from .filters import MAX_QUERY_LIMIT, Cursor, EventFilter, prefix_upper
from .pages import query, read_events
from .service import QueryService, agent_info

__all__ = ["MAX_QUERY_LIMIT", "Cursor", "EventFilter", "QueryService", "agent_info", "prefix_upper", "query",
           "read_events"]

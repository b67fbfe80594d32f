"""The query-side commands: `unlinkwatch query`, `alerts` and `status`, as gRPC clients of the collector."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TextIO, TypeVar

import grpc

from unlinkwatch.errors import UserError
from unlinkwatch.eventjson import alert_to_dict, event_to_dict, rfc3339_ns, text
from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.pb import events_pb2_grpc as pbg
from unlinkwatch.timeparse import parse_time_ns
from unlinkwatch.tlsconfig import channel

T = TypeVar("T")


Metadata = tuple[tuple[str, str | bytes], ...]


def _stub(args: argparse.Namespace) -> tuple[pbg.CollectorStub, Metadata, grpc.Channel]:
    ch = channel(args.collector, args.tls_cert, args.tls_key, args.tls_ca, getattr(args, "tls_server_name", None))
    md: Metadata = (("authorization", f"Bearer {args.token}"),) if getattr(args, "token", None) else ()
    return pbg.CollectorStub(ch), md, ch


def _rpc_error(e: grpc.RpcError, addr: str) -> UserError:
    code = e.code() if isinstance(e, grpc.Call) else None
    details = (e.details() if isinstance(e, grpc.Call) else None) or str(e)
    details = details.splitlines()[0] if details else ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return UserError(f"cannot reach the collector at {addr}: {details}", exit_code=3)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return UserError(f"the collector at {addr} refused the request: {details} (see --token)", exit_code=3)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UserError(f"the collector at {addr} did not answer in time", exit_code=3)
    return UserError(f"the collector at {addr} answered {code.name if code else 'an error'}: {details}", exit_code=3)


def _guarded(addr: str, it: Iterable[T]) -> Iterator[T]:
    try:
        yield from it
    except grpc.RpcError as e:
        raise _rpc_error(e, addr) from None


def _time_arg(value: str | None, flag: str) -> int:
    if not value:
        return 0
    try:
        return max(0, parse_time_ns(value))
    except ValueError as e:
        raise UserError(f"{flag}: {e}") from None


def query_request(args: argparse.Namespace) -> pb.QueryRequest:
    if args.limit < 1:
        raise UserError("--limit: must be at least 1")
    since, until = _time_arg(args.since, "--since"), _time_arg(args.until, "--until")
    if since and until and until <= since:
        raise UserError("--until: must be later than --since")
    rename_to = getattr(args, "rename_to", None)
    policy = getattr(args, "policy", None)
    ancestor = getattr(args, "ancestor", None)
    volume, host_path = getattr(args, "volume", None), getattr(args, "host_path", None)
    for flag, glob in (("--path", args.path), ("--rename-to", rename_to), ("--policy", policy),
                       ("--ancestor", ancestor), ("--volume", volume), ("--host-path", host_path)):
        if glob:
            from unlinkwatch.pathglob import compile_glob

            try:
                compile_glob(glob)
            except ValueError as e:
                raise UserError(f"{flag}: {e}") from None
    command = getattr(args, "args", None)
    if command:
        from unlinkwatch.pathglob import GlobError, compile_command_matcher

        try:
            compile_command_matcher((command,))
        except GlobError as e:
            raise UserError(f"--args: {e}") from None
    if args.workload and "/" not in args.workload:
        raise UserError(f"--workload: expected KIND/NAME, e.g. Deployment/web, not {args.workload!r}")
    return pb.QueryRequest(namespace=args.namespace or "", pod=args.pod or "", pod_uid=args.pod_uid or "",
                           container=args.container or "", workload=args.workload or "", node=args.node or "",
                           path_glob=args.path or "", since_unix_ns=since, until_unix_ns=until, limit=args.limit,
                           rename_to_glob=rename_to or "", action=getattr(args, "action", None) or "",
                           policy_glob=policy or "", args_glob=command or "", ancestor_glob=ancestor or "",
                           exec_session=bool(getattr(args, "exec_session", False)), volume_glob=volume or "",
                           host_path_glob=host_path or "")


EVENT_TABLE = ("TIME", "NODE", "POD", "CONTAINER", "OP", "RESULT", "PROCESS", "COMMAND", "PARENTS", "PATH")
COMMAND_WIDTH = 40
PARENTS_WIDTH = 30


def command_cell(d: dict[str, object]) -> str:
    """The command line as a shell would read it, cut to COMMAND_WIDTH; "?" when the process is unknown."""
    if d["process_unknown"]:
        return "?"
    args = d["args"]
    assert isinstance(args, list)
    cmd = shlex.join(args) + (" ..." if d["args_truncated"] else "")
    return cmd if len(cmd) <= COMMAND_WIDTH else cmd[:COMMAND_WIDTH - 3] + "..."


def parents_cell(ev: pb.DeletionEvent) -> str:
    """The ancestry's comms, nearest first ("sh<bash<sshd"), cut to PARENTS_WIDTH; "-" for none."""
    cell = "<".join(text(a.comm) if not a.unknown or a.comm else "?" for a in ev.ancestry)
    if ev.flags & pb.EVENT_FLAG_ANCESTRY_TRUNCATED:
        cell += "<..."
    if not cell:
        return "-"
    return cell if len(cell) <= PARENTS_WIDTH else cell[:PARENTS_WIDTH - 3] + "..."


def event_row(ev: pb.DeletionEvent) -> tuple[str, ...]:
    d = event_to_dict(ev)
    pod = f"{d['namespace']}/{d['pod']}" if d["pod"] else (d["pod_uid"] or "-")
    path = d["path"]
    if ev.op == pb.OP_RENAME:  # the destination, and what the rename destroyed or swapped
        path += " -> " + (d["rename_to"] or "?")
        if d["replaced"]:
            path += " (replaced)"
        elif "exchange" in d["rename_flags"]:
            path += " (exchanged)"
    if ev.action:  # the node policy's verdict
        path += f" [{d['action']}: {d['policy']}]"
    return (d["time"], d["node"], pod, d["container"] or "-", d["op"], str(d["result"]),
            f"{d['comm']}({d['pid']})" + (" [exec]" if d["exec_session"] else ""), command_cell(d), parents_cell(ev),
            path)


def _print_table(out: TextIO, header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    for r in [header, *rows]:
        out.write("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths[:-1], strict=True)) + "  " + r[-1] + "\n")


def run_query(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    req = query_request(args)
    stub, md, ch = _stub(args)
    more = False
    rows: list[tuple[str, ...]] = []
    with ch:
        for resp in _guarded(args.collector, stub.Query(req, metadata=md, timeout=120)):
            for ev in resp.events:
                if args.output == "json":
                    out.write(json.dumps(event_to_dict(ev)) + "\n")
                else:
                    rows.append(event_row(ev))
            more = more or bool(resp.next_page_token)
    if args.output == "table":
        _print_table(out, EVENT_TABLE, rows)
    if more:
        print(f"(more than {args.limit} events match; narrow the filters or raise --limit)", file=sys.stderr)
    return 0


def run_alerts(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    since = _time_arg(args.since, "--since")
    stub, md, ch = _stub(args)
    header = ("TIME", "RULE", "SEVERITY", "COUNT", "PATH")  # streamed, so fixed column widths
    widths = (30, 24, 9, 6)
    if args.output == "table":
        out.write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + "  " + header[-1] + "\n")
    with ch:
        call = stub.WatchAlerts(pb.WatchAlertsRequest(since_unix_ns=since, follow=args.follow), metadata=md,
                                timeout=None if args.follow else 60)
        for a in _guarded(args.collector, call):
            if args.output == "json":
                out.write(json.dumps(alert_to_dict(a)) + "\n")
            else:
                path = text(a.sample_paths[0]) if a.sample_paths else text(a.event.path)
                cells = (rfc3339_ns(a.time_unix_ns), a.rule, a.severity, str(a.count))
                out.write("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + "  " + path + "\n")
            out.flush()
    return 0


def _ago(ns: int, now_ns: int) -> str:
    if not ns:
        return "never"
    s = max(0, (now_ns - ns) // 1_000_000_000)
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def status_dict(a: pb.AgentInfo) -> dict[str, Any]:
    return {"agent": a.agent, "node": a.node, "attach_mode": a.attach_mode,
            "last_seen": rfc3339_ns(a.last_seen_unix_ns) if a.last_seen_unix_ns else None, "events": a.events,
            "lost": {"kernel": a.lost.kernel, "queue": a.lost.queue, "transport": a.lost.transport},
            "sequence_gaps": a.sequence_gaps, "coverage": round(a.coverage, 6),
            "policy": _policy_dict(a.policy) if a.HasField("policy") else None}


def _policy_dict(p: pb.NodePolicy) -> dict[str, Any]:
    return {"enforcement": p.enforcement, "reason": p.reason, "source": p.source, "rules": p.rules,
            "generation": p.generation, "reload_failures": p.reload_failures}


def _policy_cell(a: pb.AgentInfo) -> str:
    if not a.HasField("policy") or a.policy.enforcement == "off":
        return "-"
    return f"{a.policy.rules} rules, {a.policy.enforcement}"


def run_status(args: argparse.Namespace, out: TextIO | None = None,
               now: Callable[[], int] = time.time_ns) -> int:
    out = out or sys.stdout
    stub, md, ch = _stub(args)
    with ch:
        try:
            resp = stub.AgentStatus(pb.AgentStatusRequest(), metadata=md, timeout=30)
        except grpc.RpcError as e:
            raise _rpc_error(e, args.collector) from None
    if args.output == "json":
        for a in resp.agents:
            out.write(json.dumps(status_dict(a)) + "\n")
        return 0
    t = now()
    rows = [(a.node, a.agent, a.attach_mode or "-", _ago(a.last_seen_unix_ns, t), str(a.events),
             f"{a.lost.kernel}/{a.lost.queue}/{a.lost.transport}", str(a.sequence_gaps), f"{a.coverage * 100:.3f}%",
             _policy_cell(a))
            for a in resp.agents]
    _print_table(out, ("NODE", "AGENT", "ATTACH", "LAST SEEN", "EVENTS", "LOST k/q/t", "GAPS", "COVERAGE", "POLICY"),
                 rows)
    for a in resp.agents:
        if a.HasField("policy") and a.policy.reason:
            out.write(f"{a.node}: {a.policy.enforcement}: {a.policy.reason}\n")
    return 0

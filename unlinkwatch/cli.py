"""The `unlinkwatch` command: argument parsing only; each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from unlinkwatch import __version__
from unlinkwatch.errors import UserError

DEFAULT_COLLECTOR = "localhost:50051"

# subcommand -> "module:function"; imported lazily so `unlinkwatch query` never loads bcc.
COMMANDS = {
    "doctor": "unlinkwatch.agent.doctor:run",
    "agent": "unlinkwatch.agent.main:run",
    "collector": "unlinkwatch.collector.main:run",
    "query": "unlinkwatch.client:run_query",
    "alerts": "unlinkwatch.client:run_alerts",
    "status": "unlinkwatch.client:run_status",
    "demo": "unlinkwatch.demo:run",
}


def _collector_default() -> str:
    return os.environ.get("UNLINKWATCH_COLLECTOR", DEFAULT_COLLECTOR)


def _add_tls(p: argparse.ArgumentParser, server: bool) -> None:
    g = p.add_argument_group("TLS")
    g.add_argument("--tls-cert", metavar="PEM", help="certificate (mutual TLS when --tls-ca is given too)")
    g.add_argument("--tls-key", metavar="PEM", help="private key for --tls-cert")
    g.add_argument("--tls-ca", metavar="PEM",
                   help="CA that signs peers' certificates" if server else "CA that signs the collector's")
    if not server:
        g.add_argument("--tls-server-name", metavar="NAME", help="expected name in the collector's certificate")


def _add_client(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collector", default=_collector_default(), metavar="ADDR",
                   help="collector address (default: $UNLINKWATCH_COLLECTOR or localhost:50051)")
    p.add_argument("--token", default=os.environ.get("UNLINKWATCH_TOKEN"), help="bearer token for queries")
    _add_tls(p, server=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlinkwatch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"unlinkwatch {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("UNLINKWATCH_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("doctor", help="what this kernel offers and whether the agent can run here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--attach", default="auto", choices=["auto", "kprobe", "fentry", "tracepoint"])

    p = sub.add_parser("agent", help="the node agent: probes -> decode -> identify -> ship")
    p.add_argument("--collector", default=os.environ.get("UNLINKWATCH_COLLECTOR"), metavar="ADDR",
                   help="ship to this collector (default: $UNLINKWATCH_COLLECTOR; none with --stdout)")
    p.add_argument("--node-name", default=None, help="default: $NODE_NAME, else the host name")
    p.add_argument("--attach", default="auto", choices=["auto", "kprobe", "fentry", "tracepoint"])
    p.add_argument("--kube", default="auto", choices=["auto", "off"])
    p.add_argument("--kubeconfig", metavar="PATH")
    p.add_argument("--kubelet-root", default="/var/lib/kubelet", metavar="DIR",
                   help="the kubelet's directory, whose pods/ name each pod's volumes (default: /var/lib/kubelet)")
    p.add_argument("--spool", metavar="DIR", help="disk spool so collector outages and restarts lose nothing")
    p.add_argument("--spool-max-mb", type=int, default=512, metavar="MB")
    p.add_argument("--stdout", action="store_true", help="print events as JSON lines on stdout")
    p.add_argument("--metrics-addr", metavar="ADDR", help="serve Prometheus /metrics and /healthz here")
    p.add_argument("--ringbuf-mb", type=int, default=32, metavar="MB", help="kernel ring buffer size (a power of two)")
    p.add_argument("--agent-id", default=None, help="default: node name + boot-unique suffix")
    p.add_argument("--policy", metavar="FILE", help="node policy YAML: ignore, audit or block deletions in the "
                   "kernel (hot-reloaded; docs/POLICY.md)")
    p.add_argument("--require-enforcement", action="store_true",
                   help="refuse to start when block rules cannot be enforced by this kernel")
    p.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)  # print the final C and exit
    _add_tls(p, server=False)

    p = sub.add_parser("collector", help="the central store, query API and alert engine")
    p.add_argument("--listen", default="localhost:50051", metavar="ADDR")
    p.add_argument("--db", default=None, metavar="URL",
                   help="sqlite:///PATH (default: ./unlinkwatch.db) or postgresql://...")
    p.add_argument("--rules", metavar="FILE", help="alert rules YAML (hot-reloaded)")
    p.add_argument("--metrics-addr", metavar="ADDR")
    p.add_argument("--retention", metavar="DURATION", help="delete events older than this, e.g. 30d")
    p.add_argument("--alertmanager", metavar="URL")
    p.add_argument("--webhook", metavar="URL")
    p.add_argument("--token", default=os.environ.get("UNLINKWATCH_TOKEN"),
                   help="bearer token required of query clients")
    _add_tls(p, server=True)

    p = sub.add_parser("query", help="what was deleted, by whom")
    _add_client(p)
    for flag in ("namespace", "pod", "pod-uid", "container", "node"):
        p.add_argument(f"--{flag}")
    p.add_argument("--workload", metavar="KIND/NAME")
    p.add_argument("--path", metavar="GLOB", help="the path deleted (for a rename: its source)")
    p.add_argument("--rename-to", metavar="GLOB", help="renames whose destination matches")
    p.add_argument("--action", choices=["allowed", "would-block", "blocked"],
                   help="the node policy's verdict")
    p.add_argument("--policy", metavar="GLOB", help="the node-policy rule that decided")
    p.add_argument("--args", metavar="GLOB",
                   help="the deleting process's command line, arguments joined by spaces ('*' spans '/')")
    p.add_argument("--ancestor", metavar="GLOB",
                   help="some ancestor of the deleting process: its comm, or its exe for a glob starting with '/'")
    p.add_argument("--exec-session", action="store_true",
                   help="only deletions from exec sessions into containers (kubectl exec)")
    p.add_argument("--volume", metavar="GLOB", help="the pod volume, TYPE/NAME: emptyDir/cache, hostPath/*, rootfs")
    p.add_argument("--host-path", metavar="GLOB", help="where the file lived on the node")
    p.add_argument("--since", metavar="DURATION|TIME")
    p.add_argument("--until", metavar="TIME")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--output", default="table", choices=["table", "json"])

    p = sub.add_parser("alerts", help="alerts raised by the collector's rules")
    _add_client(p)
    p.add_argument("--follow", action="store_true")
    p.add_argument("--since", metavar="DURATION|TIME")
    p.add_argument("--output", default="table", choices=["table", "json"])

    p = sub.add_parser("status", help="agents known to the collector and their coverage")
    _add_client(p)
    p.add_argument("--output", default="table", choices=["table", "json"])

    p = sub.add_parser("demo", help="all-in-one local run: a pretend cluster (API, three pods), collector and agent")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from unlinkwatch.logs import setup_logging

    setup_logging(args.log_level)
    module_name, func_name = COMMANDS[args.command].split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(args) or 0)
    except UserError as e:
        print(f"unlinkwatch {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers for alert engine tests: rule files and deletion events."""

from __future__ import annotations

import textwrap
from pathlib import Path

from unlinkwatch.pb import events_pb2 as pb

T0 = 1_700_000_000_000_000_000

ETC_RULE = """
    fold_window: {window}
    rules:
      - name: etc-deleted
        severity: critical
        description: a file under /etc was deleted
        match:
          paths: ["/etc/**"]
        except:
          comm: [dpkg]
    """


def write_rules(path: Path, window: str = "10s", text: str | None = None) -> Path:
    path.write_text(textwrap.dedent(text if text is not None else ETC_RULE.format(window=window)))
    return path


def deletion(path: str, i: int = 0, *, pod: str | None = "web-1", comm: str = "rm", ppid: int = 100,
             node: str = "node-1", t_ns: int | None = None) -> pb.DeletionEvent:
    ev = pb.DeletionEvent(time_unix_ns=T0 + i * 1000 if t_ns is None else t_ns, node=node, op=pb.OP_UNLINK,
                          path=path.encode(), raw_path=path.encode(), result=0, seq=i + 1, agent=f"{node}:a",
                          process=pb.Process(pid=ppid + 1, ppid=ppid, comm=comm.encode(),
                                             exe=b"/usr/bin/" + comm.encode()))
    if pod:
        ev.pod.uid, ev.pod.name, ev.pod.namespace, ev.pod.workload = f"uid-{pod}", pod, "prod", "Deployment/web"
        ev.container.id, ev.container.name = "c" * 64, "web"
        ev.identity = pb.IDENTITY_STATE_RESOLVED
    else:
        ev.identity = pb.IDENTITY_STATE_HOST
    return ev


def rm_rf(n: int, root: str = "/etc/app", **kw: object) -> list[pb.DeletionEvent]:
    return [deletion(f"{root}/f{i:05d}", i, **kw) for i in range(n)]  # type: ignore[arg-type]

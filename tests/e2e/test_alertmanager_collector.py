"""The whole alert path through a real collector process: gRPC Ingest -> rules -> folding -> Alertmanager,
webhook and WatchAlerts, with a real Alertmanager on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.alertmanager import Receiver, free_port, get_json, wait_for
from tests.support.alertrules import rm_rf, write_rules
from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.pb import events_pb2_grpc as pb_grpc


@pytest.fixture
def collector(tmp_path: Path, am_url: str) -> Iterator[tuple[str, Receiver]]:
    with Receiver() as hook:
        port = free_port()
        rules = write_rules(tmp_path / "rules.yaml", window="1s")
        exe = Path(sys.executable).parent / "unlinkwatch"
        proc = subprocess.Popen([str(exe), "collector", "--listen", f"127.0.0.1:{port}",
                                 "--db", f"sqlite:///{tmp_path}/uw.db", "--rules", str(rules),
                                 "--alertmanager", am_url, "--webhook", hook.url],
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "collector.log", "wb"),  # noqa: SIM115
                                env={**os.environ, "UNLINKWATCH_LOG_LEVEL": "info"})
        addr = f"127.0.0.1:{port}"
        try:
            with grpc.insecure_channel(addr) as ch:
                try:
                    grpc.channel_ready_future(ch).result(timeout=20)
                except grpc.FutureTimeoutError:
                    raise AssertionError((tmp_path / "collector.log").read_text()[-3000:]) from None
            yield addr, hook
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def ours(url: str) -> list[dict[str, Any]]:
    return [a for a in get_json(url + "/api/v2/alerts") if a["labels"].get("pod") == "web-1"]


def test_an_ingested_rm_rf_becomes_one_alert_in_every_output(collector: tuple[str, Receiver], am_url: str) -> None:
    addr, hook = collector
    events = rm_rf(2000)
    with grpc.insecure_channel(addr) as ch:
        stub = pb_grpc.CollectorStub(ch)
        batches = [pb.EventBatch(agent="node-1:a", node="node-1", batch_id=b + 1, first_seq=b * 500 + 1,
                                 events=events[b * 500 : (b + 1) * 500]) for b in range(4)]
        acks = list(stub.Ingest(iter(batches), timeout=30))
        assert sum(a.stored for a in acks) == 2000
        final = wait_for(lambda: [a for a in ours(am_url) if a["annotations"]["count"] == "2000"], timeout_s=20)
        assert len(ours(am_url)) == 1 == len(final)
        assert final[0]["labels"]["alertname"] == "etc-deleted"
        history = list(stub.WatchAlerts(pb.WatchAlertsRequest(since_unix_ns=0, follow=False), timeout=10))
    assert [(a.rule, a.count) for a in history] == [("etc-deleted", 2000)]
    bodies = wait_for(lambda: [b for b in hook.bodies if b["count"] == 2000])
    assert len({b["id"] for b in hook.bodies}) == 1
    assert bodies[0]["sample_paths"][0] == "/etc/app/f00000"

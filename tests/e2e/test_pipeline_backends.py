"""The same events shipped to a SQLite collector and a PostgreSQL collector give the same query answers;
the agent's Shipper works over mutual TLS; the collector command serves metrics and probes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from unlinkwatch.agent.metrics import AgentMetrics
from unlinkwatch.agent.ship.shipper import Shipper, ShipperConfig

from tests.support.certs import make_pki
from tests.support.collector import ROOT, free_port, start_inprocess, start_subprocess
from tests.support.eventgen import batches, pod_uid
from tests.support.postgres import PostgresCluster  # postgres_server: the session fixture (conftest)
from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.pb import events_pb2_grpc as pbg
from unlinkwatch.tlsconfig import server_credentials

INGEST = "/unlinkwatch.v1.Collector/Ingest"
QUERIES = [
    pb.QueryRequest(),
    pb.QueryRequest(pod_uid=pod_uid(4)),
    pb.QueryRequest(namespace="ns7", pod="web-17"),
    pb.QueryRequest(workload="Deployment/web-3", since_unix_ns=1_700_000_001_000_000_000),
    pb.QueryRequest(container="c2", path_glob="/var/lib/app[0-3]/**", limit=77),
    pb.QueryRequest(node="node-b", path_glob="**/file-1??.tmp"),
    pb.QueryRequest(since_unix_ns=1_700_000_002_000_000_000, until_unix_ns=1_700_000_002_500_000_000),
    pb.QueryRequest(path_glob="/var/lib/app5/cache/file-\\xff*"),
]


def answers(addr: str) -> list[list[bytes]]:
    with grpc.insecure_channel(addr) as ch:
        stub = pbg.CollectorStub(ch)
        return [[e.SerializeToString(deterministic=True) for r in stub.Query(q, timeout=30) for e in r.events]
                for q in QUERIES]


def test_sqlite_and_postgres_give_the_same_answers(tmp_path: Path, postgres_server: PostgresCluster) -> None:
    payloads = [b.SerializeToString() for agent in ("node-a:1", "node-b:1")
                for b in batches(agent, 3000, 700, pods=40)]
    results = []
    for db in (f"sqlite:///{tmp_path}/c.db", postgres_server.new_database()):
        c = start_inprocess(db)
        try:
            with grpc.insecure_channel(c.addr) as ch:
                call = ch.stream_stream(INGEST, request_serializer=lambda b: b, response_deserializer=pb.Ack.FromString)
                assert sum(a.stored for a in call(iter(payloads + payloads[:3]), timeout=60)) == 6000
            results.append(answers(c.addr))
        finally:
            c.close()
    sqlite, postgres = results
    assert [len(r) for r in sqlite] == [len(r) for r in postgres]
    assert all(len(r) > 0 for r in sqlite[:6])
    assert sqlite == postgres


def test_the_shipper_delivers_over_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    c = start_inprocess(f"sqlite:///{tmp_path}/c.db",
                        creds=server_credentials(str(pki.server_cert), str(pki.server_key), str(pki.ca)))
    s = Shipper(ShipperConfig(collector=f"localhost:{c.port}", agent_id="n:1", node="n", attach_mode="tracepoint",
                              tls_cert=str(pki.client_cert), tls_key=str(pki.client_key), tls_ca=str(pki.ca)),
                AgentMetrics())
    s.start()
    try:
        s.submit(list(next(batches("n:1", 500, 500)).events), [])
        deadline = time.monotonic() + 20
        while c.store.count() < 500 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.store.count() == 500
    finally:
        s.close()
        c.close()


def test_the_collector_command_serves_metrics_and_probes(tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    proc = start_subprocess(f"sqlite:///{tmp_path}/c.db", port, "--metrics-addr", f"127.0.0.1:{mport}",
                            "--retention", "30d")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.stream_stream(INGEST, request_serializer=lambda b: b, response_deserializer=pb.Ack.FromString)
            list(call(iter([next(batches("n:1", 10, 10)).SerializeToString()]), timeout=10))
        base = f"http://127.0.0.1:{mport}"
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        assert 'unlinkwatch_events_total{op="unlink",result="success"}' in metrics
        assert "unlinkwatch_ingest_latency_seconds_count 1.0" in metrics
        assert urllib.request.urlopen(f"{base}/healthz", timeout=5).status == 200
        assert urllib.request.urlopen(f"{base}/readyz", timeout=5).status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


@pytest.mark.parametrize(("args", "needle"), [
    (["--db", "mysql://x"], "--db: unsupported URL"),
    (["--retention", "forever"], "--retention: not a duration"),
    (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "--tls-cert: cannot read"),
    (["--db", "postgresql://nobody@127.0.0.1:1/x"], "--db: cannot use PostgreSQL"),
])
def test_collector_configuration_mistakes_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    r = subprocess.run([sys.executable, "-m", "unlinkwatch.cli", "collector", "--listen", "127.0.0.1:0", *args],
                       cwd=tmp_path, capture_output=True, text=True, timeout=30, env={"PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and needle in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr

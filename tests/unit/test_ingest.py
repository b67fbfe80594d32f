"""Ingest over real gRPC on loopback into a real SQLite store: dedup, accounting, rejection of bad input,
bearer tokens and mutual TLS."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from unlinkwatch.collector.ingest.batch import InvalidBatch, prepare
from unlinkwatch.collector.store import open_store
from unlinkwatch.collector.store.model import AgentState, account

from tests.support.certs import make_pki
from tests.support.collector import InProcessCollector, start_inprocess
from tests.support.eventgen import batches, events
from unlinkwatch.pb import events_pb2 as pb
from unlinkwatch.pb import events_pb2_grpc as pbg
from unlinkwatch.tlsconfig import channel, server_credentials

INGEST = "/unlinkwatch.v1.Collector/Ingest"


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[InProcessCollector]:
    c = start_inprocess(f"sqlite:///{tmp_path}/c.db")
    yield c
    c.close()


def send(addr: str, payloads: list[bytes], ch: grpc.Channel | None = None) -> list[pb.Ack]:
    own = ch is None
    ch = ch or grpc.insecure_channel(addr)
    try:
        call = ch.stream_stream(INGEST, request_serializer=lambda b: b, response_deserializer=pb.Ack.FromString)
        return list(call(iter(payloads), timeout=30))
    finally:
        if own:
            ch.close()


def test_a_batch_without_agent_or_with_a_foreign_or_zero_seq_or_a_too_late_time_is_invalid(tmp_path: Path) -> None:
    good = next(batches("n:1", 3, 3))
    store = open_store(f"sqlite:///{tmp_path}/v.db")
    try:
        assert len(prepare(store, good).rows) == 3
        for bad in (pb.EventBatch(events=good.events),
                    pb.EventBatch(agent="n:2", events=good.events),
                    pb.EventBatch(agent="n:1", events=[pb.DeletionEvent(agent="n:1", seq=0)]),
                    pb.EventBatch(agent="n:1", events=[pb.DeletionEvent(seq=1, time_unix_ns=1 << 63)])):
            with pytest.raises(InvalidBatch):
                prepare(store, bad)
    finally:
        store.close()


def test_gaps_count_only_missing_sequence_numbers_the_agent_did_not_report_lost() -> None:
    st = account(AgentState("n:1"), pb.EventBatch(agent="n:1", first_seq=101), stored=90, now_ns=1)
    assert st.gaps == 10
    st = account(st, pb.EventBatch(agent="n:1", first_seq=101, lost=pb.LossCounters(queue=4, transport=1)), 0, 2)
    assert (st.gaps, st.lost_queue) == (5, 4)


def test_replayed_batches_are_acked_as_duplicates_and_evaluated_once(collector: InProcessCollector) -> None:
    bs = [b.SerializeToString() for b in batches("n:1", 1000, 250)]
    acks = send(collector.addr, bs + bs[1:3])
    assert [(a.batch_id, a.stored, a.duplicates) for a in acks] == [
        (1, 250, 0), (2, 250, 0), (3, 250, 0), (4, 250, 0), (2, 0, 250), (3, 0, 250)]
    assert collector.store.count() == 1000
    assert sorted(e.seq for e in collector.alerts.evaluated) == list(range(1, 1001))
    assert collector.metrics.duplicates._value.get() == 500


def test_malformed_bytes_are_rejected_and_nothing_else_is_affected(collector: InProcessCollector) -> None:
    with pytest.raises(grpc.RpcError) as e:
        send(collector.addr, [b"\xff\xff\xff\xff garbage"])
    assert e.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(grpc.RpcError) as e:
        send(collector.addr, [pb.EventBatch(events=events("n:1", 1, 2)).SerializeToString()])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    big = pb.EventBatch(agent="n:1", events=[pb.DeletionEvent(agent="n:1", seq=1, path=b"x" * (40 << 20))])
    with pytest.raises(grpc.RpcError) as e:
        send(collector.addr, [big.SerializeToString()])
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    good = next(batches("n:1", 10, 10))
    assert send(collector.addr, [good.SerializeToString()])[0].stored == 10
    assert collector.store.count() == 10


def test_a_rejected_batch_leaves_earlier_batches_of_the_stream_stored(collector: InProcessCollector) -> None:
    good = next(batches("n:1", 5, 5)).SerializeToString()
    bad = pb.EventBatch(agent="n:1", events=[pb.DeletionEvent(agent="n:1", seq=2**41)]).SerializeToString()
    with pytest.raises(grpc.RpcError):
        send(collector.addr, [good, bad])
    assert collector.store.count() == 5


def test_query_needs_the_bearer_token_and_ingest_and_health_do_not(tmp_path: Path) -> None:
    c = start_inprocess(f"sqlite:///{tmp_path}/c.db", token="s3cret")
    try:
        assert send(c.addr, [next(batches("n:1", 3, 3)).SerializeToString()])[0].stored == 3
        with grpc.insecure_channel(c.addr) as ch:
            stub = pbg.CollectorStub(ch)
            for md in ((), (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.RpcError) as e:
                    list(stub.Query(pb.QueryRequest(), metadata=md, timeout=5))
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.RpcError) as e:
                    stub.AgentStatus(pb.AgentStatusRequest(), metadata=md, timeout=5)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = (("authorization", "Bearer s3cret"),)
            assert sum(len(r.events) for r in stub.Query(pb.QueryRequest(), metadata=ok, timeout=5)) == 3
            assert stub.AgentStatus(pb.AgentStatusRequest(), metadata=ok, timeout=5).agents[0].events == 3
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        c.close()


def test_mutual_tls_refuses_a_client_without_a_certificate_and_accepts_one_with(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    creds = server_credentials(str(pki.server_cert), str(pki.server_key), str(pki.ca))
    c = start_inprocess(f"sqlite:///{tmp_path}/c.db", creds=creds)
    payload = [next(batches("n:1", 3, 3)).SerializeToString()]
    try:
        with pytest.raises(grpc.RpcError) as e, channel(f"localhost:{c.port}", ca=str(pki.ca)) as ch:
            send(c.addr, payload, ch)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError), grpc.insecure_channel(c.addr) as ch:
            send(c.addr, payload, ch)
        assert c.store.count() == 0
        with channel(f"localhost:{c.port}", str(pki.client_cert), str(pki.client_key), str(pki.ca)) as ch:
            assert send(c.addr, payload, ch)[0].stored == 3
    finally:
        c.close()


def test_gaps_reach_the_metric_and_agent_status(collector: InProcessCollector) -> None:
    b = pb.EventBatch(agent="n:1", node="n", batch_id=1, first_seq=5, events=events("n:1", 5, 2),
                      lost=pb.LossCounters(kernel=7, queue=1))
    send(collector.addr, [b.SerializeToString()])
    assert collector.metrics.sequence_gaps.labels("n")._value.get() == 3
    assert collector.metrics.lost.labels("n", "n:1", "kernel")._value.get() == 7
    with grpc.insecure_channel(collector.addr) as ch:
        [a] = pbg.CollectorStub(ch).AgentStatus(pb.AgentStatusRequest(), timeout=5).agents
    assert (a.events, a.sequence_gaps, a.lost.kernel, a.lost.queue) == (2, 3, 7, 1)


def test_many_batches_in_flight_on_one_stream_are_acked_in_order_exactly_once(
        collector: InProcessCollector) -> None:
    bs = [b.SerializeToString() for b in batches("n:1", 20_000, 500)]
    acks = send(collector.addr, bs + bs[:5])
    assert [a.batch_id for a in acks] == [*range(1, 41), *range(1, 6)]
    assert [a.stored for a in acks] == [500] * 40 + [0] * 5
    assert collector.store.count() == 20_000
    assert sorted(e.seq for e in collector.alerts.evaluated) == list(range(1, 20_001))


def test_streams_share_the_inflight_byte_budget_and_all_their_batches_are_stored(tmp_path: Path) -> None:
    payloads = {k: [b.SerializeToString() for b in batches(f"n:{k}", 2000, 100)] for k in range(4)}
    size = max(len(p) for ps in payloads.values() for p in ps)
    c = start_inprocess(f"sqlite:///{tmp_path}/c.db", inflight_bytes=3 * size)  # 3 batches for 4 streams
    try:
        acks: dict[int, list[pb.Ack]] = {}
        threads = [threading.Thread(target=lambda k=k: acks.__setitem__(k, send(c.addr, payloads[k])))
                   for k in payloads]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert {k: sum(a.stored for a in v) for k, v in acks.items()} == {k: 2000 for k in payloads}
        assert c.store.count() == 8000
        assert size < c.service.ingest.budget.peak <= 3 * size  # it was used, and never beyond
        assert c.service.ingest.budget.used == 0
        assert c.metrics.registry.get_sample_value("unlinkwatch_ingest_inflight_bytes") == 0
    finally:
        c.close()


def test_a_stream_that_ends_early_gives_its_share_of_the_budget_back(collector: InProcessCollector) -> None:
    bs = [b.SerializeToString() for b in batches("n:1", 1000, 100)]
    bs.insert(5, b"\xff\xff\xff\xff garbage")
    with pytest.raises(grpc.RpcError):
        send(collector.addr, bs)
    deadline = time.monotonic() + 10
    while collector.service.ingest.budget.used and time.monotonic() < deadline:
        time.sleep(0.05)
    assert collector.service.ingest.budget.used == 0
    assert send(collector.addr, bs[6:])[-1].stored == 100

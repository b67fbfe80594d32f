"""Every protobuf byte written or sliced by hand (unlinkwatch/codec.py) against the protobuf library: each
message the codec writes parses to what the library builds, and its field keys are the descriptors'."""

from __future__ import annotations

import random

import pytest

from tests.support.eventgen import batches, events
from tests.support.events import AGENT, MODE, NODE, random_deletion, reference_event, templates
from unlinkwatch import codec
from unlinkwatch.codec import EventWriter, batch_bytes, identity_fields, query_response, varint
from unlinkwatch.codec import batch_events as event_blobs
from unlinkwatch.pb import events_pb2 as pb


def test_field_keys_are_the_ones_the_library_writes() -> None:
    """Each key constant is what the library puts before that field (a non-default value of it)."""
    cases = {
        codec.T_TIME: pb.DeletionEvent(time_unix_ns=1), codec.T_NODE: pb.DeletionEvent(node="n"),
        codec.T_OP: pb.DeletionEvent(op=pb.OP_RMDIR), codec.T_PATH: pb.DeletionEvent(path=b"/p"),
        codec.T_RAW: pb.DeletionEvent(raw_path=b"p"), codec.T_RESULT: pb.DeletionEvent(result=-2),
        codec.T_PROCESS: pb.DeletionEvent(process=pb.Process(pid=1)), codec.T_AGENT: pb.DeletionEvent(agent="a"),
        codec.T_SEQ: pb.DeletionEvent(seq=1), codec.T_FLAGS: pb.DeletionEvent(flags=1),
        codec.T_ATTACH: pb.DeletionEvent(attach_mode="m"), codec.TP_PID: pb.Process(pid=1),
        codec.TP_TID: pb.Process(tid=1), codec.TP_PPID: pb.Process(ppid=1), codec.TP_UID: pb.Process(uid=1),
        codec.TP_GID: pb.Process(gid=1), codec.TP_COMM: pb.Process(comm=b"c"), codec.TP_EXE: pb.Process(exe=b"e"),
        codec.T_BATCH_EVENTS: pb.EventBatch(events=[pb.DeletionEvent(seq=1)]),
        codec.T_RESPONSE_EVENTS: pb.QueryResponse(events=[pb.DeletionEvent(seq=1)]),
        codec.T_RESPONSE_TOKEN: pb.QueryResponse(next_page_token="t"),
    }
    for key, msg in cases.items():
        assert msg.SerializeToString().startswith(key), msg


def test_a_batch_of_serialized_events_parses_as_the_batch_the_library_builds() -> None:
    for b in batches("n:1", 700, 350):
        b.lost.kernel, b.first_seq = 4, b.events[0].seq
        b.identity_updates.add(pod_uid="u", pod=pb.Pod(name="p"))
        header = pb.EventBatch()
        header.CopyFrom(b)
        del header.events[:]
        raw = batch_bytes(header, [e.SerializeToString() for e in b.events])
        assert pb.EventBatch.FromString(raw) == b
        assert event_blobs(raw) == [e.SerializeToString() for e in b.events]


def test_event_blobs_are_the_events_bytes_sliced_out_of_the_batch() -> None:
    b = next(batches("n:1", 300, 300))
    b.lost.kernel = 3
    b.identity_updates.add(pod_uid="u", pod=pb.Pod(name="p"))
    b.events[5].path = b"/" + b"x" * 70_000  # a length that needs a 3-byte varint
    raw = b.SerializeToString() + b"\xa8\x06\x07"  # plus a field this version does not know
    assert event_blobs(raw) == [e.SerializeToString() for e in b.events]
    assert event_blobs(b"") == []
    for bad in (raw[:-1], b"\x22\x05abc", b"\x0b"):  # cut short, overlong length, a group wire type
        assert event_blobs(bad) is None


def test_query_response_bytes_parse_as_the_message_they_stand_for() -> None:
    evs = events("n:1", 1, 3)
    evs[1].path = b"/" + b"y" * 300
    blobs = [e.SerializeToString() for e in evs]
    for token in ("", "1700000000:42"):
        assert pb.QueryResponse.FromString(query_response(blobs, token)) == pb.QueryResponse(
            events=evs, next_page_token=token)
    assert query_response([], "") == b""


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16383, 16384, 2**21, 2**28 - 1, 2**28, 2**35, 2**64 - 1])
def test_varint_matches_the_protobuf_encoding(n: int) -> None:
    want = pb.AgentInfo(last_seen_unix_ns=n).SerializeToString()[1:] if n else b"\x00"
    assert varint(n) == want


def test_encoded_events_parse_to_exactly_what_the_protobuf_library_builds() -> None:
    r = random.Random(7)
    enc = EventWriter(NODE, AGENT, MODE)
    ts = templates()
    seqs = [1, 2, 127, 128, 16383, 16384, 16385, 2**28 + 3, 2**40 - 1]
    for i in range(3000):
        t = ts[i % len(ts)]
        d = random_deletion(r, t.cgroup_id)
        seq = seqs[i % len(seqs)] if i < 100 else i
        got = pb.DeletionEvent.FromString(enc.encode(d, identity_fields(t), seq))
        assert got == reference_event(d, t, seq), (i, d)

"""The agent's direct encoders against the protobuf library and eventjson: same event, same JSON line."""

from __future__ import annotations

import json
import random

import pytest

from unlinkwatch.agent.record import Deletion, to_event
from unlinkwatch.agent.wire import EventEncoder, JsonLines, identity_json, identity_wire, varint
from unlinkwatch.eventjson import event_to_dict
from unlinkwatch.pb import events_pb2 as pb

NODE, AGENT, MODE = "node-ä", "node-ä:abc123", "tracepoint"


def _templates() -> list[pb.DeletionEvent]:
    host = pb.DeletionEvent(cgroup_id=1, identity=pb.IDENTITY_STATE_HOST)
    unknown = pb.DeletionEvent(cgroup_id=77, identity=pb.IDENTITY_STATE_UNKNOWN)
    unknown.pod.uid, unknown.container.id = "0f1e-uid", "c" * 64
    resolved = pb.DeletionEvent(cgroup_id=2**40 + 5, identity=pb.IDENTITY_STATE_RESOLVED)
    resolved.pod.uid, resolved.pod.name, resolved.pod.namespace = "uid-1", "web-7d4b9c-x2x", "prod"
    resolved.pod.workload = "Deployment/web"
    resolved.pod.labels["app"] = "web"
    resolved.pod.labels["tier"] = 'front "end"'
    resolved.container.id, resolved.container.name, resolved.container.image = "d" * 64, "app", "reg/app:1"
    return [host, unknown, resolved]


def _deletion(r: random.Random, cgroup_id: int) -> Deletion:
    path_len = r.choice([1, 20, 127, 128, 300, 16383, 16384, 20000])
    path = b"/" + bytes(r.choice(b"abc/.\xff\xc3\xa9 \"\\\n") for _ in range(path_len - 1))
    return Deletion(
        time_unix_ns=r.choice([0, 5, 2**28 - 1, 2**28, 2**28 + 1, 1_764_000_000_123_456_789, 2**63 - 1]),
        op=r.choice([0, 1, 2, 3]), path=path, raw_path=r.choice([b"", path[-10:], b"rel\xfe"]),
        result=r.choice([0, -2, -13, -2**31, 5]), pid=r.choice([0, 1, 127, 128, 4_194_304]),
        tid=r.randrange(2**22), ppid=r.randrange(2**22), uid=r.choice([0, 1000, 2**32 - 1]),
        gid=r.choice([0, 65534]), comm=r.choice([b"", b"rm", b"k\xffz"]), exe=r.choice([b"", b"/usr/bin/rm"]),
        cgroup_id=cgroup_id, flags=r.choice([0, 1, 2, 3]))


def _reference(d: Deletion, template: pb.DeletionEvent, seq: int) -> pb.DeletionEvent:
    ev = to_event(d, NODE, AGENT, MODE)
    ev.MergeFrom(template)
    ev.seq = seq
    return ev


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16383, 16384, 2**21, 2**28 - 1, 2**28, 2**35, 2**64 - 1])
def test_varint_matches_the_protobuf_encoding(n: int) -> None:
    want = pb.AgentInfo(last_seen_unix_ns=n).SerializeToString()[1:] if n else b"\x00"
    assert varint(n) == want


def test_encoded_events_parse_to_exactly_what_the_protobuf_library_builds() -> None:
    r = random.Random(7)
    enc = EventEncoder(NODE, AGENT, MODE)
    templates = _templates()
    seqs = [1, 2, 127, 128, 16383, 16384, 16385, 2**28 + 3, 2**40 - 1]
    for i in range(3000):
        t = templates[i % len(templates)]
        d = _deletion(r, t.cgroup_id)
        seq = seqs[i % len(seqs)] if i < 100 else i
        got = pb.DeletionEvent.FromString(enc.encode(d, identity_wire(t), seq))
        assert got == _reference(d, t, seq), (i, d)


def test_json_lines_are_byte_for_byte_those_of_event_to_dict() -> None:
    r = random.Random(11)
    js = JsonLines(NODE, AGENT, MODE)
    templates = _templates()
    for i in range(3000):
        t = templates[i % len(templates)]
        d = _deletion(r, t.cgroup_id)
        want = json.dumps(event_to_dict(_reference(d, t, i + 1))) + "\n"
        assert js.line(d, identity_json(t), i + 1) == want, (i, d)


def test_a_new_second_and_a_new_process_are_not_served_from_the_caches() -> None:
    js, enc = JsonLines(NODE, AGENT, MODE), EventEncoder(NODE, AGENT, MODE)
    t = _templates()[2]
    base = _deletion(random.Random(1), t.cgroup_id)
    for k, d in enumerate([base._replace(time_unix_ns=1_764_000_000_999_999_999),
                           base._replace(time_unix_ns=1_764_000_001_000_000_000),
                           base._replace(time_unix_ns=1_764_000_001_000_000_001, pid=9, comm=b"other"),
                           base._replace(time_unix_ns=1_764_000_001_000_000_002, pid=9, comm=b"other", uid=3)]):
        ref = _reference(d, t, k + 1)
        assert json.loads(js.line(d, identity_json(t), k + 1)) == event_to_dict(ref)
        assert pb.DeletionEvent.FromString(enc.encode(d, identity_wire(t), k + 1)) == ref

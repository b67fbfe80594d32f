"""The agent's --stdout JSON lines against eventjson, byte for byte (the DeletionEvent bytes: test_codec.py)."""

from __future__ import annotations

import json
import random

from unlinkwatch.agent.ship.encode import JsonLines, identity_json

from tests.support.events import AGENT, MODE, NODE, random_deletion, reference_event, templates
from unlinkwatch.codec import EventWriter, identity_fields
from unlinkwatch.eventjson import event_to_dict
from unlinkwatch.pb import events_pb2 as pb


def test_json_lines_are_byte_for_byte_those_of_event_to_dict() -> None:
    r = random.Random(11)
    js = JsonLines(NODE, AGENT, MODE)
    ts = templates()
    for i in range(3000):
        t = ts[i % len(ts)]
        d = random_deletion(r, t.cgroup_id)
        want = json.dumps(event_to_dict(reference_event(d, t, i + 1))) + "\n"
        assert js.line(d, identity_json(t), i + 1) == want, (i, d)


def test_a_new_second_and_a_new_process_are_not_served_from_the_caches() -> None:
    js, enc = JsonLines(NODE, AGENT, MODE), EventWriter(NODE, AGENT, MODE)
    t = templates()[2]
    base = random_deletion(random.Random(1), t.cgroup_id)
    for k, d in enumerate([base._replace(time_unix_ns=1_764_000_000_999_999_999),
                           base._replace(time_unix_ns=1_764_000_001_000_000_000),
                           base._replace(time_unix_ns=1_764_000_001_000_000_001, pid=9, comm=b"other"),
                           base._replace(time_unix_ns=1_764_000_001_000_000_002, pid=9, comm=b"other", uid=3)]):
        ref = reference_event(d, t, k + 1)
        assert json.loads(js.line(d, identity_json(t), k + 1)) == event_to_dict(ref)
        assert pb.DeletionEvent.FromString(enc.encode(d, identity_fields(t), k + 1)) == ref

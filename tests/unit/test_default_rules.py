"""Every rule of the default pack against fixture deletions (a hit and the known noise it must ignore),
and the ConfigMap shipping the same pack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from unlinkwatch.collector.rules import RuleSet, default_rules_text, load_default_rules, second_path

from unlinkwatch.eventjson import OP_BY_NAME, rename_flag_bits
from unlinkwatch.pb import events_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
CASES: list[dict[str, Any]] = yaml.safe_load((ROOT / "tests/fixtures/rules/default-cases.yaml").read_text())


def fixture_event(case: dict[str, Any]) -> pb.DeletionEvent:
    comm = case.get("comm", "rm")
    ev = pb.DeletionEvent(time_unix_ns=1_700_000_000_000_000_000, node="node-1",
                          op=OP_BY_NAME[case.get("op", "unlink")],
                          path=case["path"].encode(), raw_path=case["path"].encode(), result=case.get("result", 0),
                          process=pb.Process(pid=4242, ppid=1, comm=comm.encode(),
                                             exe=case.get("exe", f"/usr/bin/{comm}").encode()),
                          rename_to=case.get("rename_to", "").encode(),
                          flags=pb.EVENT_FLAG_REPLACED if case.get("replaced") else 0,
                          rename_flags=rename_flag_bits(case.get("flags", ())),
                          exec_session=bool(case.get("exec_session")), volume=case.get("volume", ""))
    for comm_ in case.get("ancestors", ()):
        ev.ancestry.add(pid=4000, comm=comm_.encode(), exe=f"/usr/bin/{comm_}".encode())
    if not case.get("host"):
        ev.pod.uid, ev.pod.name, ev.pod.namespace = "0d3c2f5e-uid", "web-1", "prod"
        ev.container.id, ev.container.name = "c" * 64, "web"
    return ev


@pytest.fixture(scope="module")
def pack() -> RuleSet:
    return load_default_rules()


@pytest.mark.parametrize("case", CASES, ids=[f"{c['expect'] or 'quiet'}:{c.get('comm', 'rm')}:{c['path']}"
                                             for c in CASES])
def test_default_pack_fires_exactly_the_expected_rule(pack: RuleSet, case: dict[str, Any]) -> None:
    fired = [r.name for r in pack.matching(fixture_event(case))]
    assert fired == ([case["expect"]] if case["expect"] else [])


def test_every_default_rule_has_a_hit_and_a_quiet_case(pack: RuleSet) -> None:
    hits = {c["expect"] for c in CASES}
    assert {r.name for r in pack.rules} <= hits
    for rule in pack.rules:
        quiet = [c for c in CASES if c["expect"] is None and any(
            r.match.test(ev, path) for r in pack.rules if r.name == rule.name
            for ev in [fixture_event(c)] for path in (ev.path, second_path(ev)) if path)]
        assert quiet, f"{rule.name} has no fixture for the noise it must ignore"


def test_the_configmap_ships_the_same_default_pack() -> None:
    doc = yaml.safe_load((ROOT / "deploy/rules-configmap.yaml").read_text())
    assert doc["kind"] == "ConfigMap"
    assert doc["metadata"] == {**doc["metadata"], "name": "unlinkwatch-rules", "namespace": "unlinkwatch"}
    assert doc["data"]["rules.yaml"] == default_rules_text()


def test_matching_a_whole_batch_finds_what_matching_each_event_finds(pack: RuleSet) -> None:
    evs = [fixture_event(c) for c in CASES] * 3
    evs += [fixture_event({"path": f"/var/lib/app{i % 7}/cache/f{i}.tmp"}) for i in range(200)]
    expected = [(id(ev), [r.name for r in pack.matching(ev)]) for ev in evs]
    expected = [(i, names) for i, names in expected if names]
    assert expected, "the fixtures trigger rules"
    for paths in (None, [ev.path for ev in evs]):
        got = pack.matching_batch(evs, paths)
        assert [(id(ev), [r.name for r in rules]) for ev, rules in got] == expected

"""`unlinkwatch query/status/alerts` end to end through the CLI against a real collector on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from unlinkwatch.collector.ingest.batch import commit_batch
from unlinkwatch.collector.query import EventFilter, query

from tests.support.collector import InProcessCollector, free_port, start_inprocess
from tests.support.eventgen import batches, pod_uid
from unlinkwatch.cli import main
from unlinkwatch.client import EVENT_TABLE, event_row
from unlinkwatch.eventjson import event_to_dict
from unlinkwatch.pb import events_pb2 as pb

TOKEN = "t0ken"


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[InProcessCollector]:
    c = start_inprocess(f"sqlite:///{tmp_path}/c.db", token=TOKEN)
    for b in batches("node-q:1", 2000, 500, pods=10):
        commit_batch(c.store, b, 1)
    yield c
    c.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_query_json_lines_are_the_contract_json_of_the_matching_events(
        collector: InProcessCollector, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "query", "--collector", collector.addr, "--token", TOKEN, "--pod-uid", pod_uid(3),
                     "--path", "/var/lib/app3/**", "--since", "2000-01-01T00:00:00Z", "--output", "json")
    want = query(collector.store, EventFilter(pod_uid=pod_uid(3), path_glob="/var/lib/app3/**"), None, 5000)[0]
    assert rc == 0 and want
    assert [json.loads(line) for line in out.splitlines()] == [event_to_dict(e) for e in want]


def test_query_limit_stops_early_and_says_more_match(collector: InProcessCollector,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "query", "--collector", collector.addr, "--token", TOKEN, "--limit", "1200",
                       "--output", "json")
    assert rc == 0 and len(out.splitlines()) == 1200 and "more than 1200" in err
    assert [json.loads(x)["seq"] for x in out.splitlines()] == list(range(1, 1201))


def test_query_table_shows_one_row_per_event_under_a_header(collector: InProcessCollector,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "query", "--collector", collector.addr, "--token", TOKEN, "--namespace", "ns2",
                     "--pod", "web-2")
    lines = out.splitlines()
    assert rc == 0 and lines[0].split()[:3] == ["TIME", "NODE", "POD"]
    assert len(lines) > 1 and all("ns2/web-2" in line for line in lines[1:])


def test_status_lists_agents_with_coverage(collector: InProcessCollector, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "status", "--collector", collector.addr, "--token", TOKEN, "--output", "json")
    [a] = [json.loads(x) for x in out.splitlines()]
    assert rc == 0 and (a["agent"], a["events"], a["sequence_gaps"], a["coverage"]) == ("node-q:1", 2000, 0, 1.0)
    rc, out, _ = run(capsys, "status", "--collector", collector.addr, "--token", TOKEN)
    assert "node-q:1" in out and "100.000%" in out


def test_alerts_without_follow_ends_after_the_history(collector: InProcessCollector,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "alerts", "--collector", collector.addr, "--token", TOKEN, "--since", "1h")
    assert rc == 0 and out.split()[:3] == ["TIME", "RULE", "SEVERITY"]


@pytest.mark.parametrize(("argv", "needle", "code"), [
    (["query", "--since", "yesterday"], "--since: not a time or duration", 2),
    (["query", "--workload", "web"], "--workload: expected KIND/NAME", 2),
    (["query", "--limit", "0"], "--limit", 2),
    (["query", "--rename-to", "/a/[b"], "--rename-to: ", 2),
    (["query", "--args", "rm [x"], "--args: ", 2),
    (["query", "--ancestor", "s[h"], "--ancestor: ", 2),
    (["status", "--token", "wrong"], "refused the request", 3),
])
def test_user_mistakes_give_one_line_and_a_nonzero_exit(collector: InProcessCollector,
                                                        capsys: pytest.CaptureFixture[str], argv: list[str],
                                                        needle: str, code: int) -> None:
    argv = [argv[0], "--collector", collector.addr, *argv[1:]]
    rc, _, err = run(capsys, *argv)
    assert rc == code and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_unreachable_collector_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    addr = f"127.0.0.1:{free_port()}"
    for cmd in ("query", "status", "alerts"):
        rc, _, err = run(capsys, cmd, "--collector", addr)
        assert rc == 3 and err.startswith(f"unlinkwatch {cmd}: cannot reach the collector at {addr}")
        assert len(err.strip().splitlines()) == 1


def test_query_by_rename_destination_shows_it_in_json_and_in_the_table(
        collector: InProcessCollector, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "query", "--collector", collector.addr, "--token", TOKEN, "--rename-to",
                     "/var/lib/app2/done/*", "--output", "json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and rows and all(r["op"] == "rename" and r["rename_to"].startswith("/var/lib/app2/done/")
                                    for r in rows)
    assert {r["replaced"] for r in rows} == {True, False}
    rc, out, _ = run(capsys, "query", "--collector", collector.addr, "--token", TOKEN, "--rename-to",
                     "/var/lib/app2/done/*")
    lines = out.splitlines()[1:]
    assert rc == 0 and len(lines) == len(rows)
    assert all(f"{r['path']} -> {r['rename_to']}" in line for r, line in zip(rows, lines, strict=True))
    assert any(line.endswith(" (replaced)") for line in lines)


def test_the_query_tables_command_column_quotes_cuts_and_says_unknown() -> None:
    ev = pb.DeletionEvent(process=pb.Process(comm=b"rm", args=[b"rm", b"-f", b"a file"]))
    assert event_row(ev)[EVENT_TABLE.index("COMMAND")] == "rm -f 'a file'"
    ev.process.args.append(b"x" * 100)
    cell = event_row(ev)[EVENT_TABLE.index("COMMAND")]
    assert len(cell) == 40 and cell.endswith("...")
    ev = pb.DeletionEvent(flags=pb.EVENT_FLAG_PROCESS_UNKNOWN)
    assert event_row(ev)[EVENT_TABLE.index("COMMAND")] == "?"


def test_query_args_selects_by_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = start_inprocess(f"sqlite:///{tmp_path}/a.db", token=TOKEN)
    try:
        (b,) = batches("node-a:1", 3, 3, pods=1)
        for ev, argv in zip(b.events, ([b"rm", b"-rf", b"/var/lib/postgresql"], [b"rm", b"tmp.1"], []),
                            strict=True):
            ev.process.args.extend(argv)
        commit_batch(c.store, b, 1)
        rc, out, _ = run(capsys, "query", "--collector", c.addr, "--token", TOKEN, "--args", "rm -rf *",
                         "--output", "json")
        assert rc == 0 and [json.loads(x)["args"] for x in out.splitlines()] == [["rm", "-rf", "/var/lib/postgresql"]]
        rc, out, _ = run(capsys, "query", "--collector", c.addr, "--token", TOKEN, "--args", "rm *")
        assert rc == 0 and len(out.splitlines()) == 3  # the header and two rows
    finally:
        c.close()


def test_query_selects_by_ancestor_and_exec_session(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = start_inprocess(f"sqlite:///{tmp_path}/a.db", token=TOKEN)
    try:
        (b,) = batches("node-a:1", 3, 3, pods=1)
        b.events[0].ancestry.add(pid=7, comm=b"sh", exe=b"/bin/sh")
        b.events[0].exec_session = True
        b.events[1].ancestry.add(pid=8, comm=b"cron", exe=b"/usr/sbin/cron")
        commit_batch(c.store, b, 1)
        for flags, want in ((["--ancestor", "cron"], [8]), (["--ancestor", "/bin/*"], [7]),
                            (["--exec-session"], [7]), (["--ancestor", "c*", "--exec-session"], [])):
            rc, out, _ = run(capsys, "query", "--collector", c.addr, "--token", TOKEN, *flags, "--output", "json")
            assert rc == 0 and [a["pid"] for x in out.splitlines() for a in json.loads(x)["ancestry"]] == want, flags
        rc, out, _ = run(capsys, "query", "--collector", c.addr, "--token", TOKEN, "--exec-session")
        assert rc == 0 and "[exec]" in out.splitlines()[1]
    finally:
        c.close()


def test_the_query_tables_parents_column_lists_the_ancestry_nearest_first() -> None:
    ev = pb.DeletionEvent(process=pb.Process(comm=b"rm"))
    assert event_row(ev)[EVENT_TABLE.index("PARENTS")] == "-"
    for comm in (b"sh", b"bash", b""):
        ev.ancestry.add(comm=comm, unknown=not comm)
    assert event_row(ev)[EVENT_TABLE.index("PARENTS")] == "sh<bash<?"
    ev.flags |= pb.EVENT_FLAG_ANCESTRY_TRUNCATED
    assert event_row(ev)[EVENT_TABLE.index("PARENTS")] == "sh<bash<?<..."

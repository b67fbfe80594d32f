"""--stdout's writer (agent/ship/stdout.py): every piece, in order, however many and however the kernel takes them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading

import pytest
from unlinkwatch.agent.ship import stdout
from unlinkwatch.agent.ship.stdout import IOV_MAX, StdoutLines, write_all

from bench import workload
from tests.conftest import require_root


def _read_all(fd: int, out: list[bytes]) -> None:
    while chunk := os.read(fd, 1 << 16):
        out.append(chunk)


def _through_a_pipe(pieces: list[bytes]) -> bytes:
    r, w = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(r, got))
    reader.start()
    try:
        write_all(w, pieces)
    finally:
        os.close(w)
        reader.join()
        os.close(r)
    return b"".join(got)


def test_more_pieces_than_one_writev_takes_arrive_whole_and_in_order() -> None:
    pieces = [b"%d:" % i + b"x" * (i % 300) for i in range(3 * IOV_MAX + 7)]
    assert _through_a_pipe(pieces) == b"".join(pieces)


def test_a_short_write_goes_on_from_the_byte_where_it_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    def half_of_it(fd: int, chunk: list[bytes]) -> int:  # what a signal or a nearly full disk does to writev
        data = b"".join(chunk)
        return os.write(fd, data[: len(data) // 2])

    monkeypatch.setattr(stdout.os, "writev", half_of_it)
    pieces = [b"line %d\n" % i for i in range(2500)]
    assert _through_a_pipe(pieces) == b"".join(pieces)


def test_a_stream_without_a_file_descriptor_gets_the_text() -> None:
    s = io.StringIO()
    StdoutLines(s).write([b'{"a": ', b"1", b"}\n"])
    assert s.getvalue() == '{"a": 1}\n'


def test_a_full_disk_loses_the_lines_it_refuses_counted_and_later_lines_arrive_whole() -> None:
    require_root()
    with workload.tmpfs_mount(max_files=10, size="64k") as disk, open(disk / "events.jsonl", "w") as f:
        out = StdoutLines(f)
        sent = lost = 0
        for batch in range(40):  # 40 x 50 lines of ~100 bytes: about three times the disk
            pieces = [p for i in range(50) for p in
                      (b'{"batch": %d, ' % batch, b'"line": %d, ' % i, b'"pad": "' + b"x" * 60 + b'"}\n')]
            lost += out.write(pieces)
            sent += 50
        assert lost > 0
        (disk / "room").write_bytes(b"")
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        assert out.write([b'{"after": ', b"1", b"}\n"]) == 0
        lines = (disk / "events.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and json.loads(lines[-2]) == {"after": 1}
    parsed, torn = [], None
    for line in lines[:-2]:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            torn = line  # the one line cut short by the full disk, alone on its line
    assert torn is not None and torn.startswith(b'{"batch": ') and len(parsed) == sent - lost
    assert [(d["batch"], d["line"]) for d in parsed] == [(i // 50, i % 50) for i in range(len(parsed))]

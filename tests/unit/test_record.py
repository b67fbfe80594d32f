"""The kernel record's decoder: its layout against the C header, path joining, decoding."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from unlinkwatch.agent.decode import HEADER, HEADER_FIELDS, CgroupMkdir, Decoder, join, normalize

from tests.conftest import ROOT
from tests.support.events import decode
from unlinkwatch.pb import events_pb2 as pb

HEADER_H = ROOT / "agent" / "bpf" / "kprobe.h"


def _c_layout(tmp_path: Path) -> dict[str, tuple[int, int]]:
    """offsetof/sizeof of every field of struct uw_event, from the C compiler."""
    prints = "\n".join(
        f'printf("{f} %zu %zu\\n", offsetof(struct uw_event, {f}), sizeof(((struct uw_event *)0)->{f}));'
        for f in HEADER_FIELDS
    )
    src = tmp_path / "layout.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n"
        f'#include "{HEADER_H}"\nint main(void) {{\n{prints}\n'
        'printf("total %zu 0\\n", sizeof(struct uw_event));\nreturn 0;\n}\n'
    )
    exe = tmp_path / "layout"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {name: (int(off), int(size)) for name, off, size in (line.split() for line in out.splitlines())}


def test_the_decoder_layout_matches_the_c_header_field_by_field(tmp_path: Path) -> None:
    layout = _c_layout(tmp_path)
    offset = 0
    for field, code in zip(HEADER_FIELDS, _codes(HEADER.format), strict=True):
        size = struct.calcsize("<" + code)
        assert layout[field] == (offset, size), field
        offset += size
    assert layout["total"][0] == HEADER.size


def _codes(fmt: str) -> list[str]:
    out, num = [], ""
    for ch in fmt.lstrip("<"):
        if ch.isdigit():
            num += ch
        else:
            out.append(num + ch)
            num = ""
    return out


@pytest.mark.parametrize(
    ("directory", "raw", "expected"),
    [
        (b"/tmp", b"a", b"/tmp/a"),
        (b"", b"a", b"/a"),
        (b"/a/b", b"../c", b"/a/c"),
        (b"/a/b", b"./././c", b"/a/b/c"),
        (b"/", b"../../..//x", b"/x"),
        (b"/ignored", b"/abs//p/./q/../r", b"/abs/p/r"),
        (b"/d", b"sub/", b"/d/sub"),
        (b"/d", b"caf\xe9", b"/d/caf\xe9"),
    ],
)
def test_relative_paths_join_their_directory_and_normalise(directory: bytes, raw: bytes, expected: bytes) -> None:
    assert join(directory, raw) == expected


def test_a_clean_absolute_path_is_returned_as_is() -> None:
    p = b"/var/lib/x"
    assert normalize(p) is p


def _record(kind: int, raw: bytes, directory: bytes = b"", **kw: int) -> bytes:
    vals = {"ts_ns": 5, "cgroup_id": 77, "proc_start_ns": 9, "kind": kind, "op": 1, "pid": 10, "tid": 11,
            "ppid": 1, "uid": 1000, "gid": 100, "result": -2, "dirfd": -100, "flags": 0,
            "raw_len": len(raw), "dir_len": len(directory), "rename_flags": 0, "policy": 0, "action": 0,
            "policy_gen": 0, "comm": b"rm\0junk"}
    vals.update(kw)
    return HEADER.pack(*(vals[f] for f in HEADER_FIELDS)) + raw + directory


def test_a_deletion_record_decodes_to_an_event_with_its_exe_from_an_earlier_record() -> None:
    d = Decoder("node-a", "node-a:1", "tracepoint")
    assert decode(d, _record(3, b"/usr/bin/rm")) is None
    ev = decode(d, _record(1, b"x", b"/home/u"))
    assert isinstance(ev, pb.DeletionEvent)
    assert ev.path == b"/home/u/x" and ev.raw_path == b"x" and ev.result == -2 and ev.op == pb.OP_UNLINK
    assert ev.process.exe == b"/usr/bin/rm" and ev.process.comm == b"rm" and ev.process.tid == 11
    assert ev.cgroup_id == 77 and ev.node == "node-a" and ev.agent == "node-a:1"
    assert ev.time_unix_ns > 1_600_000_000 * 10**9


def test_truncation_flags_survive_decoding() -> None:
    ev = decode(Decoder("n", "a", "kprobe"), _record(1, b"p", b"/d", flags=2))
    assert isinstance(ev, pb.DeletionEvent) and ev.flags & pb.EVENT_FLAG_PATH_TRUNCATED


def test_a_cgroup_mkdir_record_gives_id_and_path() -> None:
    item = decode(Decoder("n", "a", "kprobe"), _record(2, b"/kubepods/pod1/abc", cgroup_id=4242))
    assert item == CgroupMkdir(4242, "/kubepods/pod1/abc")


def test_a_rename_joins_the_destination_its_thread_sent_at_entry() -> None:
    d = Decoder("n", "a", "fentry")
    assert decode(d, _record(4, b"b", b"/w/other", op=3, tid=12)) is None  # another thread's rename
    assert decode(d, _record(4, b"../b", b"/w/sub/x", op=3)) is None
    ev = decode(d, _record(1, b"../a", b"/w/sub", op=3, result=0, flags=1 << 4, rename_flags=1))
    assert isinstance(ev, pb.DeletionEvent) and ev.op == pb.OP_RENAME
    assert ev.path == b"/w/a" and ev.raw_path == b"../a" and ev.rename_to == b"/w/sub/b"
    assert ev.flags == pb.EVENT_FLAG_REPLACED and ev.rename_flags == 1
    other = decode(d, _record(1, b"/a", op=3, result=0, tid=12))
    assert isinstance(other, pb.DeletionEvent) and other.rename_to == b"/w/other/b"


def test_a_destination_left_behind_by_an_ignored_rename_is_never_joined_to_the_next_rename() -> None:
    d = Decoder("n", "a", "fentry")
    assert decode(d, _record(4, b"/cache/b", op=3, ts_ns=7)) is None  # its rename was ignored in the kernel
    ev = decode(d, _record(1, b"/s", op=3, ts_ns=9))  # a later rename whose destination record was lost
    assert isinstance(ev, pb.DeletionEvent) and ev.rename_to == b""
    assert ev.flags == pb.EVENT_FLAG_RENAME_TO_UNRESOLVED


def test_the_policy_verdict_names_the_rule_of_the_generation_the_record_carries() -> None:
    d = Decoder("n", "a", "tracepoint")
    d.policy_names = {1: ["old-rule"], 2: ["keep-logs", "protect-shadow"]}
    ev = decode(d, _record(1, b"/etc/shadow", policy=2, action=1, policy_gen=2))
    assert isinstance(ev, pb.DeletionEvent)
    assert ev.action == pb.ACTION_WOULD_BLOCK and ev.policy == "protect-shadow"
    ev = decode(d, _record(1, b"/etc/x"))
    assert isinstance(ev, pb.DeletionEvent) and ev.action == pb.ACTION_UNSPECIFIED and ev.policy == ""


def test_a_rename_whose_destination_never_came_says_unresolved_and_guesses_nothing() -> None:
    d = Decoder("n", "a", "fentry")
    assert decode(d, _record(4, b"x", op=3, flags=4)) is None  # a destination whose directory was unreadable
    ev = decode(d, _record(1, b"/s", op=3))
    assert isinstance(ev, pb.DeletionEvent) and ev.rename_to == b"/x"  # as a deletion's path: flagged
    assert ev.flags == pb.EVENT_FLAG_RENAME_TO_UNRESOLVED
    ev = decode(d, _record(1, b"/s2", op=3))
    assert isinstance(ev, pb.DeletionEvent) and ev.rename_to == b""
    assert ev.flags == pb.EVENT_FLAG_RENAME_TO_UNRESOLVED

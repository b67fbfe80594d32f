"""The kernel record's decoder: its layout against the C header, path joining, decoding."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from unlinkwatch.agent.decode import HEADER, HEADER_FIELDS, C, CgroupMkdir, Decoder, Deletion, join, normalize
from unlinkwatch.agent.probe import procseed

from tests.conftest import ROOT
from tests.support.events import decode, to_event
from unlinkwatch.codec import split_args
from unlinkwatch.eventjson import event_to_dict
from unlinkwatch.pb import events_pb2 as pb

HEADER_H = ROOT / "agent" / "bpf" / "kprobe.h"
UNKNOWN = pb.EVENT_FLAG_PROCESS_UNKNOWN  # a deletion with no process record before it


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
        (b"/", b"a", b"/a"),
        (b"/d", b".", b"/d"),
        (b"/d/e", b"..", b"/d"),
        (b"/d/.e", b"f", b"/d/.e/f"),
    ],
)
def test_relative_paths_join_their_directory_and_normalise(directory: bytes, raw: bytes, expected: bytes) -> None:
    assert join(directory, raw) == expected


def test_a_clean_absolute_path_is_returned_as_is() -> None:
    p = b"/var/lib/x"
    assert normalize(p) is p


def _record(kind: int, raw: bytes, directory: bytes = b"", **kw: int) -> bytes:
    vals = {"ts_ns": 5, "cgroup_id": 77, "proc_start_ns": 9, "parent_start_ns": 4, "kind": kind, "op": 1,
            "pid": 10, "tid": 11, "ppid": 1, "uid": 1000, "gid": 100, "result": -2, "dirfd": -100, "flags": 0,
            "raw_len": len(raw), "dir_len": len(directory), "rename_flags": 0, "ns_pid": 0, "ns_level": 0,
            "mnt_ns": 0, "nlink": 0, "dev": 0, "ino": 0, "size": 0, "mode": 0, "reserved": 0, "policy": 0,
            "action": 0, "policy_gen": 0, "comm": b"rm\0junk", "root_mnt_id": 0, "reserved2": 0}
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


def test_a_host_process_in_the_hosts_mount_namespace_has_its_path_as_host_path_and_others_wait_for_placement(
) -> None:
    d = Decoder("n", "a", "tracepoint")
    d.host_mnt_ns = 4026531841
    host = d.split(_record(1, b"/var/x", mnt_ns=4026531841))
    chrooted = d.split(_record(1, b"/var/x", mnt_ns=4026531841, flags=C["UW_F_CHROOT"]))
    other = d.split(_record(1, b"/var/x", mnt_ns=4026532999))
    assert host.host_path == b"/var/x" and host.mnt_ns == 4026531841 and not host.chroot  # type: ignore[union-attr]
    assert chrooted.host_path == b"" and chrooted.chroot  # type: ignore[union-attr]
    assert other.host_path == b"" and other.mnt_ns == 4026532999  # type: ignore[union-attr]
    d.split(_record(4, b"/var/y", op=3, mnt_ns=4026531841))
    moved = d.split(_record(1, b"/var/x", op=3, result=0, mnt_ns=4026531841))
    assert isinstance(moved, Deletion) and (moved.rename_to, moved.rename_to_host_path) == (b"/var/y", b"/var/y")


def test_a_deletion_carries_the_mount_id_of_its_processs_root_for_placement() -> None:
    d = Decoder("n", "a", "tracepoint")
    ev = d.split(_record(1, b"/rootfs/dev/ptmx", mnt_ns=4026532999, root_mnt_id=1234))
    assert isinstance(ev, Deletion) and ev.root_mnt_id == 1234 and ev.host_path == b""


def test_what_a_deletion_destroyed_decodes_to_inode_dev_type_size_links_and_whether_it_was_freed() -> None:
    d = Decoder("n", "a", "fentry")
    victim = C["UW_F_VICTIM"]
    one = d.split(_record(1, b"/f", flags=victim, result=0, ino=12, dev=8 << 20 | 3, size=1 << 20, nlink=1,
                          mode=0o100644))
    linked = d.split(_record(1, b"/f", flags=victim, result=0, ino=13, dev=1, size=4, nlink=2, mode=0o100600))
    directory = d.split(_record(1, b"/d", op=2, flags=victim, result=0, ino=14, nlink=2, mode=0o040755))
    failed = d.split(_record(1, b"/f", flags=victim, result=-13, ino=15, nlink=1, mode=0o100644))
    unread = d.split(_record(1, b"/f", result=0, ino=99, nlink=1, mode=0o100644))
    assert isinstance(one, Deletion) and isinstance(linked, Deletion) and isinstance(directory, Deletion)
    assert (one.inode, one.dev, one.file_type, one.size, one.nlink, one.freed) == (
        12, 8 << 20 | 3, pb.FILE_TYPE_FILE, 1 << 20, 1, True)
    assert linked.nlink == 2 and not linked.freed  # another name still holds the data
    assert directory.file_type == pb.FILE_TYPE_DIR and directory.freed
    assert isinstance(failed, Deletion) and failed.inode == 15 and not failed.freed  # nothing was destroyed
    assert isinstance(unread, Deletion) and (unread.inode, unread.file_type, unread.freed) == (0, 0, False)
    ev = to_event(one)
    assert (ev.dev, ev.file_type, ev.freed) == ("8:3", pb.FILE_TYPE_FILE, True)
    assert event_to_dict(to_event(unread))["freed"] is None  # unknown is null in JSON, never false


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
    assert ev.flags == pb.EVENT_FLAG_REPLACED | UNKNOWN and ev.rename_flags == 1
    other = decode(d, _record(1, b"/a", op=3, result=0, tid=12))
    assert isinstance(other, pb.DeletionEvent) and other.rename_to == b"/w/other/b"


def test_a_destination_left_behind_by_an_ignored_rename_is_never_joined_to_the_next_rename() -> None:
    d = Decoder("n", "a", "fentry")
    assert decode(d, _record(4, b"/cache/b", op=3, ts_ns=7)) is None  # its rename was ignored in the kernel
    ev = decode(d, _record(1, b"/s", op=3, ts_ns=9))  # a later rename whose destination record was lost
    assert isinstance(ev, pb.DeletionEvent) and ev.rename_to == b""
    assert ev.flags == pb.EVENT_FLAG_RENAME_TO_UNRESOLVED | UNKNOWN


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
    assert ev.flags == pb.EVENT_FLAG_RENAME_TO_UNRESOLVED | UNKNOWN
    ev = decode(d, _record(1, b"/s2", op=3))
    assert isinstance(ev, pb.DeletionEvent) and ev.rename_to == b""
    assert ev.flags == pb.EVENT_FLAG_RENAME_TO_UNRESOLVED | UNKNOWN


def test_a_process_record_gives_the_deletions_after_it_their_exe_and_command_line() -> None:
    d = Decoder("n", "a", "tracepoint")
    assert decode(d, _record(3, b"/usr/bin/rm", b"rm\0-f\0x\0")) is None
    ev = decode(d, _record(1, b"/x"))
    assert isinstance(ev, pb.DeletionEvent)
    assert ev.process.exe == b"/usr/bin/rm" and list(ev.process.args) == [b"rm", b"-f", b"x"]
    assert not ev.flags & (pb.EVENT_FLAG_ARGS_TRUNCATED | pb.EVENT_FLAG_PROCESS_UNKNOWN)


def test_a_command_line_the_kernel_cut_is_flagged_and_keeps_its_last_partial_argument() -> None:
    d = Decoder("n", "a", "tracepoint")
    decode(d, _record(3, b"/usr/bin/rm", b"rm\0aaaa", flags=C["UW_F_ARGS_TRUNCATED"]))
    ev = decode(d, _record(1, b"/x"))
    assert isinstance(ev, pb.DeletionEvent)
    assert list(ev.process.args) == [b"rm", b"aaaa"] and ev.flags & pb.EVENT_FLAG_ARGS_TRUNCATED


def test_an_empty_argument_survives_and_no_arguments_is_an_empty_list() -> None:
    assert split_args(b"printf\0\0x\0") == [b"printf", b"", b"x"]
    assert split_args(b"") == []


def test_a_process_the_kernel_does_not_know_is_unknown_even_when_the_agent_knew_its_pid() -> None:
    d = Decoder("n", "a", "tracepoint")
    decode(d, _record(3, b"/usr/bin/rm", b"rm\0x\0"))
    ev = decode(d, _record(1, b"/x", flags=C["UW_F_PROC_UNKNOWN"]))  # its entry evicted, then an exec: stale here
    assert isinstance(ev, pb.DeletionEvent)
    assert ev.process.exe == b"" and list(ev.process.args) == [] and ev.flags & pb.EVENT_FLAG_PROCESS_UNKNOWN


def test_a_pid_with_another_start_time_never_gets_the_earlier_processs_command_line() -> None:
    d = Decoder("n", "a", "tracepoint")
    decode(d, _record(3, b"/usr/bin/rm", b"rm\0x\0", proc_start_ns=9))
    ev = decode(d, _record(1, b"/x", proc_start_ns=10))  # the pid reused by a process the agent never saw
    assert isinstance(ev, pb.DeletionEvent)
    assert ev.process.exe == b"" and ev.flags & pb.EVENT_FLAG_PROCESS_UNKNOWN


def test_the_proc_record_struct_matches_the_seeders_packing(tmp_path: Path) -> None:
    src = tmp_path / "proc.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n"
        f'#include "{HEADER_H}"\nint main(void) {{\n'
        'printf("%zu %zu %zu %zu %zu\\n", sizeof(struct uw_proc_key), sizeof(struct uw_proc), '
        "offsetof(struct uw_proc, exe_except), offsetof(struct uw_proc, exe), offsetof(struct uw_proc, args));\n"
        "return 0;\n}\n")
    exe = tmp_path / "proc"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True)
    key, value, exe_except, exe_at, args_at = map(int, subprocess.run([str(exe)], capture_output=True, text=True,
                                                                       check=True).stdout.split())
    assert (key, value) == (procseed.KEY.size, procseed.VALUE.size)
    head = procseed.VALUE.size - 8 * C["UW_POLICY_WORDS"] - C["UW_EXE_MAX"] - C["UW_ARGS_MAX"]
    assert (exe_except, exe_at, args_at) == (head, head + 8 * C["UW_POLICY_WORDS"], head + 8 * C["UW_POLICY_WORDS"]
                                             + C["UW_EXE_MAX"])


def test_a_process_read_from_proc_has_its_exe_and_command_line() -> None:
    me = procseed.read_proc(os.getpid())
    assert me is not None and me.exe == os.readlink("/proc/self/exe").encode()
    assert me.args == Path("/proc/self/cmdline").read_bytes()[:C["UW_ARGS_MAX"]]
    key, value = procseed.entry(me)
    assert len(key) == procseed.KEY.size and len(value) == procseed.VALUE.size
    assert procseed.read_proc(2**22 + 1) is None  # no such process


def test_the_seed_survey_counts_this_process_among_the_readable_ones() -> None:
    readable, denied = procseed.survey()
    assert readable >= 1 and denied >= 0


def _exe(pid: int, start: int, ppid: int, pstart: int, ns_pid: int, level: int = 0, comm: bytes = b"sh") -> bytes:
    return _record(3, b"/bin/" + comm, comm + b"\0-c\0", pid=pid, tid=pid, proc_start_ns=start, ppid=ppid,
                   parent_start_ns=pstart, ns_pid=ns_pid, ns_level=level, comm=comm, flags=0)


def _deletion_of(pid: int, start: int, ppid: int, pstart: int) -> pb.DeletionEvent:
    return _decoded(_record(1, b"/x", pid=pid, tid=pid, proc_start_ns=start, ppid=ppid, parent_start_ns=pstart,
                            result=0))


_D = Decoder("n", "a", "tracepoint")


def _decoded(rec: bytes) -> pb.DeletionEvent:
    ev = decode(_D, rec)
    assert isinstance(ev, pb.DeletionEvent)
    return ev


def test_the_ancestry_follows_the_parents_the_kernel_sent_up_to_init() -> None:
    for rec in (_exe(1, 2, 0, 0, 1, comm=b"init"), _exe(5, 4, 1, 2, 5, comm=b"bash"), _exe(10, 9, 5, 4, 10)):
        assert decode(_D, rec) is None
    ev = _deletion_of(10, 9, 5, 4)
    assert [(a.pid, a.comm, list(a.args)) for a in ev.ancestry] == [(5, b"bash", [b"bash", b"-c"]),
                                                                    (1, b"init", [b"init", b"-c"])]
    assert not ev.exec_session and not ev.flags & pb.EVENT_FLAG_ANCESTRY_TRUNCATED


def test_a_chain_that_enters_the_namespace_from_outside_is_an_exec_session_cut_at_the_border() -> None:
    # runc (host, level 0) -> sh (ns pid 12, level 1) -> rm (ns pid 13)
    for rec in (_exe(300, 1, 1, 2, 300, 0, b"runc"), _exe(301, 2, 300, 1, 12, 1), _exe(302, 3, 301, 2, 13, 1, b"rm")):
        decode(_D, rec)
    ev = _deletion_of(302, 3, 301, 2)
    assert [a.pid for a in ev.ancestry] == [301] and ev.exec_session


def test_a_containers_first_process_ends_the_ancestry_and_is_no_exec_session() -> None:
    for rec in (_exe(400, 1, 1, 2, 400, 0, b"shim"), _exe(401, 2, 400, 1, 1, 1), _exe(402, 3, 401, 2, 7, 1, b"rm")):
        decode(_D, rec)
    ev = _deletion_of(402, 3, 401, 2)
    assert [a.pid for a in ev.ancestry] == [401] and not ev.exec_session
    assert list(_deletion_of(401, 2, 400, 1).ancestry) == []  # the first process itself has no ancestor inside


def test_more_than_8_parents_are_cut_and_flagged() -> None:
    for i in range(12):
        decode(_D, _exe(500 + i, 1, 501 + i, 1, 500 + i))
    ev = _deletion_of(500, 1, 501, 1)
    assert [a.pid for a in ev.ancestry] == list(range(501, 509))
    assert ev.flags & pb.EVENT_FLAG_ANCESTRY_TRUNCATED and not ev.exec_session


def test_an_ancestor_the_kernel_never_sent_ends_the_chain_as_unknown_never_guessed() -> None:
    decode(_D, _exe(600, 1, 601, 1, 600))
    ev = _deletion_of(600, 1, 601, 1)
    assert [(a.pid, a.unknown, a.exe) for a in ev.ancestry] == [(601, True, b"")]


def test_an_ancestor_stays_known_however_many_processes_come_after_it() -> None:
    d = Decoder("n", "a", "tracepoint", proc_cache_size=4)
    decode(d, _exe(700, 1, 0, 0, 1, comm=b"init"))
    for pid in range(701, 720):  # one process after another below the same parent, as a shell loop makes them
        decode(d, _exe(pid, 1, 700, 1, pid, comm=b"rm"))
        ev = decode(d, _record(1, b"/x", pid=pid, tid=pid, proc_start_ns=1, ppid=700, parent_start_ns=1))
        assert isinstance(ev, pb.DeletionEvent) and [a.comm for a in ev.ancestry] == [b"init"]

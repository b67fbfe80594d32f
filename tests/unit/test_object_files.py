"""The kept compile (agent/probe/objcache.py): what a file holds, the map references moved to a new process's
fds, and a directory or file anyone else could write is never used."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from unlinkwatch.agent.probe import objcache
from unlinkwatch.agent.probe.objcache import CachedObject, CacheError, MapDef, ProgDef


def _ld_map(dst: int, fd: int, src: int = objcache.BPF_PSEUDO_MAP_FD) -> bytes:
    return struct.pack("<BBhi", 0x18, (src << 4) | dst, 0, fd) + struct.pack("<BBhi", 0, 0, 0, 0)


EXIT = struct.pack("<BBhi", 0x95, 0, 0, 0)
MOV_R0_7 = struct.pack("<BBhi", 0xB7, 0, 0, 7)  # r0 = 7: an immediate that is not a map fd


def _obj() -> CachedObject:
    maps = [MapDef("events", 7, 27, 0, 0, 1 << 25, 0, 0, 0), MapDef("stash", 9, 29, 4, 224, 0, 1, 3, 5)]
    progs = {"uw_sys_exit": ProgDef("uw_sys_exit", 5, _ld_map(1, 7) + MOV_R0_7 + EXIT)}
    return CachedObject(maps, progs, b"\x9f\xeb-btf", 393984)


def test_map_references_move_to_the_new_fds_and_nothing_else_changes() -> None:
    insns = _ld_map(1, 7) + MOV_R0_7 + _ld_map(2, 9) + EXIT
    out = objcache.relocate(insns, {7: 41, 9: 42})
    assert struct.unpack_from("<i", out, 4)[0] == 41 and struct.unpack_from("<i", out, 28)[0] == 42
    assert out[16:24] == MOV_R0_7 and out[-8:] == EXIT and len(out) == len(insns)


@pytest.mark.parametrize("insns", [_ld_map(1, 8) + EXIT, _ld_map(1, 7, src=2) + EXIT, EXIT[:5]],
                         ids=["an unknown fd", "a map value load", "a cut instruction"])
def test_instructions_the_replay_cannot_move_are_refused(insns: bytes) -> None:
    with pytest.raises(CacheError):
        objcache.relocate(insns, {7: 41})


def test_btf_attached_programs_name_their_kernel_function() -> None:
    assert objcache.attach_target("kfunc__do_unlinkat") == (objcache.ATTACH_TRACE_FENTRY, "do_unlinkat")
    assert objcache.attach_target("kretfunc__vfs_rename") == (objcache.ATTACH_TRACE_FEXIT, "vfs_rename")
    assert objcache.attach_target("lsm__path_unlink") == (objcache.ATTACH_LSM_MAC, "bpf_lsm_path_unlink")
    assert objcache.attach_target("uw_sys_exit") is None


def test_an_object_reads_back_as_written_and_a_damaged_one_is_refused() -> None:
    obj = _obj()
    back = CachedObject.loads(obj.dumps())
    assert back.maps == obj.maps and back.progs == obj.progs and back.btf == obj.btf
    assert back.kern_version == obj.kern_version
    for bad in (b"{", b"[]", obj.dumps().replace(b'"format": 1', b'"format": 0'), b'{"format": 1}'):
        with pytest.raises(CacheError):
            CachedObject.loads(bad)


def test_the_key_changes_with_the_source_and_the_flags() -> None:
    lib = "/nonexistent/libbcc.so"
    k = objcache.cache_key("int x;", ["-DA=1"], lib)
    assert k == objcache.cache_key("int x;", ["-DA=1"], lib)
    assert k != objcache.cache_key("int y;", ["-DA=1"], lib) != objcache.cache_key("int x;", ["-DA=2"], lib)


def test_a_directory_others_can_write_is_not_used(tmp_path: Path) -> None:
    mine = objcache.usable_dir(str(tmp_path / "new"))
    assert mine is not None and (mine.stat().st_mode & 0o777) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert objcache.usable_dir(str(shared)) is None


def test_a_kept_file_reads_back_unless_others_can_write_it(tmp_path: Path) -> None:
    d = objcache.usable_dir(str(tmp_path / "c"))
    assert d is not None
    objcache.write(d, "k1", _obj())
    assert objcache.read(d, "k1") is not None and objcache.read(d, "nope") is None
    (d / "k1.json").chmod(0o666)
    assert objcache.read(d, "k1") is None


def test_only_the_newest_files_are_kept(tmp_path: Path) -> None:
    d = objcache.usable_dir(str(tmp_path / "c"))
    assert d is not None
    for i in range(objcache.KEEP + 3):
        objcache.write(d, f"k{i}", _obj())
        os.utime(d / f"k{i}.json", ns=(i * 10**9, i * 10**9))
    kept = sorted(p.stem for p in d.glob("*.json"))
    assert len(kept) == objcache.KEEP and "k0" not in kept and f"k{objcache.KEEP + 2}" in kept

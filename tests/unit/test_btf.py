"""The BTF reader on a hand-built blob (and on the running kernel's when there is one)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from unlinkwatch.agent.probe.btf import (
    KIND_FUNC,
    KIND_INT,
    KIND_PTR,
    KIND_STRUCT,
    KIND_TYPEDEF,
    KIND_UNION,
    Btf,
    BtfError,
)


def _blob() -> bytes:
    strings = b"\0int\0qstr\0len\0hash\0name\0dentry\0d_parent\0d_name\0do_unlinkat\0pair_t\0qstr_t\0"

    def off(s: bytes) -> int:
        return strings.index(b"\0" + s + b"\0") + 1

    types = b""
    # 1: int
    types += struct.pack("<III", off(b"int"), KIND_INT << 24, 4) + struct.pack("<I", 32)
    # 2: anonymous struct { u32 hash; u32 len; }
    types += struct.pack("<III", 0, KIND_STRUCT << 24 | 2, 8)
    types += struct.pack("<III", off(b"hash"), 1, 0) + struct.pack("<III", off(b"len"), 1, 32)
    # 3: anonymous union { struct {...}; }
    types += struct.pack("<III", 0, KIND_UNION << 24 | 1, 8) + struct.pack("<III", 0, 2, 0)
    # 4: pointer to int
    types += struct.pack("<III", 0, KIND_PTR << 24, 1)
    # 5: struct qstr { union {...}; const char *name; }
    types += struct.pack("<III", off(b"qstr"), KIND_STRUCT << 24 | 2, 16)
    types += struct.pack("<III", 0, 3, 0) + struct.pack("<III", off(b"name"), 4, 64)
    # 6: struct dentry { void *d_parent; struct qstr d_name; }  (d_name at byte 24)
    types += struct.pack("<III", off(b"dentry"), KIND_STRUCT << 24 | 2, 40)
    types += struct.pack("<III", off(b"d_parent"), 4, 64) + struct.pack("<III", off(b"d_name"), 5, 192)
    # 7: func do_unlinkat
    types += struct.pack("<III", off(b"do_unlinkat"), KIND_FUNC << 24, 0)
    # 8: typedef struct { u32 hash; u32 len; } pair_t;  9: typedef struct qstr qstr_t;
    types += struct.pack("<III", off(b"pair_t"), KIND_TYPEDEF << 24, 2)
    types += struct.pack("<III", off(b"qstr_t"), KIND_TYPEDEF << 24, 5)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_member_offsets_are_found_through_anonymous_unions_and_dotted_paths() -> None:
    btf = Btf(_blob())
    assert btf.offset("qstr", "len") == 4
    assert btf.offset("qstr", "name") == 8
    assert btf.offset("dentry", "d_parent") == 8
    assert btf.offset("dentry", "d_name.len") == 28
    assert btf.has_member("dentry", "d_name") and not btf.has_member("dentry", "d_children")


def test_a_typedef_of_an_anonymous_or_a_named_struct_gives_its_members_offsets() -> None:
    btf = Btf(_blob())
    assert btf.typedef_offset("pair_t", "len") == 4
    assert btf.typedef_offset("qstr_t", "name") == 8
    with pytest.raises(BtfError, match="typedef seqlock_t not in BTF"):
        btf.typedef_offset("seqlock_t", "seqcount")


def test_functions_are_known_by_name() -> None:
    btf = Btf(_blob())
    assert btf.has_func("do_unlinkat") and not btf.has_func("filename_unlinkat")


def test_a_missing_struct_or_member_is_a_clear_error() -> None:
    btf = Btf(_blob())
    with pytest.raises(BtfError, match="struct inode not in BTF"):
        btf.offset("inode", "i_mode")
    with pytest.raises(BtfError, match="no member d_inode"):
        btf.offset("dentry", "d_inode")


def test_garbage_is_not_btf() -> None:
    with pytest.raises(BtfError):
        Btf(b"\0" * 64)


@pytest.mark.skipif(not Path("/sys/kernel/btf/vmlinux").exists(), reason="this kernel exposes no BTF")
def test_the_running_kernel_has_every_offset_the_probes_read() -> None:
    from unlinkwatch.agent.probe.program import kernel_offsets

    offsets = kernel_offsets(Btf.load())
    assert offsets["OFF_QSTR_LEN"] == 4 and offsets["OFF_PATH_DENTRY"] == 8
    assert offsets["OFF_SEQLOCK_SEQUENCE"] == 0  # rename_lock's sequence, for enforce.h's directory cache
    assert all(v >= 0 for v in offsets.values())

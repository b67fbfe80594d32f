"""Reads the running kernel's BTF (/sys/kernel/btf/vmlinux): struct member offsets for the probes'
`-D` flags, and which kernel functions exist (for the hook chain). Pure: bytes in, numbers out."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 7, 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT = 12, 13, 14, 15, 16
KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 17, 18, 19

# bytes that follow the 12-byte common header: (fixed, per vlen item)
_EXTRA = {
    KIND_INT: (4, 0), KIND_ARRAY: (12, 0), KIND_STRUCT: (0, 12), KIND_UNION: (0, 12), KIND_ENUM: (0, 8),
    KIND_FUNC_PROTO: (0, 8), KIND_VAR: (4, 0), KIND_DATASEC: (0, 12), KIND_DECL_TAG: (4, 0),
    KIND_ENUM64: (0, 12),
}
_MODIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}


class BtfError(Exception):
    pass


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int


class Btf:
    """An index over one BTF blob; struct members are decoded only when asked for."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != 0xEB9F:
            raise BtfError(f"bad BTF magic {magic:#x}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._data = data
        self._strs = hdr_len + str_off
        self._str_end = self._strs + str_len
        # per type id: (kind, name_off, info, size_or_type, byte position of the record)
        self._types: list[tuple[int, int, int, int, int]] = [(0, 0, 0, 0, 0)]
        self._by_name: dict[tuple[int, str], int] = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        unpack = struct.Struct("<III").unpack_from
        wanted = {KIND_STRUCT, KIND_UNION, KIND_FUNC, KIND_TYPEDEF}
        while pos < end:
            name_off, info, size_or_type = unpack(data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            self._types.append((kind, name_off, info, size_or_type, pos))
            if kind in wanted and name_off:
                self._by_name.setdefault((kind, self._str(name_off)), len(self._types) - 1)
            fixed, per = _EXTRA.get(kind, (0, 0))
            pos += 12 + fixed + per * vlen

    @classmethod
    def load(cls, path: str = VMLINUX_BTF) -> Btf:
        try:
            return cls(Path(path).read_bytes())
        except OSError as e:
            raise BtfError(f"cannot read {path}: {e.strerror}") from e

    def _str(self, off: int) -> str:
        start = self._strs + off
        stop = self._data.index(b"\0", start, self._str_end)
        return self._data[start:stop].decode()

    def has_func(self, name: str) -> bool:
        return (KIND_FUNC, name) in self._by_name

    def func_id(self, name: str) -> int:
        """The type id of function `name` (what a BTF-attached program names as its attach_btf_id)."""
        tid = self._by_name.get((KIND_FUNC, name))
        if tid is None:
            raise BtfError(f"function {name} not in BTF")
        return tid

    def has_struct(self, name: str) -> bool:
        return (KIND_STRUCT, name) in self._by_name

    def _resolve(self, type_id: int) -> int:
        while self._types[type_id][0] in _MODIFIERS:
            type_id = self._types[type_id][3]
        return type_id

    def _members(self, type_id: int) -> list[Member]:
        kind, _name, info, _size, pos = self._types[type_id]
        if kind not in (KIND_STRUCT, KIND_UNION):
            return []
        kind_flag = info >> 31
        out = []
        for i in range(info & 0xFFFF):
            name_off, mtype, off = struct.unpack_from("<III", self._data, pos + 12 + 12 * i)
            out.append(Member(self._str(name_off) if name_off else "", mtype, off & 0xFFFFFF if kind_flag else off))
        return out

    def _find(self, type_id: int, member: str) -> int | None:
        """Bit offset of `member` in the struct/union, looking inside anonymous members too."""
        for m in self._members(type_id):
            if m.name == member:
                return m.bit_offset
            if not m.name:
                inner = self._find(self._resolve(m.type_id), member)
                if inner is not None:
                    return m.bit_offset + inner
        return None

    def has_member(self, struct_name: str, member: str) -> bool:
        tid = self._by_name.get((KIND_STRUCT, struct_name))
        return tid is not None and self._find(tid, member) is not None

    def size(self, struct_name: str) -> int:
        """sizeof(struct struct_name)."""
        tid = self._by_name.get((KIND_STRUCT, struct_name))
        if tid is None:
            raise BtfError(f"struct {struct_name} not in BTF")
        return self._types[tid][3]

    def offset(self, struct_name: str, member: str) -> int:
        """Byte offset of `member` (dotted paths allowed: "f_path.dentry") in `struct struct_name`."""
        tid = self._by_name.get((KIND_STRUCT, struct_name))
        if tid is None:
            raise BtfError(f"struct {struct_name} not in BTF")
        return self._offset(tid, struct_name, member)

    def typedef_offset(self, typedef: str, member: str) -> int:
        """offset() in the struct a typedef names (seqlock_t is a typedef of an anonymous struct)."""
        tid = self._by_name.get((KIND_TYPEDEF, typedef))
        if tid is None:
            raise BtfError(f"typedef {typedef} not in BTF")
        return self._offset(self._resolve(tid), typedef, member)

    def _offset(self, tid: int, struct_name: str, member: str) -> int:
        total = 0
        for part in member.split("."):
            bits = self._find(tid, part)
            if bits is None:
                raise BtfError(f"struct {struct_name} has no member {member}")
            if bits % 8:
                raise BtfError(f"{struct_name}.{member} is a bitfield")
            total += bits // 8
            tid = self._member_type(tid, part)
        return total

    def _member_type(self, type_id: int, member: str) -> int:
        for m in self._members(type_id):
            if m.name == member:
                return self._resolve(m.type_id)
            if not m.name:
                inner = self._resolve(m.type_id)
                if self._find(inner, member) is not None:
                    return self._member_type(inner, member)
        raise BtfError(f"no member {member}")

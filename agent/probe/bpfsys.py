"""The few bpf(2) calls the agent makes after start-up, by ctypes: once the loader child has handed over
the program, map and attachment fds, the agent reads counters, names maps and writes the node policy's maps
(the ring buffer itself is read by mmap in ringbuf.py). No bcc here. objcache.py makes its own calls through
call()."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_BTF_GET_FD_BY_ID = 19
BPF_NOEXIST = 1  # map update flag: add only

MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_PROG_ARRAY = 3
MAP_TYPE_RINGBUF = 27


class _LookupAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class IdAttr(ctypes.Structure):
    """The attribute of the BPF_*_GET_FD_BY_ID commands: an object's id to an fd of it."""

    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


class InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class _MapInfo(ctypes.Structure):  # the head of struct bpf_map_info, up to its BTF type ids
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
                ("btf_vmlinux_value_type_id", ctypes.c_uint32), ("netns_dev", ctypes.c_uint64),
                ("netns_ino", ctypes.c_uint64), ("btf_id", ctypes.c_uint32), ("btf_key_type_id", ctypes.c_uint32),
                ("btf_value_type_id", ctypes.c_uint32)]


@dataclass(frozen=True)
class MapInfo:
    type: int
    key_size: int
    value_size: int
    max_entries: int
    name: str
    flags: int = 0
    btf_id: int = 0
    btf_key: int = 0
    btf_value: int = 0


@cache
def _libc() -> ctypes.CDLL:
    # the C library already loaded into this process (find_library would run ldconfig or gcc and delete
    # a temp file: a deletion the agent would report as its own)
    return ctypes.CDLL(None, use_errno=True)


def call(cmd: int, attr: ctypes.Structure) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(f"bpf(2) syscall number unknown for {platform.machine()}")
    rc = int(_libc().syscall(ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr),
                             ctypes.c_uint(ctypes.sizeof(attr))))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return rc


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    attr = InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    call(BPF_OBJ_GET_INFO_BY_FD, attr)
    return MapInfo(info.type, info.key_size, info.value_size, info.max_entries,
                   info.name.decode(errors="replace"), info.map_flags, info.btf_id, info.btf_key_type_id,
                   info.btf_value_type_id)


@cache
def possible_cpus() -> int:
    """How many values a per-CPU map holds per key: the kernel sizes them by possible, not online, CPUs."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()  # e.g. "0-3" or "0,2-5"
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def lookup(fd: int, key: bytes, value_size: int) -> bytes:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    call(BPF_MAP_LOOKUP_ELEM, _LookupAttr(map_fd=fd, key=ctypes.addressof(k), value=ctypes.addressof(v)))
    return v.raw


def update(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    """flags: BPF_NOEXIST to add only (EEXIST when the key is there)."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    call(BPF_MAP_UPDATE_ELEM, _LookupAttr(map_fd=fd, key=ctypes.addressof(k), value=ctypes.addressof(v),
                                          flags=flags))


def delete(fd: int, key: bytes) -> bool:
    """False when the key was not there."""
    k = ctypes.create_string_buffer(key, len(key))
    try:
        call(BPF_MAP_DELETE_ELEM, _LookupAttr(map_fd=fd, key=ctypes.addressof(k)))
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


class PercpuHeads:
    """The first `width` u64 of every element of a BPF_PERCPU_ARRAY, summed over elements and CPUs: the kernel's
    drop counter, and counters the programs keep in a map value they already hold (unlink.bpf.c's scratch) instead
    of looking up a map of their own. Each read copies every CPU's whole value (the scratch: 17-25 KB a CPU), once
    a poll."""

    def __init__(self, fd: int, width: int) -> None:
        info = map_info(fd)
        if info.type != MAP_TYPE_PERCPU_ARRAY or info.value_size < 8 * width or info.key_size != 4:
            raise OSError(f"map {info.name!r} is not a per-CPU array of {width} u64 or more (type {info.type})")
        self._fd = fd
        self._width = width
        self._entries = info.max_entries
        self._stride = (info.value_size + 7) // 8 * 8  # the kernel rounds each CPU's value up to 8 bytes
        self._n = possible_cpus()

    def sums(self) -> tuple[int, ...]:
        totals = [0] * self._width
        head = struct.Struct(f"={self._width}Q")
        for index in range(self._entries):
            raw = lookup(self._fd, struct.pack("=I", index), self._stride * self._n)
            for cpu in range(self._n):
                for i, v in enumerate(head.unpack_from(raw, cpu * self._stride)):
                    totals[i] += v
        return tuple(totals)

"""The compiled program, kept between starts. bcc compiles the C source with its in-process clang on every start
(2-3 s on this project's machines, 30-50 s under emulation), although the result depends only on the source, the
flags (the kernel's offsets among them), bcc and the kernel. After a compile, program.py writes here what the
kernel was given: each map's definition, the BTF its maps refer to, and each loaded program's instructions, whose
map references are the compiling process's map fds. A start with the same key creates the maps, loads the BTF and
the programs with those references moved to its own fds, and attaches as after a compile (bcc's attach calls take
the program fds). The verifier checks every program again; only the compiler is skipped.

The directory is the agent's alone: one not owned by this user, or writable by others, is not used (its files
would be programs loaded into the kernel). Nothing in a file is trusted beyond that: a file that does not parse or
does not load is ignored, and the agent compiles."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import platform
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import bpfsys

log = logging.getLogger("unlinkwatch.probe")

FORMAT = 1  # bumped when what a file holds, or how it is replayed, changes
KEEP = 16  # files kept: one per (mode, LSM or not, kernel, source); the oldest go first

BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
BPF_BTF_LOAD = 18
BPF_PSEUDO_MAP_FD = 1
_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: a 16-byte instruction whose second half holds the upper 32 bits

# prog types and attach types (uapi/linux/bpf.h) for the programs bcc names by prefix
PROG_TYPE_TRACING = 26
PROG_TYPE_LSM = 29
ATTACH_TRACE_FENTRY = 24
ATTACH_TRACE_FEXIT = 25
ATTACH_LSM_MAC = 27


class CacheError(Exception):
    """A cached object that cannot be used here (the agent compiles instead)."""


@dataclass(frozen=True)
class MapDef:
    name: str          # bcc's table name
    fd: int            # its fd in the compiling process: the programs' references
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    btf_key: int       # type ids in the module's BTF, 0 for none
    btf_value: int


@dataclass(frozen=True)
class ProgDef:
    name: str
    prog_type: int
    insns: bytes


@dataclass
class CachedObject:
    maps: list[MapDef]
    progs: dict[str, ProgDef]
    btf: bytes = b""
    kern_version: int = 0

    def dumps(self) -> bytes:
        return json.dumps({
            "format": FORMAT, "kern_version": self.kern_version,
            "btf": base64.b64encode(self.btf).decode(),
            "maps": [m.__dict__ for m in self.maps],
            "progs": [{"name": p.name, "prog_type": p.prog_type, "insns": base64.b64encode(p.insns).decode()}
                      for p in self.progs.values()],
        }).encode()

    @classmethod
    def loads(cls, data: bytes) -> CachedObject:
        try:
            d = json.loads(data)
            if not isinstance(d, dict) or d.get("format") != FORMAT:
                raise CacheError(f"not an object of format {FORMAT}")
            progs = {p["name"]: ProgDef(p["name"], int(p["prog_type"]), base64.b64decode(p["insns"]))
                     for p in d["progs"]}
            return cls([MapDef(**m) for m in d["maps"]], progs, base64.b64decode(d["btf"]),
                       int(d["kern_version"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CacheError(f"unreadable: {e}") from e


def cache_key(text: str, cflags: list[str], bcc_lib: str) -> str:
    """What decides the compiled bytes: the source, the flags, bcc (its library's path, size and time), and the
    kernel (its release and build: the attach ids and kernel version are its)."""
    h = hashlib.sha256()
    try:
        st = os.stat(bcc_lib)
        lib = f"{os.path.realpath(bcc_lib)}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        lib = bcc_lib
    uname = platform.uname()
    for part in (str(FORMAT), text, "\0".join(cflags), lib, uname.release, uname.version, uname.machine):
        h.update(part.encode())
        h.update(b"\0\1")
    return h.hexdigest()[:32]


def usable_dir(path: str) -> Path | None:
    """The cache directory, made if missing (0700); None, with the reason logged, when it is not the agent's alone."""
    d = Path(path)
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = d.stat()
    except OSError as e:
        log.warning("object cache unusable", extra={"fields": {"dir": path, "error": str(e)}})
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        log.warning("object cache not used: the directory must be this user's and writable by no one else",
                    extra={"fields": {"dir": path, "mode": oct(st.st_mode & 0o777), "uid": st.st_uid}})
        return None
    return d


def read(d: Path, key: str) -> CachedObject | None:
    f = d / f"{key}.json"
    try:
        fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.debug("object cache: %s: %s", f, e)
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            log.warning("object cache file not used: not this user's alone", extra={"fields": {"file": str(f)}})
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read()
    finally:
        os.close(fd)
    try:
        return CachedObject.loads(data)
    except CacheError as e:
        log.debug("object cache: %s: %s", f, e)
        return None


def write(d: Path, key: str, obj: CachedObject) -> None:
    """Atomically (a reader sees the old file or the new one), then the oldest beyond KEEP removed."""
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(obj.dumps())
            os.replace(tmp, d / f"{key}.json")
        except BaseException:
            os.unlink(tmp)
            raise
        files = sorted(d.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        for old in files[:-KEEP]:
            old.unlink(missing_ok=True)
    except OSError as e:
        log.warning("object cache not written", extra={"fields": {"dir": str(d), "error": str(e)}})


def relocate(insns: bytes, fds: dict[int, int]) -> bytes:
    """The instructions with each map reference (a 64-bit immediate load of a map fd) moved from the compiling
    process's fd to this one's. Any other kind of 64-bit load (map values, BTF ids, functions) is not replayed."""
    if len(insns) % 8:
        raise CacheError("instructions are not whole")
    out = bytearray(insns)
    i = 0
    while i < len(out):
        code, regs, _off, imm = struct.unpack_from("<BBhi", out, i)
        if code == _LD_IMM64:
            src = regs >> 4
            if src == BPF_PSEUDO_MAP_FD:
                if imm not in fds:
                    raise CacheError(f"a reference to fd {imm}, which is no map of the object")
                struct.pack_into("<i", out, i + 4, fds[imm])
            elif src != 0:
                raise CacheError(f"a 64-bit load of kind {src}")
            i += 16
            continue
        i += 8
    return bytes(out)


def attach_target(name: str) -> tuple[int, str] | None:
    """(expected attach type, the kernel function whose BTF id the program attaches to) for bcc's BTF-attached
    programs (kfunc__X, kretfunc__X, lsm__X); None for the others."""
    for prefix, attach, fn in (("kfunc__", ATTACH_TRACE_FENTRY, ""), ("kretfunc__", ATTACH_TRACE_FEXIT, ""),
                               ("lsm__", ATTACH_LSM_MAC, "bpf_lsm_")):
        if name.startswith(prefix):
            return attach, fn + name[len(prefix):]
    return None


# ---- the bpf(2) calls of a replay ----

class _BtfLoad(ctypes.Structure):
    _fields_ = [("btf", ctypes.c_uint64), ("log_buf", ctypes.c_uint64), ("btf_size", ctypes.c_uint32),
                ("log_size", ctypes.c_uint32), ("log_level", ctypes.c_uint32)]


class _MapCreate(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("numa_node", ctypes.c_uint32), ("map_name", ctypes.c_char * 16), ("map_ifindex", ctypes.c_uint32),
                ("btf_fd", ctypes.c_uint32), ("btf_key_type_id", ctypes.c_uint32),
                ("btf_value_type_id", ctypes.c_uint32)]


class _ProgLoad(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * 16), ("prog_ifindex", ctypes.c_uint32),
                ("expected_attach_type", ctypes.c_uint32), ("prog_btf_fd", ctypes.c_uint32),
                ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
                ("func_info_cnt", ctypes.c_uint32), ("line_info_rec_size", ctypes.c_uint32),
                ("line_info", ctypes.c_uint64), ("line_info_cnt", ctypes.c_uint32),
                ("attach_btf_id", ctypes.c_uint32)]


class _BtfInfo(ctypes.Structure):
    _fields_ = [("btf", ctypes.c_uint64), ("btf_size", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("name", ctypes.c_uint64), ("name_len", ctypes.c_uint32), ("kernel_btf", ctypes.c_uint32)]


def btf_bytes(btf_id: int) -> bytes:
    """The raw BTF the kernel holds as `btf_id` (what bcc loaded for its maps)."""
    fd = bpfsys.call(bpfsys.BPF_BTF_GET_FD_BY_ID, bpfsys.IdAttr(id=btf_id))
    try:
        info = _BtfInfo()
        bpfsys.call(bpfsys.BPF_OBJ_GET_INFO_BY_FD, bpfsys.InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                                                  info=ctypes.addressof(info)))
        buf = ctypes.create_string_buffer(info.btf_size)
        info = _BtfInfo(btf=ctypes.addressof(buf), btf_size=info.btf_size)
        bpfsys.call(bpfsys.BPF_OBJ_GET_INFO_BY_FD, bpfsys.InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                                                  info=ctypes.addressof(info)))
        return buf.raw[: info.btf_size]
    finally:
        os.close(fd)


def load_btf(data: bytes) -> int:
    buf = ctypes.create_string_buffer(data, len(data))
    return bpfsys.call(BPF_BTF_LOAD, _BtfLoad(btf=ctypes.addressof(buf), btf_size=len(data)))


def create_map(m: MapDef, btf_fd: int) -> int:
    with_btf = btf_fd >= 0 and (m.btf_key or m.btf_value)
    attr = _MapCreate(map_type=m.type, key_size=m.key_size, value_size=m.value_size, max_entries=m.max_entries,
                      map_flags=m.flags, map_name=m.name.encode()[:15],
                      btf_fd=btf_fd if with_btf else 0, btf_key_type_id=m.btf_key if with_btf else 0,
                      btf_value_type_id=m.btf_value if with_btf else 0)
    return bpfsys.call(BPF_MAP_CREATE, attr)


def load_prog(p: ProgDef, insns: bytes, kern_version: int, attach_btf_id: int, attach_type: int) -> int:
    """BPF_PROG_LOAD; on failure the verifier's last lines are in the error."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoad(prog_type=p.prog_type, insn_cnt=len(insns) // 8, insns=ctypes.addressof(code),
                     license=ctypes.addressof(lic), kern_version=kern_version,
                     prog_name=p.name.encode()[:15], expected_attach_type=attach_type, attach_btf_id=attach_btf_id)
    try:
        return bpfsys.call(BPF_PROG_LOAD, attr)
    except OSError as e:
        logbuf = ctypes.create_string_buffer(1 << 20)
        attr.log_level, attr.log_size, attr.log_buf = 1, len(logbuf), ctypes.addressof(logbuf)
        with contextlib.suppress(OSError):
            os.close(bpfsys.call(BPF_PROG_LOAD, attr))
        tail = " | ".join(logbuf.value.decode(errors="replace").strip().splitlines()[-3:])
        raise CacheError(f"{p.name}: {e.strerror}: {tail}") from e

"""The BPF program, and the only module that imports bcc: compiles agent/bpf/unlink.bpf.c for one attach
mode, with every struct offset taken from the running kernel's BTF and passed as -D flags, attaches it, and
hands over every map, program and attachment fd (handover()). It runs in the short-lived loader child
(loader.py), so bcc's in-process LLVM never maps into the long-running agent. With an object cache
(objcache.py), a start whose source, flags, bcc and kernel were compiled before loads that compile's result
instead, and attaches it through the same bcc calls."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import re
import struct
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlinkwatch.errors import UserError

from . import bpfsys, kallsyms, objcache, tracefs
from .btf import Btf, BtfError

log = logging.getLogger("unlinkwatch.probe")

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
SOURCE = BPF_DIR / "unlink.bpf.c"
GENERIC_HEADERS = "/usr/local/share/unlinkwatch/kernel-headers"

MODES = {"tracepoint": 1, "kprobe": 2, "fentry": 3}

# -D name -> (struct, member): every kernel struct field the program reads
OFFSETS = {
    "OFF_TASK_REAL_PARENT": ("task_struct", "real_parent"),
    "OFF_TASK_GROUP_LEADER": ("task_struct", "group_leader"),
    "OFF_TASK_TGID": ("task_struct", "tgid"),
    "OFF_TASK_PID": ("task_struct", "pid"),
    "OFF_TASK_CRED": ("task_struct", "cred"),
    "OFF_CRED_UID": ("cred", "uid"),
    "OFF_CRED_GID": ("cred", "gid"),
    "OFF_TASK_CGROUPS": ("task_struct", "cgroups"),
    "OFF_CSS_SET_DFL_CGRP": ("css_set", "dfl_cgrp"),
    "OFF_CGROUP_KN": ("cgroup", "kn"),
    "OFF_KERNFS_NODE_ID": ("kernfs_node", "id"),
    "OFF_TASK_START_TIME": ("task_struct", "start_time"),
    "OFF_TASK_START_BOOTTIME": ("task_struct", "start_boottime"),
    "OFF_TASK_SELF_EXEC_ID": ("task_struct", "self_exec_id"),
    "OFF_TASK_SIGNAL": ("task_struct", "signal"),
    "OFF_TASK_COMM": ("task_struct", "comm"),
    "OFF_TASK_THREAD_PID": ("task_struct", "thread_pid"),
    "OFF_PID_LEVEL": ("pid", "level"),
    "OFF_PID_NUMBERS": ("pid", "numbers"),
    "OFF_UPID_NR": ("upid", "nr"),
    "OFF_SIGNAL_STRUCT_LIVE": ("signal_struct", "live"),
    "OFF_TASK_FS": ("task_struct", "fs"),
    "OFF_TASK_NSPROXY": ("task_struct", "nsproxy"),
    "OFF_NSPROXY_MNT_NS": ("nsproxy", "mnt_ns"),
    "OFF_MNT_NS_ROOT": ("mnt_namespace", "root"),
    "OFF_TASK_FILES": ("task_struct", "files"),
    "OFF_TASK_MM": ("task_struct", "mm"),
    "OFF_MM_EXE_FILE": ("mm_struct", "exe_file"),
    "OFF_MM_ARG_START": ("mm_struct", "arg_start"),
    "OFF_MM_ARG_END": ("mm_struct", "arg_end"),
    "OFF_FS_STRUCT_ROOT": ("fs_struct", "root"),
    "OFF_FS_STRUCT_PWD": ("fs_struct", "pwd"),
    "OFF_PATH_MNT": ("path", "mnt"),
    "OFF_PATH_DENTRY": ("path", "dentry"),
    "OFF_DENTRY_D_PARENT": ("dentry", "d_parent"),
    "OFF_DENTRY_D_NAME": ("dentry", "d_name"),
    "OFF_DENTRY_D_INODE": ("dentry", "d_inode"),
    "OFF_INODE_I_MODE": ("inode", "i_mode"),
    "OFF_INODE_I_INO": ("inode", "i_ino"),
    "OFF_INODE_I_NLINK": ("inode", "__i_nlink"),
    "OFF_INODE_I_SIZE": ("inode", "i_size"),
    "OFF_INODE_I_SB": ("inode", "i_sb"),
    "OFF_SUPER_BLOCK_S_DEV": ("super_block", "s_dev"),
    "OFF_MOUNT_MNT_MOUNTS": ("mount", "mnt_mounts"),
    "OFF_MOUNT_MNT_CHILD": ("mount", "mnt_child"),
    "OFF_QSTR_LEN": ("qstr", "len"),
    "OFF_QSTR_NAME": ("qstr", "name"),
    "OFF_QSTR_HASH": ("qstr", "hash"),
    "OFF_DENTRY_D_FLAGS": ("dentry", "d_flags"),
    "OFF_VFSMOUNT_MNT_ROOT": ("vfsmount", "mnt_root"),
    "OFF_MOUNT_MNT": ("mount", "mnt"),
    "OFF_MOUNT_MNT_PARENT": ("mount", "mnt_parent"),
    "OFF_MOUNT_MNT_MOUNTPOINT": ("mount", "mnt_mountpoint"),
    "OFF_MOUNT_MNT_ID": ("mount", "mnt_id"),
    "OFF_FILES_STRUCT_FDT": ("files_struct", "fdt"),
    "OFF_FDTABLE_FD": ("fdtable", "fd"),
    "OFF_FDTABLE_MAX_FDS": ("fdtable", "max_fds"),
    "OFF_FILE_F_PATH": ("file", "f_path"),
    "OFF_FILENAME_UPTR": ("filename", "uptr"),
    "OFF_RENAMEDATA_NEW_DENTRY": ("renamedata", "new_dentry"),
    "OFF_IO_KIOCB_OPCODE": ("io_kiocb", "opcode"),
}
# only the kprobe/fentry modes read the first two; io_kiocb is absent where io_uring is compiled out
OPTIONAL = {"OFF_FILENAME_UPTR", "OFF_RENAMEDATA_NEW_DENTRY", "OFF_IO_KIOCB_OPCODE"}


# How each feature a mode's kernel refused begins its line in Probe.degraded (doctor reports them apart)
DEGRADED_RENAME_LOOKUP = "renames over existing targets are not reported"
DEGRADED_EXT4_UNLINK = "what an unlink destroys (inode, size, links) is not read"
# ext4 as a module (Debian's 6.1; a node with an XFS root and ext4 volumes) has no tracepoints before it loads,
# which may be after the agent starts: HeldProbe.attach_late() attaches then. Built in, it is there from boot.
EXT4_MODULE = Path("/sys/module/ext4")
LSM_HOOKS = ("path_unlink", "path_rmdir", "path_rename", "inode_rename")  # enforce.h's programs
# the fentry and kprobe modes' programs that read what an unlink or rmdir destroys, on the kernel functions called
# right after path_unlink and path_rmdir: where those LSM programs run they read it (enforce.h, uw_lsm_victim)
VICTIM_HOOKS = ("vfs_unlink", "vfs_rmdir")
SYSCALLS = ("unlink", "unlinkat", "rmdir", "rename", "renameat", "renameat2")  # uw_sys_enter's and uw_sys_exit's
# walk.h's directory cache: the syscalls that can move a directory other than by renaming it (uw_dirc_changed)
MOUNT_SYSCALLS = ("mount", "umount", "move_mount", "pivot_root", "unshare", "setns")
# tracepoint mode's view of io_uring renames: each hook by the names kernels have given it, newest first (6.1's
# io_uring_submit_sqe became io_uring_submit_req in 6.2; both records start with ctx and req)
URING_TRACEPOINTS = (("io_uring_submit_req", "io_uring_submit_sqe"), ("io_uring_complete",))
DEGRADED_DIR_CACHE = "the directory cache is off (every relative deletion walks its directory)"
DEGRADED_LSM_DIRS = "block rules walk every directory (no cache)"
SEQLOCKS = ("rename_lock", "mount_lock")  # enforce.h's lsm_seqs, in order
DIRC_CTL_SIZE, DIRC_CTL_ON = 24, 16  # unlink.bpf.c's struct uw_dirc_ctl: its size, and where `on` is


@dataclass(frozen=True)
class ProbeConfig:
    mode: str                     # tracepoint | kprobe | fentry
    unlink_fn: str = "do_unlinkat"  # the kernel's unlink function (filename_unlinkat on 7.0+)
    ringbuf_pages: int = 8192     # 32 MiB with 4 KiB pages: a 100 K deletion burst of ~160-byte records fits
    max_depth: int = 160
    procs: int = 8192             # processes the kernel keeps (exe and args) for the deletion path to look up
    lsm: bool = False             # enforce block rules with BPF LSM (enforce.h)
    dir_cache: bool = True        # walk.h's directory cache (off: UNLINKWATCH_DIR_CACHE=off, for comparisons)
    lsm_dir_cache: bool = True    # enforce.h's (off: UNLINKWATCH_LSM_DIR_CACHE=off, for comparisons)
    agent_tgid: int = 0           # with lsm: the process never blocked
    object_cache: str = ""        # the directory of compiled objects (objcache.py); empty: compile every time
    extra_cflags: tuple[str, ...] = field(default_factory=tuple)


class RawTpOpen(ctypes.Structure):
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32)]


BPF_RAW_TRACEPOINT_OPEN = 17
_RETURN_0 = bytes.fromhex("b700000000000000" "9500000000000000")  # r0 = 0; exit


def fentry_refusal(btf: Btf, fn: str) -> str:
    """Why this kernel will not run an fentry program on `fn`, or "" when it does: a two-instruction program is
    loaded and attached, then closed, in milliseconds. Without it, a kernel that refuses tracing programs costs
    each start the fentry candidate's whole compile before its load fails."""
    try:
        btf_id = btf.func_id(fn)
    except BtfError as e:
        return str(e)
    prog = objcache.ProgDef("uw_fentry_check", objcache.PROG_TYPE_TRACING, _RETURN_0)
    try:
        fd = objcache.load_prog(prog, _RETURN_0, 0, btf_id, objcache.ATTACH_TRACE_FENTRY)
    except objcache.CacheError as e:
        cause = e.__cause__
        why = os.strerror(cause.errno) if isinstance(cause, OSError) and cause.errno else str(e)
        return f"the kernel refuses fentry programs (BPF_PROG_LOAD: {why})"
    try:
        link = bpfsys.call(BPF_RAW_TRACEPOINT_OPEN, RawTpOpen(name=0, prog_fd=fd))
        os.close(link)
    except OSError as e:
        return f"the kernel loads fentry programs but will not attach one to {fn} ({os.strerror(e.errno or 0)})"
    finally:
        os.close(fd)
    return ""


def kernel_facts(btf: Btf, functions: tuple[str, ...] | list[str]) -> tuple[list[str], dict[str, int], str]:
    """Which of `functions` the kernel has (in that order), the struct offsets for the -D flags, and why fentry
    cannot be used on the first of them ("" when it can)."""
    funcs = [f for f in functions if btf.has_func(f)]
    return funcs, kernel_offsets(btf), fentry_refusal(btf, funcs[0]) if funcs else ""


def kernel_offsets(btf: Btf) -> dict[str, int]:
    out: dict[str, int] = {}
    # a dentry's children: an hlist (d_children/d_sib) since 6.8, a list (d_subdirs/d_child) before
    if btf.has_member("dentry", "d_children"):
        out.update(UW_DCHILD_HLIST=1, OFF_DENTRY_D_CHILDREN=btf.offset("dentry", "d_children"),
                   OFF_DENTRY_D_SIB_OR_CHILD=btf.offset("dentry", "d_sib"))
    else:
        out.update(UW_DCHILD_HLIST=0, OFF_DENTRY_D_SUBDIRS=btf.offset("dentry", "d_subdirs"),
                   OFF_DENTRY_D_SIB_OR_CHILD=btf.offset("dentry", "d_child"))
    # a short name's bytes in the dentry itself (enforce.h reads its first UW_D_INLINE = 32): d_shortname since 6.14
    out["OFF_DENTRY_D_INLINE"] = btf.offset("dentry", "d_shortname" if btf.has_member("dentry", "d_shortname")
                                            else "d_iname")
    out["UW_UPID_SIZE"] = btf.size("upid")  # the stride of struct pid's numbers[]
    out["OFF_MNT_NS_INUM"] = btf.offset("mnt_namespace", "ns") + btf.offset("ns_common", "inum")
    for name, (struct_name, member) in OFFSETS.items():
        try:
            out[name] = btf.offset(struct_name, member)
        except BtfError:
            if name not in OPTIONAL:
                raise
            out[name] = 0
    # enforce.h's directory cache: where a seqlock_t's sequence count lies (the loader adds rename_lock's and
    # mount_lock's addresses; -1: not found, no cache)
    try:
        out["OFF_SEQLOCK_SEQUENCE"] = btf.typedef_offset("seqlock_t", "seqcount.seqcount.sequence")
    except BtfError:
        out["OFF_SEQLOCK_SEQUENCE"] = -1
    return out


def cflags(cfg: ProbeConfig, offsets: dict[str, int]) -> list[str]:
    flags = [
        f"-I{BPF_DIR}",
        f"-DUW_MODE={MODES[cfg.mode]}",
        f"-DUW_UNLINK_FN={cfg.unlink_fn}",
        f"-DUW_RINGBUF_PAGES={cfg.ringbuf_pages}",
        f"-DUW_MAX_DEPTH={cfg.max_depth}",
        f"-DUW_PROCS={cfg.procs}",
        f"-DUW_NS_PER_TICK={1_000_000_000 // os.sysconf('SC_CLK_TCK')}",
        "-Wno-macro-redefined",
    ]
    if cfg.lsm:
        flags += ["-DUW_LSM=1"]
    flags += [f"-D{k}={v}" for k, v in sorted(offsets.items())]
    return flags + list(cfg.extra_cflags)


def header_tree() -> str | None:
    """bcc compiles against a header tree; struct layouts never come from it (they come from BTF)."""
    build = Path("/lib/modules") / platform.release() / "build"
    if build.is_dir():
        return None  # the running kernel's own headers
    env = os.environ.get("UNLINKWATCH_KERNEL_HEADERS", GENERIC_HEADERS)
    if Path(env, "include").is_dir():
        return env
    raise UserError(f"no kernel header tree for compilation: neither {build} nor {env} "
                    "(run `make setup`, or set UNLINKWATCH_KERNEL_HEADERS)")


def hook_label(mode: str, unlink_fn: str) -> str:
    """What a mode attaches to, as the agent reports it (doctor, logs, the attach-mode metric)."""
    if mode == "tracepoint":
        return "syscalls:sys_enter/exit_{unlink,unlinkat,rmdir,rename*}"
    return unlink_fn


_LOCAL_INCLUDE = re.compile(r'^#include "([\w.]+)"$', re.M)


def source_text() -> str:
    """unlink.bpf.c with its own headers inlined: bcc rewrites map calls (`events.ringbuf_output(...)`) only in
    the text it is given, not in the files that text includes."""
    seen: set[str] = set()

    def inline(m: re.Match[str]) -> str:
        name = m[1]
        if name in seen:
            return ""
        seen.add(name)
        return _LOCAL_INCLUDE.sub(inline, (BPF_DIR / name).read_text())

    return _LOCAL_INCLUDE.sub(inline, SOURCE.read_text())


def render_source(cfg: ProbeConfig, btf: Btf) -> str:
    """The final C as the compiler sees it (for --ebpf): the -D flags, then source_text()."""
    defines = "\n".join(f"#define {f[2:].replace('=', ' ', 1)}" for f in cflags(cfg, kernel_offsets(btf))
                        if f.startswith("-D"))
    return defines + "\n" + source_text()


class Probe:
    """A compiled and attached program. close() detaches everything; handover() gives the fds that keep
    it loaded and attached to whoever holds them."""

    def __init__(self, cfg: ProbeConfig, offsets: dict[str, int]) -> None:
        if os.geteuid() != 0:
            raise UserError("loading eBPF needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE)")
        tracefs.ensure()  # mounted by the agent already (attach.py); a mount made here would outlive this process
        tree = header_tree()
        if tree:
            os.environ["BCC_KERNEL_SOURCE"] = tree
        try:
            from bcc import BPF
        except ImportError as e:
            raise UserError("the bcc Python package is missing: apt-get install python3-bpfcc") from e
        self.cfg = cfg
        self.offsets = offsets
        self.degraded: list[str] = []  # features of this mode the kernel refused
        self.rename_lookup = ""
        self.enforcing = False
        self.enforce_error = ""  # why block rules are not enforced, when cfg.lsm asked for it
        self.hook = hook_label(cfg.mode, cfg.unlink_fn)

        class _Bpf(BPF):  # type: ignore[misc,valid-type]
            loaded: list[tuple[str, int]] = []  # (name, prog type) of each program loaded, in order: a class of
            # this Probe's own, so that the loads bcc's constructor makes are kept too

            def _trace_autoload(self) -> None:
                # the LSM programs are attached by _attach_lsm(), all or none, so that a kernel refusing them
                # leaves the mode observing (block rules then run as audit) instead of failing it
                self.attach_lsm = lambda fn_name=b"": self
                try:
                    super()._trace_autoload()  # type: ignore[no-untyped-call]
                finally:
                    del self.attach_lsm

            def load_func(self, func_name: bytes, prog_type: int, device: Any = None,
                          attach_type: int = -1) -> Any:
                fresh = func_name not in self.funcs
                fn = super().load_func(func_name, prog_type, device, attach_type)
                if fresh:
                    self.loaded.append((func_name.decode(), prog_type))  # what a cached object must hold
                return fn

        self._bpf: Any = None
        self._maps: dict[str, int] = {}  # a replayed object's maps, by bcc's table names (this object owns them)
        self._btf_fd = -1
        self.from_cache = False
        text, flags = source_text(), cflags(cfg, offsets)
        cache = self._cache_slot(text, flags)
        cached = objcache.read(*cache) if cache else None
        if cached is not None:
            try:
                self._bpf = self._replay(cached, _Bpf)
                self.from_cache = True
            except Exception as e:  # bcc raises bare Exception; objcache raises CacheError and OSError
                log.info("cached object not loaded: compiling", extra={"fields": {"mode": cfg.mode, "error": str(e)}})
                self.close()
        if self._bpf is None:
            with _captured_stderr() as err:
                try:
                    self._bpf = _Bpf(text=text.encode(), cflags=flags)
                except Exception as e:  # bcc raises bare Exception for compile and load failures
                    self._bpf = None
                    failure: Exception | None = e
                else:
                    failure = None
            if failure is not None:
                detail = _first_error(err.getvalue()) or str(failure)
                log.debug("bcc output for %s:\n%s", cfg.mode, err.getvalue())
                raise ProbeError(f"{cfg.mode}: {detail}") from failure
        try:
            self._attach()
        except Exception as e:
            self.close()
            raise ProbeError(f"{cfg.mode}: attach failed: {e}") from e
        if cache and not self.from_cache:
            self._keep(*cache)
        self.ringbuf_size: int = cfg.ringbuf_pages * os.sysconf("SC_PAGE_SIZE")

    def _cache_slot(self, text: str, flags: list[str]) -> tuple[Path, str] | None:
        if not self.cfg.object_cache:
            return None
        from bcc.libbcc import lib

        d = objcache.usable_dir(self.cfg.object_cache)
        return (d, objcache.cache_key(text, flags, str(lib._name))) if d else None

    def _map_fds(self) -> dict[str, int]:
        """Every map of the program by bcc's table name: a replay's own, or the compiled module's."""
        if self.from_cache:
            return dict(self._maps)
        from bcc.libbcc import lib

        b = self._bpf
        lib.bpf_num_tables.restype = ctypes.c_size_t
        lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
        lib.bpf_table_name.restype = ctypes.c_char_p
        lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        out = {}
        for i in range(lib.bpf_num_tables(b.module)):
            table = lib.bpf_table_name(b.module, i)
            out[table.decode()] = lib.bpf_table_fd(b.module, table)
        return out

    def _keep(self, d: Path, key: str) -> None:
        """Writes what the compile gave the kernel (objcache.py) once the mode attached."""
        from bcc.libbcc import lib

        b = self._bpf
        maps, btf_id = [], 0
        for name, fd in self._map_fds().items():
            info = bpfsys.map_info(fd)
            btf_id = btf_id or info.btf_id
            maps.append(objcache.MapDef(name, fd, info.type, info.key_size, info.value_size, info.max_entries,
                                        info.flags, info.btf_key, info.btf_value))
        progs = {name: objcache.ProgDef(name, prog_type, b.dump_func(name.encode())) for name, prog_type in b.loaded}
        try:
            btf = objcache.btf_bytes(btf_id) if btf_id else b""
        except OSError as e:
            log.debug("object cache not written: the program's BTF: %s", e)
            return
        objcache.write(d, key, objcache.CachedObject(maps, progs, btf, lib.bpf_module_kern_version(b.module)))

    def _replay(self, obj: objcache.CachedObject, cls: Any) -> Any:
        """A bcc BPF object made from a cached compile: its maps and BTF created here, its programs loaded as
        bcc's attach calls ask for them, and bcc's autoload (tracepoint__, raw_tracepoint__, kfunc__, kretfunc__)
        done over them, so that the rest of start-up cannot tell it from a compile."""
        from bcc import BPF

        b = self._bpf = cls.__new__(cls)  # held at once: a failure below is cleaned up by close(), attachments too
        for name in ("kprobe_fds", "uprobe_fds", "tracepoint_fds", "raw_tracepoint_fds", "kfunc_entry_fds",
                     "kfunc_exit_fds", "lsm_fds", "perf_buffers", "open_perf_events", "funcs", "tables"):
            setattr(b, name, {})
        b._ringbuf_manager, b.tracefile, b.module, b.debug, b.loaded = None, None, None, 0, []
        self._btf_fd = objcache.load_btf(obj.btf) if obj.btf else -1
        moved = {}
        for m in obj.maps:
            self._maps[m.name] = moved[m.fd] = objcache.create_map(m, self._btf_fd)
        btf_attached = {p.name for p in obj.progs.values() if objcache.attach_target(p.name) is not None and
                        p.prog_type in (objcache.PROG_TYPE_TRACING, objcache.PROG_TYPE_LSM)}
        vmlinux = Btf.load() if btf_attached else None  # fentry, fexit and LSM programs' attach ids

        def load(p: objcache.ProgDef) -> int:
            target = objcache.attach_target(p.name)
            btf_id, expected = 0, 0
            if vmlinux is not None and target is not None and p.name in btf_attached:
                expected, fn_name = target
                btf_id = vmlinux.func_id(fn_name)
            return objcache.load_prog(p, objcache.relocate(p.insns, moved), obj.kern_version, btf_id, expected)

        def load_func(func_name: bytes, prog_type: int, device: Any = None, attach_type: int = -1) -> Any:
            if func_name in b.funcs:
                return b.funcs[func_name]
            p = obj.progs.get(func_name.decode())
            if p is None:
                raise Exception(f"Unknown program {func_name.decode()} (not in the cached object)")
            b.funcs[func_name] = BPF.Function(b, func_name, load(p))
            return b.funcs[func_name]

        def preload(p: objcache.ProgDef) -> int | None:
            try:
                return load(p)
            except (objcache.CacheError, BtfError, OSError):
                return None  # loaded again when it is attached, where its error counts as it did before

        # The verifier is most of a replay's time, and the kernel checks programs loaded at once in parallel (a
        # privileged load takes no global verifier lock): a thread per CPU loads them, then they attach in order.
        with ThreadPoolExecutor(max_workers=min(len(obj.progs), os.cpu_count() or 1) or 1) as pool:
            for p, fd in zip(obj.progs.values(), pool.map(preload, obj.progs.values()), strict=True):
                if fd is not None:
                    b.funcs[p.name.encode()] = BPF.Function(b, p.name.encode(), fd)
        b.load_func = load_func
        for name in obj.progs:  # bcc's _trace_autoload, in the order the compile loaded them
            fn = name.encode()
            if name.startswith("tracepoint__"):
                b.attach_tracepoint(tp=fn[len(b"tracepoint__"):].replace(b"__", b":"), fn_name=fn)
            elif name.startswith("raw_tracepoint__"):
                b.attach_raw_tracepoint(tp=fn[len(b"raw_tracepoint__"):], fn_name=fn)
            elif name.startswith("kfunc__"):
                b.attach_kfunc(fn_name=fn)
            elif name.startswith("kretfunc__"):
                b.attach_kretfunc(fn_name=fn)
        return b

    def _attach(self) -> None:

        b = self._bpf
        if self.cfg.mode == "kprobe":
            fn = self.cfg.unlink_fn
            b.attach_kprobe(event=fn, fn_name=b"uw_unlinkat_entry")
            b.attach_kretprobe(event=fn, fn_name=b"uw_exit_ret")
            b.attach_kprobe(event=b"do_rmdir", fn_name=b"uw_rmdir_entry")
            b.attach_kretprobe(event=b"do_rmdir", fn_name=b"uw_exit_ret")
            b.attach_kprobe(event=b"do_renameat2", fn_name=b"uw_renameat2_entry")
            b.attach_kprobe(event=b"vfs_rename", fn_name=b"uw_vfs_rename_entry")
            b.attach_kprobe(event=b"vfs_unlink", fn_name=b"uw_vfs_unlink_entry")
            b.attach_kprobe(event=b"vfs_rmdir", fn_name=b"uw_vfs_rmdir_entry")
            b.attach_kretprobe(event=b"do_renameat2", fn_name=b"uw_exit_ret")
            b.attach_kretprobe(event=b"vfs_rename", fn_name=b"uw_vfs_changed_ret")
        elif self.cfg.mode == "tracepoint":
            for call in SYSCALLS:
                b.attach_tracepoint(tp=f"syscalls:sys_enter_{call}".encode(), fn_name=b"uw_sys_enter")
                b.attach_tracepoint(tp=f"syscalls:sys_exit_{call}".encode(), fn_name=b"uw_sys_exit")
            self._load_rename_lookup()
            self._attach_ext4_unlink()
        self._start_dir_cache()
        if self.cfg.lsm:
            self._attach_lsm()
        # the other tracepoint and the fentry programs are attached by bcc as they load (TRACEPOINT_PROBE,
        # KFUNC_PROBE)

    def _start_dir_cache(self) -> None:
        """walk.h's directory cache is turned on only once every change it must see is attached: the mount
        syscalls in every mode, and io_uring's tracepoints in tracepoint mode (the other modes see io_uring's
        renames in the kernel functions they hook). Without one of them, the mode runs with the walk alone."""
        if not self.cfg.dir_cache:
            return
        b = self._bpf
        where = ""
        try:
            with _captured_stderr() as err:
                for call in MOUNT_SYSCALLS:
                    where = f"syscalls:sys_exit_{call}"
                    b.attach_tracepoint(tp=where.encode(), fn_name=b"uw_dirc_changed")
                if self.cfg.mode == "tracepoint" and self.offsets.get("OFF_IO_KIOCB_OPCODE"):
                    for names in URING_TRACEPOINTS:
                        tp = next((n for n in names if tracefs.has_event("io_uring", n)), names[0])
                        where = f"io_uring:{tp}"
                        b.attach_tracepoint(tp=where.encode(), fn_name=b"uw_dirc_uring")
        except Exception as e:  # bcc raises bare Exception
            reason = _first_error(err.getvalue()) or str(e)
            self.degraded.append(f"{DEGRADED_DIR_CACHE}: {where}: {reason}")
            log.debug("directory cache off: %s: %s", where, reason)
            return
        fd, zero = self._map_fds()["dirc_ctl"], struct.pack("=I", 0)
        ctl = bytearray(bpfsys.lookup(fd, zero, DIRC_CTL_SIZE))
        struct.pack_into("=Q", ctl, DIRC_CTL_ON, 1)
        bpfsys.update(fd, zero, bytes(ctl))

    def _attach_lsm(self) -> None:
        """enforce.h's programs on their LSM hooks, all or none; on failure the reason is kept for the agent."""
        b = self._bpf
        hook = ""
        # the agent's own deletions are never blocked (enforce.h): its tgid first, then the hooks
        bpfsys.update(self._map_fds()["lsm_agent"], struct.pack("=I", 0), struct.pack("=I", self.cfg.agent_tgid))
        try:
            with _captured_stderr() as err:
                for hook in LSM_HOOKS:
                    b.attach_lsm(fn_name=f"lsm__{hook}".encode())
        except Exception as e:  # bcc raises bare Exception for load and attach failures
            for name in list(b.lsm_fds):
                with contextlib.suppress(Exception):
                    b.detach_lsm(fn_name=name)
            self.enforce_error = f"BPF LSM hook {hook} refused: {_first_error(err.getvalue()) or e}"
            log.debug("bcc output for the LSM programs:\n%s", err.getvalue())
            return
        self.enforcing = True
        self._start_lsm_dirs()  # until then every check walks its directory
        for fn in VICTIM_HOOKS:  # after the LSM programs: no call in between goes without its victim read
            try:  # kept attached, they find the victim read and return: a cost, not a fault
                if self.cfg.mode == "fentry":
                    b.detach_kfunc(fn_name=fn.encode())
                elif self.cfg.mode == "kprobe":
                    b.detach_kprobe(event=fn.encode(), fn_name=f"uw_{fn}_entry".encode())
            except Exception as e:  # bcc raises bare Exception
                log.info("victim program left attached", extra={"fields": {"function": fn, "error": str(e)}})

    def _start_lsm_dirs(self) -> None:
        """enforce.h's directory cache is validated by the sequence counts of rename_lock and mount_lock: their
        addresses from kallsyms, or none (every check walks its directory, as the line in degraded says)."""
        if not self.cfg.lsm_dir_cache:
            self.degraded.append(f"{DEGRADED_LSM_DIRS}: UNLINKWATCH_LSM_DIR_CACHE=off")
            return
        seq = self.offsets.get("OFF_SEQLOCK_SEQUENCE", -1)
        found = kallsyms.addresses(SEQLOCKS)
        missing = [n for n in SEQLOCKS if n not in found]
        if seq < 0 or missing:
            why = "seqlock_t not in BTF" if seq < 0 else f"{', '.join(missing)} not in {kallsyms.KALLSYMS}"
            self.degraded.append(f"{DEGRADED_LSM_DIRS}: {why}")
            return
        addrs = [found[name] + seq for name in SEQLOCKS]
        bpfsys.update(self._map_fds()["lsm_seqs"], struct.pack("=I", 0), struct.pack(f"={len(addrs)}Q", *addrs))

    def _attach_ext4_unlink(self) -> None:
        """ext4's unlink tracepoint, the tracepoint mode's one view of the inode an unlink destroys (inode, size,
        links); without it (no ext4, or its tracepoints compiled out) the mode runs without them."""
        try:
            with _captured_stderr() as err:
                self._bpf.attach_raw_tracepoint(tp=b"ext4_unlink_enter", fn_name=b"uw_ext4_unlink")
        except Exception as e:  # bcc raises bare Exception
            reason = _first_error(err.getvalue()) or str(e)
            if not EXT4_MODULE.is_dir():
                reason += "; the ext4 module is not loaded: attached once it is"
            self.degraded.append(f"{DEGRADED_EXT4_UNLINK}: ext4_unlink_enter: {reason}")
            log.debug("ext4_unlink_enter refused: %s", reason)

    def _load_rename_lookup(self) -> None:
        """The dcache lookup that tells renames over existing targets; without it the mode still runs."""
        from bcc import BPF

        try:
            with _captured_stderr():
                step = self._bpf.load_func(b"uw_lookup_step", BPF.TRACEPOINT)
        except Exception as e:  # bcc raises bare Exception: the verifier's verdict
            self.degraded.append(f"{DEGRADED_RENAME_LOOKUP}: the kernel's verifier refused the dcache lookup ({e})")
            log.warning("rename-over-target detection unavailable", extra={"fields": {"error": str(e)}})
            return
        bpfsys.update(self._map_fds()["uw_tail"], struct.pack("=I", 0), struct.pack("=I", step.fd))
        self.rename_lookup = "uw_lookup_step"

    def handover(self) -> tuple[list[str], list[int], list[tuple[str, str]]]:
        """(names, fds, tracefs events): every map fd (a prog array is emptied when its last fd closes),
        every program fd and every attachment fd (perf event or BPF link: the attachment lives as long as
        one of them is open), and the kprobe events bcc made in tracefs, which outlive their fds and must
        be removed by name (only where the kernel has no kprobe PMU)."""
        b = self._bpf
        assert b is not None
        names: list[str] = []
        fds: list[int] = []

        def put(name: str, fd: int) -> None:
            if fd >= 0:
                names.append(name)
                fds.append(fd)

        for table, fd in self._map_fds().items():
            put("map:" + table, fd)
        for fname, fn in b.funcs.items():
            put("prog:" + fname.decode(), fn.fd)
        for ev, by_fn in b.kprobe_fds.items():
            for fname, fd in by_fn.items():
                put(f"kprobe:{ev.decode()}:{fname.decode()}", fd)
        for kind, table in (("tracepoint", b.tracepoint_fds), ("raw_tracepoint", b.raw_tracepoint_fds),
                            ("kfunc", b.kfunc_entry_fds), ("kretfunc", b.kfunc_exit_fds), ("lsm", b.lsm_fds)):
            for key, fd in table.items():
                put(f"{kind}:{key.decode()}", fd)
        return names, fds, _own_probe_events()

    def close(self) -> None:
        b = getattr(self, "_bpf", None)
        if b is not None:
            with contextlib.suppress(Exception):
                b.cleanup()
            self._bpf = None
        for fd in [*self._maps.values(), self._btf_fd]:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._maps.clear()
        self._btf_fd = -1
        self.from_cache = False


def _own_probe_events() -> list[tuple[str, str]]:
    """(kprobe_events file, event) for each tracefs kprobe event this process made
    ("kprobes/p_do_unlinkat_bcc_<pid>")."""
    out = []
    for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        try:
            text = Path(d, "kprobe_events").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            event = line.split(" ", 1)[0].partition(":")[2]  # "p:kprobes/name do_unlinkat" -> "kprobes/name"
            if event.endswith(f"_bcc_{os.getpid()}"):
                out.append((f"{d}/kprobe_events", event))
        break
    return out


class _Captured:
    def __init__(self) -> None:
        self.text = ""

    def getvalue(self) -> str:
        return self.text


@contextlib.contextmanager
def _captured_stderr() -> Iterator[_Captured]:
    """bcc and clang write diagnostics to fd 2 from C++; keep them for the one-line error and debug log."""
    out = _Captured()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.text = tmp.read().decode(errors="replace")


class ProbeError(Exception):
    """A mode that does not compile, load or attach on this kernel."""


def _first_error(text: str) -> str:
    for line in text.splitlines():
        low = line.lower()
        if "error:" in low or "permission denied" in low or "invalid argument" in low:
            return line.strip()[:300]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""

// SPDX-License-Identifier: Apache-2.0
/* unlinkwatch probes: every unlink, unlinkat (files and AT_REMOVEDIR), rmdir and rename that
 * replaces an existing target, with the directory of relative paths resolved in the kernel.
 *
 * Configured only with -D flags (agent/probe.py):
 *   UW_MODE            1 syscall tracepoints, 2 kprobe/kretprobe, 3 fentry/fexit
 *   UW_UNLINK_FN       the kernel's unlink function for modes 2 and 3 (do_unlinkat, filename_unlinkat)
 *   UW_RINGBUF_PAGES   ring buffer size in pages
 *   UW_MAX_DEPTH       directory components walked before the path is flagged truncated
 *   OFF_*              struct member offsets read from the running kernel's BTF at load time
 * Entry stashes in task-local storage; exit emits with the return value and always clears the stash.
 *
 * Cost per deletion is what this file optimises for (docs/ARCHITECTURE.md, "Kernel-side cost"):
 *  - the current task comes from bpf_get_current_task_btf(), so chains of task-owned pointers
 *    (fs, files, mm, parent, leader) are plain loads the verifier checks against BTF, not helper calls;
 *  - pointers that do not come from such a chain (a dirfd's file, the dentries of a walk) are read
 *    with bpf_probe_read_kernel, but one read per dentry and one per mount rather than one per field;
 *  - the stash between entry and exit is task-local storage: no hash insert and delete per call. */
#include <uapi/linux/ptrace.h>
#include "kprobe.h"

#define UW_MODE_TRACEPOINT 1
#define UW_MODE_KPROBE 2
#define UW_MODE_FENTRY 3
#define UW_AT_FDCWD -100
#define UW_AT_REMOVEDIR 0x200
#define UW_RENAME_EXCHANGE 2
#define UW_ENAMETOOLONG 36
#define UW_MASK (UW_PATH_MAX - 1)

struct uw_stash {
	__u64 ts_ns;
	const char *uptr;	/* user pointer of the path argument (the target, for rename) */
	__s32 dirfd;
	__u32 op;
	__u32 replaced;		/* rename: the target existed and was replaced */
	__u32 pad;
};

struct uw_scratch {
	struct uw_event ev;		/* must stay first: the record is ev followed by data */
	char data[2 * UW_PATH_MAX];	/* raw path, then the resolved directory */
	char walk[UW_PATH_MAX + UW_NAME_MAX + 1]; /* directory built backwards from the leaf */
	__u32 pos;				/* uw_walk's write position */
};

struct uw_proc_key {
	__u32 tgid;
	__u32 pad;
	__u64 start_ns;
};

BPF_RINGBUF_OUTPUT(events, UW_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(lost, __u64, 1);		/* ring buffer full: records dropped in the kernel */
BPF_TASK_STORAGE(stash, struct uw_stash);	/* entry -> exit, per thread; op 0 when empty */
#if UW_MODE == UW_MODE_TRACEPOINT
/* renames only (tracepoint mode): the tail-called dcache lookup marks its thread in a tid-keyed hash, as
 * it did before the stash moved to task storage, so the step's verifier cost is unchanged */
BPF_HASH(rename_replaced, __u32, __u32, 1024);
#endif
BPF_PERCPU_ARRAY(scratch, struct uw_scratch, 1);
BPF_TABLE("lru_hash", struct uw_proc_key, __u64, procs, 8192);	/* process -> the exe file last sent */

/* A plain load from a pointer the verifier knows by BTF type (a chain from bpf_get_current_task_btf()):
 * compiled to a guarded load, where bpf_probe_read_kernel is a helper call. */
#define UW_LD(base, off, type) (*(type *)((void *)(base) + (off)))

static __always_inline void *uw_ptr(void *base, long off)
{
	void *p = 0;
	bpf_probe_read_kernel(&p, sizeof(p), base + off);
	return p;
}

static __always_inline __u32 uw_u32(void *base, long off)
{
	__u32 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), base + off);
	return v;
}

static __always_inline __u64 uw_u64(void *base, long off)
{
	__u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), base + off);
	return v;
}

/* One bpf_probe_read_kernel per dentry and per mount: the fields the walk needs are read as one span.
 * The spans are computed from the BTF offsets, so any member order works; in the kernels we know they
 * are 24 bytes each (d_parent and d_name; mnt_parent, mnt_mountpoint and mnt.mnt_root). */
#define UW_MIN(a, b) ((a) < (b) ? (a) : (b))
#define UW_MAX(a, b) ((a) > (b) ? (a) : (b))
#define UW_D_PARENT OFF_DENTRY_D_PARENT
#define UW_D_LEN (OFF_DENTRY_D_NAME + OFF_QSTR_LEN)
#define UW_D_NAME (OFF_DENTRY_D_NAME + OFF_QSTR_NAME)
#define UW_D_LO UW_MIN(UW_D_PARENT, UW_MIN(UW_D_LEN, UW_D_NAME))
#define UW_D_HI UW_MAX(UW_D_PARENT + 8, UW_MAX(UW_D_LEN + 4, UW_D_NAME + 8))
#define UW_M_PARENT OFF_MOUNT_MNT_PARENT
#define UW_M_POINT OFF_MOUNT_MNT_MOUNTPOINT
#define UW_M_ROOT (OFF_MOUNT_MNT + OFF_VFSMOUNT_MNT_ROOT)
#define UW_M_LO UW_MIN(UW_M_PARENT, UW_MIN(UW_M_POINT, UW_M_ROOT))
#define UW_M_HI UW_MAX(UW_M_PARENT + 8, UW_MAX(UW_M_POINT + 8, UW_M_ROOT + 8))
#define UW_AT(buf, lo, off, type) (*(type *)((char *)(buf) + (off) - (lo)))

struct uw_mnt_span {
	__u64 w[(UW_M_HI - UW_M_LO + 7) / 8];	/* words: every pointer in it is 8-byte aligned */
};
struct uw_d_span {
	__u64 w[(UW_D_HI - UW_D_LO + 7) / 8];
};

/* Writes "/c1/c2/.../cn" for (mnt, dentry) into s->walk, ending at UW_PATH_MAX - 1, stopping at the
 * process's root (so a chroot or container sees its own view) and crossing mounts upwards.
 * Returns the start position; the length is UW_PATH_MAX - 1 - pos. */
static __always_inline __u32 uw_walk(struct uw_scratch *s, void *mnt, void *dentry,
				     void *root_mnt, void *root_dentry, __u32 *flags)
{
	/* the position lives in map memory, so the verifier sees a masked unknown and prunes the loop */
	s->pos = UW_PATH_MAX - 1;
	struct uw_mnt_span ms;
	struct uw_d_span ds;
	void *m = mnt - OFF_MOUNT_MNT;
	if (bpf_probe_read_kernel(&ms, sizeof(ms), m + UW_M_LO) < 0)
		return s->pos;

#pragma clang loop unroll(disable)
	for (int i = 0; i < UW_MAX_DEPTH; i++) {
		if (dentry == root_dentry && m + OFF_MOUNT_MNT == root_mnt)
			return s->pos;
		if (dentry == UW_AT(&ms, UW_M_LO, UW_M_ROOT, void *)) {
			void *parent = UW_AT(&ms, UW_M_LO, UW_M_PARENT, void *);
			if (parent == m || !parent)
				return s->pos;	/* top of the mount tree: the root is not above us */
			dentry = UW_AT(&ms, UW_M_LO, UW_M_POINT, void *);
			m = parent;
			if (bpf_probe_read_kernel(&ms, sizeof(ms), m + UW_M_LO) < 0)
				return s->pos;
			continue;
		}
		if (bpf_probe_read_kernel(&ds, sizeof(ds), dentry + UW_D_LO) < 0)
			return s->pos;
		void *up = UW_AT(&ds, UW_D_LO, UW_D_PARENT, void *);
		if (up == dentry || !up)
			return s->pos;
		__u32 len = UW_AT(&ds, UW_D_LO, UW_D_LEN, __u32);
		void *name = UW_AT(&ds, UW_D_LO, UW_D_NAME, void *);
		__u32 pos = s->pos;
		if (len > UW_NAME_MAX || len + 1 > pos) {
			*flags |= UW_F_DIR_TRUNCATED;
			return pos;
		}
		pos -= len;
		bpf_probe_read_kernel(&s->walk[pos & UW_MASK], len & UW_NAME_MAX, name);
		pos -= 1;
		s->walk[pos & UW_MASK] = '/';
		s->pos = pos;
		dentry = up;
	}
	*flags |= UW_F_DIR_TRUNCATED;
	return s->pos;
}

/* Copies the walk of (mnt, dentry) to s->data[at...]; returns its length. */
static __always_inline __u32 uw_put_path(struct uw_scratch *s, __u32 at, void *mnt, void *dentry,
					 void *fs, __u32 *flags)
{
	void *root_mnt = UW_LD(fs, OFF_FS_STRUCT_ROOT + OFF_PATH_MNT, void *);
	void *root_dentry = UW_LD(fs, OFF_FS_STRUCT_ROOT + OFF_PATH_DENTRY, void *);
	__u32 pos = uw_walk(s, mnt, dentry, root_mnt, root_dentry, flags);
	__u32 len = (UW_PATH_MAX - 1) - pos;
	bpf_probe_read_kernel(&s->data[at & UW_MASK], len & UW_MASK, &s->walk[pos & UW_MASK]);
	return len & UW_MASK;
}

static __always_inline void uw_header(struct uw_event *ev, void *task, __u32 kind)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->kind = kind;
	ev->pid = pid_tgid >> 32;
	ev->tid = (__u32)pid_tgid;
	ev->uid = (__u32)uid_gid;
	ev->gid = uid_gid >> 32;
	ev->ppid = UW_LD(UW_LD(task, OFF_TASK_REAL_PARENT, void *), OFF_TASK_TGID, __u32);
	ev->proc_start_ns = UW_LD(UW_LD(task, OFF_TASK_GROUP_LEADER, void *), OFF_TASK_START_TIME, __u64);
	ev->op = 0;
	ev->result = 0;
	ev->dirfd = 0;
	ev->flags = 0;
	ev->raw_len = 0;
	ev->dir_len = 0;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
}

static __always_inline void uw_output(struct uw_scratch *s)
{
	/* raw_len + dir_len < 8192 by construction: the mask is exact and bounds the read */
	__u64 size = ((s->ev.raw_len + s->ev.dir_len) & (2 * UW_PATH_MAX - 1)) + sizeof(struct uw_event);
	/* no wake-up: user space drains the ring on a short timer, so no record pays for one */
	if (events.ringbuf_output(&s->ev, size, BPF_RB_NO_WAKEUP) < 0) {
		__u32 zero = 0;
		__u64 *n = lost.lookup(&zero);
		if (n)
			*n += 1;
	}
}

/* Once per process: its executable's path, so user space never reads /proc of a gone process. */
static __always_inline void uw_send_exe(struct uw_scratch *s, void *task, void *fs)
{
	struct uw_proc_key key = {};
	key.tgid = bpf_get_current_pid_tgid() >> 32;
	key.start_ns = UW_LD(UW_LD(task, OFF_TASK_GROUP_LEADER, void *), OFF_TASK_START_TIME, __u64);
	void *mm = UW_LD(task, OFF_TASK_MM, void *);
	void *exe = mm ? UW_LD(mm, OFF_MM_EXE_FILE, void *) : 0;
	if (!exe)
		return;
	/* keyed by process, valued by exe file: an execve keeps pid and start time but changes the file */
	__u64 *sent = procs.lookup(&key);
	__u64 exe_id = (__u64)exe;
	if (sent && *sent == exe_id)
		return;
	procs.update(&key, &exe_id);
	uw_header(&s->ev, task, UW_KIND_EXE);
	__u32 flags = 0;
	s->ev.raw_len = uw_put_path(s, 0, UW_LD(exe, OFF_FILE_F_PATH + OFF_PATH_MNT, void *),
				    UW_LD(exe, OFF_FILE_F_PATH + OFF_PATH_DENTRY, void *), fs, &flags);
	s->ev.flags = flags;
	uw_output(s);
}

static __always_inline struct uw_stash *uw_stash_get(__u64 create)
{
	return stash.task_storage_get(bpf_get_current_task_btf(), 0, create);
}

static __always_inline int uw_enter(__s32 dirfd, const char *uptr, __u32 op)
{
	struct uw_stash *st = uw_stash_get(BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!st)
		return 0;
	st->ts_ns = bpf_ktime_get_ns();
	st->uptr = uptr;
	st->dirfd = dirfd;
	st->op = op;
	st->replaced = 0;
	return 0;
}

static __always_inline int uw_exit(long ret)
{
	struct uw_stash *st = uw_stash_get(0);
	if (!st || !st->op)
		return 0;
	struct uw_stash copy = *st;
	st->op = 0;
#if UW_MODE == UW_MODE_TRACEPOINT
	if (copy.op == UW_OP_RENAME) {
		__u32 tid = (__u32)bpf_get_current_pid_tgid();
		if (rename_replaced.lookup(&tid)) {
			copy.replaced = 1;
			rename_replaced.delete(&tid);
		}
	}
#endif
	if (copy.op == UW_OP_RENAME && !copy.replaced)
		return 0;

	__u32 zero = 0;
	struct uw_scratch *s = scratch.lookup(&zero);
	if (!s)
		return 0;
	void *task = (void *)bpf_get_current_task_btf();
	void *fs = UW_LD(task, OFF_TASK_FS, void *);
	uw_send_exe(s, task, fs);

	struct uw_event *ev = &s->ev;
	uw_header(ev, task, UW_KIND_DELETION);
	ev->ts_ns = copy.ts_ns;
	ev->op = copy.op;
	ev->result = (__s32)ret;
	ev->dirfd = copy.dirfd;

	__u32 flags = 0;
	long n = bpf_probe_read_user_str(s->data, UW_PATH_MAX, copy.uptr);
	__u32 raw_len = 0;
	if (n <= 0) {
		flags |= UW_F_RAW_UNREADABLE;
	} else {
		raw_len = (n - 1) & UW_MASK;
		if (n == UW_PATH_MAX && ret == -UW_ENAMETOOLONG)
			flags |= UW_F_RAW_TRUNCATED;
	}
	ev->raw_len = raw_len;

	if (raw_len > 0 && s->data[0] != '/') {
		void *mnt = 0, *dentry = 0;
		if (copy.dirfd == UW_AT_FDCWD) {
			mnt = UW_LD(fs, OFF_FS_STRUCT_PWD + OFF_PATH_MNT, void *);
			dentry = UW_LD(fs, OFF_FS_STRUCT_PWD + OFF_PATH_DENTRY, void *);
		} else if (copy.dirfd >= 0) {
			void *fdt = UW_LD(UW_LD(task, OFF_TASK_FILES, void *), OFF_FILES_STRUCT_FDT, void *);
			if ((__u32)copy.dirfd < UW_LD(fdt, OFF_FDTABLE_MAX_FDS, __u32)) {
				/* fd is a pointer to pointers, which BTF loads do not follow: probe reads from here */
				void *fds = UW_LD(fdt, OFF_FDTABLE_FD, void *);
				void *file = uw_ptr(fds, (long)copy.dirfd * sizeof(void *));
				if (file) {
					void *fpath[2] = {};
					bpf_probe_read_kernel(fpath, sizeof(fpath), file + OFF_FILE_F_PATH);
					mnt = fpath[OFF_PATH_MNT / 8];
					dentry = fpath[OFF_PATH_DENTRY / 8];
				}
			}
		}
		if (mnt && dentry)
			ev->dir_len = uw_put_path(s, raw_len, mnt, dentry, fs, &flags);
		else
			flags |= UW_F_DIR_UNRESOLVED;
	}
	ev->flags = flags;
	uw_output(s);
	return 0;
}

/* A rename replaces its target when the target's dentry is positive as the kernel renames. */
static __always_inline void uw_rename_target(void *new_dentry)
{
	struct uw_stash *st = uw_stash_get(0);
	if (st && st->op == UW_OP_RENAME && new_dentry && uw_ptr(new_dentry, OFF_DENTRY_D_INODE))
		st->replaced = 1;
}

static __always_inline int uw_rename_enter(int newdfd, const char *uptr, __u32 flags)
{
	if (flags & UW_RENAME_EXCHANGE)
		return 0;	/* an exchange destroys nothing */
	return uw_enter(newdfd, uptr, UW_OP_RENAME);
}

TRACEPOINT_PROBE(cgroup, cgroup_mkdir)
{
	if (args->root != 0)
		return 0;	/* only the cgroup2 (default) hierarchy: its ids are the BPF cgroup ids */
	__u32 zero = 0;
	struct uw_scratch *s = scratch.lookup(&zero);
	if (!s)
		return 0;
	uw_header(&s->ev, (void *)bpf_get_current_task_btf(), UW_KIND_CGROUP_MKDIR);
	s->ev.ts_ns = bpf_ktime_get_ns();
	s->ev.cgroup_id = args->id;
	unsigned short off = args->data_loc_path & 0xFFFF;
	long n = bpf_probe_read_kernel_str(s->data, UW_PATH_MAX, (void *)args + off);
	s->ev.raw_len = n > 0 ? (n - 1) & UW_MASK : 0;
	uw_output(s);
	return 0;
}

#if UW_MODE == UW_MODE_TRACEPOINT

/* One program for every syscalls:sys_exit_* tracepoint it needs (they share one format: the common
 * fields, int __syscall_nr at 8, long ret at 16), attached six times by probe.py: the verifier checks it
 * once instead of six times, which is most of the start-up time. */
struct uw_sys_exit_args {
	__u64 common;
	__s64 syscall_nr;
	long ret;
};
int uw_sys_exit(struct uw_sys_exit_args *args) { return uw_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_unlink) { return uw_enter(UW_AT_FDCWD, args->pathname, UW_OP_UNLINK); }
TRACEPOINT_PROBE(syscalls, sys_enter_rmdir) { return uw_enter(UW_AT_FDCWD, args->pathname, UW_OP_RMDIR); }
TRACEPOINT_PROBE(syscalls, sys_enter_unlinkat)
{
	return uw_enter(args->dfd, args->pathname, (args->flag & UW_AT_REMOVEDIR) ? UW_OP_RMDIR : UW_OP_UNLINK);
}

/* Syscall tracepoints do not see the kernel's own lookup, so whether a rename destroys its target is
 * found by looking the target up in the dcache at entry: one path component, or one slice of a
 * directory's children, per tail call (bcc cannot relocate bpf_loop callbacks). A target that is not
 * in the dcache is not seen: a documented limit of this mode. */
#define UW_LK_CHILDREN 64	/* children compared per tail call */
#define UW_LK_CHILDREN_SMALL 12
#define UW_LK_MOUNTS 32		/* child mounts checked when crossing into a mount */
/* a read the compiler cannot forward from a register: the verifier then sees an unknown value and
 * stops tracking one exact state per loop exit, which would blow up its complexity */
#define UW_RELOAD(x) (*(volatile typeof(x) *)&(x))
#define UW_S_IFMT 0170000
#define UW_S_IFLNK 0120000

struct uw_lookup {
	char path[UW_PATH_MAX];		/* the target path argument */
	__u64 comp[(UW_NAME_MAX + 1) / 8];	/* the component being looked up */
	__u64 cand[(UW_NAME_MAX + 1) / 8];	/* a child's name */
	void *mnt, *dentry;		/* where the walk stands */
	void *root_mnt, *root_dentry;
	void *node;			/* next child to compare, when a directory spans tail calls */
	__u32 len, off, clen, tid, last, pad;
};

BPF_PROG_ARRAY(uw_tail, 1);
BPF_PERCPU_ARRAY(lookup_state, struct uw_lookup, 1);

static __always_inline void *uw_first_child(void *dentry)
{
#if UW_DCHILD_HLIST
	return uw_ptr(dentry, OFF_DENTRY_D_CHILDREN);
#else
	void *head = dentry + OFF_DENTRY_D_SUBDIRS;
	void *next = uw_ptr(head, 0);
	return next == head ? 0 : next;
#endif
}

static __always_inline void *uw_next_child(void *node, void *parent)
{
	void *next = uw_ptr(node, 0);
#if UW_DCHILD_HLIST
	return next;
#else
	return next == parent + OFF_DENTRY_D_SUBDIRS ? 0 : next;
#endif
}

static __always_inline void uw_mark_replaced(__u32 tid)
{
	__u32 one = 1;
	rename_replaced.update(&tid, &one);
}

/* Enters a mount whose mountpoint is `dentry` in `mnt`, if one is mounted there. */
static __always_inline void uw_cross_down(struct uw_lookup *lk)
{
	void *m = lk->mnt - OFF_MOUNT_MNT;
	void *head = m + OFF_MOUNT_MNT_MOUNTS;
	void *node = uw_ptr(head, 0);
#pragma clang loop unroll(disable)
	for (int i = 0; i < UW_LK_MOUNTS; i++) {
		if (!node || node == head)
			return;
		void *child = node - OFF_MOUNT_MNT_CHILD;
		if (uw_ptr(child, OFF_MOUNT_MNT_MOUNTPOINT) == lk->dentry) {
			lk->mnt = child + OFF_MOUNT_MNT;
			lk->dentry = uw_ptr(lk->mnt, OFF_VFSMOUNT_MNT_ROOT);
			return;
		}
		node = uw_ptr(node, 0);
	}
}

static __always_inline int uw_lookup_body(void *ctx, const int nchildren)
{
	__u32 zero = 0;
	struct uw_lookup *lk = lookup_state.lookup(&zero);
	if (!lk)
		return 0;
	if (!lk->node) {
		/* the next component: skip slashes, find its end */
		__u32 off = lk->off;
#pragma clang loop unroll(disable)
		for (int i = 0; i < UW_NAME_MAX; i++) {
			if (off >= lk->len || lk->path[off & UW_MASK] != '/')
				break;
			off++;
		}
		if (off >= lk->len)
			return 0;	/* the target is a directory path ending in "/": nothing more to find */
		lk->off = off;
		off = UW_RELOAD(lk->off);
		__u32 clen = 0;
#pragma clang loop unroll(disable)
		for (int i = 0; i < UW_NAME_MAX + 1; i++) {
			if (off + clen >= lk->len || lk->path[(off + clen) & UW_MASK] == '/')
				break;
			clen++;
		}
		if (clen == 0 || clen > UW_NAME_MAX)
			return 0;
		lk->clen = clen;
		clen = UW_RELOAD(lk->clen) & UW_NAME_MAX;
		__u32 rest = off + clen;
		__u32 last = 1;
#pragma clang loop unroll(disable)
		for (int k = 0; k < UW_NAME_MAX; k++) {
			if (rest >= lk->len)
				break;
			if (lk->path[rest & UW_MASK] != '/') {
				last = 0;
				break;
			}
			rest++;
		}
		lk->last = last;
		lk->off = off + clen;
		off = UW_RELOAD(lk->off) - clen;
		/* a constant size keeps the verifier simple; only clen bytes are compared */
		bpf_probe_read_kernel(lk->comp, sizeof(lk->comp), &lk->path[off & UW_MASK]);
		char c0 = lk->path[off & UW_MASK], c1 = lk->path[(off + 1) & UW_MASK];
		if (clen == 1 && c0 == '.') {
			uw_tail.call(ctx, 0);
			return 0;
		}
		if (clen == 2 && c0 == '.' && c1 == '.') {
			if (lk->dentry == lk->root_dentry && lk->mnt == lk->root_mnt) {
				uw_tail.call(ctx, 0);
				return 0;
			}
			if (lk->dentry == uw_ptr(lk->mnt, OFF_VFSMOUNT_MNT_ROOT)) {
				void *m = lk->mnt - OFF_MOUNT_MNT;
				void *parent = uw_ptr(m, OFF_MOUNT_MNT_PARENT);
				if (parent != m && parent) {
					lk->dentry = uw_ptr(m, OFF_MOUNT_MNT_MOUNTPOINT);
					lk->mnt = parent + OFF_MOUNT_MNT;
				}
			}
			lk->dentry = uw_ptr(lk->dentry, OFF_DENTRY_D_PARENT);
			uw_tail.call(ctx, 0);
			return 0;
		}
		lk->node = uw_first_child(lk->dentry);
		if (!lk->node)
			return 0;
	}
	__u32 clen = UW_RELOAD(lk->clen) & UW_NAME_MAX;
	void *node = lk->node;
#pragma clang loop unroll(disable)
	for (int i = 0; i < nchildren; i++) {
		if (!node)
			return 0;	/* not in the dcache */
		void *child = node - OFF_DENTRY_D_SIB_OR_CHILD;
		node = uw_next_child(node, lk->dentry);
		if (uw_u32(child, OFF_DENTRY_D_NAME + OFF_QSTR_LEN) != clen)
			continue;
		bpf_probe_read_kernel_str(lk->cand, sizeof(lk->cand), uw_ptr(child, OFF_DENTRY_D_NAME + OFF_QSTR_NAME));
		/* compare clen bytes as words; bytes past clen in the last word are masked off */
		/* written out: constant offsets, which older verifiers (6.1) follow where a pointer walk fails */
		int same = 1;
		__u32 words = (clen + 7) / 8;
#define UW_CMP(j)									\
		if (same && (j) < words) {							\
			__u64 diff = lk->comp[j] ^ lk->cand[j];					\
			if (clen - (j) * 8 < 8)							\
				diff &= (1ULL << ((clen - (j) * 8) * 8)) - 1;			\
			same = !diff;								\
		}
		UW_CMP(0) UW_CMP(1) UW_CMP(2) UW_CMP(3) UW_CMP(4) UW_CMP(5) UW_CMP(6) UW_CMP(7)
		UW_CMP(8) UW_CMP(9) UW_CMP(10) UW_CMP(11) UW_CMP(12) UW_CMP(13) UW_CMP(14) UW_CMP(15)
		UW_CMP(16) UW_CMP(17) UW_CMP(18) UW_CMP(19) UW_CMP(20) UW_CMP(21) UW_CMP(22) UW_CMP(23)
		UW_CMP(24) UW_CMP(25) UW_CMP(26) UW_CMP(27) UW_CMP(28) UW_CMP(29) UW_CMP(30) UW_CMP(31)
#undef UW_CMP
		if (!same)
			continue;
		void *inode = uw_ptr(child, OFF_DENTRY_D_INODE);
		lk->node = 0;
		if (!inode)
			return 0;	/* a negative dentry: the name does not exist */
		if (lk->last) {
			uw_mark_replaced(lk->tid);
			return 0;
		}
		__u16 mode = 0;
		bpf_probe_read_kernel(&mode, sizeof(mode), inode + OFF_INODE_I_MODE);
		if ((mode & UW_S_IFMT) == UW_S_IFLNK)
			return 0;	/* symlinks are not followed here */
		lk->dentry = child;
		uw_cross_down(lk);
		uw_tail.call(ctx, 0);
		return 0;
	}
	lk->node = node;	/* more children: continue in the next tail call */
	if (node)
		uw_tail.call(ctx, 0);
	return 0;
}

/* Two sizes of the same step: older verifiers (6.1) accept only the smaller. */
int uw_lookup_step(void *ctx) { return uw_lookup_body(ctx, UW_LK_CHILDREN); }
int uw_lookup_step_small(void *ctx) { return uw_lookup_body(ctx, UW_LK_CHILDREN_SMALL); }

static __always_inline int uw_rename_tp(void *ctx, int newdfd, const char *newname, __u32 flags)
{
	if (flags & UW_RENAME_EXCHANGE)
		return 0;
	uw_enter(newdfd, newname, UW_OP_RENAME);
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	rename_replaced.delete(&tid);
	__u32 zero = 0;
	struct uw_lookup *lk = lookup_state.lookup(&zero);
	if (!lk)
		return 0;
	long n = bpf_probe_read_user_str(lk->path, UW_PATH_MAX, newname);
	if (n <= 1)
		return 0;
	lk->len = (n - 1) & UW_MASK;
	lk->off = 0;
	lk->node = 0;
	lk->tid = (__u32)bpf_get_current_pid_tgid();
	void *task = (void *)bpf_get_current_task();
	void *fs = uw_ptr(task, OFF_TASK_FS);
	lk->root_mnt = uw_ptr(fs, OFF_FS_STRUCT_ROOT + OFF_PATH_MNT);
	lk->root_dentry = uw_ptr(fs, OFF_FS_STRUCT_ROOT + OFF_PATH_DENTRY);
	if (lk->path[0] == '/') {
		lk->mnt = lk->root_mnt;
		lk->dentry = lk->root_dentry;
	} else if (newdfd == UW_AT_FDCWD) {
		lk->mnt = uw_ptr(fs, OFF_FS_STRUCT_PWD + OFF_PATH_MNT);
		lk->dentry = uw_ptr(fs, OFF_FS_STRUCT_PWD + OFF_PATH_DENTRY);
	} else {
		void *fdt = uw_ptr(uw_ptr(task, OFF_TASK_FILES), OFF_FILES_STRUCT_FDT);
		if (newdfd < 0 || (__u32)newdfd >= uw_u32(fdt, OFF_FDTABLE_MAX_FDS))
			return 0;
		void *file = uw_ptr(uw_ptr(fdt, OFF_FDTABLE_FD), (long)newdfd * sizeof(void *));
		if (!file)
			return 0;
		lk->mnt = uw_ptr(file, OFF_FILE_F_PATH + OFF_PATH_MNT);
		lk->dentry = uw_ptr(file, OFF_FILE_F_PATH + OFF_PATH_DENTRY);
	}
	uw_tail.call(ctx, 0);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_rename) { return uw_rename_tp(args, UW_AT_FDCWD, args->newname, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_renameat) { return uw_rename_tp(args, args->newdfd, args->newname, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_renameat2)
{
	return uw_rename_tp(args, args->newdfd, args->newname, args->flags);
}

#elif UW_MODE == UW_MODE_KPROBE

struct filename;
struct renamedata;

static __always_inline const char *uw_uptr(struct filename *name)
{
	return (const char *)uw_ptr((void *)name, OFF_FILENAME_UPTR);
}

int uw_unlinkat_entry(struct pt_regs *ctx, int dfd, struct filename *name)
{
	return uw_enter(dfd, uw_uptr(name), UW_OP_UNLINK);
}
int uw_rmdir_entry(struct pt_regs *ctx, int dfd, struct filename *name)
{
	return uw_enter(dfd, uw_uptr(name), UW_OP_RMDIR);
}
int uw_renameat2_entry(struct pt_regs *ctx, int olddfd, struct filename *from, int newdfd,
		       struct filename *to, unsigned int flags)
{
	return uw_rename_enter(newdfd, uw_uptr(to), flags);
}
int uw_vfs_rename_entry(struct pt_regs *ctx, struct renamedata *rd)
{
	uw_rename_target(uw_ptr((void *)rd, OFF_RENAMEDATA_NEW_DENTRY));
	return 0;
}
int uw_exit_ret(struct pt_regs *ctx) { return uw_exit(PT_REGS_RC(ctx)); }

#elif UW_MODE == UW_MODE_FENTRY

struct filename;
struct renamedata;
#define UW_KFUNC(fn, ...) KFUNC_PROBE(fn, __VA_ARGS__)
#define UW_KRETFUNC(fn, ...) KRETFUNC_PROBE(fn, __VA_ARGS__)

UW_KFUNC(UW_UNLINK_FN, int dfd, struct filename *name)
{
	return uw_enter(dfd, (const char *)uw_ptr((void *)name, OFF_FILENAME_UPTR), UW_OP_UNLINK);
}
UW_KRETFUNC(UW_UNLINK_FN, int dfd, struct filename *name, int ret) { return uw_exit(ret); }
KFUNC_PROBE(do_rmdir, int dfd, struct filename *name)
{
	return uw_enter(dfd, (const char *)uw_ptr((void *)name, OFF_FILENAME_UPTR), UW_OP_RMDIR);
}
KRETFUNC_PROBE(do_rmdir, int dfd, struct filename *name, int ret) { return uw_exit(ret); }
KFUNC_PROBE(do_renameat2, int olddfd, struct filename *from, int newdfd, struct filename *to, unsigned int flags)
{
	return uw_rename_enter(newdfd, (const char *)uw_ptr((void *)to, OFF_FILENAME_UPTR), flags);
}
KFUNC_PROBE(vfs_rename, struct renamedata *rd)
{
	uw_rename_target(uw_ptr((void *)rd, OFF_RENAMEDATA_NEW_DENTRY));
	return 0;
}
KRETFUNC_PROBE(do_renameat2, int olddfd, struct filename *from, int newdfd, struct filename *to,
	       unsigned int flags, int ret)
{
	return uw_exit(ret);
}

#endif

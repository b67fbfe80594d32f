/* SPDX-License-Identifier: Apache-2.0 */
/* Tracepoint mode only: whether a rename destroys its destination, by a dcache lookup of the destination at
 * syscall entry in tail calls. Included by unlink.bpf.c before uw_sys_enter(). */
#ifndef UNLINKWATCH_RENAME_LOOKUP_H
#define UNLINKWATCH_RENAME_LOOKUP_H

/* Syscall tracepoints do not see the kernel's own lookup, so whether a rename destroys its target is
 * found by looking the target up in the dcache at entry: one path component, or one slice of a
 * directory's children, per tail call (bcc cannot relocate bpf_loop callbacks). A target that is not
 * in the dcache is not seen: a documented limit of this mode. */
#define UW_LK_CHILDREN 64	/* children compared per tail call */
#define UW_LK_MOUNTS 32		/* child mounts checked when crossing into a mount */
#define UW_S_IFMT 0170000
#define UW_S_IFLNK 0120000

struct uw_lookup {
	char path[UW_PATH_MAX];		/* the target path argument */
	__u64 comp[(UW_NAME_MAX + 1) / 8];	/* the component being looked up */
	__u64 cand[(UW_NAME_MAX + 1) / 8];	/* a child's name */
	void *mnt, *dentry;		/* where the walk stands */
	void *root_mnt, *root_dentry;
	void *node;			/* next child to compare, when a directory spans tail calls */
	__u64 mask;			/* the bytes of the component's last word that are its own */
	__u32 len, off, clen, tid, last, words;	/* words: 8-byte words the component spans */
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

static __always_inline void uw_mark_replaced(__u32 tid, void *inode)
{
	struct uw_victim v = {};
	uw_read_victim(inode, &v);
	rename_replaced.update(&tid, &v);
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

/* Whether the child's name read into lk->cand is the component in lk->comp (same length already): word by
 * word, the last word masked to the component's own bytes (little-endian: the first bytes are the low ones). A
 * loop with the word count and mask computed once per component, not a comparison written out per word: 6.1's
 * verifier follows each written-out word's branches on the length into too many states (E2BIG). */
static __always_inline int uw_same_name(struct uw_lookup *lk)
{
	__u32 words = lk->words;
#pragma clang loop unroll(disable)
	for (__u32 j = 0; j < (UW_NAME_MAX + 1) / 8; j++) {
		__u64 diff = lk->comp[j] ^ lk->cand[j];
		if (j + 1 >= words)
			return !(diff & lk->mask);
		if (diff)
			return 0;
	}
	return 0;
}

/* One step of the lookup: a component, or a slice of a directory's children; tail-calls itself for the next. */
int uw_lookup_step(void *ctx)
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
		/* a constant size keeps the verifier simple; only clen bytes are compared (uw_same_name) */
		bpf_probe_read_kernel(lk->comp, sizeof(lk->comp), &lk->path[off & UW_MASK]);
		lk->words = (clen + 7) / 8;
		lk->mask = clen & 7 ? (1ULL << ((clen & 7) * 8)) - 1 : ~0ULL;
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
	for (int i = 0; i < UW_LK_CHILDREN; i++) {
		if (!node)
			return 0;	/* not in the dcache */
		void *child = node - OFF_DENTRY_D_SIB_OR_CHILD;
		node = uw_next_child(node, lk->dentry);
		if (uw_u32(child, OFF_DENTRY_D_NAME + OFF_QSTR_LEN) != clen)
			continue;
		bpf_probe_read_kernel_str(lk->cand, sizeof(lk->cand), uw_ptr(child, OFF_DENTRY_D_NAME + OFF_QSTR_NAME));
		if (!uw_same_name(lk))
			continue;
		void *inode = uw_ptr(child, OFF_DENTRY_D_INODE);
		lk->node = 0;
		if (!inode)
			return 0;	/* a negative dentry: the name does not exist */
		if (lk->last) {
			uw_mark_replaced(lk->tid, inode);
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

/* After a rename's entry (uw_sys_enter): the lookup of its destination, from the stash. */
static __always_inline int uw_rename_lookup(void *ctx, struct uw_stash *st)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	rename_replaced.delete(&tid);
	const char *newname = st->dst_uptr;
	__s32 newdfd = st->dst_dirfd;
	if (st->rename_flags & UW_RENAME_EXCHANGE)
		return 0;	/* an exchange swaps two existing names and destroys neither: no lookup */
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

#endif /* UNLINKWATCH_RENAME_LOOKUP_H */

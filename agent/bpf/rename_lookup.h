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
#define UW_DCACHE_OP_HASH 0x1	/* d_flags: the filesystem hashes this directory's names its own way */
#define UW_GOLDEN_RATIO_64 0x61C8864680B583EBULL

/* A child's name (hash, length, address), inode and next sibling: one read per child. */
#define UW_C_LO UW_MIN(OFF_DENTRY_D_NAME, UW_MIN(OFF_DENTRY_D_INODE, OFF_DENTRY_D_SIB_OR_CHILD))
#define UW_C_HI UW_MAX(OFF_DENTRY_D_NAME + 16, UW_MAX(OFF_DENTRY_D_INODE + 8, OFF_DENTRY_D_SIB_OR_CHILD + 8))
struct uw_c_span {
	__u64 w[(UW_C_HI - UW_C_LO + 7) / 8];
};
_Static_assert(sizeof(struct uw_c_span) <= 256, "a child's fields are too far apart for one read");

/* Whether the kernel's name hash (below) is this kernel's: 0 not known yet, 1 proven on a child the names matched, 2
 * disproven. Only proven, it lets a child whose hash differs be passed over without reading its name. */
#define UW_HASH_UNKNOWN 0
#define UW_HASH_PROVEN 1
#define UW_HASH_WRONG 2
BPF_ARRAY(lookup_hash, __u32, 1);

struct uw_lookup {
	char path[UW_PATH_MAX];		/* the target path argument */
	__u64 comp[(UW_NAME_MAX + 1) / 8];	/* the component being looked up */
	__u64 cand[(UW_NAME_MAX + 1) / 8];	/* a child's name */
	void *mnt, *dentry;		/* where the walk stands */
	void *root_mnt, *root_dentry;
	void *node;			/* next child to compare, when a directory spans tail calls */
	__u64 mask;			/* the bytes of the component's last word that are its own */
	__u32 len, off, clen, tid, last, words;	/* words: 8-byte words the component spans */
	__u32 hash;			/* the component's name hash in the directory where the walk stands */
	__u32 hashed;			/* 1: pass over children whose hash differs; 0: compare every name */
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

/* The sibling after a child, from its link's next pointer: 0 at the end (the list's head, before 6.8). */
static __always_inline void *uw_child_after(void *next, void *parent)
{
#if UW_DCHILD_HLIST
	return next;
#else
	return next == parent + OFF_DENTRY_D_SUBDIRS ? 0 : next;
#endif
}

/* A child matched by name, in a directory whose filesystem hashes names the kernel's way: whether its d_name.hash is
 * the hash computed here says whether uw_name_hash() is this kernel's. */
static __always_inline void uw_prove_hash(struct uw_lookup *lk, __u32 hash)
{
	__u32 zero = 0;
	__u32 *hs = lookup_hash.lookup(&zero);
	if (!hs || *hs != UW_HASH_UNKNOWN || (uw_u32(lk->dentry, OFF_DENTRY_D_FLAGS) & UW_DCACHE_OP_HASH))
		return;
	*hs = hash == lk->hash ? UW_HASH_PROVEN : UW_HASH_WRONG;
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

/* The kernel's hash of a name in a directory (fs/namei.c, full_name_hash() with the parent dentry as salt, for
 * 64-bit kernels with word-at-a-time access): what d_name.hash holds for a child of that directory on a filesystem
 * without its own d_hash. The kernel does not promise it stays the same, so it is used only once a match by name
 * proved it (lookup_hash), and never for a directory whose filesystem hashes names itself. */
static __always_inline __u32 uw_name_hash(struct uw_lookup *lk, __u64 salt)
{
	__u64 x = 0, y = salt;
	__u32 len = lk->clen;
	/* everything after the loop depends on x and y alone, so the verifier goes on from one state, not one per
	 * way out of the loop */
#pragma clang loop unroll(disable)
	for (__u32 j = 0; j < (UW_NAME_MAX + 1) / 8; j++) {
		__u32 k = j;
		UW_OPAQUE(k);	/* an index, not a pointer the compiler increments: 6.1's verifier bounds only the index */
		__u64 a = lk->comp[k & ((UW_NAME_MAX + 1) / 8 - 1)];
		if (len < 8) {
			if (len)
				x ^= a & lk->mask;	/* the last word's own bytes */
			break;
		}
		x ^= a;
		y ^= x;
		x = (x << 12) | (x >> 52);
		x += y;
		y = (y << 45) | (y >> 19);
		y *= 9;
		len -= 8;
	}
	y ^= x * UW_GOLDEN_RATIO_64;
	y *= UW_GOLDEN_RATIO_64;
	return y >> 32;
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
		lk->hash = uw_name_hash(lk, (__u64)lk->dentry);
		__u32 *hs = lookup_hash.lookup(&zero);
		lk->hashed = hs && *hs == UW_HASH_PROVEN && !(uw_u32(lk->dentry, OFF_DENTRY_D_FLAGS) & UW_DCACHE_OP_HASH);
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
		struct uw_c_span cs;
		if (bpf_probe_read_kernel(&cs, sizeof(cs), child + UW_C_LO) < 0)
			return 0;
		node = uw_child_after(UW_AT(&cs, UW_C_LO, OFF_DENTRY_D_SIB_OR_CHILD, void *), lk->dentry);
		__u32 hash = UW_AT(&cs, UW_C_LO, OFF_DENTRY_D_NAME + OFF_QSTR_HASH, __u32);
		if (UW_AT(&cs, UW_C_LO, OFF_DENTRY_D_NAME + OFF_QSTR_LEN, __u32) != clen || (lk->hashed && hash != lk->hash))
			continue;
		bpf_probe_read_kernel_str(lk->cand, sizeof(lk->cand),
					  UW_AT(&cs, UW_C_LO, OFF_DENTRY_D_NAME + OFF_QSTR_NAME, void *));
		if (!uw_same_name(lk))
			continue;
		if (!lk->hashed)
			uw_prove_hash(lk, hash);
		void *inode = UW_AT(&cs, UW_C_LO, OFF_DENTRY_D_INODE, void *);
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

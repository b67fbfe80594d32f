/* SPDX-License-Identifier: Apache-2.0 */
/* The path walk of unlink.bpf.c: a (mount, dentry) to its absolute path as the process sees it. Included by
 * unlink.bpf.c after struct uw_scratch. */
#ifndef UNLINKWATCH_WALK_H
#define UNLINKWATCH_WALK_H

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

/* The directory cache: the walk of a deletion's base directory (its cwd or dirfd), kept per CPU in a direct-mapped
 * array indexed by the dentry's address, so that a loop of deletions in one directory walks it once. An entry is
 * used only when all of these hold, else the walk runs (and refills the slot):
 *  - the same (mount, dentry) under the same root (a chroot or another namespace's root is another key);
 *  - the same generation: dirc_ctl.gen counts every change that can move a directory without changing its own
 *    dentry: a successful rename or rmdir (uw_exit), mount, umount, move_mount, pivot_root, unshare and setns
 *    (uw_dirc_changed), and io_uring's renames and unlinks (uw_dirc_uring, which also keeps the cache off for
 *    UW_DIRC_URING_NS after each); the generation is read before the walk that fills the slot, so a change
 *    racing with that walk leaves the entry stale at once;
 *  - the dentry still has the parent, name hash and inode, and the mount the parent, mount point and root it was
 *    filled with: a dentry or mount freed and its memory reused for another is not taken for the old one;
 *  - dirc_ctl.on: user space sets it once every source of a generation change is attached (program.py).
 * The path must fit UW_DIRC_MAX bytes and the walk must have ended cleanly (no flag) for a slot to be filled. */
#define UW_DV_LO UW_MIN(OFF_DENTRY_D_PARENT, UW_MIN(OFF_DENTRY_D_NAME, OFF_DENTRY_D_INODE))
#define UW_DV_HI UW_MAX(OFF_DENTRY_D_PARENT + 8, UW_MAX(OFF_DENTRY_D_NAME + 8, OFF_DENTRY_D_INODE + 8))
struct uw_dv_span {
	__u64 w[(UW_DV_HI - UW_DV_LO + 7) / 8];
};

static __always_inline void uw_dirc_bump(__u64 quiet_ns)
{
	__u32 zero = 0;
	struct uw_dirc_ctl *c = dirc_ctl.lookup(&zero);
	if (!c)
		return;
	__sync_fetch_and_add(&c->gen, 1);
	if (quiet_ns)
		c->until = bpf_ktime_get_ns() + quiet_ns;
}

/* Whether slot e holds (mnt, dentry) under (root_mnt, root_dentry) at generation gen, validated by the spans. */
static __always_inline int uw_dirc_hit(struct uw_dirc_entry *e, __u64 gen, void *mnt, void *dentry, void *root_mnt,
				       void *root_dentry, struct uw_dv_span *dv, struct uw_mnt_span *ms)
{
	return e->ok && e->gen == gen && e->dentry == dentry && e->mnt == mnt && e->root_dentry == root_dentry &&
	       e->root_mnt == root_mnt && e->d_parent == UW_AT(dv, UW_DV_LO, OFF_DENTRY_D_PARENT, void *) &&
	       e->d_hash_len == UW_AT(dv, UW_DV_LO, OFF_DENTRY_D_NAME, __u64) &&
	       e->d_inode == UW_AT(dv, UW_DV_LO, OFF_DENTRY_D_INODE, void *) &&
	       e->m_parent == UW_AT(ms, UW_M_LO, UW_M_PARENT, void *) &&
	       e->m_point == UW_AT(ms, UW_M_LO, UW_M_POINT, void *) && e->m_root == UW_AT(ms, UW_M_LO, UW_M_ROOT, void *);
}

/* The directory cache's slot for a dentry: by its address, through map memory (the verifier allows no shift of a
 * pointer). */
static __always_inline __u32 uw_dirc_index(struct uw_scratch *s, void *dentry)
{
	s->dirc_key = (__u64)dentry;
	__u64 a = UW_RELOAD(s->dirc_key);
	return ((a >> 6) ^ (a >> 14)) & (UW_DIRC_SLOTS - 1);
}

/* The directory cache's slot holding (mnt, dentry) under (root_mnt, root_dentry) now, or 0 (a miss): no walk and
 * no fill (uw_entry_ignore(); the exit's walk fills the slot). The checks are uw_put_dir_path()'s; a window after
 * io_uring (c->until) counts as a miss. *gen is the generation it was checked against, for uw_dirc_same(). */
static __always_inline struct uw_dirc_entry *uw_dirc_find(struct uw_scratch *s, void *mnt, void *dentry,
							  void *root_mnt, void *root_dentry, __u64 *gen)
{
	__u32 zero = 0;
	__u32 idx = uw_dirc_index(s, dentry);
	struct uw_dirc_ctl *c = dirc_ctl.lookup(&zero);
	struct uw_dirc_entry *e = dirc.lookup(&idx);
	struct uw_dv_span dv;
	struct uw_mnt_span ms;
	if (!c || !e || !c->on || UW_RELOAD(c->until) ||
	    bpf_probe_read_kernel(&dv, sizeof(dv), dentry + UW_DV_LO) < 0 ||
	    bpf_probe_read_kernel(&ms, sizeof(ms), mnt - OFF_MOUNT_MNT + UW_M_LO) < 0)
		return 0;
	*gen = UW_RELOAD(c->gen);
	return uw_dirc_hit(e, *gen, mnt, dentry, root_mnt, root_dentry, &dv, &ms) ? e : 0;
}

/* Still the slot uw_dirc_find() returned, after reading from it: a program preempting this one on this CPU did
 * not refill it meanwhile. */
static __always_inline int uw_dirc_same(struct uw_dirc_entry *e, __u64 gen, void *mnt, void *dentry,
					void *root_dentry)
{
	return UW_RELOAD(e->ok) && UW_RELOAD(e->gen) == gen && UW_RELOAD(e->dentry) == dentry &&
	       UW_RELOAD(e->mnt) == mnt && UW_RELOAD(e->root_dentry) == root_dentry;
}

/* A cached directory's path into the record at `at`, eight bytes at a time by plain loads and stores (both are map
 * memory): a probe read cost more than the copy of a path this short. The last word may carry up to seven bytes past
 * the path, into the record's buffer after it, where nothing of the record lies yet. The path goes after a raw
 * argument of up to UW_PATH_MAX - 1 bytes, so past UW_PATH_MAX in the record's buffer (it has twice that): the
 * index is masked to the whole buffer, never wrapped onto the argument. */
static __always_inline void uw_dirc_copy(struct uw_scratch *s, __u32 at, struct uw_dirc_entry *e, __u32 len)
{
	__u32 base = at & UW_MASK;
	for (__u32 i = 0; i < UW_DIRC_MAX / 8; i++) {
		__u32 o = i * 8;
		if (o >= len)
			break;
		UW_OPAQUE(o);	/* an index, masked below: not a pointer the compiler steps */
		*(__u64 *)&s->data[(base + o) & (2 * UW_PATH_MAX - 1)] = *(__u64 *)&e->path[o & (UW_DIRC_MAX - 8)];
	}
}

/* uw_put_path() for a deletion's base directory, through the directory cache. On a miss the slot's key and
 * checks are written before the walk and its path after; whether to fill it (s->dirc_armed) and which slot
 * (s->dirc_idx) cross the walk in map memory, so that the verifier checks the walk once, not once per way here. */
static __always_inline __u32 uw_put_dir_path(struct uw_scratch *s, __u32 at, void *mnt, void *dentry,
					     void *fs, __u32 *flags)
{
	void *root_mnt = UW_LD(fs, OFF_FS_STRUCT_ROOT + OFF_PATH_MNT, void *);
	void *root_dentry = UW_LD(fs, OFF_FS_STRUCT_ROOT + OFF_PATH_DENTRY, void *);
	__u32 zero = 0;
	s->dirc_armed = 0;
	s->dirc_at = 0;
	__u32 idx = uw_dirc_index(s, dentry);
	s->dirc_idx = idx;
	struct uw_dirc_ctl *c = dirc_ctl.lookup(&zero);
	struct uw_dirc_entry *e = dirc.lookup(&idx);
	struct uw_dv_span dv;
	struct uw_mnt_span ms;
	__u64 until = 0;
	if (c) {
		until = UW_RELOAD(c->until);
		if (until && bpf_ktime_get_ns() >= until) {
			__sync_val_compare_and_swap(&c->until, until, 0);  /* the window is over: no clock read after it */
			until = 0;
		}
	}
	if (c && e && c->on && !until &&
	    bpf_probe_read_kernel(&dv, sizeof(dv), dentry + UW_DV_LO) == 0 &&
	    bpf_probe_read_kernel(&ms, sizeof(ms), mnt - OFF_MOUNT_MNT + UW_M_LO) == 0) {
		__u64 gen = UW_RELOAD(c->gen);
		if (uw_dirc_hit(e, gen, mnt, dentry, root_mnt, root_dentry, &dv, &ms)) {
			__u32 len = e->len & (UW_DIRC_MAX - 1);
			uw_dirc_copy(s, at, e, len);
			if (uw_dirc_same(e, gen, mnt, dentry, root_dentry)) {
				s->n.dirc_hits += 1;
				s->dirc_at = 1;
				s->dirc_gen = gen;
				s->dirc_mnt = (__u64)mnt;
				s->dirc_root = (__u64)root_dentry;
				return len;
			}
		}
		e->ok = 0;
		e->pgen = 0;	/* uw_entry_ignore()'s rules were the old directory's */
		e->gen = gen;	/* read before the walk: a change during it leaves the slot stale at once */
		e->dentry = dentry;
		e->mnt = mnt;
		e->root_dentry = root_dentry;
		e->root_mnt = root_mnt;
		e->d_parent = UW_AT(&dv, UW_DV_LO, OFF_DENTRY_D_PARENT, void *);
		e->d_hash_len = UW_AT(&dv, UW_DV_LO, OFF_DENTRY_D_NAME, __u64);
		e->d_inode = UW_AT(&dv, UW_DV_LO, OFF_DENTRY_D_INODE, void *);
		e->m_parent = UW_AT(&ms, UW_M_LO, UW_M_PARENT, void *);
		e->m_point = UW_AT(&ms, UW_M_LO, UW_M_POINT, void *);
		e->m_root = UW_AT(&ms, UW_M_LO, UW_M_ROOT, void *);
		s->dirc_armed = 1;
		s->dirc_gen = gen;
		s->dirc_mnt = (__u64)mnt;
		s->dirc_root = (__u64)root_dentry;
	}
	s->n.dirc_walks += 1;
	__u32 pos = uw_walk(s, mnt, dentry, root_mnt, root_dentry, flags);
	__u32 len = (UW_PATH_MAX - 1) - pos;
	bpf_probe_read_kernel(&s->data[at & UW_MASK], len & UW_MASK, &s->walk[pos & UW_MASK]);
	if (UW_RELOAD(s->dirc_armed) && !*flags && len < UW_DIRC_MAX) {
		__u32 i = UW_RELOAD(s->dirc_idx);
		struct uw_dirc_entry *f = dirc.lookup(&i);
		if (f) {
			UW_OPAQUE(len);
			f->len = len;
			bpf_probe_read_kernel(f->path, len & (UW_DIRC_MAX - 1), &s->walk[pos & UW_MASK]);
			f->ok = 1;
			s->dirc_at = 1;
		}
	}
	return len & UW_MASK;
}

#endif /* UNLINKWATCH_WALK_H */

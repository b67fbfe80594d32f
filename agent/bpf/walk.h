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

#endif /* UNLINKWATCH_WALK_H */

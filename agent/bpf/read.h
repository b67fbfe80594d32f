/* SPDX-License-Identifier: Apache-2.0 */
/* Reading kernel memory in unlink.bpf.c: plain loads through BTF-typed pointers, probe reads, and the spans
 * (one read per dentry and per mount) the path walk uses. Offsets are the OFF_* -D flags from BTF. */
#ifndef UNLINKWATCH_READ_H
#define UNLINKWATCH_READ_H

/* A plain load from a pointer the verifier knows by BTF type (a chain from bpf_get_current_task_btf()):
 * compiled to a guarded load, where bpf_probe_read_kernel is a helper call. */
#define UW_LD(base, off, type) (*(type *)((void *)(base) + (off)))

/* a read the compiler cannot forward from a register: the verifier then sees an unknown value and stops
 * tracking one exact state per way the value was computed, which would blow up its complexity */
#define UW_RELOAD(x) (*(volatile typeof(x) *)&(x))

/* keeps a value opaque, so the compiler can neither turn an index into a pointer it increments nor drop a mask
 * because an earlier check implies it (the verifier bounds a value by the mask, not by that check) */
#define UW_OPAQUE(x) asm volatile("" : "+r"(x))

/* The task's cgroup v2 id, as bpf_get_current_cgroup_id() gives it for the current task (the default hierarchy's
 * cgroup: task->cgroups->dfl_cgrp->kn->id), by plain loads instead of a helper call. */
static __always_inline __u64 uw_cgroup_id(void *task)
{
	void *cset = UW_LD(task, OFF_TASK_CGROUPS, void *);
	void *cgrp = UW_LD(cset, OFF_CSS_SET_DFL_CGRP, void *);
	return UW_LD(UW_LD(cgrp, OFF_CGROUP_KN, void *), OFF_KERNFS_NODE_ID, __u64);
}

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
/* the bytes every kernel keeps a short name in, in the dentry (OFF_DENTRY_D_INLINE): DNAME_INLINE_LEN is 32 on 64-bit
 * kernels before 6.14 and 40 since; a name shorter than this, when d_name.name points there, is all in it */
#define UW_D_INLINE 32
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

/* An inode's facts for the record (struct uw_victim): one read of the span holding i_mode, i_sb, i_ino, i_nlink and
 * i_size (88 bytes in the kernels we know), one of the superblock's s_dev. */
#define UW_I_LO UW_MIN(UW_MIN(OFF_INODE_I_MODE, OFF_INODE_I_SB), UW_MIN(OFF_INODE_I_INO, \
	UW_MIN(OFF_INODE_I_NLINK, OFF_INODE_I_SIZE)))
#define UW_I_HI UW_MAX(UW_MAX(OFF_INODE_I_MODE + 2, OFF_INODE_I_SB + 8), UW_MAX(OFF_INODE_I_INO + 8, \
	UW_MAX(OFF_INODE_I_NLINK + 4, OFF_INODE_I_SIZE + 8)))
struct uw_i_span {
	__u64 w[(UW_I_HI - UW_I_LO + 7) / 8];
};
_Static_assert(sizeof(struct uw_i_span) <= 256, "the inode fields are too far apart for one read");

static __always_inline void uw_read_victim(void *inode, struct uw_victim *v)
{
	struct uw_i_span sp;
	if (bpf_probe_read_kernel(&sp, sizeof(sp), inode + UW_I_LO) < 0)
		return;
	v->mode = UW_AT(&sp, UW_I_LO, OFF_INODE_I_MODE, __u16);
	v->ino = UW_AT(&sp, UW_I_LO, OFF_INODE_I_INO, __u64);
	v->nlink = UW_AT(&sp, UW_I_LO, OFF_INODE_I_NLINK, __u32);
	v->size = UW_AT(&sp, UW_I_LO, OFF_INODE_I_SIZE, __s64);
	v->dev = uw_u32(UW_AT(&sp, UW_I_LO, OFF_INODE_I_SB, void *), OFF_SUPER_BLOCK_S_DEV);
	v->flag = UW_F_VICTIM;
}

#endif /* UNLINKWATCH_READ_H */

/* SPDX-License-Identifier: Apache-2.0 */
/* Block rules enforced with BPF LSM. Compiled in (-DUW_LSM=1) only when the kernel lists "bpf" among its active
 * LSMs and the agent runs a node policy; included last by unlink.bpf.c. The observation programs (any attach
 * mode) still report every deletion: the stash tells their exit which block rule stopped the call, and the
 * record says UW_ACTION_BLOCKED.
 *
 * The hooks, and why:
 *   path_unlink, path_rmdir  the directory as a path (mount and dentry) and the victim's dentry: the same walk
 *                            as a relative argument's directory, and the final name as the argument, so the
 *                            policy's own matching (policy.h) decides, on the kernel's resolved names (no
 *                            user memory: nothing to race). io_uring's IORING_OP_UNLINKAT comes here too.
 *   path_rename              the source (moving a protected file away). Two walks do not fit one program, so
 *                            when the source decides nothing it arms...
 *   inode_rename             ...the destination's check, on the first call after it for the same destination
 *                            dentry (kept with its mount in lsm_rename, task storage of its own, so that
 *                            io_uring's renames, which no syscall hook sees, are checked too): a protected
 *                            file replaced, or exchanged.
 * One decision per deletion: an unlink's or rmdir's verdict (the first rule of any action) is noted in the stash
 * for the observation's exit, which records it instead of matching the argument again (uw_lsm_decided), and the
 * rules for the process and op come from the observation's entry of the same call when it ran under the same
 * policy (its stash's who), so the check looks neither cgroup, comm nor executable up again.
 * The agent's own process is never blocked: its tgid is lsm_agent's one value, written by the loader before the
 * programs attach, so that one compiled object serves every agent (objcache.py). Programs run under RCU and only
 * look maps up: no lock, nothing that sleeps. When the agent exits their links close and deletions are allowed again (fail-open).
 * A path the kernel cannot decide (policy.h: a directory deeper than the walk, a key longer than 254 bytes) is
 * allowed and reported as the observation decides it.
 *
 * The directory's rules, cached (the scratch's lsm_dirs, per CPU): a loop of deletions in one directory walks it
 * once. walk.h's cache is not used here: its generation is bumped after a rename or mount change is done (at the
 * syscall's exit), which leaves a window where an old path is current, harmless for a record and a bypass for a
 * block rule.
 * This one is validated the way the kernel's d_path() validates its own walk: by the sequence counts of
 * rename_lock (written by every d_move: a rename of any directory, anywhere) and mount_lock (every change to a
 * mount tree), whose addresses the loader writes to lsm_seqs from kallsyms (0: no cache, every check walks). A
 * slot holds what "D/" matches (the prefix rules of every name in D) and is used only when all of these hold:
 *  - both sequences are even (no writer inside) and equal to the ones read before the walk that filled it,
 *    and that walk saw them unchanged after it: no rename or mount change since the walk began;
 *  - the same directory (mount, dentry) under the same root, and the dentry still has the parent, name hash,
 *    inode and inode number it was filled with (a dentry freed and its memory reused by another directory,
 *    which no sequence counts, must also reuse the parent's address, the name, the inode and its number);
 *  - the same policy slot and generation, and D holds no exact path entry (image.py's exact_dirs markers);
 *  - the argument is one name (always, for the kernel's own dentry) in canonical form.
 * A slot is written with ok = 0 before the walk and completed after it, so a program preempting this one on
 * the same CPU sees it unfinished.
 * A thread's last directory: the slot a check found or filled is copied beside the thread's stash (uw_lsm_keep),
 * and the thread's next check decides from that copy (uw_lsm_fast) when it is still the directory's, under the
 * same tests, and the name is short and no final-name rule can match it: no scratch is looked up then (a
 * per-CPU map's lookup is a helper call before 6.10), only the stash the check reads anyway. */
#ifndef UNLINKWATCH_ENFORCE_H
#define UNLINKWATCH_ENFORCE_H

#define UW_LSM_ALLOW 0
#define UW_LSM_OPEN 1	/* allowed, and no rule but an ignore decided: a rename's destination may still decide */
#define UW_LSM_SLOW 2	/* uw_lsm_fast(): not decided there */

struct path;
struct dentry;
struct inode;

/* path_rename -> inode_rename of one rename, per thread */
struct uw_lsm_rename {
	__u64 mnt;		/* the mount of both names */
	__u64 dst;		/* the destination's dentry */
	__u32 armed;		/* the source decided nothing: inode_rename decides on the destination */
	__u32 flags;		/* the rename's flags (RENAME_EXCHANGE) */
};
BPF_TASK_STORAGE(lsm_rename, struct uw_lsm_rename);
BPF_ARRAY(lsm_agent, __u32, 1);	/* the agent's tgid: never blocked */

/* the addresses of rename_lock's and mount_lock's sequence (program.py's SEQLOCKS, in order), 0: no cache */
struct uw_lsm_seq_addrs {
	__u64 addr[2];
};
BPF_ARRAY(lsm_seqs, struct uw_lsm_seq_addrs, 1);

static __always_inline struct uw_lsm_rename *uw_lsm_rename_get(__u64 create)
{
	return lsm_rename.task_storage_get(bpf_get_current_task_btf(), 0, create);
}

/* rename_lock's and mount_lock's sequence counts, or -1 when there is no cache or a writer is inside. */
static __always_inline int uw_lsm_seqs(__u32 *rseq, __u32 *mseq)
{
	__u32 zero = 0;
	struct uw_lsm_seq_addrs *a = lsm_seqs.lookup(&zero);
	if (!a || !a->addr[0] || !a->addr[1])
		return -1;
	if (bpf_probe_read_kernel(rseq, sizeof(*rseq), (void *)a->addr[0]) < 0 ||
	    bpf_probe_read_kernel(mseq, sizeof(*mseq), (void *)a->addr[1]) < 0)
		return -1;
	return (*rseq | *mseq) & 1 ? -1 : 0;
}

/* After a walk that missed: the slot completed with what "D/" matches, if no rename or mount change ran during
 * the walk and the walk ended cleanly; left unfinished (ok = 0) otherwise. Only for a directory that holds no
 * exact path entry: there a name's rules are not the directory's. uw_policy_path() built "D/name" in s->pkey. */
static __always_inline void uw_lsm_dir_fill(struct uw_scratch *s, __u32 slot)
{
	__u32 rseq = 0, mseq = 0;
	struct uw_lsm_dir *e = &s->lsm_dirs[s->lsm.idx & (UW_DIRC_SLOTS - 1)];
	__u32 dl = s->ev.dir_len;
	if (s->ev.flags || dl + 2 > UW_POLICY_KEY || uw_lsm_seqs(&rseq, &mseq) < 0 || rseq != s->lsm.rseq ||
	    mseq != s->lsm.mseq || e->ok || e->dentry != (void *)s->dirc_key || e->rseq != rseq || e->mseq != mseq)
		return;
	UW_OPAQUE(dl);
	struct uw_rule_set dr = {};
	if (uw_dir_rules(s, slot, dl, &dr))
		return;		/* an exact path entry lies in D */
	e->rules = dr;
	e->gen = s->lsm.gen;
	e->slot = slot;
	UW_RELOAD(e->ok) = 1;
}

/* The directory (mnt, dir) under the root of fs as it is now, into k: the key of a slot of lsm_dirs and the fields
 * it is checked by, with rename_lock's and mount_lock's sequences. -1 when there is no cache, a writer is inside
 * either sequence, or the directory has no inode. `dir` is BTF-typed (a hook's argument or a load from one): its
 * fields are plain loads. */
static __always_inline int uw_lsm_dir_now(void *mnt, void *dir, void *fs, struct uw_lsm_dir *k)
{
	if (uw_lsm_seqs(&k->rseq, &k->mseq) < 0)
		return -1;
	k->d_inode = UW_LD(dir, OFF_DENTRY_D_INODE, void *);
	if (!k->d_inode)
		return -1;
	k->dentry = dir;
	k->mnt = mnt;
	k->root_mnt = UW_LD(fs, OFF_FS_STRUCT_ROOT + OFF_PATH_MNT, void *);
	k->root_dentry = UW_LD(fs, OFF_FS_STRUCT_ROOT + OFF_PATH_DENTRY, void *);
	k->d_parent = UW_LD(dir, OFF_DENTRY_D_PARENT, void *);
	/* the name's hash and length as two loads: the verifier types d_name's first word as the 4-byte hash */
	k->d_hash_len = (__u64)UW_LD(dir, OFF_DENTRY_D_NAME + OFF_QSTR_LEN, __u32) << 32 |
			UW_LD(dir, OFF_DENTRY_D_NAME, __u32);
	k->ino = UW_LD(k->d_inode, OFF_INODE_I_INO, __u64);
	return 0;
}

/* Whether slot e holds the directory k (uw_lsm_dir_now) with the rules of the policy slot and generation. */
static __always_inline int uw_lsm_dir_is(const struct uw_lsm_dir *e, const struct uw_lsm_dir *k, __u32 gen,
					 __u32 slot)
{
	return e->ok && e->dentry == k->dentry && e->mnt == k->mnt && e->root_dentry == k->root_dentry &&
	       e->root_mnt == k->root_mnt && e->d_parent == k->d_parent && e->d_inode == k->d_inode &&
	       e->d_hash_len == k->d_hash_len && e->ino == k->ino && e->rseq == k->rseq && e->mseq == k->mseq &&
	       e->gen == gen && e->slot == slot;
}

/* Before the walk: the directory's rules from lsm_dirs into s->lsm.drules (s->lsm.hit), or, on a miss, its slot
 * started for uw_lsm_dir_fill() (s->lsm.fill). Either way s->lsm.idx is the slot. The caller cleared both. */
static __always_inline void uw_lsm_dir_find(struct uw_scratch *s, struct uw_policy_slot *sl, __u32 slot,
					    void *mnt, void *dir, void *fs)
{
	struct uw_lsm_dir k = {};
	if (s->src.state != UW_PM_NAME || uw_lsm_dir_now(mnt, dir, fs, &k) < 0)
		return;
	__u32 idx = uw_dirc_index(s, dir);
	s->lsm.idx = idx;
	struct uw_lsm_dir *e = &s->lsm_dirs[idx & (UW_DIRC_SLOTS - 1)];
	__u32 gen = sl->gen;
	if (uw_lsm_dir_is(e, &k, gen, slot)) {
		s->lsm.drules = e->rules;
		if (UW_RELOAD(e->ok) && UW_RELOAD(e->dentry) == dir && UW_RELOAD(e->rseq) == k.rseq &&
		    UW_RELOAD(e->mseq) == k.mseq && UW_RELOAD(e->gen) == gen && UW_RELOAD(e->slot) == slot) {
			s->lsm.hit = 1;
			s->n.lsm_hits += 1;
			return;
		}
	}
	UW_RELOAD(e->ok) = 0;
	k.ok = 0;
	*e = k;
	s->lsm.rseq = k.rseq;
	s->lsm.mseq = k.mseq;
	s->lsm.fill = 1;
	s->n.lsm_walks += 1;
}

/* The thread's last checked directory, beside its stash (struct uw_thread): uw_lsm_fast() decides from it. */
static __always_inline struct uw_lsm_dir *uw_lsm_dir_of(struct uw_stash *st)
{
	return &((struct uw_thread *)st)->lsm_dir;
}

/* After a check that found its directory's slot in lsm_dirs or filled it: the slot copied for the thread's next
 * check, and kept only if the slot is still the same whole after the copy (a program preempting this one on the
 * same CPU may have refilled it meanwhile). */
static __always_inline void uw_lsm_keep(struct uw_scratch *s, struct uw_stash *st, void *dir)
{
	struct uw_lsm_dir *e = &s->lsm_dirs[s->lsm.idx & (UW_DIRC_SLOTS - 1)];
	struct uw_lsm_dir *d = uw_lsm_dir_of(st);
	d->ok = 0;
	if (!e->ok || e->dentry != dir || e->gen != s->lsm.gen || e->slot != s->lsm.slot)
		return;
	*d = *e;
	asm volatile("" ::: "memory");	/* e is read again below, after the copy */
	if (!uw_lsm_dir_is(e, d, d->gen, d->slot) || e->rules.w[0] != d->rules.w[0] || e->rules.w[1] != d->rules.w[1])
		d->ok = 0;
}

/* The verdict on the rules `rs` that match a deletion (its path's, and its process's and op's), under the policy
 * slot sl of generation gen, noted in the check's stash st (0: none) for the observation's exit. */
static __always_inline int uw_lsm_verdict(struct uw_policy_slot *sl, struct uw_stash *st, struct uw_rule_set *rs,
					  __u32 gen, __u32 op, __u32 arm)
{
	if (*(volatile __u32 *)&sl->gen != gen)
		return UW_LSM_ALLOW;	/* the slot was reused while its maps were looked up */
	__u32 rule = uw_first_rule(rs);
	int block = rule && uw_rs_has(&sl->block, rule - 1);
	if (block || op != UW_OP_RENAME) {
		if (st) {
			st->lsm.gen = gen;
			if (block)
				st->lsm.rule = rule;
			if (op != UW_OP_RENAME) {	/* the exit's record takes this verdict (uw_lsm_decided) */
				st->lsm.any = rule;
				st->lsm.decided = 1;
			}
		}
	}
	if (block)
		return -UW_EPERM;
	if (arm && (!rule || uw_rs_has(&sl->ignore, rule - 1)))
		return UW_LSM_OPEN;
	return UW_LSM_ALLOW;
}

/* After the walk, with the scratch and the check's stash (0: none) it began with, and the policy looked up afresh
 * from map memory: the rule that decides, and -EPERM when it blocks. The check decides with the slot it started
 * with, whole: a reload writes the other slot and flips, so a check under way at the flip still sees the policy it
 * began with. That slot is reused (its generation first cleared, agent/policy/maps.py) only at the reload after,
 * and never within RETIRE_S of the flip; a check still under way then (the generation changed under it) is
 * allowed. */
static __always_inline int uw_lsm_decide(struct uw_scratch *s, struct uw_stash *st)
{
	__u32 zero = 0;
	struct uw_policy_state *ps = policy_state.lookup(&zero);
	if (!ps)
		return UW_LSM_ALLOW;
	__u32 slot = s->lsm.slot & 1;
	struct uw_policy_slot *sl = &ps->slot[slot];
	if (sl->gen != s->lsm.gen)
		return UW_LSM_ALLOW;
	struct uw_rule_set rs;
	if (s->lsm.hit) {
		rs = s->src.rules;
		uw_rs_or(&rs, &s->lsm.drules);
	} else {
		if (uw_policy_path(s, slot, sl->uses, &s->src, &rs) < 0)
			return s->lsm.arm ? UW_LSM_OPEN : UW_LSM_ALLOW;
		if (s->lsm.fill)
			uw_lsm_dir_fill(s, slot);
	}
	if (st && (s->lsm.hit || s->lsm.fill))
		uw_lsm_keep(s, st, (void *)s->dirc_key);
	uw_rs_and(&rs, &s->lsm.who);
	return uw_lsm_verdict(sl, st, &rs, s->lsm.gen, s->lsm.op, s->lsm.arm);
}

/* The victim's name as uw_prematch()'s one-name argument (UW_PM_NAME), from the dentry into s->tbuf: a name the
 * kernel resolved holds no "/" and is neither "." nor "..", so it needs no canonical-form check. A short name
 * lives in the dentry itself (d_iname, d_shortname since 6.14: at least UW_D_INLINE bytes), read as four plain
 * loads; a longer one by one probe read. The record's copy (s->data) is made only for a walk (uw_lsm_check). */
static __always_inline void uw_lsm_prematch(struct uw_scratch *s, __u32 slot, __u32 uses, void *dentry, __u32 len,
					    struct uw_prematch *pm)
{
	pm->rules.w[0] = 0;
	pm->rules.w[1] = 0;
	pm->raw_len = 0;
	pm->state = UW_PM_UNDECIDED;
	const char *name = UW_LD(dentry, UW_D_NAME, const char *);
	/* opaque: the compiler would otherwise load through `name`, equal to it but a scalar to the verifier */
	void *inline_name = dentry + OFF_DENTRY_D_INLINE;
	UW_OPAQUE(inline_name);
	UW_OPAQUE(len);	/* the masks below must stay: they are the verifier's bounds */
	if (len < UW_D_INLINE && (void *)name == inline_name) {
		*(__u64 *)&s->tbuf[8] = UW_LD(dentry, OFF_DENTRY_D_INLINE, __u64);
		*(__u64 *)&s->tbuf[16] = UW_LD(dentry, OFF_DENTRY_D_INLINE + 8, __u64);
		*(__u64 *)&s->tbuf[24] = UW_LD(dentry, OFF_DENTRY_D_INLINE + 16, __u64);
		*(__u64 *)&s->tbuf[32] = UW_LD(dentry, OFF_DENTRY_D_INLINE + 24, __u64);
	} else if (bpf_probe_read_kernel(&s->tbuf[8], len & UW_PK_MASK, name) < 0) {
		return;
	}
	s->tbuf[7] = '/';
	*(__u64 *)&s->tbuf[(8 + len) & UW_TB_MASK] = '/';
	*(__u64 *)&s->tbuf[(16 + len) & UW_TB_MASK] = 0;
	if (uses & UW_USES_NAMES)
		uw_names_rules(s, slot, len, &pm->rules);
	pm->raw_len = len;
	pm->state = UW_PM_NAME;
}

/* A check decided without the scratch, from the thread's last checked directory (uw_lsm_dir_of, kept by
 * uw_lsm_keep) and a short name held in the dentry that no final-name rule can match (the names' filter says so):
 * the directory's rules are then the path's. The verdict, or UW_LSM_SLOW when these do not decide and the whole
 * check runs. A loop of deletions by one thread in one directory (rm -r, a cleanup) comes this way after its
 * first. `who` are the rules for the process and op, from the observation's entry of this call. */
static __always_inline int uw_lsm_fast(struct uw_policy_slot *sl, __u32 slot, struct uw_stash *st,
				       struct uw_rule_set *who, void *task, __u32 op, void *mnt, void *dir,
				       void *dentry, __u32 arm)
{
	__u32 len = UW_LD(dentry, UW_D_LEN, __u32);
	const char *name = UW_LD(dentry, UW_D_NAME, const char *);
	void *inline_name = dentry + OFF_DENTRY_D_INLINE;
	UW_OPAQUE(inline_name);	/* as in uw_lsm_prematch() */
	if (len == 0 || len >= UW_D_INLINE || (void *)name != inline_name)
		return UW_LSM_SLOW;
	__u32 gen = sl->gen;
	if (sl->uses & UW_USES_NAMES) {
		/* the eight bytes that end at the name's end, "/" before it, as uw_name_maybe() reads them */
		__u64 w[5];
		w[0] = (__u64)'/' << 56;
		w[1] = UW_LD(dentry, OFF_DENTRY_D_INLINE, __u64);
		w[2] = UW_LD(dentry, OFF_DENTRY_D_INLINE + 8, __u64);
		w[3] = UW_LD(dentry, OFF_DENTRY_D_INLINE + 16, __u64);
		w[4] = UW_LD(dentry, OFF_DENTRY_D_INLINE + 24, __u64);
		__u32 k = len >> 3, r = (len & 7) * 8;
		UW_OPAQUE(k);
		__u64 word = w[k & 3] >> r | (w[(k & 3) + 1] << 1) << (63 - r);
		if (uw_name_maybe_word(slot, len, word))
			return UW_LSM_SLOW;
	}
	struct uw_rule_set rs = {};
	if (sl->uses & UW_USES_PATHS) {
		struct uw_lsm_dir k = {};
		struct uw_lsm_dir *e = uw_lsm_dir_of(st);
		if (uw_lsm_dir_now(mnt, dir, UW_LD(task, OFF_TASK_FS, void *), &k) < 0 || !uw_lsm_dir_is(e, &k, gen, slot))
			return UW_LSM_SLOW;
		rs = e->rules;
	}
	uw_rs_and(&rs, who);
	st->lsm.fast += 1;
	return uw_lsm_verdict(sl, st, &rs, gen, op, arm);
}

/* The inode an unlink or rmdir of the stashed call is about to destroy, for its record (uw_victim's fields): the
 * kernel calls vfs_unlink or vfs_rmdir right after this hook with the same dentry, so where this hook runs the
 * loader detaches the fentry and kprobe modes' programs on those two (program.py, VICTIM_HOOKS) and the victim is
 * read here, by plain loads through the hook's BTF-typed dentry. Not in tracepoint mode: its victims come from
 * ext4's own tracepoint, the real filesystem's inode. */
static __always_inline void uw_lsm_victim(struct uw_stash *st, __u32 op, void *dentry)
{
#if UW_MODE != UW_MODE_TRACEPOINT
	if (!st || UW_RELOAD(st->op) != op || st->v.flag || !dentry)
		return;
	void *inode = UW_LD(dentry, OFF_DENTRY_D_INODE, void *);
	if (!inode)
		return;
	st->v.mode = UW_LD(inode, OFF_INODE_I_MODE, __u16);
	st->v.ino = UW_LD(inode, OFF_INODE_I_INO, __u64);
	st->v.nlink = UW_LD(inode, OFF_INODE_I_NLINK, __u32);
	st->v.size = UW_LD(inode, OFF_INODE_I_SIZE, __s64);
	st->v.dev = UW_LD(UW_LD(inode, OFF_INODE_I_SB, void *), OFF_SUPER_BLOCK_S_DEV, __u32);
	st->v.flag = UW_F_VICTIM;
#endif
}

/* The verdict on deleting `dentry` from the directory (mnt, dir) by op: -EPERM when a block rule decides; with
 * `victim` (path_unlink, path_rmdir) the victim read first, whatever the policy. `dentry` and `dir` are BTF-typed
 * (the hook's arguments, or loads from them): their fields are plain loads. */
static __always_inline int uw_lsm_check(__u32 op, void *mnt, void *dir, void *dentry, __u32 arm, __u32 victim)
{
	__u32 zero = 0, slot = 0;
	void *task = (void *)bpf_get_current_task_btf();
	struct uw_stash *st = uw_stash_of(task, 0);
	if (victim)
		uw_lsm_victim(st, op, dentry);
	struct uw_policy_slot *sl = uw_policy_slot(&slot);
	if (!sl || !(sl->block.w[0] | sl->block.w[1]) || !mnt || !dir || !dentry)
		return UW_LSM_ALLOW;
	__u32 *agent = lsm_agent.lookup(&zero);	/* after the test for block rules: no lookup where there are none */
	if (!agent || UW_LD(task, OFF_TASK_TGID, __u32) == *agent)
		return UW_LSM_ALLOW;
	int from_entry = st && UW_RELOAD(st->op) == op && UW_RELOAD(st->gen) == sl->gen && UW_RELOAD(st->slot) == slot;
	if (from_entry) {	/* the observation's entry of this call found the rules for who (uw_enter2) */
		struct uw_rule_set who = st->who;
		if (!((who.w[0] & sl->block.w[0]) | (who.w[1] & sl->block.w[1])))
			return UW_LSM_ALLOW;	/* no block rule covers this process and op */
		int v = uw_lsm_fast(sl, slot, st, &who, task, op, mnt, dir, dentry, arm);
		if (v != UW_LSM_SLOW)
			return v;
	}
	struct uw_scratch *s = scratch.lookup(&zero);
	if (!s)
		return UW_LSM_ALLOW;
	if (from_entry) {
		s->lsm.who = st->who;
	} else {
		struct uw_rule_set exe_except;
		uw_exe_except_known(s, task, sl, slot, &exe_except, 0);
		uw_policy_who(sl, slot, op, task, &exe_except, &s->lsm.who);
	}
	if (!((s->lsm.who.w[0] & sl->block.w[0]) | (s->lsm.who.w[1] & sl->block.w[1])))
		return UW_LSM_ALLOW;	/* no block rule covers this process and op (a rename's destination neither) */
	s->lsm.gen = sl->gen;
	s->lsm.slot = slot;
	s->lsm.arm = arm;
	s->lsm.op = op;
	/* the final name is matched as a relative argument and the directory as its base, as policy.h does */
	__u32 len = UW_LD(dentry, UW_D_LEN, __u32);
	if (len == 0 || len >= UW_POLICY_KEY - 1)	/* too long for a policy key: policy.h cannot decide it either */
		return arm ? UW_LSM_OPEN : UW_LSM_ALLOW;
	s->ev.raw_len = len;
	s->ev.dir_len = 0;
	s->ev.flags = 0;
	/* it loops: before the walk */
	uw_lsm_prematch(s, slot, sl->uses, dentry, len, &s->src);
	void *fs = UW_LD(task, OFF_TASK_FS, void *);
	s->lsm.hit = 0;
	s->lsm.fill = 0;
	if (!(sl->uses & UW_USES_PATHS))
		return uw_lsm_decide(s, st);		/* only final names: the directory plays no part */
	uw_lsm_dir_find(s, sl, slot, mnt, dir, fs);
	if (s->lsm.hit)
		return uw_lsm_decide(s, st);
	UW_OPAQUE(len);
	/* the record's name, before its directory */
	bpf_probe_read_kernel(s->data, len & UW_NAME_MAX, &s->tbuf[8]);
	__u32 flags = 0;
	s->ev.dir_len = uw_put_path(s, len, mnt, dir, fs, &flags);
	s->ev.flags = flags;
	return uw_lsm_decide(s, st);
}

LSM_PROBE(path_unlink, const struct path *dir, struct dentry *dentry, int ret)
{
	if (ret)
		return ret;
	return uw_lsm_check(UW_OP_UNLINK, UW_LD(dir, OFF_PATH_MNT, void *), UW_LD(dir, OFF_PATH_DENTRY, void *),
			    (void *)dentry, 0, 1);
}

LSM_PROBE(path_rmdir, const struct path *dir, struct dentry *dentry, int ret)
{
	if (ret)
		return ret;
	return uw_lsm_check(UW_OP_RMDIR, UW_LD(dir, OFF_PATH_MNT, void *), UW_LD(dir, OFF_PATH_DENTRY, void *),
			    (void *)dentry, 0, 1);
}

/* Renames do not cross mounts (EXDEV is returned before this hook), so one mount serves both names. */
LSM_PROBE(path_rename, const struct path *old_dir, struct dentry *old_dentry, const struct path *new_dir,
	  struct dentry *new_dentry, unsigned int flags, int ret)
{
	if (ret)
		return ret;
	void *mnt = UW_LD(old_dir, OFF_PATH_MNT, void *);
	struct uw_lsm_rename *r = uw_lsm_rename_get(BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (r) {
		r->armed = 0;
		r->mnt = (__u64)mnt;
		r->dst = (__u64)new_dentry;
		r->flags = flags;
	}
	int v = uw_lsm_check(UW_OP_RENAME, mnt, UW_LD(old_dir, OFF_PATH_DENTRY, void *), (void *)old_dentry, 1, 0);
	if (v != UW_LSM_OPEN)
		return v;
	r = uw_lsm_rename_get(0);
	if (r)
		r->armed = 1;
	return 0;
}

/* The destination, when the rename destroys it. Only for the dentry path_rename saw: an exchange calls this hook
 * twice (swapped), overlayfs again below for its upper layer, and a rename that failed between the two hooks
 * leaves its state behind for the next. */
LSM_PROBE(inode_rename, struct inode *old_dir, struct dentry *old_dentry, struct inode *new_dir,
	  struct dentry *new_dentry, int ret)
{
	if (ret)
		return ret;
	struct uw_lsm_rename *r = uw_lsm_rename_get(0);
	if (!r || !r->armed)
		return 0;
	/* the destination as the hook's own (BTF-typed) argument, not the address kept in the map */
	struct dentry *dst = new_dentry;
	if ((void *)new_dentry != (void *)r->dst) {
		if ((void *)old_dentry != (void *)r->dst)
			return 0;
		dst = old_dentry;
	}
	r->armed = 0;
	void *mnt = (void *)r->mnt;
	if (!(r->flags & UW_RENAME_EXCHANGE) && !UW_LD(dst, OFF_DENTRY_D_INODE, void *))
		return 0;	/* a new name: nothing destroyed */
	return uw_lsm_check(UW_OP_RENAME, mnt, UW_LD(dst, OFF_DENTRY_D_PARENT, void *), dst, 0, 0);
}

#endif /* UNLINKWATCH_ENFORCE_H */

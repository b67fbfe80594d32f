// SPDX-License-Identifier: Apache-2.0
/* unlinkwatch probes: every unlink, unlinkat (files and AT_REMOVEDIR), rmdir, rename, renameat and
 * renameat2, with the directory of relative paths resolved in the kernel: for a rename both the source
 * (moved away) and the destination, and whether an existing destination was replaced.
 *
 * Files: kprobe.h (the record, the policy maps' records), read.h (kernel memory reads), walk.h (the path
 * walk), policy.h (the node policy's decision), rename_lookup.h (tracepoint mode's rename-target lookup),
 * enforce.h (block rules enforced with BPF LSM). Configured only with -D flags (agent/probe/program.py):
 *   UW_MODE            1 syscall tracepoints, 2 kprobe/kretprobe, 3 fentry/fexit
 *   UW_UNLINK_FN       the kernel's unlink function for modes 2 and 3 (do_unlinkat, filename_unlinkat)
 *   UW_RINGBUF_PAGES   ring buffer size in pages
 *   UW_MAX_DEPTH       directory components walked before the path is flagged truncated
 *   UW_PROCS           entries of procs (processes known by their exec)
 *   UW_NS_PER_TICK     nanoseconds per clock tick (USER_HZ), the unit of a start time in /proc/PID/stat
 *   UW_LSM             defined when block rules are enforced (enforce.h)
 *   OFF_*              struct member offsets read from the running kernel's BTF at load time
 * An exec records the process (its executable and command line) in procs; a deletion's entry sends the
 * records of the process and its parents once (again when its parent changed: uw_lineage), then stashes in
 * task-local storage; exit emits with the return
 * value (unless the node policy ignores the deletion) and always clears the stash. A rename's entry also
 * sends its destination as a record of its own (UW_KIND_RENAME_TO). Each program walks one path at most,
 * and what loops comes before the walk: what follows a walk is verified once per way out of it.
 *
 * Cost per deletion is what this file optimises for (docs/ARCHITECTURE.md, "Kernel-side cost"):
 *  - the current task comes from bpf_get_current_task_btf(), so chains of task-owned pointers
 *    (fs, files, mm, parent, leader) are plain loads the verifier checks against BTF, not helper calls;
 *  - pointers that do not come from such a chain (a dirfd's file, the dentries of a walk) are read
 *    with bpf_probe_read_kernel, but one read per dentry and one per mount rather than one per field;
 *  - the stash between entry and exit is task-local storage: no hash insert and delete per call. */
#include <uapi/linux/ptrace.h>
#include <asm/unistd.h>	/* __NR_*: the tracepoint mode tells its calls apart by number */
#include "kprobe.h"

#define UW_MODE_TRACEPOINT 1
#define UW_MODE_KPROBE 2
#define UW_MODE_FENTRY 3
#define UW_AT_FDCWD -100
#define UW_AT_REMOVEDIR 0x200
#define UW_RENAME_EXCHANGE 2
#define UW_DATA_MASK (2 * UW_PATH_MAX - 1)
#define UW_ENAMETOOLONG 36
#define UW_EPERM 1
#define UW_MASK (UW_PATH_MAX - 1)
#define UW_PK_ROOM 512
#define UW_GEN_USER (1U << 31)	/* uw_stash.gen: the policy is left to user space (an unknown executable) */

#define UW_PM_UNDECIDED 0	/* struct uw_prematch.state */
#define UW_PM_RELATIVE 1	/* rules hold the final name's; the directory's key is built after the walk */
#define UW_PM_ABSOLUTE 2	/* rules are complete */
#define UW_PM_NAME 3		/* UW_PM_RELATIVE, of one name (no "/"): uw_entry_ignore() may decide it from its directory */

#ifdef UW_LSM
/* BPF LSM (enforce.h): the block rule that stopped this call, kept in the stash for its exit */
struct uw_lsm_stash {
	__u32 rule;		/* 1 + the block rule that stopped the call, 0 for none */
	__u32 gen;		/* the policy generation of rule and any */
	__u32 decided;		/* an unlink's or rmdir's check decided, on the kernel's names: any is its rule */
	__u32 any;		/* 1 + the first rule of any action that matches, 0 for none */
	__u32 fast;		/* checks uw_lsm_fast() decided, not counted yet (the exit adds them to lsm_hits) */
	__u32 pad;
};

struct uw_lsm_scratch {
	struct uw_rule_set who;	/* the rules for this process and op */
	__u32 gen;		/* the policy generation they are from */
	__u32 slot;		/* ...and its slot: the check decides with the policy it started with */
	__u32 arm;		/* a rename's source: arm the destination's check when the source decides nothing */
	__u32 op;		/* the check's op */
	__u32 hit;		/* the directory's rules came from lsm_dirs (drules): no walk */
	struct uw_rule_set drules;
	__u32 fill;		/* a miss: the slot lsm_dirs[idx] is filled after the walk if the sequences held */
	__u32 idx;
	__u32 rseq, mseq;	/* rename_lock's and mount_lock's sequences before the walk */
};

/* A directory's rules for the checks (enforce.h, "The directory's rules, cached"): per CPU, in the scratch, indexed
 * like walk.h's cache */
struct uw_lsm_dir {
	void *dentry, *mnt, *root_dentry, *root_mnt;
	void *d_parent, *d_inode;
	__u64 d_hash_len, ino;
	struct uw_rule_set rules;	/* what "D/" matches */
	__u32 rseq, mseq;		/* rename_lock's and mount_lock's sequences around the walk */
	__u32 gen, slot;		/* the policy generation and slot of the rules */
	__u32 ok;			/* 0 while the walk runs */
	__u32 pad;
};
#endif

#define UW_DIRC_SLOTS 64	/* walk.h's directory cache and enforce.h's, per CPU */

/* The directory caches' counters, in the scratch that the programs already hold (a map of their own would be one
 * more lookup per deletion: a helper call on kernels before 6.10). The agent reads them as the scratch's first
 * words, in this order, summed over CPUs (loader.py). */
struct uw_counts {
	__u64 dirc_hits;	/* walk.h: base directories found in the cache */
	__u64 dirc_walks;	/* walk.h: base directories walked */
	__u64 lsm_hits;		/* enforce.h: checks that found their directory's rules */
	__u64 lsm_walks;	/* enforce.h: checks that walked their directory */
};

/* What entry found of a path argument for the node policy (policy.h), kept in the stash until the walk */
struct uw_prematch {
	struct uw_rule_set rules;
	__u32 raw_len;
	__u32 state;
};

/* What a deletion destroys, read from its inode before the deletion (uw_read_victim): the record's fields under
 * UW_F_VICTIM. Where, per mode: kprobe and fentry on vfs_unlink and vfs_rmdir (the first call of the syscall: the
 * inode its process sees, an overlayfs one in a container), vfs_rename's destination; tracepoints see no inode of
 * their own, so ext4's unlink tracepoint (the real filesystem's inode) and a rename's dcache lookup */
struct uw_victim {
	__u64 ino;
	__s64 size;
	__u32 dev;
	__u32 nlink;
	__u16 mode;
	__u16 pad;
	__u32 flag;		/* UW_F_VICTIM once read, 0 before */
};

struct uw_stash {
	__u64 ts_ns;
	const char *uptr;	/* user pointer of the path argument (the source, for rename) */
	__s32 dirfd;
	__u32 op;
	__u32 replaced;		/* rename: the destination existed and was replaced */
	__u32 rename_flags;
	__u32 gen;		/* the policy generation in force at entry, 0 for none */
	__u32 slot;		/* and its slot */
	struct uw_rule_set who;		/* the rules for this op, cgroup, comm and exe (policy.h) */
	__u32 uses;		/* the policy's UW_USES_* */
	__u32 ignored;		/* with UW_LSM: the ignore rule entry found, for the exit (a block may still come) */
	struct uw_prematch pm;		/* entry's pre-match: a rename's destination, else the source (only when
					 * the policy has ignore rules: uw_entry_ignore) */
	struct uw_rule_set dst_rules;	/* rename: every rule its destination matches (set after its walk) */
	__u32 dst_undecided;	/* rename: the kernel could not decide the destination */
	__u32 flags;		/* UW_F_PROC_UNKNOWN, for the record */
	__s32 dst_dirfd;	/* rename: the destination's dirfd and path argument, as passed */
	const char *dst_uptr;
	struct uw_victim v;	/* what the call destroys */
	void *root_ns, *root_mnt, *root_dentry;	/* uw_put_mnt_ns: the last answer, and what it depends on */
	__u64 root_gen;
	__u32 root_chroot;
	__u32 root_mnt_id;
	/* uw_proc_enter: the thread's process was known, its record sent, with this parent, since this exec */
	__u64 proc_exec_id;	/* the thread's self_exec_id then */
	__u64 proc_pstart;	/* the parent's key then */
	__u32 proc_ptgid;
	__u32 proc_fresh;	/* deletions left before procs is looked up again (0: look it up now) */
#ifdef UW_LSM
	struct uw_lsm_stash lsm;	/* enforce.h: what the LSM programs decided during this call */
#endif
};

/* One process of a deletion's lineage (the deleting process first, then its parents), as uw_lineage() found it */
struct uw_link {
	void *task;		/* the thread group leader */
	struct uw_proc_key key;
	__u64 seed_start;	/* its seeded key's start */
	__u64 exe_file;		/* mm->exe_file, 0 for none */
	__u64 pstart;		/* the parent's key */
	__u32 ptgid;
	__u32 ns_pid;		/* its pid in its own pid namespace */
	__u32 ns_level;		/* and that namespace's depth */
	__u32 pad;
};

struct uw_scratch {
	struct uw_counts n;		/* must stay first: the agent reads it there */
	struct uw_event ev;		/* the record is ev followed by data */
	char data[2 * UW_PATH_MAX];	/* raw path, then the resolved directory */
	char walk[UW_PATH_MAX + UW_NAME_MAX + 1]; /* directory built backwards from the leaf */
	__u32 pos;				/* uw_walk's write position */
	__u64 dirc_key;				/* walk.h: the address of the directory cache's dentry */
	__u32 dirc_idx;				/* walk.h: its slot */
	__u32 dirc_armed;			/* walk.h: the slot is filled after the walk */
	__u32 dirc_at;				/* walk.h: the slot holds the record's directory (a hit, or filled) */
	__u64 dirc_gen, dirc_mnt, dirc_root;	/* walk.h: what it was checked or filled with, for uw_dirc_same() */
	struct uw_policy_key pkey;		/* policy.h: the absolute path */
	char pkey_room[UW_PK_ROOM];		/* so that the verifier sees every masked key index in bounds */
	struct uw_policy_key nkey;		/* policy.h: the final name reversed */
	char nkey_room[UW_PK_ROOM];
	char tbuf[UW_PK_ROOM + 16];		/* policy.h: the raw argument, 8-byte aligned words */
	struct uw_prematch src;			/* the exit's pre-match of its argument: in map memory, so the
						 * walk after it is verified once, not once per way through it */
	struct uw_proc proc;			/* the exec program builds a process's entry here */
	struct uw_link chain[UW_ANCESTRY + 2];	/* a deletion's lineage (uw_lineage) */
#ifdef UW_LSM
	struct uw_lsm_scratch lsm;		/* enforce.h: one LSM program's state across its walk */
	struct uw_lsm_dir lsm_dirs[UW_DIRC_SLOTS];	/* enforce.h's directory cache (no lookup of its own) */
#endif
};

BPF_RINGBUF_OUTPUT(events, UW_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(lost, __u64, 1);		/* ring buffer full: records dropped in the kernel */
/* The stash's value: the call's stash and, with UW_LSM, the thread's last checked directory (enforce.h's
 * uw_lsm_fast), which the exit's copy of the call's stash leaves out (that copy is on its stack) */
struct uw_thread {
	struct uw_stash call;	/* must stay first: a stash's address is its thread's */
#ifdef UW_LSM
	struct uw_lsm_dir lsm_dir;
#endif
};
BPF_TASK_STORAGE(stash, struct uw_thread);	/* entry -> exit, per thread; op 0 when empty */
#if UW_MODE == UW_MODE_TRACEPOINT
/* renames only (tracepoint mode): the tail-called dcache lookup marks its thread in a tid-keyed hash, as
 * it did before the stash moved to task storage, so the step's verifier cost is unchanged */
BPF_HASH(rename_replaced, __u32, struct uw_victim, 1024);
#endif
BPF_PERCPU_ARRAY(scratch, struct uw_scratch, 1);
BPF_TABLE("lru_hash", struct uw_proc_key, struct uw_proc, procs, UW_PROCS);	/* kprobe.h */
BPF_TABLE("lru_hash", __u32, __u8, mnt_seen, 4096);	/* mount namespaces announced (UW_KIND_MNT_NS) */

/* walk.h's directory cache: the control (one entry) and the per-CPU slots */
#define UW_DIRC_MAX 256			/* the longest directory path a slot holds, with room for none past it */
#define UW_DIRC_URING_NS 1000000000ULL	/* the cache is off for this long after each io_uring rename or unlink */
struct uw_dirc_ctl {
	__u64 gen;	/* bumped by every change that can move a directory */
	__u64 until;	/* ktime before which the cache is not used (io_uring), 0 for none */
	__u64 on;	/* set by user space once every source of a bump is attached */
};
struct uw_dirc_entry {
	__u64 gen;
	void *dentry, *mnt, *root_dentry, *root_mnt;
	void *d_parent, *d_inode, *m_parent, *m_point, *m_root;
	__u64 d_hash_len;
	__u32 len;
	__u32 ok;	/* the path is filled: 0 while its walk runs */
	char path[UW_DIRC_MAX];
	/* uw_entry_ignore() and uw_exit_dir_rules(): the policy rules of "path/" (and whether an exact path lies in
	 * it), for the policy generation pgen, computed for the directory (pmnt, pdentry) under the root proot from
	 * its path at cache generation pcgen (a refill after a rename, or for the same dentry under another mount or
	 * root, preempting the program that computed them, leaves them tagged with the old ones); pgen is 0 when a
	 * walk refills the slot */
	struct uw_rule_set prules;
	void *pdentry, *pmnt, *proot;
	__u64 pcgen;
	__u32 pgen;
	__u32 pexact;
};
BPF_ARRAY(dirc_ctl, struct uw_dirc_ctl, 1);
BPF_PERCPU_ARRAY(dirc, struct uw_dirc_entry, UW_DIRC_SLOTS);

#include "read.h"
#include "walk.h"
#include "policy.h"

/* Who made the record (`task`, the current one): the process, its parent, its cgroup and its name. Plain loads
 * through the task, where the helpers (pid_tgid, uid_gid, cgroup_id, comm) were a call each: the same values (the
 * ids as the initial namespaces see them; the name's bytes after its NUL are the kernel's padding, and user space
 * reads up to the NUL). */
static __always_inline void uw_who(struct uw_event *ev, void *task, __u32 kind)
{
	void *cred = UW_LD(task, OFF_TASK_CRED, void *);
	ev->cgroup_id = uw_cgroup_id(task);
	ev->kind = kind;
	ev->pid = UW_LD(task, OFF_TASK_TGID, __u32);
	ev->tid = UW_LD(task, OFF_TASK_PID, __u32);
	ev->uid = UW_LD(cred, OFF_CRED_UID, __u32);
	ev->gid = UW_LD(cred, OFF_CRED_GID, __u32);
	ev->ppid = UW_LD(UW_LD(task, OFF_TASK_REAL_PARENT, void *), OFF_TASK_TGID, __u32);
	ev->proc_start_ns = UW_LD(UW_LD(task, OFF_TASK_GROUP_LEADER, void *), OFF_TASK_START_TIME, __u64);
	ev->parent_start_ns = UW_LD(UW_LD(UW_LD(task, OFF_TASK_REAL_PARENT, void *), OFF_TASK_GROUP_LEADER, void *),
				    OFF_TASK_START_TIME, __u64);
	*(__u64 *)&ev->comm[0] = UW_LD(task, OFF_TASK_COMM, __u64);
	*(__u64 *)&ev->comm[8] = UW_LD(task, OFF_TASK_COMM + 8, __u64);
}

/* Every other field of the record's fixed part zeroed. */
static __always_inline void uw_clear(struct uw_event *ev)
{
	ev->ns_pid = 0;
	ev->ns_level = 0;
	ev->mnt_ns = 0;
	ev->nlink = 0;
	ev->dev = 0;
	ev->ino = 0;
	ev->size = 0;
	ev->mode = 0;
	ev->reserved = 0;
	ev->root_mnt_id = 0;
	ev->reserved2 = 0;
	ev->op = 0;
	ev->result = 0;
	ev->dirfd = 0;
	ev->flags = 0;
	ev->raw_len = 0;
	ev->dir_len = 0;
	ev->rename_flags = 0;
	ev->policy = 0;
	ev->action = UW_ACTION_ALLOWED;
	ev->policy_gen = 0;
}

static __always_inline void uw_header(struct uw_event *ev, void *task, __u32 kind)
{
	uw_clear(ev);
	uw_who(ev, task, kind);
}

static __always_inline void uw_output_flags(struct uw_scratch *s, __u64 wakeup)
{
	/* each length is below UW_PATH_MAX by construction: the mask is exact and bounds the read */
	__u64 size = ((s->ev.raw_len + s->ev.dir_len) & UW_DATA_MASK) + sizeof(struct uw_event);
	if (events.ringbuf_output(&s->ev, size, wakeup) < 0) {
		__u32 zero = 0;
		__u64 *n = lost.lookup(&zero);
		if (n)
			*n += 1;
	}
}

/* No wake-up: user space drains the ring on a short timer, so no record pays for one. */
static __always_inline void uw_output(struct uw_scratch *s)
{
	uw_output_flags(s, BPF_RB_NO_WAKEUP);
}

/* The key of the current process in procs: its thread group leader's pid and start time. */
static __always_inline void uw_proc_key(void *task, struct uw_proc_key *key)
{
	void *leader = UW_LD(task, OFF_TASK_GROUP_LEADER, void *);
	key->tgid = UW_LD(leader, OFF_TASK_TGID, __u32);
	key->pad = 0;
	key->start = UW_LD(leader, OFF_TASK_START_TIME, __u64);
}

/* The seeded key of a process (agent/probe/procseed.py): its start as /proc/PID/stat gives it. */
static __always_inline void uw_proc_seed_key(void *task, struct uw_proc_key *key)
{
	void *leader = UW_LD(task, OFF_TASK_GROUP_LEADER, void *);
	key->tgid = UW_LD(leader, OFF_TASK_TGID, __u32);
	key->pad = 0;
	key->start = UW_PROC_SEEDED | (UW_LD(leader, OFF_TASK_START_BOOTTIME, __u64) / UW_NS_PER_TICK);
}

/* A process's record (UW_KIND_EXE) from its entry: the executable, then the command line. */
static __always_inline void uw_send_proc(struct uw_scratch *s, struct uw_link *l, struct uw_proc *p)
{
	struct uw_event *ev = &s->ev;
	ev->ts_ns = 0;
	ev->cgroup_id = 0;
	ev->proc_start_ns = l->key.start;
	ev->parent_start_ns = l->pstart;
	ev->kind = UW_KIND_EXE;
	ev->op = 0;
	ev->pid = l->key.tgid;
	ev->tid = l->key.tgid;
	ev->ppid = l->ptgid;
	ev->uid = 0;
	ev->gid = 0;
	ev->result = 0;
	ev->dirfd = 0;
	ev->rename_flags = 0;
	ev->ns_pid = l->ns_pid;
	ev->ns_level = l->ns_level;
	ev->policy = 0;
	ev->action = UW_ACTION_ALLOWED;
	ev->policy_gen = 0;
	bpf_probe_read_kernel(ev->comm, sizeof(ev->comm), l->task + OFF_TASK_COMM);
	__u32 exe_len = p->exe_len & (UW_EXE_MAX - 1);
	__u32 args_len = p->args_len;
	if (args_len > UW_ARGS_MAX)
		args_len = UW_ARGS_MAX;
	bpf_probe_read_kernel(s->data, exe_len, p->exe);
	bpf_probe_read_kernel(&s->data[exe_len], args_len, p->args);
	ev->raw_len = exe_len;
	ev->dir_len = args_len;
	ev->flags = p->flags;
	uw_output(s);
}

/* The deleting process and its ancestors, nearest first, into s->chain: up to and including its pid
 * namespace's first process (ns pid 1: a container's, or init), the first ancestor outside that namespace
 * (where an exec session entered it), or UW_ANCESTRY ancestors. Returns how many. */
static __always_inline __u32 uw_lineage(struct uw_scratch *s, void *task)
{
	void *t = UW_LD(task, OFF_TASK_GROUP_LEADER, void *);
	__u32 level = 0, n = 0;
#pragma unroll
	for (int i = 0; i < UW_ANCESTRY + 2; i++) {
		struct uw_link *l = &s->chain[i];
		void *pid = UW_LD(t, OFF_TASK_THREAD_PID, void *);
		__u32 lvl = pid ? UW_LD(pid, OFF_PID_LEVEL, __u32) : 0;
		l->task = t;
		l->key.tgid = UW_LD(t, OFF_TASK_TGID, __u32);
		l->key.pad = 0;
		l->key.start = UW_LD(t, OFF_TASK_START_TIME, __u64);
		l->seed_start = UW_PROC_SEEDED | (UW_LD(t, OFF_TASK_START_BOOTTIME, __u64) / UW_NS_PER_TICK);
		void *mm = UW_LD(t, OFF_TASK_MM, void *);
		l->exe_file = mm ? (__u64)UW_LD(mm, OFF_MM_EXE_FILE, void *) : 0;
		l->ns_level = lvl;
		l->ns_pid = pid ? uw_u32(pid, OFF_PID_NUMBERS + (lvl & 31) * UW_UPID_SIZE + OFF_UPID_NR) : 0;
		void *pt = UW_LD(UW_LD(t, OFF_TASK_REAL_PARENT, void *), OFF_TASK_GROUP_LEADER, void *);
		l->ptgid = UW_LD(pt, OFF_TASK_TGID, __u32);
		l->pstart = UW_LD(pt, OFF_TASK_START_TIME, __u64);
		n = i + 1;
		if (i == 0)
			level = lvl;
		else if (lvl < level)
			break;	/* outside the deleting process's pid namespace */
		if (l->ns_pid == 1 || l->ptgid == 0 || i == UW_ANCESTRY + 1)
			break;
		t = pt;
	}
	return n;
}

/* The entries of the lineage in s->chain (n links), from the top down: each gets an entry in procs (its own
 * from its exec; else its seeded one; else, forked without exec, the nearest ancestor's with the same
 * executable file; else a placeholder marked unknown), and its record goes to user space unless it went
 * already with the same parent. Returns the deleting process's entry. */
static __always_inline struct uw_proc *uw_lineage_sync(struct uw_scratch *s, __u32 n)
{
	struct uw_proc *p = 0, *inherit = 0;
#pragma unroll
	for (int i = UW_ANCESTRY + 1; i >= 0; i--) {
		if (i >= n)
			continue;
		struct uw_link *l = &s->chain[i];
		p = procs.lookup(&l->key);
		if (!p || (p->flags & UW_F_PROC_UNKNOWN)) {	/* none, or a placeholder: seeded since? */
			struct uw_proc_key seeded = {.tgid = l->key.tgid, .start = l->seed_start};
			struct uw_proc *q = procs.lookup(&seeded);
			if (!q && !p && inherit && l->exe_file && inherit->exe_file == l->exe_file)
				q = inherit;
			if (q || !p) {
				if (q) {
					procs.update(&l->key, q);
				} else {
					struct uw_proc *ph = &s->proc;
					ph->exe_file = l->exe_file;
					ph->flags = UW_F_PROC_UNKNOWN;
					ph->gen = 0;
					ph->exe_len = 0;
					ph->args_len = 0;
					ph->exe_except.w[0] = 0;
					ph->exe_except.w[1] = 0;
					procs.update(&l->key, ph);
				}
				p = procs.lookup(&l->key);
				if (!p)
					continue;
				p->sent = 0;
			}
		}
		if (!p->sent || p->ptgid != l->ptgid || p->pstart != l->pstart) {
			p->sent = 1;
			p->ptgid = l->ptgid;
			p->pstart = l->pstart;
			uw_send_proc(s, l, p);
		}
		if (!(p->flags & UW_F_PROC_UNKNOWN))
			inherit = p;
	}
	return p;
}

/* Entry's part of the process: its lineage's records sent (once per process, and again when its parent
 * changed), and the policy rules whose except names its executable (computed again when the policy changes).
 * Returns UW_F_PROC_UNKNOWN when the kernel has no exec of the process. `p` is its procs entry when the caller
 * has looked it up already (uw_exe_except_known), else 0.
 * The thread's stash remembers a known process whose record went with its parent (st->proc_*), so that its next
 * deletions skip the lookup in procs: an exec changes the thread's self_exec_id (never reused: it only grows),
 * a new parent its key, and either one makes the next deletion look up and send again. Every UW_PROC_FRESH-th
 * deletion looks procs up all the same, which keeps the process's entry recent in procs' LRU order: children
 * of a process that deletes find it there as their ancestor, as they would without the stash's answer. A
 * policy naming executables reads the entry anyway (uw_exe_except_known) and takes no answer from the stash. */
#define UW_PROC_FRESH 64
static __always_inline __u32 uw_proc_enter(struct uw_scratch *s, void *task, struct uw_stash *st,
					   struct uw_policy_slot *sl, __u32 slot, struct uw_proc *p,
					   struct uw_rule_set *exe_except)
{
	exe_except->w[0] = 0;
	exe_except->w[1] = 0;
	void *pt = UW_LD(UW_LD(task, OFF_TASK_REAL_PARENT, void *), OFF_TASK_GROUP_LEADER, void *);
	__u32 ptgid = UW_LD(pt, OFF_TASK_TGID, __u32);
	__u64 pstart = UW_LD(pt, OFF_TASK_START_TIME, __u64);
	__u64 exec_id = UW_LD(task, OFF_TASK_SELF_EXEC_ID, __u64);
	if (!p && st->proc_fresh && st->proc_exec_id == exec_id && st->proc_ptgid == ptgid &&
	    st->proc_pstart == pstart) {
		st->proc_fresh -= 1;
		return 0;
	}
	st->proc_fresh = 0;
	if (!p) {
		struct uw_proc_key key;
		uw_proc_key(task, &key);
		p = procs.lookup(&key);
	}
	int sync = !p || !p->sent || p->ptgid != ptgid || p->pstart != pstart;
	if (!sync && (p->flags & UW_F_PROC_UNKNOWN)) {	/* a placeholder: seeded since (agent/probe/procseed.py)? */
		struct uw_proc_key seeded;
		uw_proc_seed_key(task, &seeded);
		sync = procs.lookup(&seeded) != 0;
	}
	if (sync)
		p = uw_lineage_sync(s, uw_lineage(s, task));
	if (!p || (p->flags & UW_F_PROC_UNKNOWN))
		return UW_F_PROC_UNKNOWN;
	if (sl && (sl->uses & UW_USES_EXES)) {
		if (p->gen != sl->gen) {
			uw_policy_exe(s, slot, p, &p->exe_except);
			p->gen = sl->gen;
		}
		*exe_except = p->exe_except;
		return 0;
	}
	/* the entry's parent is the one read above: uw_lineage_sync() sent the record with it, or it had gone */
	st->proc_exec_id = exec_id;
	st->proc_ptgid = ptgid;
	st->proc_pstart = pstart;
	st->proc_fresh = UW_PROC_FRESH - 1;
	return 0;
}

/* The rules naming the current process's executable in an except, from its procs entry as it stands (no sync, no
 * record sent): 1 when they are known, or the policy names no executables; 0, with none, for a process procs does
 * not hold or holds as a placeholder (its executable cannot be proven, so it is not excepted). With `seen`, the
 * entry it looked up goes there (0 when it looked none up), for uw_proc_enter() to use. */
static __always_inline int uw_exe_except_known(struct uw_scratch *s, void *task, struct uw_policy_slot *sl,
					       __u32 slot, struct uw_rule_set *out, struct uw_proc **seen)
{
	out->w[0] = 0;
	out->w[1] = 0;
	if (seen)
		*seen = 0;
	if (!(sl->uses & UW_USES_EXES))
		return 1;
	struct uw_proc_key key;
	uw_proc_key(task, &key);
	struct uw_proc *p = procs.lookup(&key);
	if (seen)
		*seen = p;
	if (!p || (p->flags & UW_F_PROC_UNKNOWN))
		return 0;
	if (p->gen != sl->gen) {
		uw_policy_exe(s, slot, p, &p->exe_except);
		p->gen = sl->gen;
	}
	*out = p->exe_except;
	return 1;
}

static __always_inline struct uw_stash *uw_stash_of(void *task, __u64 create)
{
	struct uw_thread *t = stash.task_storage_get(task, 0, create);
	return t ? &t->call : 0;
}

static __always_inline struct uw_stash *uw_stash_get(__u64 create)
{
	return uw_stash_of(bpf_get_current_task_btf(), create);
}

/* Whether a BPF LSM check (enforce.h) decided this call, an unlink or rmdir (it notes no rename's), with the policy
 * in force at entry: its rule is then the record's, matched on the kernel's own names, and the exit matches
 * nothing itself. */
static __always_inline int uw_lsm_decided(struct uw_stash *st)
{
#ifdef UW_LSM
	return UW_RELOAD(st->lsm.decided) && UW_RELOAD(st->lsm.gen) == UW_RELOAD(st->gen);
#else
	return 0;
#endif
}

/* ...and its rule (1 + the rule, 0 for none) */
static __always_inline __u32 uw_lsm_any(struct uw_stash *st)
{
#ifdef UW_LSM
	return st->lsm.any;
#else
	return 0;
#endif
}

/* The directory a relative path argument is relative to: the cwd, or the dirfd's file. */
static __always_inline void uw_base_dir(void *task, void *fs, __s32 dirfd, void **mnt, void **dentry)
{
	if (dirfd == UW_AT_FDCWD) {
		*mnt = UW_LD(fs, OFF_FS_STRUCT_PWD + OFF_PATH_MNT, void *);
		*dentry = UW_LD(fs, OFF_FS_STRUCT_PWD + OFF_PATH_DENTRY, void *);
	} else if (dirfd >= 0) {
		void *fdt = UW_LD(UW_LD(task, OFF_TASK_FILES, void *), OFF_FILES_STRUCT_FDT, void *);
		if ((__u32)dirfd < UW_LD(fdt, OFF_FDTABLE_MAX_FDS, __u32)) {
			/* fd is a pointer to pointers, which BTF loads do not follow: probe reads from here */
			void *fds = UW_LD(fdt, OFF_FDTABLE_FD, void *);
			void *file = uw_ptr(fds, (long)dirfd * sizeof(void *));
			if (file) {
				void *fpath[2] = {};
				bpf_probe_read_kernel(fpath, sizeof(fpath), file + OFF_FILE_F_PATH);
				*mnt = fpath[OFF_PATH_MNT / 8];
				*dentry = fpath[OFF_PATH_DENTRY / 8];
			}
		}
	}
}

/* Whether slot e's rules of "D/" (prules) are the ones for this directory under this policy generation and cache
 * generation (see struct uw_dirc_entry). */
static __always_inline int uw_prules_for(struct uw_dirc_entry *e, __u32 pgen, void *mnt, void *dentry,
					 void *root_dentry, __u64 gen)
{
	return UW_RELOAD(e->pgen) == pgen && UW_RELOAD(e->pdentry) == dentry && UW_RELOAD(e->pcgen) == gen &&
	       UW_RELOAD(e->pmnt) == mnt && UW_RELOAD(e->proot) == root_dentry;
}

/* Keeps the rules of "D/" (and whether an exact path lies in D) in slot e, tagged for uw_prules_for(). */
static __always_inline void uw_prules_keep(struct uw_dirc_entry *e, const struct uw_rule_set *dr, __u32 exact,
					   __u32 pgen, void *mnt, void *dentry, void *root_dentry, __u64 gen)
{
	e->prules = *dr;
	e->pexact = exact;
	e->pdentry = dentry;
	e->pmnt = mnt;
	e->proot = root_dentry;
	e->pcgen = gen;
	e->pgen = pgen;
}

/* An ignore rule decided at entry, before anything of the record is read (no clock, no walk, no victim): the rule,
 * or 0 when the exit must build the record and decide (no ignore rule is the first to match; the argument is
 * not in canonical form; a relative argument whose directory walk.h's cache does not hold, which the exit's walk
 * then fills for the next deletion). The path is the one the exit would match: the argument from user memory,
 * its directory from the cache, keyed as uw_policy_path() keys it. For a one-name argument the cache's slot
 * also keeps the rules of the directory's own prefix ("D/"): in a directory that holds no exact path entry
 * (agent/policy/image.py, exact_dirs) they are every name's, so the next deletion there needs no key and no
 * lookup. Like the exit's own read of the argument, this one is not the kernel's copy: docs/POLICY.md says what
 * a racing thread can do with that. */
static __always_inline __u32 uw_entry_ignore(struct uw_scratch *s, struct uw_policy_slot *sl, __u32 slot,
					     struct uw_stash *st, void *task)
{
	__u32 state = st->pm.state;
	if (state == UW_PM_UNDECIDED)
		return 0;
	struct uw_rule_set rs = st->pm.rules;
	int relative = state != UW_PM_ABSOLUTE && (sl->uses & UW_USES_PATHS);
	if (relative) {
		void *fs = UW_LD(task, OFF_TASK_FS, void *);
		void *mnt = 0, *dentry = 0;
		uw_base_dir(task, fs, st->dirfd, &mnt, &dentry);
		if (!mnt || !dentry)
			return 0;
		void *root_dentry = UW_LD(fs, OFF_FS_STRUCT_ROOT + OFF_PATH_DENTRY, void *);
		__u64 gen = 0;
		struct uw_dirc_entry *e =
			uw_dirc_find(s, mnt, dentry, UW_LD(fs, OFF_FS_STRUCT_ROOT + OFF_PATH_MNT, void *), root_dentry, &gen);
		if (!e)
			return 0;
		__u32 pgen = sl->gen;
		int cached = state == UW_PM_NAME && uw_prules_for(e, pgen, mnt, dentry, root_dentry, gen);
		struct uw_rule_set dr = e->prules;
		__u32 full = !cached || e->pexact;
		if (cached && (!uw_dirc_same(e, gen, mnt, dentry, root_dentry) ||
			       !uw_prules_for(e, pgen, mnt, dentry, root_dentry, gen)))
			return 0;
		if (!full) {
			uw_rs_or(&rs, &dr);
		} else {
			__u32 raw_len = st->pm.raw_len;
			__u32 dl = e->len & (UW_DIRC_MAX - 1);
			if (dl + raw_len + 2 > UW_POLICY_KEY)
				return 0;
			bpf_probe_read_kernel(s->pkey.data, dl, e->path);
			if (!uw_dirc_same(e, gen, mnt, dentry, root_dentry))
				return 0;
			UW_OPAQUE(dl);
			s->pkey.data[dl & UW_PK_MASK] = '/';
			if (state == UW_PM_NAME && !cached) {
				dr.w[0] = dr.w[1] = 0;
				__u32 exact = uw_dir_rules(s, slot, dl, &dr);
				uw_prules_keep(e, &dr, exact, pgen, mnt, dentry, root_dentry, gen);
				if (!exact) {
					full = 0;
					uw_rs_or(&rs, &dr);
				}
			}
			if (full) {
				__u32 at = dl + 1;
				UW_OPAQUE(at);
				UW_OPAQUE(raw_len);
				bpf_probe_read_kernel(&s->pkey.data[at & UW_PK_MASK], raw_len & UW_PK_MASK, &s->tbuf[8]);
				s->pkey.data[(at + raw_len) & UW_PK_MASK] = 0;
				uw_paths_or(s, slot, at + raw_len + 1, &rs);
			}
		}
	}
	uw_rs_and(&rs, &st->who);
	__u32 rule = uw_first_rule(&rs);
	if (!rule || !uw_rs_has(&sl->ignore, rule - 1))
		return 0;
	if (relative)	/* its directory was found in the cache */
		s->n.dirc_hits += 1;
	return rule;
}

/* Entry: the stash first (so that nothing the entry was called with lives across the walk of a rename's
 * destination after it: the tracepoint mode's one entry program for every call is then verified once, not
 * once per call), the policy's pre-match (it loops: before that walk) of a rename's destination, or of the
 * source when the policy has ignore rules, the policy's rules for who, an ignore rule's verdict where it can be
 * had without the record, and only then the process's record sent once (looked up in procs: no walk) and the
 * clock: an ignored deletion reads neither. */
static __always_inline struct uw_stash *uw_enter2(__s32 dirfd, const char *uptr, __u32 op, __u32 rename_flags,
						  __s32 dst_dirfd, const char *dst_uptr)
{
	struct uw_stash *st = uw_stash_get(BPF_LOCAL_STORAGE_GET_F_CREATE);
	__u32 zero = 0;
	struct uw_scratch *s = scratch.lookup(&zero);
	if (!st || !s)
		return 0;
	st->uptr = uptr;
	st->dirfd = dirfd;
	st->op = op;
	st->replaced = 0;
	st->rename_flags = rename_flags;
	st->dst_uptr = dst_uptr;
	st->dst_dirfd = dst_dirfd;
	st->dst_undecided = 1;
	st->gen = 0;
	st->flags = 0;
	st->ignored = 0;
	st->pm.state = UW_PM_UNDECIDED;
	__builtin_memset(&st->v, 0, sizeof(st->v));
#ifdef UW_LSM
	st->lsm.rule = 0;
	st->lsm.decided = 0;
#endif
	__u32 slot = 0;
	struct uw_policy_slot *sl = uw_policy_slot(&slot);
	if (sl && (dst_uptr || (sl->ignore.w[0] | sl->ignore.w[1])))
		uw_prematch(s, slot, sl->uses, dst_uptr ? dst_uptr : uptr, &st->pm);
	void *task = (void *)bpf_get_current_task_btf();
	struct uw_rule_set exe_except;
	struct uw_proc *seen = 0;	/* the process's procs entry, when a policy naming executables looked it up */
	__u32 exes_known = 1;
	sl = uw_policy_slot(&slot);	/* afresh: the verifier then sees one state after the pre-match */
	if (sl) {
		exes_known = uw_exe_except_known(s, task, sl, slot, &exe_except, &seen);
		uw_policy_who(sl, slot, op, task, &exe_except, &st->who);
		st->slot = slot;
		st->uses = sl->uses;
		st->gen = sl->gen;
		__u32 rule = dst_uptr || !exes_known ? 0 : uw_entry_ignore(s, sl, slot, st, task);
		if (rule) {
#ifdef UW_LSM
			st->ignored = rule;	/* unless a block rule stops it after all: the exit says */
#else
			uw_policy_count(slot, rule);
			st->op = 0;
			return 0;
#endif
		}
	}
	__u32 unknown = uw_proc_enter(s, task, st, sl, slot, seen, &exe_except);
	st->flags = unknown;
	if (sl) {
		if (!exes_known)	/* the process's entry made just now: its executable's except set */
			uw_policy_who(sl, slot, op, task, &exe_except, &st->who);
		/* an executable the kernel does not know: a policy that names executables is left to user space */
		if (unknown && (sl->uses & UW_USES_EXES))
			st->gen = sl->gen | UW_GEN_USER;
	}
	st->ts_ns = bpf_ktime_get_ns();
	return st;
}

static __always_inline int uw_enter(__s32 dirfd, const char *uptr, __u32 op)
{
	uw_enter2(dirfd, uptr, op, 0, UW_AT_FDCWD, 0);
	return 0;
}

/* The path argument read into the record, by way of the stack when it is shorter than UW_RAW_SHORT bytes: the
 * kernel checks every copy from user memory against its destination (hardened usercopy), and a destination on the
 * stack passes at once, while a map value (the record's buffer) is looked up as heap memory, which cost more than
 * the copy of a short path and the stores below. A longer path is read again, whole, into the record. Only where
 * the program's stack has the room (the exit's). */
#define UW_RAW_SHORT 128
static __always_inline long uw_read_raw_short_first(struct uw_scratch *s, const char *uptr)
{
	__u64 buf[UW_RAW_SHORT / 8] = {};
	long n = bpf_probe_read_user_str(buf, sizeof(buf), uptr);
	if (n <= 0)
		return n;
	if (n >= UW_RAW_SHORT)	/* the whole buffer: the path may be longer */
		return bpf_probe_read_user_str(s->data, UW_PATH_MAX, uptr);
#pragma unroll
	for (int i = 0; i < UW_RAW_SHORT / 8; i++)
		*(__u64 *)&s->data[i * 8] = buf[i];
	return n;
}

/* The path argument `uptr` into the record: its raw bytes, with raw_len and flags set. `ret` is the call's
 * result, or 0 at entry. `short_first`: uw_read_raw_short_first() (a constant: the exit's, whose stack has room). */
static __always_inline void uw_put_raw(struct uw_scratch *s, const char *uptr, long ret, int short_first)
{
	struct uw_event *ev = &s->ev;
	__u32 flags = 0;
	long n = short_first ? uw_read_raw_short_first(s, uptr) : bpf_probe_read_user_str(s->data, UW_PATH_MAX, uptr);
	__u32 raw_len = 0;
	if (n <= 0) {
		flags |= UW_F_RAW_UNREADABLE;
	} else {
		raw_len = (n - 1) & UW_MASK;
		if (n == UW_PATH_MAX && ret == -UW_ENAMETOOLONG)
			flags |= UW_F_RAW_TRUNCATED;
	}
	ev->raw_len = raw_len;
	ev->flags |= flags;
}

/* The process's mount namespace, and UW_F_CHROOT when its root is not that namespace's root: user space maps the
 * path to where it is on the host through that namespace's mount table (agent/placement/). The namespace's root
 * mount is usually not the root the processes see: the real root filesystem is mounted on top of it (the host's
 * on the initial rootfs, a container's pivoted root), so the root counts as the namespace's when it is the root
 * of a mount that sits, through mounts each on the root of the one below, on the namespace's root mount. */
#define UW_ROOT_STACK 4
static __always_inline void *uw_mnt_ns(void *task)
{
	return UW_LD(UW_LD(task, OFF_TASK_NSPROXY, void *), OFF_NSPROXY_MNT_NS, void *);
}

static __always_inline __u32 uw_chroot(void *ns, void *fs)
{
	void *ns_root = UW_LD(ns, OFF_MNT_NS_ROOT, void *);	/* struct mount * */
	void *vfs = UW_LD(fs, OFF_FS_STRUCT_ROOT + OFF_PATH_MNT, void *);
	if (UW_LD(fs, OFF_FS_STRUCT_ROOT + OFF_PATH_DENTRY, void *) != UW_LD(vfs, OFF_VFSMOUNT_MNT_ROOT, void *))
		return UW_F_CHROOT;	/* a directory inside a filesystem */
	void *m = vfs - OFF_MOUNT_MNT;
#pragma unroll
	for (int i = 0; i < UW_ROOT_STACK; i++) {
		if (m == ns_root)
			return 0;
		void *parent = uw_ptr(m, OFF_MOUNT_MNT_PARENT);	/* probe reads: m is computed from a member */
		if (parent == m ||
		    uw_ptr(m, OFF_MOUNT_MNT_MOUNTPOINT) != uw_ptr(parent, OFF_MOUNT_MNT + OFF_VFSMOUNT_MNT_ROOT))
			break;
		m = parent;
	}
	return m != ns_root ? UW_F_CHROOT : 0;	/* a mount elsewhere in the tree */
}

/* The answer is kept in the thread's stash with what it depends on (the namespace, the root, and walk.h's
 * generation, which every mount change bumps), so a thread's deletions after its first pay no probe read for it. */
static __always_inline void uw_put_mnt_ns(struct uw_event *ev, void *task, void *fs, struct uw_stash *st)
{
	void *ns = uw_mnt_ns(task);
	if (!ns)
		return;
	ev->mnt_ns = UW_LD(ns, OFF_MNT_NS_INUM, __u32);
	void *root_mnt = UW_LD(fs, OFF_FS_STRUCT_ROOT + OFF_PATH_MNT, void *);
	void *root_dentry = UW_LD(fs, OFF_FS_STRUCT_ROOT + OFF_PATH_DENTRY, void *);
	__u32 zero = 0;
	struct uw_dirc_ctl *c = dirc_ctl.lookup(&zero);
	__u64 gen = c ? UW_RELOAD(c->gen) : 0;
	if (c && c->on && st->root_ns == ns && st->root_mnt == root_mnt && st->root_dentry == root_dentry &&
	    st->root_gen == gen) {
		ev->flags |= st->root_chroot;
		ev->root_mnt_id = st->root_mnt_id;
		return;
	}
	__u32 chroot = uw_chroot(ns, fs);
	__u32 id = uw_u32(root_mnt - OFF_MOUNT_MNT, OFF_MOUNT_MNT_ID);
	ev->flags |= chroot;
	ev->root_mnt_id = id;
	st->root_mnt_id = id;
	st->root_ns = ns;
	st->root_mnt = root_mnt;
	st->root_dentry = root_dentry;
	st->root_gen = gen;
	st->root_chroot = chroot;
}

/* After uw_put_raw(): for a relative path, the directory it is relative to, with dir_len and flags set. */
static __always_inline void uw_put_dir(struct uw_scratch *s, __s32 dirfd, void *task, void *fs)
{
	struct uw_event *ev = &s->ev;
	__u32 flags = 0;
	/* read from the record, not from a register the policy's pre-match may have narrowed on some paths: the
	 * walk below is then verified once, not once per way through the pre-match */
	__u32 raw_len = UW_RELOAD(ev->raw_len);
	s->dirc_at = 0;
	if (raw_len > 0 && s->data[0] != '/') {
		void *mnt = 0, *dentry = 0;
		uw_base_dir(task, fs, dirfd, &mnt, &dentry);
		if (mnt && dentry)
			ev->dir_len = uw_put_dir_path(s, raw_len, mnt, dentry, fs, &flags);
		else
			flags |= UW_F_DIR_UNRESOLVED;
	}
	ev->flags |= flags;
}

/* A rename's destination, sent at entry as a record of its own (UW_KIND_RENAME_TO) that user space joins to
 * the rename's record by thread and entry time: each program then walks one path at most, which keeps it
 * within the verifier's budget (two walks in one program exceed it). The policy rules the destination matches
 * go to the stash, for the exit to decide on the whole rename. */
static __always_inline void uw_send_rename_to(__s32 dirfd, const char *uptr)
{
	__u32 zero = 0;
	struct uw_scratch *s = scratch.lookup(&zero);
	struct uw_stash *st = uw_stash_get(0);
	if (!s || !st)
		return;
	void *task = (void *)bpf_get_current_task_btf();
	uw_header(&s->ev, task, UW_KIND_RENAME_TO);
	s->ev.ts_ns = st->ts_ns;
	s->ev.op = UW_OP_RENAME;
	s->ev.dirfd = dirfd;
	uw_put_raw(s, uptr, 0, 0);
	uw_put_dir(s, dirfd, task, UW_LD(task, OFF_TASK_FS, void *));
	uw_output(s);
	if (!st->gen)
		return;
	struct uw_rule_set rs;
	if (uw_policy_path(s, st->slot, st->uses, &st->pm, &rs) < 0)
		return;
	uw_rs_and(&rs, &st->who);
	st->dst_rules = rs;
	st->dst_undecided = 0;
}

/* For a one-name argument whose directory walk.h's cache holds (s->dirc_at): the rules of its path, from the
 * slot's rules of "D/" (uw_entry_ignore() keeps them there too), computed from the record's directory when the
 * slot has none for this policy yet. 1 when `out` holds them; 0 when the directory holds an exact path entry or
 * the slot is not the record's any more, and uw_policy_path() builds the whole key. */
static __always_inline int uw_exit_dir_rules(struct uw_scratch *s, struct uw_policy_slot *sl, __u32 slot,
					     const struct uw_prematch *src, struct uw_rule_set *out)
{
	__u32 raw_len = s->ev.raw_len;
	if (src->state != UW_PM_NAME || src->raw_len != raw_len || !(sl->uses & UW_USES_PATHS) || !s->dirc_at ||
	    (s->ev.flags & (UW_F_DIR_UNRESOLVED | UW_F_DIR_TRUNCATED | UW_F_RAW_TRUNCATED)))
		return 0;
	__u32 idx = s->dirc_idx;
	struct uw_dirc_entry *e = dirc.lookup(&idx);
	if (!e)
		return 0;
	__u64 gen = s->dirc_gen;
	void *dentry = (void *)s->dirc_key, *mnt = (void *)s->dirc_mnt, *root_dentry = (void *)s->dirc_root;
	__u32 pgen = sl->gen;
	struct uw_rule_set dr = e->prules;
	__u32 exact = e->pexact;
	if (!uw_prules_for(e, pgen, mnt, dentry, root_dentry, gen)) {
		__u32 dl = s->ev.dir_len;
		if (dl + 2 > UW_POLICY_KEY)
			return 0;
		UW_OPAQUE(dl);
		UW_OPAQUE(raw_len);
		bpf_probe_read_kernel(s->pkey.data, dl & UW_PK_MASK, &s->data[raw_len & UW_MASK]);
		s->pkey.data[dl & UW_PK_MASK] = '/';
		dr.w[0] = dr.w[1] = 0;
		exact = uw_dir_rules(s, slot, dl, &dr);
		if (!uw_dirc_same(e, gen, mnt, dentry, root_dentry))
			return 0;
		uw_prules_keep(e, &dr, exact, pgen, mnt, dentry, root_dentry, gen);
	} else if (!uw_dirc_same(e, gen, mnt, dentry, root_dentry) ||
		   !uw_prules_for(e, pgen, mnt, dentry, root_dentry, gen)) {
		return 0;
	}
	if (exact)
		return 0;
	*out = src->rules;
	uw_rs_or(out, &dr);
	return 1;
}

/* The rule that decides the deletion in s, or 0; UW_POLICY_UNDECIDED when user space must decide. A rename is
 * ignored only when both its names are; otherwise a rule on its source decides, else one on a destination it
 * destroyed (replaced, or exchanged). */
static __always_inline __u32 uw_decide(struct uw_scratch *s, struct uw_policy_slot *sl, struct uw_stash *st,
				       const struct uw_prematch *src)
{
	struct uw_rule_set rs;
	if (!uw_exit_dir_rules(s, sl, st->slot, src, &rs) && uw_policy_path(s, st->slot, sl->uses, src, &rs) < 0)
		return UW_POLICY_UNDECIDED;
	uw_rs_and(&rs, &st->who);
	__u32 rule = uw_first_rule(&rs);
	if (st->op != UW_OP_RENAME)
		return rule;
	if (st->dst_undecided)
		return UW_POLICY_UNDECIDED;
	__u32 dst_rule = uw_first_rule(&st->dst_rules);
	int src_ignored = rule && uw_rs_has(&sl->ignore, rule - 1);
	int dst_ignored = dst_rule && uw_rs_has(&sl->ignore, dst_rule - 1);
	if (src_ignored && dst_ignored)
		return rule;
	if (rule && !src_ignored)
		return rule;
	if (dst_rule && !dst_ignored && (st->replaced || (st->rename_flags & UW_RENAME_EXCHANGE)))
		return dst_rule;
	return 0;
}

/* A deletion's record out, once the policy has kept it: who made it and its mount namespace are read only now,
 * so that an ignored deletion pays for neither. `st` is the thread's stash (the mount namespace's answer is kept
 * there). */
static __always_inline void uw_deliver(struct uw_scratch *s, struct uw_stash *st)
{
	void *task = (void *)bpf_get_current_task_btf();
	uw_who(&s->ev, task, UW_KIND_DELETION);
	uw_put_mnt_ns(&s->ev, task, UW_LD(task, OFF_TASK_FS, void *), st);
	uw_output(s);
}

/* After the walk: the policy's verdict, then the record out (or not, when ignored). Everything is looked up
 * afresh from map memory, so that the verifier sees one state here whichever way the walk ended, instead of
 * checking what follows once per way out of the walk; only the stash is not (`st`, the same on every way: a
 * second task storage lookup cost more than the rest of the record's delivery). */
static __always_inline int uw_finish(struct uw_stash *copy, struct uw_stash *st)
{
	__u32 zero = 0;
	struct uw_scratch *s = scratch.lookup(&zero);
	if (!s)
		return 0;
#ifdef UW_LSM
	if (copy->lsm.rule && s->ev.result == -UW_EPERM) {	/* a block rule stopped it (enforce.h) */
		s->ev.policy = copy->lsm.rule;
		s->ev.action = UW_ACTION_BLOCKED;
		s->ev.policy_gen = copy->lsm.gen;
		uw_deliver(s, st);
		return 0;
	}
#endif
	if (copy->gen) {
		__u32 slot = 0;
		struct uw_policy_slot *sl = uw_policy_slot(&slot);
		s->ev.policy_gen = copy->gen;
		__u32 rule = UW_POLICY_UNDECIDED;
		if (!sl || sl->gen != copy->gen) {	/* a reload came between entry and exit */
			s->ev.flags |= UW_F_POLICY_USER;
		} else if ((rule = uw_lsm_decided(copy) ? uw_lsm_any(copy) : uw_decide(s, sl, copy, &s->src)) ==
			   UW_POLICY_UNDECIDED) {
			s->ev.flags |= UW_F_POLICY_USER;
		} else if (rule && uw_rs_has(&sl->ignore, rule - 1)) {
			uw_policy_count(copy->slot, rule);
			return 0;	/* ignored: no record */
		} else if (rule) {
			s->ev.policy = rule;
			s->ev.action = UW_ACTION_WOULD_BLOCK;
		}
	}
	uw_deliver(s, st);
	return 0;
}

static __always_inline int uw_exit(long ret)
{
	struct uw_stash *st = uw_stash_get(0);
	if (!st || !st->op)
		return 0;
	struct uw_stash copy = *st;
	st->op = 0;
#ifdef UW_LSM
	if (copy.ignored && !copy.lsm.rule) {	/* uw_entry_ignore()'s verdict, and no block rule stopped it */
		uw_policy_count(copy.slot, copy.ignored);
		return 0;
	}
#endif
#if UW_MODE == UW_MODE_TRACEPOINT
	if (copy.op == UW_OP_RENAME) {
		__u32 tid = (__u32)bpf_get_current_pid_tgid();
		struct uw_victim *found = rename_replaced.lookup(&tid);
		if (found) {
			copy.replaced = 1;
			copy.v = *found;
			rename_replaced.delete(&tid);
		}
	}
#endif
	if (ret != 0)
		copy.replaced = 0;	/* a failed rename replaced nothing */
	else if (copy.op != UW_OP_UNLINK)
		uw_dirc_bump(0);	/* a directory may have moved or gone: walk.h's cache starts again */

	__u32 zero = 0;
	struct uw_scratch *s = scratch.lookup(&zero);
	if (!s)
		return 0;
#ifdef UW_LSM
	if (copy.lsm.fast) {	/* the thread's checks decided without the scratch: counted here, where it is at hand */
		s->n.lsm_hits += copy.lsm.fast;
		st->lsm.fast = 0;
	}
#endif
	void *task = (void *)bpf_get_current_task_btf();
	void *fs = UW_LD(task, OFF_TASK_FS, void *);

	struct uw_event *ev = &s->ev;
	uw_clear(ev);	/* who made it: uw_deliver(), once the policy has kept it */
	ev->ts_ns = copy.ts_ns;
	ev->op = copy.op;
	ev->result = (__s32)ret;
	ev->dirfd = copy.dirfd;

	ev->flags = copy.flags | copy.v.flag;
	ev->nlink = copy.v.nlink;
	ev->dev = copy.v.dev;
	ev->ino = copy.v.ino;
	ev->size = copy.v.size;
	ev->mode = copy.v.mode;
	if (copy.op == UW_OP_RENAME) {
		ev->rename_flags = copy.rename_flags;
		if (copy.replaced)
			ev->flags |= UW_F_REPLACED;
	}
	uw_put_raw(s, copy.uptr, ret, 1);
	/* the policy's pre-match of the argument, before the walk (it loops: see policy.h) */
	s->src.state = UW_PM_UNDECIDED;
	/* the policy's fields are read from the stash (map memory), not from `copy` on the stack: a branch on a
	 * stack value splits the verifier's states, and the walk after would be verified once per split */
	if (UW_RELOAD(st->gen) && !uw_lsm_decided(st))
		uw_prematch(s, UW_RELOAD(st->slot), UW_RELOAD(st->uses), 0, &s->src);
	uw_put_dir(s, copy.dirfd, task, fs);
	return uw_finish(&copy, st);
}

/* A rename replaces its destination when the destination's dentry is positive as the kernel renames (an
 * exchange swaps the two and destroys nothing: its flag says so instead). */
static __always_inline void uw_rename_target(void *new_dentry)
{
	struct uw_stash *st = uw_stash_get(0);
	if (!st || st->op != UW_OP_RENAME || (st->rename_flags & UW_RENAME_EXCHANGE) || !new_dentry)
		return;
	void *inode = uw_ptr(new_dentry, OFF_DENTRY_D_INODE);
	if (!inode)
		return;
	st->replaced = 1;
	uw_read_victim(inode, &st->v);
}

/* The inode an unlink or rmdir of the stashed call is about to destroy (the first one the call reaches: an
 * overlayfs deletion reaches the layer's own afterwards). */
static __always_inline void uw_victim(void *dentry, __u32 op)
{
	struct uw_stash *st = uw_stash_get(0);
	if (!st || st->op != op || st->v.flag || !dentry)
		return;
	void *inode = uw_ptr(dentry, OFF_DENTRY_D_INODE);
	if (inode)
		uw_read_victim(inode, &st->v);
}

static __always_inline int uw_rename_enter(int olddfd, const char *from, int newdfd, const char *to,
					   __u32 flags)
{
	uw_enter2(olddfd, from, UW_OP_RENAME, flags, newdfd, to);
	uw_send_rename_to(newdfd, to);
	return 0;
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

/* Every exec, in every mode: the process's entry in procs (its command line, then its executable's path: the
 * walk last). A deletion only looks it up, so the walk is paid once per exec and verified in one program. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
	__u32 zero = 0;
	struct uw_scratch *s = scratch.lookup(&zero);
	if (!s)
		return 0;
	void *task = (void *)bpf_get_current_task_btf();
	void *mm = UW_LD(task, OFF_TASK_MM, void *);
	if (!mm)
		return 0;
	struct uw_proc *p = &s->proc;
	p->gen = 0;
	p->sent = 0;
	p->flags = 0;
	p->exe_except.w[0] = 0;
	p->exe_except.w[1] = 0;
	__u64 from = UW_LD(mm, OFF_MM_ARG_START, __u64);
	__u64 n = UW_LD(mm, OFF_MM_ARG_END, __u64) - from;
	if (n > UW_ARGS_MAX) {
		n = UW_ARGS_MAX;
		p->flags = UW_F_ARGS_TRUNCATED;
	}
	if (bpf_probe_read_user(p->args, n, (void *)from) < 0)
		n = 0;
	p->args_len = n;
	void *exe = UW_LD(mm, OFF_MM_EXE_FILE, void *);
	p->exe_file = (__u64)exe;
	p->exe_len = 0;
	if (exe) {
		__u32 flags = 0;
		__u32 len = uw_put_path(s, 0, UW_LD(exe, OFF_FILE_F_PATH + OFF_PATH_MNT, void *),
					UW_LD(exe, OFF_FILE_F_PATH + OFF_PATH_DENTRY, void *),
					UW_LD(task, OFF_TASK_FS, void *), &flags);
		if (flags)
			s->proc.flags |= UW_F_EXE_TRUNCATED;	/* the walk hit its depth or buffer limit */
		if (len >= UW_EXE_MAX) {
			s->proc.flags |= UW_F_EXE_TRUNCATED;
			len = UW_EXE_MAX - 1;
		}
		s->proc.exe_len = len;
		bpf_probe_read_kernel(s->proc.exe, len & (UW_EXE_MAX - 1), s->data);
	}
	struct uw_proc_key key;
	uw_proc_key(task, &key);
	procs.update(&key, &s->proc);
	/* the first exec in a mount namespace: user space opens its mount table while this process runs (a short-lived
	 * container may be gone by its first deletion's record), so it wakes up for this one record */
	void *ns = uw_mnt_ns(task);
	__u32 inum = ns ? UW_LD(ns, OFF_MNT_NS_INUM, __u32) : 0;
	__u8 one = 1;
	if (inum && !mnt_seen.lookup(&inum)) {
		mnt_seen.update(&inum, &one);
		uw_header(&s->ev, task, UW_KIND_MNT_NS);
		s->ev.mnt_ns = inum;
		uw_output_flags(s, BPF_RB_FORCE_WAKEUP);
	}
	return 0;
}

/* The last thread of a process exits: its entries go (the seeded one too, if it was never used). */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
	void *task = (void *)bpf_get_current_task_btf();
	if (UW_LD(UW_LD(task, OFF_TASK_SIGNAL, void *), OFF_SIGNAL_STRUCT_LIVE, int) != 0)
		return 0;
	struct uw_proc_key key;
	uw_proc_key(task, &key);
	procs.delete(&key);
	uw_proc_seed_key(task, &key);
	procs.delete(&key);
	return 0;
}

/* walk.h's directory cache, in every mode: a mount, umount, move_mount, pivot_root, unshare or setns returned
 * (program.py attaches this to their syscalls:sys_exit_* tracepoints) */
int uw_dirc_changed(void *args)
{
	uw_dirc_bump(0);
	return 0;
}

#if UW_MODE == UW_MODE_TRACEPOINT

/* walk.h's directory cache: io_uring's renames and unlinks pass no syscall tracepoint, so its io_uring_submit_req
 * (io_uring_submit_sqe before 6.2) and io_uring_complete tracepoints (their records all start with ctx and req) bump
 * the generation and keep the cache off for a while: a completion is not always traced (IOSQE_CQE_SKIP_SUCCESS) */
#define UW_IORING_OP_RENAMEAT 35
#define UW_IORING_OP_UNLINKAT 36
struct uw_uring_args {
	__u64 common;
	void *ctx;
	void *req;
};
int uw_dirc_uring(struct uw_uring_args *args)
{
	__u8 op = 0;
	bpf_probe_read_kernel(&op, 1, args->req + OFF_IO_KIOCB_OPCODE);
	if (op == UW_IORING_OP_RENAMEAT || op == UW_IORING_OP_UNLINKAT)
		uw_dirc_bump(UW_DIRC_URING_NS);
	return 0;
}

/* One program for every syscalls:sys_exit_* tracepoint it needs (they share one format: the common
 * fields, int __syscall_nr at 8, long ret at 16), attached six times by program.py: the verifier checks it
 * once instead of six times, which is most of the start-up time. */
struct uw_sys_exit_args {
	__u64 common;
	__s64 syscall_nr;
	long ret;
};
int uw_sys_exit(struct uw_sys_exit_args *args) { return uw_exit(args->ret); }

/* ext4_unlink_enter(struct inode *parent, struct dentry *dentry), raw: the one tracepoint that shows the inode an
 * unlink destroys, on ext4 (below an overlayfs, the layer's inode). program.py attaches it where it exists. */
int uw_ext4_unlink(struct bpf_raw_tracepoint_args *ctx)
{
	uw_victim((void *)ctx->args[1], UW_OP_UNLINK);
	return 0;
}

#include "rename_lookup.h"

/* Likewise one program for every syscalls:sys_enter_* tracepoint it needs, telling the calls apart by number.
 * Their records share the common fields, int __syscall_nr at 8, then each argument in 8 bytes from 16, but not
 * their length, and the kernel refuses to attach a program that loads past a record's end: the shortest has
 * one argument, so the others are probe reads. The arguments go to the stash before the one walk
 * (uw_enter2), so the verifier checks it once for all six calls. */
struct uw_sys_enter_args {
	__u64 common;
	__s64 syscall_nr;
	__u64 a0;
};
int uw_sys_enter(struct uw_sys_enter_args *args)
{
	__s32 dirfd = UW_AT_FDCWD, dst_dirfd = UW_AT_FDCWD;
	const char *uptr = (const char *)args->a0, *dst = 0;
	__u32 op = UW_OP_RENAME, flags = 0;
	__u64 a[4] = {};	/* the arguments after the first */
	long nr = args->syscall_nr;
	switch (nr) {
#ifdef __NR_unlink
	case __NR_unlink:
		op = UW_OP_UNLINK;
		break;
#endif
#ifdef __NR_rmdir
	case __NR_rmdir:
		op = UW_OP_RMDIR;
		break;
#endif
#ifdef __NR_rename
	case __NR_rename:
		bpf_probe_read_kernel(a, 8, (void *)args + 24);
		dst = (const char *)a[0];
		break;
#endif
	case __NR_unlinkat:
		bpf_probe_read_kernel(a, 16, (void *)args + 24);
		dirfd = (__s32)args->a0;
		uptr = (const char *)a[0];
		op = (a[1] & UW_AT_REMOVEDIR) ? UW_OP_RMDIR : UW_OP_UNLINK;
		break;
	case __NR_renameat:
	case __NR_renameat2:
		bpf_probe_read_kernel(a, nr == __NR_renameat2 ? 32 : 24, (void *)args + 24);
		dirfd = (__s32)args->a0;
		uptr = (const char *)a[0];
		dst_dirfd = (__s32)a[1];
		dst = (const char *)a[2];
		flags = (__u32)a[3];
		break;
	default:
		return 0;
	}
	struct uw_stash *st = uw_enter2(dirfd, uptr, op, flags, dst_dirfd, dst);
	if (!st || UW_RELOAD(st->op) != UW_OP_RENAME)
		return 0;
	uw_send_rename_to(UW_RELOAD(st->dst_dirfd), UW_RELOAD(st->dst_uptr));
	return uw_rename_lookup(args, st);
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
	return uw_rename_enter(olddfd, uw_uptr(from), newdfd, uw_uptr(to), flags);
}
int uw_vfs_rename_entry(struct pt_regs *ctx, struct renamedata *rd)
{
	uw_rename_target(uw_ptr((void *)rd, OFF_RENAMEDATA_NEW_DENTRY));
	return 0;
}
/* vfs_unlink(idmap, dir, dentry, delegated_inode) and vfs_rmdir(idmap, dir, dentry): the third argument since
 * 5.12 (a user_namespace before 6.3, an idmap after) */
int uw_vfs_unlink_entry(struct pt_regs *ctx, void *idmap, void *dir, void *dentry)
{
	uw_victim(dentry, UW_OP_UNLINK);
	return 0;
}
int uw_vfs_rmdir_entry(struct pt_regs *ctx, void *idmap, void *dir, void *dentry)
{
	uw_victim(dentry, UW_OP_RMDIR);
	return 0;
}
int uw_exit_ret(struct pt_regs *ctx) { return uw_exit(PT_REGS_RC(ctx)); }
/* vfs_rename returned: every rename, the kernel's own (nfsd, ksmbd, overlayfs) too, for walk.h's cache */
int uw_vfs_changed_ret(struct pt_regs *ctx)
{
	if (PT_REGS_RC(ctx) == 0)
		uw_dirc_bump(0);
	return 0;
}

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
	return uw_rename_enter(olddfd, (const char *)uw_ptr((void *)from, OFF_FILENAME_UPTR), newdfd,
			       (const char *)uw_ptr((void *)to, OFF_FILENAME_UPTR), flags);
}
KFUNC_PROBE(vfs_rename, struct renamedata *rd)
{
	uw_rename_target(uw_ptr((void *)rd, OFF_RENAMEDATA_NEW_DENTRY));
	return 0;
}
KFUNC_PROBE(vfs_unlink, void *idmap, void *dir, void *dentry)
{
	uw_victim(dentry, UW_OP_UNLINK);
	return 0;
}
KFUNC_PROBE(vfs_rmdir, void *idmap, void *dir, void *dentry)
{
	uw_victim(dentry, UW_OP_RMDIR);
	return 0;
}
KRETFUNC_PROBE(do_renameat2, int olddfd, struct filename *from, int newdfd, struct filename *to,
	       unsigned int flags, int ret)
{
	return uw_exit(ret);
}
/* vfs_rename returned: every rename, the kernel's own (nfsd, ksmbd, overlayfs) too, for walk.h's cache */
KRETFUNC_PROBE(vfs_rename, struct renamedata *rd, int ret)
{
	if (ret == 0)
		uw_dirc_bump(0);
	return 0;
}

#endif

#ifdef UW_LSM
#include "enforce.h"
#endif

/* The kernel-to-user record of unlinkwatch in every attach mode (tracepoint, kprobe, fentry): the one definition. */
/* SPDX-License-Identifier: Apache-2.0 */
/* The file name is the design card's. unlink.bpf.c writes these records; the decoder (agent/decode.py) reads
 * this file's struct, enums and #defines at start-up, and a test checks its layout with the C compiler. */
#ifndef UNLINKWATCH_KPROBE_H
#define UNLINKWATCH_KPROBE_H

#define UW_PATH_MAX 4096	/* PATH_MAX, including the NUL */
#define UW_NAME_MAX 255		/* NAME_MAX: one path component */
#define UW_COMM_LEN 16

enum uw_kind {
	UW_KIND_DELETION = 1,	  /* a deletion or rename; data = raw path (a rename's source), then the resolved
				   * directory */
	UW_KIND_CGROUP_MKDIR = 2, /* a new cgroup2 directory; cgroup_id, data = its path */
	UW_KIND_EXE = 3,	  /* a process, or one of its ancestors, before the process's first deletion's
				   * record (struct uw_proc, sent once per entry of procs, and again when its parent
				   * changed): data = its executable's path (raw_len), then its command line as
				   * exec'd, each argument NUL-terminated (dir_len); pid, proc_start_ns, ppid,
				   * parent_start_ns, ns_pid, ns_level and comm are the process's (uid, gid and
				   * cgroup_id are 0); flags UW_F_EXE_TRUNCATED, UW_F_ARGS_TRUNCATED,
				   * UW_F_PROC_UNKNOWN (no exec seen: pid, comm and parent only) */
	UW_KIND_RENAME_TO = 4,	  /* a rename's destination, sent at entry: data as for a deletion; the rename's
				   * own record (same tid) follows it in the ring */
	UW_KIND_MNT_NS = 5,	  /* a process exec'd in a mount namespace not announced before (mnt_ns, pid; no
				   * data), sent with a wake-up: user space opens the namespace's mount table through
				   * the process while it runs (agent/placement/) */
};

enum uw_op {
	UW_OP_UNLINK = 1,
	UW_OP_RMDIR = 2,
	UW_OP_RENAME = 3, /* every rename: the source moved away (UW_F_REPLACED: the destination destroyed) */
};

/* flags */
#define UW_F_RAW_TRUNCATED (1U << 0)	/* the raw path did not fit UW_PATH_MAX */
#define UW_F_DIR_TRUNCATED (1U << 1)	/* the directory walk hit its depth or buffer limit */
#define UW_F_DIR_UNRESOLVED (1U << 2)	/* relative path whose directory could not be read */
#define UW_F_RAW_UNREADABLE (1U << 3)	/* the path argument could not be read */
#define UW_F_REPLACED (1U << 4)		/* rename: an existing destination was replaced (destroyed) */
#define UW_F_POLICY_USER (1U << 5)	/* the node policy could not be decided in the kernel (a path with "." or
					 * "..", "//", a trailing "/", or longer than UW_POLICY_KEY): user space decides */

#define UW_F_PROC_UNKNOWN (1U << 6)	/* the kernel has no record of the deleting process (it exec'd before the agent
					 * started and was not seeded, or its entry was evicted): exe and args unknown */
#define UW_F_EXE_TRUNCATED (1U << 7)	/* UW_KIND_EXE: the executable's path was cut at UW_EXE_MAX - 1 bytes */
#define UW_F_ARGS_TRUNCATED (1U << 8)	/* UW_KIND_EXE: the command line was cut at UW_ARGS_MAX bytes */
#define UW_F_CHROOT (1U << 9)		/* the process's root is not its mount namespace's root (chroot, pivot) */
#define UW_F_VICTIM (1U << 10)		/* nlink, dev, ino, size and mode are set: the kernel read the inode the
					 * deletion destroys (agent/bpf/unlink.bpf.c says where, per attach mode) */

/* the node policy's verdict on a deletion (agent/bpf/policy.h) */
enum uw_action {
	UW_ACTION_ALLOWED = 0,		/* no rule, or an ignore rule that could not drop it (a rename half-ignored) */
	UW_ACTION_WOULD_BLOCK = 1,	/* an audit rule, or a block rule where the kernel cannot enforce */
	UW_ACTION_BLOCKED = 2,		/* a block rule enforced: the deletion failed with EPERM */
};

/* Variable length: this header, then raw_len bytes of the raw path argument, then dir_len bytes
 * of the directory a relative path is relative to ("/a/b", empty for "/"), in the process's view. */
struct uw_event {
	__u64 ts_ns;		/* bpf_ktime_get_ns() at entry (CLOCK_MONOTONIC) */
	__u64 cgroup_id;	/* bpf_get_current_cgroup_id(): cgroup2 inode number */
	__u64 proc_start_ns;	/* task->start_time of the thread group leader: with pid, a process key */
	__u64 parent_start_ns;	/* the same of the parent (real_parent's group leader): with ppid, its key */
	__u32 kind;		/* enum uw_kind */
	__u32 op;		/* enum uw_op */
	__u32 pid;		/* host tgid */
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__s32 result;		/* 0 or -errno */
	__s32 dirfd;		/* as passed; AT_FDCWD is -100 */
	__u32 flags;		/* UW_F_* */
	__u32 raw_len;
	__u32 dir_len;
	__u32 rename_flags;	/* renameat2 flags as passed: RENAME_NOREPLACE 1, EXCHANGE 2, WHITEOUT 4 */
	__u32 ns_pid;		/* UW_KIND_EXE: the process's pid in its own pid namespace (1: a container's first
				 * process, or init); 0 in other records */
	__u32 ns_level;		/* UW_KIND_EXE: the depth of that namespace (0: the host's) */
	__u32 mnt_ns;		/* UW_KIND_DELETION: the process's mount namespace (the inode of /proc/PID/ns/mnt), whose
				 * mount table user space maps `path` to the host with (agent/placement/) */
	/* UW_F_VICTIM: what the deletion destroys (a rename: the destination it replaces), read from its inode in
	 * the kernel before the deletion; zero otherwise */
	__u32 nlink;		/* i_nlink */
	__u32 dev;		/* i_sb->s_dev: major << 20 | minor */
	__u64 ino;		/* i_ino */
	__s64 size;		/* i_size in bytes */
	__u16 mode;		/* i_mode: the file type and permissions */
	__u16 reserved;
	__u16 policy;		/* 1 + the index of the node-policy rule that decided, 0 for none */
	__u8 action;		/* enum uw_action */
	__u8 policy_gen;	/* which loaded policy `policy` indexes (reloads bump it) */
	char comm[UW_COMM_LEN];
	__u32 root_mnt_id;	/* UW_KIND_DELETION: the mount id (mountinfo's first field) of the process's root: user space
				 * maps `path` through the mount table only when that table's root is this mount (runc's init
				 * deletes before its pivot_root, whose table is read after it) */
	__u32 reserved2;
};

/* The node policy's maps (agent/bpf/policy.h fills nothing; agent/policy.py writes them). Two slots: a reload
 * writes the inactive one and then flips uw_policy_state.active, so no deletion sees half a policy. */
#define UW_POLICY_KEY 255	/* path bytes in a policy key (LPM keys hold at most 256 bytes: 1 slot + 255) */
#define UW_POLICY_RULES 128	/* rules per policy: one bit each in a rule set */
#define UW_POLICY_WORDS 2	/* UW_POLICY_RULES / 64 */
#define UW_POLICY_DIRS 2	/* policy_paths keys with slot | UW_POLICY_DIRS: "D/" + "\x01" for each directory D/ that
				 * holds an exact entry; no other lookup reaches them (policy.h, uw_entry_ignore) */
#define UW_POLICY_DIR_MARK 1	/* the byte after such a directory's "/" */

enum uw_rule_action {
	UW_RULE_IGNORE = 1,
	UW_RULE_AUDIT = 2,
	UW_RULE_BLOCK = 3,
};

/* The LPM key of policy_paths (the path + NUL for an exact path, the bytes of a prefix), policy_names (the final
 * name reversed, then "/" for an exact name; a reversed suffix alone) and policy_exes (exe path + NUL). */
struct uw_policy_key {
	__u32 prefixlen;	/* in bits, counting the slot byte */
	__u8 slot;
	char data[UW_POLICY_KEY];
};

/* policy_name_heads[slot]: a filter before policy_names. `len` is the length of the shortest key in policy_names (at
 * most 8; 0: no filter) and bit (head * UW_NAME_HEAD_MUL) >> (64 - UW_NAME_HEAD_BITS) is set for the first `len`
 * bytes (`head`, little-endian, zero above) of every key; a name whose key has no such head, or is shorter than
 * `len`, matches no entry, so its key is neither built nor looked up (agent/policy/image.py, name_heads). */
#define UW_NAME_HEAD_BITS 16
#define UW_NAME_HEAD_WORDS 1024	/* (1 << UW_NAME_HEAD_BITS) / 64 */
#define UW_NAME_HEAD_MUL 11400714819323198485ULL	/* 2^64 divided by the golden ratio (Fibonacci hashing) */

struct uw_name_heads {
	__u32 len;
	__u32 pad;
	__u64 w[UW_NAME_HEAD_WORDS];
};

struct uw_policy_comm {
	__u8 slot;
	char comm[UW_COMM_LEN];	/* NUL-padded, as bpf_get_current_comm() gives it */
};

struct uw_rule_set {
	__u64 w[UW_POLICY_WORDS];	/* bit i: rule i (file order: the lowest set bit decides) */
};

/* uw_policy_slot.uses: which maps the policy has entries in, so that a deletion skips the lookups it cannot
 * need */
#define UW_USES_PATHS (1U << 0)		/* policy_paths */
#define UW_USES_NAMES (1U << 1)		/* policy_names */
#define UW_USES_COMMS (1U << 2)		/* policy_comms */
#define UW_USES_EXES (1U << 3)		/* policy_exes */
#define UW_USES_CGROUPS (1U << 4)	/* some rule does not cover every process: policy_cgroups decides */

struct uw_policy_slot {
	__u32 nrules;		/* 0: no policy, nothing is matched */
	__u32 gen;		/* the policy's generation (uw_event.policy_gen is its low byte) */
	__u32 uses;		/* UW_USES_* */
	__u32 pad;
	struct uw_rule_set unknown;	/* rules for a cgroup the agent has not classified yet */
	struct uw_rule_set ops[4];	/* rules per enum uw_op (index 0 unused) */
	struct uw_rule_set ignore;	/* rules whose action is ignore */
	struct uw_rule_set block;	/* rules whose action is block */
};

struct uw_policy_state {
	__u32 active;		/* the slot in force */
	__u32 pad;
	struct uw_policy_slot slot[2];
};

/* policy_cgroups: cgroup id -> the rules that apply to its processes, per slot */
struct uw_policy_cgroup {
	struct uw_rule_set slot[2];
};

/* procs: what the kernel knows of a process, from its exec (sched_process_exec), from /proc for a process that
 * exec'd before the agent started (agent/probe/procseed.py), or inherited by a child forked without exec from
 * the nearest ancestor with the same executable file. The deletion path only looks it up. */
#define UW_EXE_MAX 512		/* bytes of an executable's path kept per process (less one) */
#define UW_ARGS_MAX 1024	/* bytes of a command line kept per process */
#define UW_ANCESTRY 8		/* ancestors a deletion's lineage reaches (the kernel sends one more: where it
				 * leaves the process's pid namespace, so that user space can tell an exec session) */
#define UW_PROC_SEEDED (1ULL << 63)	/* uw_proc_key.start of an entry seeded from /proc: with the process's start
					 * (task->start_boottime) in clock ticks, as /proc/PID/stat gives it */

struct uw_proc_key {
	__u32 tgid;
	__u32 pad;
	__u64 start;		/* the thread group leader's task->start_time (ns); or UW_PROC_SEEDED | ticks */
};

struct uw_proc {
	__u64 exe_file;		/* mm->exe_file at exec, as an identity only (0 when seeded): a forked child
				 * inherits the entry of an ancestor only when its executable file is the same */
	__u64 pstart;		/* the parent's key (ptgid, pstart) when the record was last sent: a deletion
				 * whose parent differs sends the lineage again */
	__u32 ptgid;
	__u32 pad;
	__u32 gen;		/* the policy generation exe_except was computed for (0: not yet) */
	__u32 sent;		/* its UW_KIND_EXE record has gone to user space */
	__u32 flags;		/* UW_F_EXE_TRUNCATED, UW_F_ARGS_TRUNCATED; UW_F_PROC_UNKNOWN: a placeholder (no exec
				 * seen), so that what is known of the process (pid, comm, parent) is sent once */
	__u16 exe_len;
	__u16 args_len;
	struct uw_rule_set exe_except;	/* the policy rules whose except names this executable */
	char exe[UW_EXE_MAX];	/* the path as the process sees it (its root), not NUL-terminated */
	char args[UW_ARGS_MAX];	/* argv as exec'd, each argument NUL-terminated */
};

#endif /* UNLINKWATCH_KPROBE_H */

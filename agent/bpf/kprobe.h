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
	UW_KIND_EXE = 3,	  /* first deletion of a process: data = its executable's path */
	UW_KIND_RENAME_TO = 4,	  /* a rename's destination, sent at entry: data as for a deletion; the rename's
				   * own record (same tid) follows it in the ring */
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

/* Variable length: this header, then raw_len bytes of the raw path argument, then dir_len bytes
 * of the directory a relative path is relative to ("/a/b", empty for "/"), in the process's view. */
struct uw_event {
	__u64 ts_ns;		/* bpf_ktime_get_ns() at entry (CLOCK_MONOTONIC) */
	__u64 cgroup_id;	/* bpf_get_current_cgroup_id(): cgroup2 inode number */
	__u64 proc_start_ns;	/* task->start_time of the thread group leader: with pid, a process key */
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
	__u32 pad;
	char comm[UW_COMM_LEN];
};

#endif /* UNLINKWATCH_KPROBE_H */

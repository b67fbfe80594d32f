/* SPDX-License-Identifier: Apache-2.0 */
/* The node policy in the kernel: which rule (if any) decides a deletion, before its record reaches the ring
 * buffer, so that an ignored deletion costs no record. Included by unlink.bpf.c after struct uw_scratch; the
 * maps' records are in kprobe.h, written by agent/policy/kernel.py.
 *
 * A rule matches when all of these hold (each a set of rules, one bit per rule, intersected):
 *   the path:   policy_paths, an LPM trie of exact paths ("/etc/shadow" + NUL) and prefixes ("/x/" for everything below /x),
 *               or policy_names, an LPM trie of final names reversed (an exact name "eman/", a suffix such as
 *               "*.pem" as "mep."); each entry's set already holds the rules of the shorter entries it
 *               extends, so the one longest match is the whole answer; policy_name_heads, a filter of the
 *               names' first bytes, spares most names their reversed key and lookup (uw_name_maybe);
 *   the op:     uw_policy_slot.ops[op];
 *   the cgroup: policy_cgroups[cgroup id] (host processes, selected pods) or uw_policy_slot.unknown;
 *   not except: policy_comms[comm] and policy_exes[exe] (the exe's set is cached per process in procs).
 * The lowest set bit is the rule that decides (file order).
 *
 * Where the work happens, for the verifier: everything that loops (the canonical-form check and the reversed
 * final name of the raw argument) runs at entry before any walk, where the verifier sees one state; after a
 * walk only the directory's key is built and looked up (no loop), since what follows a walk is verified once
 * per way out of it. A path the kernel cannot put in canonical form cheaply (".", "..", "//", a trailing "/",
 * an argument of UW_POLICY_KEY - 1 bytes or more, an unresolved directory) is flagged UW_F_POLICY_USER and
 * user space decides with the same rules. */
#ifndef UNLINKWATCH_POLICY_H
#define UNLINKWATCH_POLICY_H

#define UW_PK_MASK 255		/* index mask for a policy key's data (UW_PK_ROOM bytes of room after it) */
#define UW_TB_MASK 511		/* index mask for uw_scratch.tbuf */
#define UW_POLICY_UNDECIDED 0xffff
#define UW_ONES 0x0101010101010101ULL
#define UW_LOW7 0x7F7F7F7F7F7F7F7FULL

BPF_ARRAY(policy_state, struct uw_policy_state, 1);
BPF_LPM_TRIE(policy_paths, struct uw_policy_key, struct uw_rule_set, 16384);
BPF_LPM_TRIE(policy_names, struct uw_policy_key, struct uw_rule_set, 4096);
BPF_ARRAY(policy_name_heads, struct uw_name_heads, 2);
BPF_LPM_TRIE(policy_exes, struct uw_policy_key, struct uw_rule_set, 4096);
BPF_HASH(policy_comms, struct uw_policy_comm, struct uw_rule_set, 4096);
BPF_HASH(policy_cgroups, __u64, struct uw_policy_cgroup, 65536);
/* deletions dropped by each ignore rule: slot * UW_POLICY_RULES + rule */
BPF_PERCPU_ARRAY(policy_filtered, __u64, 2 * UW_POLICY_RULES);

static __always_inline struct uw_policy_slot *uw_policy_slot(__u32 *slot)
{
	__u32 zero = 0;
	struct uw_policy_state *ps = policy_state.lookup(&zero);
	if (!ps)
		return 0;
	__u32 active = ps->active & 1;
	*slot = active;
	struct uw_policy_slot *sl = &ps->slot[active];
	return sl->nrules ? sl : 0;
}

static __always_inline void uw_rs_and(struct uw_rule_set *a, const struct uw_rule_set *b)
{
#pragma unroll
	for (int i = 0; i < UW_POLICY_WORDS; i++)
		a->w[i] &= b->w[i];
}

static __always_inline void uw_rs_or(struct uw_rule_set *a, const struct uw_rule_set *b)
{
#pragma unroll
	for (int i = 0; i < UW_POLICY_WORDS; i++)
		a->w[i] |= b->w[i];
}

static __always_inline void uw_rs_andnot(struct uw_rule_set *a, const struct uw_rule_set *b)
{
#pragma unroll
	for (int i = 0; i < UW_POLICY_WORDS; i++)
		a->w[i] &= ~b->w[i];
}

/* The index of the lowest set bit of a non-zero word: the population count of the bits below it, without a
 * branch (each branch on an unknown value doubles what the verifier walks). */
static __always_inline __u32 uw_lowest_bit(__u64 x)
{
	__u64 v = (x & -x) - 1;
	v = v - ((v >> 1) & 0x5555555555555555ULL);
	v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
	v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
	return (v * UW_ONES) >> 56;
}

/* 1 + the first rule in `rs`, or 0 when it is empty. */
static __always_inline __u32 uw_first_rule(const struct uw_rule_set *rs)
{
#pragma unroll
	for (int i = 0; i < UW_POLICY_WORDS; i++)
		if (rs->w[i])
			return 1 + i * 64 + uw_lowest_bit(rs->w[i]);
	return 0;
}

static __always_inline int uw_rs_has(const struct uw_rule_set *rs, __u32 rule)
{
	return (rs->w[(rule >> 6) & (UW_POLICY_WORDS - 1)] >> (rule & 63)) & 1;
}

/* The set bits of an 8-bit mask, without a branch. */
static __always_inline __u32 uw_count8(__u32 x)
{
	x = x - ((x >> 1) & 0x55);
	x = (x & 0x33) + ((x >> 2) & 0x33);
	return (x + (x >> 4)) & 0x0f;
}

/* Bit i set when byte i of w (little-endian) is c: exact, without a branch (SWAR zero-byte test, then the
 * eight high bits gathered by one multiplication). */
static __always_inline __u32 uw_bytes_eq(__u64 w, __u64 c)
{
	__u64 x = w ^ (UW_ONES * c);
	__u64 y = ~(((x & UW_LOW7) + UW_LOW7) | x | UW_LOW7);
	return (((y >> 7) * 0x0102040810204080ULL) >> 56) & 0xff;
}

/* policy_paths looked up with the first `len` bytes of s->pkey.data under `slot`; the rules found ORed into rs. */
static __always_inline void uw_paths_or(struct uw_scratch *s, __u32 slot, __u32 len, struct uw_rule_set *rs)
{
	s->pkey.prefixlen = 8 + len * 8;
	s->pkey.slot = slot;
	struct uw_rule_set *p = policy_paths.lookup(&s->pkey);
	if (p)
		uw_rs_or(rs, p);
}

/* With "D/" in s->pkey.data (dl bytes of the directory D, then "/"): the rules of that prefix ORed into dr, and
 * whether D holds an exact path entry (agent/policy/image.py's marker "D/\x01" under slot | UW_POLICY_DIRS). Where
 * it holds none, dr are the rules of every name in D. */
static __always_inline int uw_dir_rules(struct uw_scratch *s, __u32 slot, __u32 dl, struct uw_rule_set *dr)
{
	uw_paths_or(s, slot, dl + 1, dr);
	s->pkey.data[(dl + 1) & UW_PK_MASK] = UW_POLICY_DIR_MARK;
	s->pkey.prefixlen = 8 + (dl + 2) * 8;
	s->pkey.slot = slot | UW_POLICY_DIRS;
	return policy_paths.lookup(&s->pkey) != 0;
}

/* Whether a final name of raw_len bytes may match a policy_names entry: `word` holds the eight bytes that end at
 * the name's end, as they lie in memory (little-endian), "/" before the name; the first bytes of its key (the
 * name reversed, then "/") are tested against the slot's filter (kprobe.h, struct uw_name_heads). 0 only when no
 * entry can match. */
static __always_inline int uw_name_maybe_word(__u32 slot, __u32 raw_len, __u64 word)
{
	__u32 idx = slot & 1;
	struct uw_name_heads *h = policy_name_heads.lookup(&idx);
	if (!h)
		return 1;
	__u32 n = h->len;
	if (n == 0 || n > 8)
		return 1;
	if (raw_len + 1 < n)
		return 0;	/* a key shorter than every entry */
	__u64 head = __builtin_bswap64(word) & (~0ULL >> (64 - 8 * n));
	__u32 bit = (head * UW_NAME_HEAD_MUL) >> (64 - UW_NAME_HEAD_BITS);
	return (h->w[(bit >> 6) & (UW_NAME_HEAD_WORDS - 1)] >> (bit & 63)) & 1;
}

/* uw_name_maybe_word() for the final name of the argument in s->tbuf (raw_len bytes at 8, "/" at 7). */
static __always_inline int uw_name_maybe(struct uw_scratch *s, __u32 slot, __u32 raw_len)
{
	return uw_name_maybe_word(slot, raw_len, *(__u64 *)&s->tbuf[raw_len & UW_PK_MASK]);
}

/* With the argument in s->tbuf as uw_prematch() lays it out (raw_len bytes at 8, "/" before and after): the rules
 * of the policy_names entry its final name matches, into rules (left as they are when none can match). */
static __always_inline void uw_names_rules(struct uw_scratch *s, __u32 slot, __u32 raw_len,
					   struct uw_rule_set *rules)
{
	if (!uw_name_maybe(s, slot, raw_len))
		return;
	/* the argument reversed, word by word (its final name first), then "/" */
	for (__u32 k = 0; k < UW_POLICY_KEY / 8 + 1; k++) {
		__u32 d = k * 8;
		if (d >= raw_len)
			break;
		__u32 o = raw_len - d;
		UW_OPAQUE(o);
		UW_OPAQUE(d);
		__u64 w = *(__u64 *)&s->tbuf[o & UW_TB_MASK];
		*(__u64 *)&s->nkey.data[d & UW_PK_MASK] = __builtin_bswap64(w);
	}
	s->nkey.data[raw_len & UW_PK_MASK] = '/';
	s->nkey.prefixlen = 8 + (raw_len + 1) * 8;
	s->nkey.slot = slot;
	struct uw_rule_set *nm = policy_names.lookup(&s->nkey);
	if (nm)
		*rules = *nm;
}

/* Before any walk: the raw argument (from user memory at `uptr`, or when that is 0 the record's own, read by
 * uw_put_raw()) into s->tbuf, checked for canonical form, and the rules its final name (and, if it is
 * absolute, its whole path) match, into pm. Both loops go eight bytes at a time with no branch in their
 * bodies. */
static __always_inline void uw_prematch(struct uw_scratch *s, __u32 slot, __u32 uses, const char *uptr,
					struct uw_prematch *pm)
{
	pm->rules.w[0] = 0;
	pm->rules.w[1] = 0;
	pm->raw_len = 0;
	pm->state = UW_PM_UNDECIDED;
	/* tbuf: 8 bytes of room ending in "/" (the key's "/" after a name shorter than a word: uw_name_maybe), the
	 * argument, "/", zeros */
	long n;
	if (uptr) {
		n = bpf_probe_read_user_str(&s->tbuf[8], UW_POLICY_KEY, uptr);
	} else {
		n = s->ev.raw_len + 1;
		if (s->ev.flags & (UW_F_RAW_UNREADABLE | UW_F_RAW_TRUNCATED))
			n = 0;
	}
	if (n <= 1 || n >= UW_POLICY_KEY)
		return;		/* unreadable, empty, or too long to tell from a cut one */
	__u32 raw_len = n - 1;
	UW_OPAQUE(raw_len);	/* the masks below must stay in the code: they are the verifier's bounds */
	if (!uptr)
		bpf_probe_read_kernel(&s->tbuf[8], raw_len & UW_PK_MASK, s->data);
	s->tbuf[7] = '/';
	*(__u64 *)&s->tbuf[(8 + raw_len) & UW_TB_MASK] = '/';
	*(__u64 *)&s->tbuf[(16 + raw_len) & UW_TB_MASK] = 0;

	/* canonical: ("/" for a relative argument) + argument + "/" holds no "//", "/./" nor "/../". Bits 0-2 of
	 * the masks are the last three bytes of the previous word, bits 3-10 this word's. */
	int absolute = s->tbuf[8] == '/';
	__u32 prev_s = absolute ? 0 : 4, prev_d = 0, bad = 0, slashes = 0;
	for (__u32 k = 0; k < UW_POLICY_KEY / 8 + 1; k++) {
		__u32 o = k * 8;
		if (o > raw_len)
			break;
		UW_OPAQUE(o);
		__u64 w = *(__u64 *)&s->tbuf[(8 + o) & UW_TB_MASK];
		__u32 sl = uw_bytes_eq(w, '/');
		slashes += uw_count8(sl);	/* the argument's, and the "/" after it: the words hold nothing else */
		__u32 S = prev_s | (sl << 3);
		__u32 D = prev_d | (uw_bytes_eq(w, '.') << 3);
		bad |= (S & (S >> 1)) | (S & (D >> 1) & (S >> 2)) | (S & (D >> 1) & (D >> 2) & (S >> 3));
		prev_s = (S >> 8) & 7;
		prev_d = (D >> 8) & 7;
	}
	if (bad)
		return;

	if (uses & UW_USES_NAMES)
		uw_names_rules(s, slot, raw_len, &pm->rules);
	pm->raw_len = raw_len;
	if (!absolute) {
		pm->state = slashes == 1 ? UW_PM_NAME : UW_PM_RELATIVE;
		return;
	}
	pm->state = UW_PM_ABSOLUTE;
	if (!(uses & UW_USES_PATHS))
		return;
	bpf_probe_read_kernel(s->pkey.data, raw_len & UW_PK_MASK, &s->tbuf[8]);
	s->pkey.data[raw_len & UW_PK_MASK] = 0;
	uw_paths_or(s, slot, raw_len + 1, &pm->rules);
}

/* After the walk, from the record in s (raw argument, then its directory): the rules the whole path matches,
 * completing pm, or -1 when the kernel cannot decide. No loop here. */
static __always_inline int uw_policy_path(struct uw_scratch *s, __u32 slot, __u32 uses,
					  const struct uw_prematch *pm, struct uw_rule_set *out)
{
	__u32 raw_len = s->ev.raw_len;
	if (pm->state == UW_PM_UNDECIDED || pm->raw_len != raw_len ||
	    (s->ev.flags & (UW_F_DIR_UNRESOLVED | UW_F_DIR_TRUNCATED | UW_F_RAW_TRUNCATED)))
		return -1;
	*out = pm->rules;
	if (pm->state == UW_PM_ABSOLUTE || !(uses & UW_USES_PATHS))
		return 0;
	__u32 dl = s->ev.dir_len;
	if (dl > UW_POLICY_KEY - 1)
		dl = UW_POLICY_KEY - 1;
	UW_OPAQUE(dl);
	UW_OPAQUE(raw_len);
	bpf_probe_read_kernel(s->pkey.data, dl & UW_PK_MASK, &s->data[raw_len & UW_MASK]);
	s->pkey.data[dl & UW_PK_MASK] = '/';
	__u32 at = dl + 1;
	if (at < UW_POLICY_KEY) {
		__u32 n = UW_POLICY_KEY - at;
		if (n > raw_len)
			n = raw_len;
		UW_OPAQUE(n);
		UW_OPAQUE(at);
		bpf_probe_read_kernel(&s->pkey.data[at & UW_PK_MASK], n & UW_PK_MASK, s->data);
		at += n;
		if (at < UW_POLICY_KEY) {
			s->pkey.data[at & UW_PK_MASK] = 0;
			at++;
		}
	}
	uw_paths_or(s, slot, at, out);
	return 0;
}

/* The rules that apply to a deletion apart from its path: its op, its cgroup, not excepted by comm or exe. */
static __always_inline void uw_policy_who(struct uw_policy_slot *sl, __u32 slot, __u32 op, void *task,
					  const struct uw_rule_set *exe_except, struct uw_rule_set *rs)
{
	*rs = sl->ops[op & 3];
	if (sl->uses & UW_USES_CGROUPS) {
		__u64 cgid = uw_cgroup_id(task);
		struct uw_policy_cgroup *cg = policy_cgroups.lookup(&cgid);
		uw_rs_and(rs, cg ? &cg->slot[slot & 1] : &sl->unknown);
	}
	if (sl->uses & UW_USES_COMMS) {
		struct uw_policy_comm ck = {};
		ck.slot = slot;
		bpf_get_current_comm(ck.comm, sizeof(ck.comm));
		struct uw_rule_set *c = policy_comms.lookup(&ck);
		if (c)
			uw_rs_andnot(rs, c);
	}
	uw_rs_andnot(rs, exe_except);
}

/* The exe's except set, from its path in s->data (an EXE record just built): exact paths only. */
static __always_inline void uw_policy_exe(struct uw_scratch *s, __u32 slot, struct uw_proc *p,
					  struct uw_rule_set *out)
{
	__u32 len = p->exe_len;
	out->w[0] = 0;
	out->w[1] = 0;
	if (len == 0 || len >= UW_POLICY_KEY || p->flags & UW_F_EXE_TRUNCATED)
		return;
	UW_OPAQUE(len);
	bpf_probe_read_kernel(s->pkey.data, len & UW_PK_MASK, p->exe);
	s->pkey.data[len & UW_PK_MASK] = 0;
	s->pkey.prefixlen = 8 + (len + 1) * 8;
	s->pkey.slot = slot;
	struct uw_rule_set *e = policy_exes.lookup(&s->pkey);
	if (e)
		*out = *e;
}

static __always_inline void uw_policy_count(__u32 slot, __u32 rule)
{
	__u32 idx = (slot & 1) * UW_POLICY_RULES + rule - 1;
	__u64 *n = policy_filtered.lookup(&idx);
	if (n)
		*n += 1;
}

#endif /* UNLINKWATCH_POLICY_H */

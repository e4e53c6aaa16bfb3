/* Named prepared statements in the kernel (docs/kernel-path.md, "Named statements in the
 * kernel"). User space prepares each statement on a server under a name exactly as long
 * as the name its client uses, derived from (length, index) by pgs_stmt_name below and
 * by serverNameFor in src/session/statement-names.ts (the two must agree). Two maps,
 * filled by user space only with what PostgreSQL confirmed:
 *   stmt_names:   (client id, client's name) -> index of its statement's server name
 *   stmt_servers: (server id, name length, index) -> 1: that server has it prepared
 * The verdict looks each Bind/Describe(S) name up against the server actually bound, and
 * overwrites the client's name with the server's, same length, with bpf_skb_store_bytes. */
#ifndef PGS_STATEMENTS_H
#define PGS_STATEMENTS_H

/* Statement names of one skb (from inspect.h): offset, and length (low 6 bits) plus, once
 * resolved, the index of the server name above them (packed: the verdict's stack is
 * shared with the framing and inspection state, 512 bytes in all). */
struct pgs_names {
	__u32 n;
	__u32 off[PGS_STMT_NAMES_PER_SKB];
	__u32 len[PGS_STMT_NAMES_PER_SKB];
};

#define PGS_STMT_LEN(v) ((v) & 63)
#define PGS_STMT_IDX(v) ((v) >> 6)

/* Not preallocated: entries come and go with statements; a deleted one is freed only
 * after an RCU grace period, so a verdict holding it reads no other statement's value. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PGS_STMT_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pgs_stmt_key);
	__type(value, __u32);
} stmt_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PGS_STMT_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pgs_stmt_ref);
	__type(value, __u32);
} stmt_servers SEC(".maps");

/* Resolves every name of nm for client cid on server sid: 0 when the server has each
 * statement (nm->idx filled), else the fallback reason. Reads only; nothing is written to
 * the skb until the verdict has committed to redirecting it (pgs_stmt_rewrite). */
/* The length of name i of nm, 0 when it is out of range (1..PGS_STMT_NAME_MAX). */
static __always_inline __u32 pgs_stmt_len_at(const struct pgs_names *nm, __u32 i)
{
	__u32 len = PGS_STMT_LEN(nm->len[i]);

	return len >= 1 && len <= PGS_STMT_NAME_MAX ? len : 0;
}

__attribute__((noinline)) int pgs_stmt_resolve(struct __sk_buff *skb, __u32 cid, __u32 sid,
					       struct pgs_names *nm)
{
	struct pgs_stmt_key key;
	struct pgs_stmt_ref ref;
	__u32 n, *idx, *has;

	if (!skb || !nm)
		return PGS_ST_FB_UNHANDLED;
	n = nm->n;
	if (n > PGS_STMT_NAMES_PER_SKB)
		return PGS_ST_FB_NAMES_PER_SKB;
	for (__u32 i = 0; i < n && i < PGS_STMT_NAMES_PER_SKB; i++) {
		__u32 len = pgs_stmt_len_at(nm, i);

		if (!len)
			return PGS_ST_FB_NAME_TOO_LONG;
		__builtin_memset(&key, 0, sizeof(key));
		key.conn = cid;
		if (bpf_skb_load_bytes(skb, nm->off[i], key.name, len))
			return PGS_ST_FB_UNHANDLED;
		idx = bpf_map_lookup_elem(&stmt_names, &key);
		if (!idx)
			return PGS_ST_FB_STATEMENT_MISSING;
		if (*idx >= PGS_STMT_IDX_LIMIT)
			return PGS_ST_FB_NAME_TOO_SHORT; /* PGS_STMT_NO_NAME */
		ref.conn = sid;
		ref.len = len;
		ref.idx = *idx;
		has = bpf_map_lookup_elem(&stmt_servers, &ref);
		if (!has)
			return PGS_ST_FB_STATEMENT_MISSING;
		nm->len[i] = len | (ref.idx << 6);
	}
	return 0;
}

/* The server-side name of length len and index idx: first byte a digit (no unquoted SQL
 * identifier starts with one, so SQL PREPARE can't take it), then base-62 digits, least
 * significant first, padded with '0'. 10 * 62^(len-1) names per length. */
static __always_inline void pgs_stmt_name(__u8 *out, __u32 len, __u32 idx)
{
	out[0] = '0' + idx % 10;
	idx /= 10;
	for (__u32 k = 1; k < PGS_STMT_NAME_MAX; k++) {
		if (k >= len)
			break;
		__u32 d = idx % 62;

		out[k] = d < 10 ? '0' + d : d < 36 ? 'A' + d - 10 : 'a' + d - 36;
		idx /= 62;
	}
}

/* Writes the server names over the client's, in place (same length). Returns how many. */
__attribute__((noinline)) int pgs_stmt_rewrite(struct __sk_buff *skb, struct pgs_names *nm)
{
	__u8 name[64];
	__u32 n, done = 0;

	if (!skb || !nm)
		return 0;
	n = nm->n;
	for (__u32 i = 0; i < n && i < PGS_STMT_NAMES_PER_SKB; i++) {
		__u32 len = pgs_stmt_len_at(nm, i);

		if (!len)
			break;
		pgs_stmt_name(name, len, PGS_STMT_IDX(nm->len[i]));
		if (bpf_skb_store_bytes(skb, nm->off[i], name, len, 0))
			break;
		done++;
	}
	return done;
}

#endif

/* Which client messages the kernel must not forward itself (docs/kernel-path.md, "Named
 * prepared statements and session state"): a named Parse and a Close of a named statement
 * (user space owns the client's statement names), and SQL that may change session state (user space tracks, pins or rejects
 * it). A second pass over an skb that parse.h has framed; like parse.h it is shared by the
 * sk_skb verdict and the SEC("tc") test wrapper. Conservative: whatever it cannot see
 * wholly inside the skb, or cannot lex simply, goes to user space (punting is always
 * safe, forwarding state-changing SQL is a leak). */
#ifndef PGS_INSPECT_H
#define PGS_INSPECT_H

#define PGS_SQL_MAX 4096 /* longer SQL text is punted unread */

enum pgs_insp_step {
	I_HDR = 0,   /* at a message header */
	I_PORTAL,    /* Bind: in the portal name */
	I_STMT,      /* Bind: at the statement name */
	I_PNAME,     /* Parse: at the statement name */
	I_LEX,       /* Parse/Query: in the SQL text */
	I_SNAME,     /* Bind/Describe: in a statement name the verdict may rewrite (statements.h) */
};

enum pgs_lex_state {
	LX_NORMAL = 0,
	LX_WORD,        /* identifier or keyword, hashed */
	LX_NUMBER,      /* digits, $n */
	LX_SQ,          /* '...' */
	LX_SQ_END,      /* a quote inside '...': the end, or the first of '' */
	LX_DQ,          /* "..." (hashed as a word) */
	LX_DQ_END,
	LX_DASH,        /* '-': maybe a -- comment */
	LX_LINE,        /* -- comment */
	LX_SLASH,       /* '/': maybe a block comment */
	LX_BLOCK,       /* block comment */
	LX_BLOCK_STAR,
	LX_BLOCK_SLASH,
	LX_DOLLAR,      /* '$' outside a word: $n, or dollar quoting (punted) */
};

/* The word lists and their FNV-1a 64 hashes: generated from session-state-words.json,
 * the one list both data paths use (scripts/gen-session-words.mjs). */
#include "session-words.h"

/* The inspector's state lives in a per-CPU map value (insp_state), not on the stack:
 * the verifier tracks stack values exactly, and with a lexer state that changes every
 * step, bpf_loop's callback never converged ("sequence of 8193 jumps is too complex").
 * Map values are unknown to it, so every step starts from the same verifier state. */
struct pgs_ictx {
	__u64 hash;       /* FNV-1a 64 of the lowercased word so far */
	__u32 len;
	__u32 pos;
	__u32 end;        /* end of the current message */
	__u32 text;       /* where the current SQL text started */
	__u32 step;       /* enum pgs_insp_step */
	__u32 lx;         /* enum pgs_lex_state */
	__u32 verdict;    /* 0 or the fallback reason (PGS_ST_FB_*) */
	__u8 stmt_start;  /* the next word is the first of a statement */
	__u8 pad[3];
	/* statement names of Bind and Describe(S), for statements.h */
	__u32 name_start;
	__u32 nnames;
	__u32 name_off[PGS_STMT_NAMES_PER_SKB];
	__u32 name_len[PGS_STMT_NAMES_PER_SKB];
};

/* The inspector's map (with maps.h's): key 0 the verdict, 1 the tc test wrapper. */
struct pgs_insp_slot {
	struct pgs_ictx x;
	__u64 gen;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct pgs_insp_slot);
} insp_state SEC(".maps");

/* bpf_loop's context: constant across steps */
struct pgs_lctx {
	struct __sk_buff *skb;
	__u32 key;
};

static __always_inline int pgs_interesting(__u8 type)
{
	return type == 'P' || type == 'B' || type == 'D' || type == 'C' || type == 'Q';
}

static __always_inline void pgs_word_end(struct pgs_ictx *x)
{
	if (pgs_state_word(x->hash) || (x->stmt_start && pgs_state_command(x->hash)))
		x->verdict = PGS_ST_FB_SESSION_STATE;
	x->stmt_start = 0;
}

static __always_inline void pgs_hash(struct pgs_ictx *x, __u8 c)
{
	x->hash = (x->hash ^ c) * PGS_FNV_PRIME;
}

/* One byte of SQL text (0 = its end). */
static __always_inline void pgs_lex(struct pgs_ictx *x, __u8 b)
{
	__u8 c = (b >= 'A' && b <= 'Z') ? b + 32 : b;
	int digit = c >= '0' && c <= '9';
	int alpha = (c >= 'a' && c <= 'z') || c == '_' || c >= 0x80;

	/* states that consume the byte; the others end and leave it to LX_NORMAL below */
	switch (x->lx) {
	case LX_WORD:
		if (alpha || digit || c == '$') {
			pgs_hash(x, c);
			return;
		}
		pgs_word_end(x);
		break;
	case LX_NUMBER:
		if (alpha || digit || c == '$')
			return;
		break;
	case LX_SQ:
		if (c == '\\')
			x->verdict = PGS_ST_FB_SESSION_STATE; /* E'...' escapes: not lexed here */
		else if (c == '\'')
			x->lx = LX_SQ_END;
		return;
	case LX_SQ_END:
		if (c == '\'') {
			x->lx = LX_SQ; /* '' inside a string */
			return;
		}
		break;
	case LX_DQ:
		if (c == '"')
			x->lx = LX_DQ_END;
		else
			pgs_hash(x, c);
		return;
	case LX_DQ_END:
		if (c == '"') {
			x->verdict = PGS_ST_FB_SESSION_STATE; /* "" inside an identifier */
			return;
		}
		pgs_word_end(x);
		break;
	case LX_DASH:
		if (c == '-') {
			x->lx = LX_LINE;
			return;
		}
		x->stmt_start = 0; /* the '-' was an operator */
		break;
	case LX_LINE:
		if (c == '\n' || c == '\r')
			x->lx = LX_NORMAL;
		return;
	case LX_SLASH:
		if (c == '*') {
			x->lx = LX_BLOCK;
			return;
		}
		x->stmt_start = 0;
		break;
	case LX_BLOCK:
		if (c == '*')
			x->lx = LX_BLOCK_STAR;
		else if (c == '/')
			x->lx = LX_BLOCK_SLASH;
		return;
	case LX_BLOCK_STAR:
		if (c == '/')
			x->lx = LX_NORMAL;
		else if (c != '*')
			x->lx = LX_BLOCK;
		return;
	case LX_BLOCK_SLASH:
		if (c == '*')
			x->verdict = PGS_ST_FB_SESSION_STATE; /* nested comment: not lexed here */
		else if (c != '/')
			x->lx = LX_BLOCK;
		return;
	case LX_DOLLAR:
		if (digit) {
			x->lx = LX_NUMBER; /* $1 */
			return;
		}
		x->verdict = PGS_ST_FB_SESSION_STATE; /* dollar quoting: not lexed here */
		return;
	}
	x->lx = LX_NORMAL;
	if (alpha) {
		x->lx = LX_WORD;
		x->hash = PGS_FNV_INIT;
		pgs_hash(x, c);
		return;
	}
	if (digit) {
		x->lx = LX_NUMBER;
		x->stmt_start = 0;
		return;
	}
	switch (c) {
	case '\'':
		x->lx = LX_SQ;
		x->stmt_start = 0;
		break;
	case '"':
		x->lx = LX_DQ;
		x->hash = PGS_FNV_INIT;
		break;
	case '-':
		x->lx = LX_DASH;
		break;
	case '/':
		x->lx = LX_SLASH;
		break;
	case '$':
		x->lx = LX_DOLLAR;
		x->stmt_start = 0;
		break;
	case ';':
		x->stmt_start = 1;
		break;
	case 0: case ' ': case '\t': case '\n': case '\r': case '\f': case '\v':
		break;
	default:
		x->stmt_start = 0;
	}
}

static __always_inline void pgs_text_begin(struct pgs_ictx *x)
{
	x->step = I_LEX;
	x->text = x->pos;
	x->lx = LX_NORMAL;
	x->stmt_start = 1;
}

/* One bpf_loop step: a message header, or one byte of a name or of SQL text. */
static long pgs_inspect_step(__u32 i, void *ctx)
{
	struct pgs_lctx *l = ctx;
	struct pgs_insp_slot *slot = bpf_map_lookup_elem(&insp_state, &l->key);
	struct pgs_ictx *x;
	__u8 h[5];
	__u8 b = 0;
	__u32 mlen, body;

	if (!slot)
		return 1;
	x = &slot->x;
	if (x->verdict)
		return 1;
	if (x->pos >= x->len) {
		/* a name or SQL text runs into the next skb: it can't be seen here */
		if (x->step != I_HDR)
			x->verdict = PGS_ST_FB_SESSION_STATE;
		return 1;
	}
	if (x->step == I_HDR) {
		if (x->pos + 5 > x->len) {
			/* a header split across skbs: its message can't be seen here */
			if (bpf_skb_load_bytes(l->skb, x->pos, &b, 1) || pgs_interesting(b))
				x->verdict = PGS_ST_FB_SESSION_STATE;
			x->pos = x->len;
			return 1;
		}
		if (bpf_skb_load_bytes(l->skb, x->pos, h, 5)) {
			x->verdict = PGS_ST_FB_SESSION_STATE;
			return 1;
		}
		mlen = ((__u32)h[1] << 24) | ((__u32)h[2] << 16) | ((__u32)h[3] << 8) | h[4];
		if (mlen < 4 || mlen > 0x3fffffff) { /* parse.h reports it; punt anyway */
			x->verdict = PGS_ST_FB_SESSION_STATE;
			return 1;
		}
		body = x->pos + 5;
		x->end = x->pos + 1 + mlen;
		x->pos = body;
		switch (h[0]) {
		case 'Q':
			pgs_text_begin(x);
			return 0;
		case 'P':
			x->step = I_PNAME;
			return 0;
		case 'B':
			x->step = I_PORTAL;
			return 0;
		case 'D':
		case 'C':
			h[2] = h[0];
			/* 'S' + a statement name; portals ('P') are the client's own business */
			if (body + 2 > x->len || bpf_skb_load_bytes(l->skb, body, h, 2)) {
				x->verdict = PGS_ST_FB_SESSION_STATE;
				return 1;
			}
			if (h[0] == 'S' && h[1]) {
				/* Close changes the client's name table: user space's */
				if (h[2] == 'C') {
					x->verdict = PGS_ST_FB_STATEMENT_CLOSE;
					return 1;
				}
				x->pos = body + 1;
				x->name_start = body + 1;
				x->step = I_SNAME; /* Describe(S): the name the verdict rewrites */
				return 0;
			}
			x->pos = x->end;
			return 0;
		default:
			x->pos = x->end;
			return 0;
		}
	}
	/* SQL text 8 bytes per step where 8 are there: a step per byte (a helper call each)
	 * cost ~30 ns per byte, about 2 us for one of pgbench's statements */
	if (x->step == I_LEX && x->pos + 8 <= x->end && x->pos + 8 <= x->len &&
	    x->pos + 8 - x->text <= PGS_SQL_MAX) {
		__u64 w;

		if (bpf_skb_load_bytes(l->skb, x->pos, &w, 8)) {
			x->verdict = PGS_ST_FB_SESSION_STATE;
			return 1;
		}
#pragma clang loop unroll(full)
		for (int k = 0; k < 8; k++) {
			b = (__u8)(w >> (8 * k));
			x->pos++;
			pgs_lex(x, b);
			if (!b) {
				x->step = I_HDR;
				x->pos = x->end;
				return 0;
			}
			if (x->verdict)
				return 1;
		}
		return 0;
	}
	/* a name or the text runs past its message: malformed, or into the next skb */
	if (x->pos >= x->end || bpf_skb_load_bytes(l->skb, x->pos, &b, 1)) {
		x->verdict = PGS_ST_FB_SESSION_STATE;
		return 1;
	}
	x->pos++;
	if (x->step == I_PORTAL) {
		if (!b)
			x->step = I_STMT;
		return 0;
	}
	if (x->step == I_STMT) { /* Bind's statement name */
		if (b) {
			x->name_start = x->pos - 1;
			x->step = I_SNAME;
			return 0;
		}
		x->step = I_HDR;
		x->pos = x->end;
		return 0;
	}
	if (x->step == I_SNAME) { /* a statement name of Bind or Describe: up to its NUL */
		__u32 n = x->nnames, nlen = x->pos - 1 - x->name_start;

		if (b) {
			if (nlen >= PGS_STMT_NAME_MAX)
				x->verdict = PGS_ST_FB_NAME_TOO_LONG;
			return 0;
		}
		if (n >= PGS_STMT_NAMES_PER_SKB) {
			x->verdict = PGS_ST_FB_NAMES_PER_SKB;
			return 1;
		}
		x->name_off[n & (PGS_STMT_NAMES_PER_SKB - 1)] = x->name_start;
		x->name_len[n & (PGS_STMT_NAMES_PER_SKB - 1)] = nlen;
		x->nnames = n + 1;
		x->step = I_HDR;
		x->pos = x->end;
		return 0;
	}
	if (x->step == I_PNAME) { /* Parse's statement name, then the unnamed one's text */
		if (b)
			x->verdict = PGS_ST_FB_NAMED_STATEMENT; /* a named Parse: user space prepares */
		else
			pgs_text_begin(x);
		return 0;
	}
	/* I_LEX */
	if (x->pos - x->text > PGS_SQL_MAX) {
		x->verdict = PGS_ST_FB_SESSION_STATE;
		return 1;
	}
	pgs_lex(x, b);
	if (!b) {
		x->step = I_HDR;
		x->pos = x->end;
	}
	return 0;
}

/* Global (verified once, like pgs_frame_run): inspect skb from byte pos on, in the
 * per-CPU slot key (0 the verdict, 1 the tc wrapper: a test-run in process context can
 * be interrupted by a verdict on the same CPU). Returns 0 or the fallback reason. */
__attribute__((noinline)) int pgs_inspect_run(struct __sk_buff *skb, __u32 key, __u32 pos,
					      struct pgs_names *names)
{
	struct pgs_lctx l = { .skb = skb, .key = key };
	struct pgs_insp_slot *slot = bpf_map_lookup_elem(&insp_state, &key);
	struct pgs_ictx *x;
	__u64 gen;
	__u32 verdict;

	if (!skb || !slot || !names)
		return PGS_ST_FB_SESSION_STATE;
	x = &slot->x;
	/* a run that interrupts this one on this CPU (the verdict in softirq while a
	 * socket's backlog is processed in process context) uses the same slot: it bumps
	 * gen, and this run then punts instead of trusting a clobbered state */
	gen = __sync_fetch_and_add(&slot->gen, 1) + 1;
	__builtin_memset(x, 0, sizeof(*x));
	x->len = skb->len;
	x->pos = pos;
	if (pos < x->len) {
		/* each step eats >= 1 byte or ends the loop */
		bpf_loop(x->len - pos + 2, pgs_inspect_step, &l, 0);
		if ((x->pos < x->len || x->step != I_HDR) && !x->verdict)
			x->verdict = PGS_ST_FB_SESSION_STATE; /* bound hit: impossible */
	}
	verdict = x->verdict;
	names->n = x->nnames;
#pragma clang loop unroll(full)
	for (int i = 0; i < PGS_STMT_NAMES_PER_SKB; i++) {
		names->off[i] = x->name_off[i];
		names->len[i] = x->name_len[i] & 63;
	}
	if (*(volatile __u64 *)&slot->gen != gen)
		return PGS_ST_FB_SESSION_STATE;
	return verdict;
}

/* What the skb framed in *fc needs: 0 (the kernel may forward it), or the fallback
 * reason. Only for transaction-pool clients: a session client owns its server. */
static __always_inline __u32 pgs_inspect_skb(struct __sk_buff *skb, const struct pgs_fctx *fc,
					      __u32 key, struct pgs_names *names)
{
	names->n = 0;
	if (fc->insp_carried && pgs_interesting(fc->insp_carried))
		return PGS_ST_FB_SESSION_STATE; /* its header began in the previous skb */
	if (fc->insp_from >= fc->len)
		return 0;
	return pgs_inspect_run(skb, key, fc->insp_from, names);
}

#endif

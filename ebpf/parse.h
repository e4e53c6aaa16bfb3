/* PostgreSQL wire framing over one skb, resumable across skbs.
 * Everything is static __always_inline over struct __sk_buff * so that the same code
 * runs in the sk_skb verdict and in the SEC("tc") test wrapper (test-run can't run sk_skb). */
#ifndef PGS_PARSE_H
#define PGS_PARSE_H

#define PGS_NO_OFF 0xffffffffu

struct pgs_fctx {
	struct __sk_buff *skb;
	struct pgs_frame f; /* working copy of the socket's framing state */
	__u32 len;          /* skb->len */
	__u32 pos;          /* next byte to look at */
	__u32 base;         /* first payload byte (14 in the tc wrapper) */
	__u32 role;
	__u32 n_sync, n_query, n_func, n_z, n_param, n_msgs, n_term;
	__u32 last_sfq_end; /* pos just after the last completed Sync/Query/FunctionCall */
	__u32 x_off;        /* offset of a Terminate header, PGS_NO_OFF if none */
	__u32 hdr_start;    /* where the split header being collected started in this skb */
	__u32 n_ext_tail;   /* client: P/B/D/E/C completed after the last S/Q/F of this skb */
	__u32 n_fin_tail;   /* server: final responses after the last Z of this skb */
	__u32 n_err_tail;   /* server: ErrorResponses after the last Z of this skb */
	__u32 ext_open;     /* client: P/B/D/E/C since the last S/Q/F, the previous skbs' included */
	__u32 mixed;        /* client: non-zero if a Query/FunctionCall followed an open P/B/D/E/C */
	__u32 insp_from;    /* first header that starts in this skb (client: inspection; server:
			     * where the mirror's copy of a reply looks from) */
	__u8 insp_carried;  /* client: type of a header carried in from the previous skb */
	__u8 have_sfq;
	__u8 first_type;    /* type of a message whose header starts at base, else 0 */
	__u8 last_z;        /* status byte of the last ReadyForQuery */
	__u8 error;         /* impossible length: framing is lost */
	__u64 zbits;        /* last 8 Z statuses, newest in the low byte */
};

static __always_inline void pgs_complete(struct pgs_fctx *c, __u8 type)
{
	c->n_msgs++;
	if (c->role != PGS_ROLE_CLIENT)
		return;
	if (type == 'P' || type == 'B' || type == 'D' || type == 'E' || type == 'C') {
		c->n_ext_tail++;
		c->ext_open++;
	}
	/* After an error in an extended batch PostgreSQL skips a Query or FunctionCall up to
	 * the Sync and answers one ReadyForQuery: the kernel's count can't follow that, user
	 * space does. Branch-free on the counter (bpf_loop callback convergence, below). */
	if (type == 'Q' || type == 'F')
		c->mixed |= c->ext_open;
	if (type == 'S' || type == 'Q' || type == 'F') {
		c->n_ext_tail = 0;
		c->ext_open = 0;
		if (type == 'S')
			c->n_sync++;
		else if (type == 'Q')
			c->n_query++;
		else
			c->n_func++;
		c->have_sfq = 1;
		c->last_sfq_end = c->pos;
	}
}

/* A full header (5 bytes, 6 for a server's 'Z') is in h; it started at start. */
static __always_inline void pgs_header(struct pgs_fctx *c, const __u8 *h, __u32 start)
{
	__u8 type = h[0];
	__u32 mlen = ((__u32)h[1] << 24) | ((__u32)h[2] << 16) | ((__u32)h[3] << 8) | h[4];
	__u32 hdr = 4;

	if (start == c->base)
		c->first_type = type;
	if (mlen < 4 || mlen > 0x3fffffff) { /* as MAX_MESSAGE_LENGTH in src/protocol/constants.ts */
		c->error = 1;
		return;
	}
	if (c->role == PGS_ROLE_SERVER) {
		if (type == 'Z') {
			if (mlen < 5) {
				c->error = 1;
				return;
			}
			hdr = 5;
			c->last_z = h[5];
			/* no branch or index on a counter here: that would make it precise and
			 * bpf_loop's callback verification would never converge */
			c->zbits = (c->zbits << 8) | h[5];
			c->n_z++;
			c->n_fin_tail = 0;
			c->n_err_tail = 0;
		} else if (type == 'E') {
			c->n_err_tail++;
		} else if (type == 'S') {
			c->n_param++;
		} else if (type == '1' || type == '2' || type == '3' || type == 'n' ||
			   type == 'T' || type == 'C' || type == 'I' || type == 's') {
			/* the final answer to one P/B/C/D/E: user space needs the count when it
			 * takes a transaction over (pgs_conn.tail_answered) */
			c->n_fin_tail++;
		}
	} else if (type == 'X') {
		c->n_term++;
		if (c->x_off == PGS_NO_OFF)
			c->x_off = start;
	}
	c->f.cur_type = type;
	c->f.remaining = mlen - hdr;
}

/* Consume body bytes of the current message; complete it when they run out. */
static __always_inline void pgs_body(struct pgs_fctx *c)
{
	__u32 avail = c->len - c->pos;
	__u32 take = c->f.remaining < avail ? c->f.remaining : avail;

	c->pos += take;
	c->f.remaining -= take;
	if (c->f.remaining == 0)
		pgs_complete(c, c->f.cur_type);
}

/* Collect header bytes one at a time (a header split across skbs), outside bpf_loop. */
static __always_inline void pgs_collect(struct pgs_fctx *c)
{
	for (int i = 0; i < 6; i++) {
		__u8 b;
		__u32 n = c->f.hdr_len;
		__u32 need;

		if (c->error || c->pos >= c->len)
			return;
		if (n >= 6 || bpf_skb_load_bytes(c->skb, c->pos, &b, 1)) {
			c->error = 1;
			return;
		}
		if (n == 0)
			c->hdr_start = c->pos;
		switch (n) { /* no variable-offset stack writes in the verifier */
		case 0: c->f.hdr[0] = b; break;
		case 1: c->f.hdr[1] = b; break;
		case 2: c->f.hdr[2] = b; break;
		case 3: c->f.hdr[3] = b; break;
		case 4: c->f.hdr[4] = b; break;
		default: c->f.hdr[5] = b; break;
		}
		c->f.hdr_len = n + 1;
		c->pos++;
		need = (c->role == PGS_ROLE_SERVER && c->f.hdr[0] == 'Z') ? 6 : 5;
		if (n + 1 < need)
			continue;
		c->f.hdr_len = 0;
		/* a header carried over from an earlier skb has hdr_start PGS_NO_OFF */
		pgs_header(c, c->f.hdr, c->hdr_start);
		if (c->error)
			return;
		if (c->f.remaining)
			pgs_body(c);
		else
			pgs_complete(c, c->f.cur_type);
		return;
	}
}

/* One bpf_loop step: the rest of a body carried from the previous skb, or one whole
 * message whose header is in this skb (6 bytes loaded). Stops when < 6 bytes remain. */
static long pgs_frame_step(__u32 i, void *ctx)
{
	struct pgs_fctx *c = ctx;
	__u8 h[6];
	__u32 start = c->pos;

	if (c->error || c->pos >= c->len)
		return 1;
	if (c->f.remaining) {
		pgs_body(c);
		return 0;
	}
	if (c->pos + 6 > c->len)
		return 1;
	if (bpf_skb_load_bytes(c->skb, c->pos, h, 6)) {
		c->error = 1;
		return 1;
	}
	c->pos += (c->role == PGS_ROLE_SERVER && h[0] == 'Z') ? 6 : 5;
	pgs_header(c, h, start);
	if (c->error)
		return 1;
	if (c->f.remaining)
		pgs_body(c);
	else
		pgs_complete(c, c->f.cur_type);
	return 0;
}

/* A global (non-inlined) function is verified once, for any contents of *io; inlined
 * into the verdict, every distinct caller state re-verified the bpf_loop callback and
 * the program hit the 1M instruction limit. *io in, results out. */
__attribute__((noinline)) int pgs_frame_run(struct __sk_buff *skb, struct pgs_fctx *io)
{
	struct pgs_fctx c;

	if (!io)
		return -1;
	__builtin_memcpy(&c, io, sizeof(c));
	c.skb = skb;
	/* base comes from memory, so pos is never an exact constant to the verifier: with
	 * exact offsets a run of 5-byte messages gives ever-different states and bpf_loop's
	 * callback verification never converges ("sequence of 8193 jumps is too complex") */
	c.pos = c.base;
	c.len = skb->len;
	c.error = 0;
	c.insp_from = c.base + c.f.remaining;
	c.insp_carried = c.f.hdr_len ? c.f.hdr[0] : 0;
	if (c.len > c.base) {
		if (c.f.hdr_len) {
			pgs_collect(&c);
			c.insp_from = c.pos; /* after the carried message, or len */
		}
		/* A step eats >= 5 bytes except the first (a carried body): len/5 + 4 steps
		 * always suffice; the bound follows skb->len and can't be hit (docs). */
		bpf_loop((c.len - c.base) / 5 + 4, pgs_frame_step, &c, 0);
		if (c.f.remaining == 0)
			pgs_collect(&c);
		if (c.pos < c.len)
			c.error = 1; /* bound hit: impossible by the arithmetic above */
	}
	c.skb = 0;
	__builtin_memcpy(io, &c, sizeof(c));
	return 0;
}

/* ext_open: P/B/D/E/C the socket sent after its last S/Q/F before this skb (client). */
static __always_inline void pgs_frame_skb(struct pgs_fctx *c, struct __sk_buff *skb,
					  const struct pgs_frame *st, __u32 base, __u32 role,
					  __u32 ext_open)
{
	__builtin_memset(c, 0, sizeof(*c));
	c->f = *st;
	c->ext_open = ext_open;
	c->base = base;
	c->role = role;
	c->x_off = PGS_NO_OFF;
	c->hdr_start = PGS_NO_OFF;
	pgs_frame_run(skb, c);
}

/* tail_open after this skb: bytes were forwarded after the last Sync/Query/FunctionCall. */
static __always_inline __u32 pgs_tail_open(const struct pgs_fctx *c, __u32 prev)
{
	if (c->len <= c->base)
		return prev;
	if (c->have_sfq)
		return c->last_sfq_end < c->len;
	return 1;
}

#endif

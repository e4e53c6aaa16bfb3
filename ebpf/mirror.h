/* Mirroring from the kernel path (docs/mirroring.md): the verdicts copy what they redirect
 * for a mirrored client (pgs_conn.mirror) into mirror_ring, which user space drains into
 * the same mirror sessions that user-space traffic feeds. The copy is the bytes, not a
 * summary: the divergence report needs the primary's command tags, SQLSTATEs and, with
 * compare: rows, its rows, which only a full parse of the replies gives.
 *
 * A record is a chunk of one skb. A reservation's size must be a constant, so a chunk
 * takes the smallest of three record sizes that what is left of the skb fits, and large
 * ones otherwise.
 * When the ring has no room, the client's copy is lost: nothing more of it is written
 * until one of its transactions ends in the kernel (its server released), where a RESYNC
 * record tells user space that both streams start clean after it; user space drops the
 * transactions in between whole and counts them.
 *
 * A pipelining client may have sent its next transaction before the release's verdict
 * writes the RESYNC: the first request of that transaction (a fresh bind) finds the copy
 * still lost, is not copied, and marks it (PGS_MIRROR_LOST_NEXT), so that the RESYNC is
 * not written there (the streams after it would miss that request and pair its replies
 * with the next one's) but at the end of that transaction. When a release finds no room
 * for its RESYNC, the copy waits at that end (LOST_AT_END) and the first request of the
 * next transaction writes it before its own copy. A RESYNC is reserved before the state
 * goes clean, so that every record copied after it follows it in the ring.
 *
 * Wake-ups: a record committed while the consumer has not reached it wakes nobody (the
 * kernel wakes the consumer only for the record it is waiting at), so a discarded record
 * must wake like a submitted one: with BPF_RB_NO_WAKEUP, records committed behind it by
 * another CPU would wait in the ring for the next synchronous drain. */
#ifndef PGS_MIRROR_H
#define PGS_MIRROR_H

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, PGS_MIRROR_RING_BYTES);
} mirror_ring SEC(".maps");

/* client id -> struct pgs_mirror_state, for mirrored clients only */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PGS_MAX_CONNS);
	__type(key, __u32);
	__type(value, struct pgs_mirror_state);
} mirror_state SEC(".maps");

/* Copies lost since the load, over all mirrored clients: the object's only global
 * variable, so at offset 0 of its .bss, which user space reads mapped (the addon's
 * globalU64) before it feeds a session bytes of its own. While it has not moved since a
 * client was last seen clean, that client's copy is not lost and no map lookup is needed.
 * Counted after the client's `lost` is set, so a reader that sees the old count saw a
 * clean state before the loss. */
volatile __u64 pgs_mirror_losses;

#define PGS_MIRROR_HDR ((__u32)sizeof(struct pgs_mirror_rec))

struct pgs_mirror_ctx {
	struct __sk_buff *skb;
	struct pgs_mirror_state *st;
	__u32 conn;
	__u32 kind;
	__u32 len;
	__u32 off;    /* the bytes to copy next: [off, end) of the skb */
	__u32 end;
	__u32 walk;   /* PGS_MIRROR_REPLIES_TAGS: the next message to look at; len when done */
	__u32 failed;
};

enum pgs_mirror_lost {
	PGS_MIRROR_CLEAN = 0,
	PGS_MIRROR_LOST = 1,      /* a record did not fit: nothing is copied until a RESYNC */
	PGS_MIRROR_LOST_NEXT = 2, /* and the next transaction began while lost: lost too */
	PGS_MIRROR_LOST_AT_END = 3, /* lost, at a transaction end whose RESYNC did not fit:
				     * the next transaction's first request writes it */
};

enum pgs_mirror_resynced {
	PGS_MIRROR_RESYNC_NO_ROOM = 0,
	PGS_MIRROR_RESYNC_WRITTEN = 1,
	PGS_MIRROR_RESYNC_MOVED = 2, /* the state was no longer `from` */
};

/* Writes a RESYNC record and makes the copy clean, if it is still in state from. The
 * record is reserved before the state changes, so that whatever a verdict copies once it
 * sees the copy clean follows the record in the ring. */
static __always_inline int pgs_mirror_resync(struct pgs_mirror_state *st, __u32 conn, __u32 from)
{
	/* the header alone: the smallest record, the likeliest to fit in a ring that just
	 * had no room for a copy */
	struct pgs_mirror_rec *r = bpf_ringbuf_reserve(&mirror_ring, PGS_MIRROR_HDR, 0);

	if (!r)
		return PGS_MIRROR_RESYNC_NO_ROOM;
	if (__sync_val_compare_and_swap(&st->lost, from, PGS_MIRROR_CLEAN) != from) {
		bpf_ringbuf_discard(r, 0);
		return PGS_MIRROR_RESYNC_MOVED;
	}
	r->conn = conn;
	r->kind = PGS_MIRROR_RESYNC;
	r->len = 0;
	r->seq = 0;
	r->lost_xacts = __sync_lock_test_and_set(&st->lost_xacts, 0);
	bpf_ringbuf_submit(r, 0);
	return PGS_MIRROR_RESYNC_WRITTEN;
}

/* One record: the next chunk of [off, end). */
static __always_inline long pgs_mirror_emit(struct pgs_mirror_ctx *m)
{
	struct pgs_mirror_rec *r;
	__u32 left = m->end - m->off, n;

	if (left <= PGS_MIRROR_SMALL - PGS_MIRROR_HDR) {
		r = bpf_ringbuf_reserve(&mirror_ring, PGS_MIRROR_SMALL, 0);
		n = left;
	} else if (left <= PGS_MIRROR_MEDIUM - PGS_MIRROR_HDR) {
		/* (a row or two: a quarter of the ring a large record would take) */
		r = bpf_ringbuf_reserve(&mirror_ring, PGS_MIRROR_MEDIUM, 0);
		n = left;
	} else {
		r = bpf_ringbuf_reserve(&mirror_ring, PGS_MIRROR_LARGE, 0);
		n = left < PGS_MIRROR_LARGE - PGS_MIRROR_HDR ? left : PGS_MIRROR_LARGE - PGS_MIRROR_HDR;
	}
	if (!r) {
		m->failed = 1;
		return 1;
	}
	/* n is 1..LARGE-HDR; said so the verifier sees it */
	if (n < 1 || n > PGS_MIRROR_LARGE - PGS_MIRROR_HDR ||
	    bpf_skb_load_bytes(m->skb, m->off, r->data, n)) {
		bpf_ringbuf_discard(r, 0);
		m->failed = 1;
		return 1;
	}
	r->conn = m->conn;
	r->kind = m->kind;
	r->len = n;
	r->lost_xacts = 0;
	if (m->kind == PGS_MIRROR_REQUEST)
		r->seq = __sync_fetch_and_add(&m->st->seq_request, 1);
	else
		r->seq = __sync_fetch_and_add(&m->st->seq_reply, 1);
	bpf_ringbuf_submit(r, 0);
	m->off += n;
	return 0;
}

/* What compare: tags reads of a reply (src/mirror/divergence.ts). */
static __always_inline int pgs_mirror_kept(__u8 type)
{
	return type == 'C' || type == 'E' || type == 'I' || type == 'Z';
}

/* One bpf_loop step: a record of the bytes to copy, or (PGS_MIRROR_REPLIES_TAGS) a look at
 * the next message, which joins them if kept. A message that crosses the skb's end is
 * always kept, whatever its type: the next skb's verdict (or user space, which copies
 * everything) sees only its rest, so the copied stream stays whole messages. */
static long pgs_mirror_step(__u32 i, void *ctx)
{
	struct pgs_mirror_ctx *m = ctx;
	__u32 mlen, next;
	__u8 h[5];

	if (m->walk >= m->len) {
		if (m->off >= m->end)
			return 1;
		return pgs_mirror_emit(m);
	}
	next = m->len;
	if (m->len - m->walk >= 5) {
		if (bpf_skb_load_bytes(m->skb, m->walk, h, 5)) {
			m->failed = 1;
			return 1;
		}
		mlen = ((__u32)h[1] << 24) | ((__u32)h[2] << 16) | ((__u32)h[3] << 8) | h[4];
		if (mlen < 4 || mlen > 0x3fffffff) { /* the verdict's framing refused these already */
			m->failed = 1;
			return 1;
		}
		if (mlen < m->len - m->walk) {
			next = m->walk + 1 + mlen;
			if (!pgs_mirror_kept(h[0])) {
				m->walk = next;
				return 0;
			}
		}
	}
	/* kept: it extends the bytes to copy, or starts anew once they are copied */
	if (m->end != m->walk) {
		if (m->off < m->end)
			return pgs_mirror_emit(m);
		m->off = m->walk;
	}
	m->end = next;
	m->walk = next;
	return 0;
}

/* Copies the skb the verdict is about to redirect for mirrored client conn (kind REQUEST
 * from its own verdict, REPLY from its server's). edge: for a REPLY, this skb ended a
 * transaction and released the server, the point where a lost copy starts again; for a
 * REQUEST, it is the first of a transaction (its client was unbound). carried: for a
 * REPLY, where the message carried in from the previous skb ends (0 if none, len if it
 * goes on past this one); the next message starts there. Global, so that the verifier
 * checks it once, not once per caller state. */
__attribute__((noinline)) int pgs_mirror_copy(struct __sk_buff *skb, __u32 conn, __u32 kind, __u32 edge,
					      __u32 carried)
{
	struct pgs_mirror_ctx m = {};
	struct pgs_mirror_state *st;
	__u32 was;
	int res;

	if (!skb)
		return 0;
	st = bpf_map_lookup_elem(&mirror_state, &conn);
	if (!st)
		return 0;
	/* The first request of a transaction while lost: after a release whose RESYNC did not
	 * fit, it writes the RESYNC (or its transaction is lost too); during a release whose
	 * verdict has not written it yet, its transaction is lost too (see above). */
	if (kind == PGS_MIRROR_REQUEST && edge) {
		was = *(volatile __u32 *)&st->lost;
		if (was == PGS_MIRROR_LOST)
			was = __sync_val_compare_and_swap(&st->lost, PGS_MIRROR_LOST, PGS_MIRROR_LOST_NEXT);
		if (was == PGS_MIRROR_LOST_AT_END &&
		    pgs_mirror_resync(st, conn, PGS_MIRROR_LOST_AT_END) == PGS_MIRROR_RESYNC_NO_ROOM)
			__sync_val_compare_and_swap(&st->lost, PGS_MIRROR_LOST_AT_END, PGS_MIRROR_LOST);
	}
	if (!*(volatile __u32 *)&st->lost) {
		m.skb = skb;
		m.st = st;
		m.conn = conn;
		m.kind = kind;
		m.len = skb->len;
		m.end = m.len;
		m.walk = m.len;
		if (kind == PGS_MIRROR_REPLY && st->replies == PGS_MIRROR_REPLIES_TAGS) {
			/* the carried message's rest is copied, then the kept messages */
			m.end = carried < m.len ? carried : m.len;
			m.walk = m.end;
		}
		if (m.len > PGS_MIRROR_CHUNKS * (PGS_MIRROR_LARGE - PGS_MIRROR_HDR))
			m.failed = 1;
		else /* steps: one per message, one per record, one per gap between kept runs */
			bpf_loop(2 * (m.len / 5) + PGS_MIRROR_CHUNKS + 8, pgs_mirror_step, &m, 0);
		if (m.off < m.end || m.walk < m.len)
			m.failed = 1; /* bound hit: impossible by the count above */
		if (!m.failed)
			goto end;
		/* (a verdict of the other direction may have marked it lost meanwhile) */
		if (__sync_val_compare_and_swap(&st->lost, PGS_MIRROR_CLEAN, PGS_MIRROR_LOST) == PGS_MIRROR_CLEAN)
			__sync_fetch_and_add(&pgs_mirror_losses, 1);
	}
	__sync_fetch_and_add(&st->lost_records, 1);
end:
	if (kind != PGS_MIRROR_REPLY || !edge)
		return 0;
	was = *(volatile __u32 *)&st->lost;
	if (was == PGS_MIRROR_CLEAN)
		return 0;
	/* a transaction ended while lost: start again after it, if the ring has room */
	__sync_fetch_and_add(&st->lost_xacts, 1);
	if (was != PGS_MIRROR_LOST_NEXT) {
		res = pgs_mirror_resync(st, conn, was);
		if (res == PGS_MIRROR_RESYNC_WRITTEN)
			return 0;
		/* no room: the next transaction's first request writes it */
		if (res == PGS_MIRROR_RESYNC_NO_ROOM &&
		    __sync_val_compare_and_swap(&st->lost, was, PGS_MIRROR_LOST_AT_END) == was)
			return 0;
	}
	/* The next transaction began uncopied (LOST_NEXT, before or during this): it ends
	 * lost too, and resyncs there. */
	__sync_val_compare_and_swap(&st->lost, PGS_MIRROR_LOST_NEXT, PGS_MIRROR_LOST);
	return 0;
}

#endif

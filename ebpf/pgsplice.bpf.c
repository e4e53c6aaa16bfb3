// SPDX-License-Identifier: GPL-2.0
/* pgsplice kernel path: sk_skb verdict (both roles), syscall control program, tc framing
 * test wrapper. docs/kernel-path.md explains the state machine and the races. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "pgsplice.h"
#include "maps.h"
#include "parse.h"
#include "statements.h"
#include "inspect.h"
#include "mirror.h"

char LICENSE[] SEC("license") = "GPL";

/* CO-RE view of the one tcp_sock field the in-flight bound needs. */
struct tcp_sock {
	__u64 bytes_acked;
} __attribute__((preserve_access_index));

#define MODE(w) ((__u32)((w) >> PGS_MODE_SHIFT))
#define MKWORD(m, n) (((__u64)(m) << PGS_MODE_SHIFT) | ((n) & PGS_COUNT_MASK))
#define CAS(p, o, n) ({ __u64 __o = (o); __sync_val_compare_and_swap((p), __o, (n)) == __o; })

/* Change the mode, keep the count: one snapshot of the word, one CAS. */
static __always_inline int set_mode(__u64 *p, __u32 mode)
{
	__u64 w = *(volatile __u64 *)p;

	return __sync_val_compare_and_swap(p, w, MKWORD(mode, w)) == w;
}

static __always_inline void stat_add(__u32 idx, __u64 v)
{
	__u64 *p = bpf_map_lookup_elem(&stats, &idx);

	if (p)
		*p += v; /* per-CPU: no atomics needed */
}

/* Per-pool traffic (SHOW STATS): one per-CPU lookup, plain adds. */
static __always_inline struct pgs_pool_stats *pool_stats_of(__u32 pool)
{
	return bpf_map_lookup_elem(&pool_stats, &pool);
}

static __always_inline void emit3(__u32 type, __u32 a, __u32 b, __u32 c)
{
	struct pgs_event ev = { .type = type, .a = a, .b = b, .c = c };

	bpf_ringbuf_output(&events, &ev, sizeof(ev), 0);
}

static __always_inline void emit(__u32 type, __u32 a, __u32 b)
{
	struct pgs_event ev = { .type = type, .a = a, .b = b };

	bpf_ringbuf_output(&events, &ev, sizeof(ev), 0);
}

static __always_inline void idle_count_add(__u32 pool, __s64 d)
{
	struct pgs_pool *p = bpf_map_lookup_elem(&pools, &pool);

	if (p)
		__sync_fetch_and_add(&p->idle_count, d);
}

/* USER mode: add len to the passed counter, but only while the mode stays USER. */
static __always_inline int pass_counted(struct pgs_conn *c, __u32 len)
{
	for (int i = 0; i < 16; i++) {
		__u64 w = *(volatile __u64 *)&c->word;

		if (MODE(w) != PGS_USER)
			return 0;
		if (CAS(&c->word, w, MKWORD(PGS_USER, w + len)))
			return 1;
	}
	return 0;
}

/* Any mode -> USER with this skb counted as passed. Caller holds c->lock, so no
 * non-USER transition races; a USER-mode count from another path is still a CAS. */
static __always_inline void to_user_locked(struct pgs_conn *c, __u32 len)
{
	__u64 w = c->word;

	__sync_val_compare_and_swap(&c->word, w, MKWORD(PGS_USER, w + len));
}

/* Push an IDLE server on its pool's stack. If the stack is full the server would be
 * lost to everyone: give it back to user space instead. */
static __always_inline int push_idle(struct pgs_conn *s, __u32 sid)
{
	__u32 pool = s->pool_id;
	void *stack = bpf_map_lookup_elem(&idle, &pool);
	int back = 0;

	if (stack && bpf_map_push_elem(stack, &sid, 0) == 0) {
		idle_count_add(pool, 1);
		return 1;
	}
	bpf_spin_lock(&s->lock);
	if (MODE(s->word) == PGS_IDLE)
		back = set_mode(&s->word, PGS_USER);
	bpf_spin_unlock(&s->lock);
	stat_add(PGS_ST_FB_PUSH_FAILED, 1);
	if (back)
		emit(PGS_EV_SERVER_TO_USER, sid, PGS_ST_FB_PUSH_FAILED);
	return 0;
}

/* Pop an idle server of pool and CAS it IDLE -> mode (peer = cid when binding), trying
 * up to tries entries: entries may be stale (the server left IDLE since it was pushed),
 * the word decides. Shared by the verdict's bind and user space's POP_IDLE. */
static __always_inline __u32 pop_idle(void *stack, __u32 pool, __u32 mode, __u32 cid, int tries)
{
	for (int i = 0; i < tries; i++) {
		__u32 sid = 0;
		struct pgs_conn *s;
		int ok = 0;

		if (bpf_map_pop_elem(stack, &sid))
			return 0;
		idle_count_add(pool, -1);
		s = bpf_map_lookup_elem(&conns, &sid);
		if (s && s->role == PGS_ROLE_SERVER && s->pool_id == pool) {
			bpf_spin_lock(&s->lock);
			if (MODE(s->word) == PGS_IDLE) {
				ok = set_mode(&s->word, mode);
				if (ok)
					s->peer = cid;
			}
			bpf_spin_unlock(&s->lock);
		}
		if (ok)
			return sid;
		stat_add(PGS_ST_STALE_IDLE, 1);
	}
	return 0;
}

/* The verdict binds an idle server of pool to client cid (IDLE -> BOUND). */
static __always_inline __u32 bind_idle(__u32 pool, __u32 cid)
{
	void *stack = bpf_map_lookup_elem(&idle, &pool);
	struct pgs_pool *p = bpf_map_lookup_elem(&pools, &pool);
	__u32 sid;

	if (!stack)
		return 0;
	/* Clients already wait in user space (FIFO): a new request queues behind them
	 * instead of taking the next released server first. */
	if (p && p->waiters) {
		stat_add(PGS_ST_HELD_FOR_WAITERS, 1);
		return 0;
	}
	sid = pop_idle(stack, pool, PGS_BOUND, cid, 8);
	if (sid)
		stat_add(PGS_ST_BINDS, 1);
	return sid;
}

/* Undo a bind that the client could not commit (it left KERNEL meanwhile). */
static __always_inline void unbind_to_idle(__u32 sid, __u32 cid)
{
	struct pgs_conn *s = bpf_map_lookup_elem(&conns, &sid);
	int ok = 0;

	if (!s)
		return;
	bpf_spin_lock(&s->lock);
	if (MODE(s->word) == PGS_BOUND && s->peer == cid) {
		ok = set_mode(&s->word, PGS_IDLE);
		if (ok)
			s->peer = 0;
	}
	bpf_spin_unlock(&s->lock);
	if (ok)
		push_idle(s, sid);
}

static __always_inline int in_socks(__u32 id)
{
	struct bpf_sock *sk = bpf_map_lookup_elem(&socks, &id);

	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* Client KERNEL -> USER (or count if already USER) and pass this skb. */
static __always_inline int client_fallback(struct pgs_conn *c, __u32 len, __u32 reason)
{
	bpf_spin_lock(&c->lock);
	to_user_locked(c, len);
	bpf_spin_unlock(&c->lock);
	stat_add(reason, 1);
	stat_add(PGS_ST_PASSED_SKBS, 1);
	stat_add(PGS_ST_PASSED_BYTES, len);
	return SK_PASS;
}

/* A bound client sent what only user space may forward (inspect.h): hand the pair over
 * mid-transaction, this skb unforwarded, as the in-flight bound does but from the client
 * side. User space (event handoff, or the passed bytes of either socket) takes the server
 * with TAKE_BOUND and learns from READ which answers the kernel still forwards. */
static __always_inline int client_handoff(__u32 cid, struct pgs_conn *c, __u32 sid, __u32 len,
					  __u32 reason)
{
	struct pgs_conn *s;
	int bound = 0;

	bpf_spin_lock(&c->lock);
	/* the release decides under this lock too: if it came first, this skb starts a
	 * new transaction and is a plain fallback */
	if (MODE(c->word) == PGS_KERNEL && c->peer == sid) {
		c->flags |= PGS_F_HANDOFF; /* no release from now on: user space decides */
		bound = 1;
	}
	to_user_locked(c, len);
	bpf_spin_unlock(&c->lock);
	stat_add(reason, 1);
	stat_add(PGS_ST_PASSED_SKBS, 1);
	stat_add(PGS_ST_PASSED_BYTES, len);
	if (!bound)
		return SK_PASS;
	s = bpf_map_lookup_elem(&conns, &sid);
	if (s) {
		/* its later bytes go to user space; a run of its verdict that committed before
		 * this still applies its answers to the client (s->applying says when done) */
		bpf_spin_lock(&s->lock);
		if (MODE(s->word) == PGS_BOUND && s->peer == cid)
			set_mode(&s->word, PGS_USER);
		bpf_spin_unlock(&s->lock);
	}
	emit3(PGS_EV_HANDOFF, cid, sid, reason);
	return SK_PASS;
}

enum { R_OK = 0, R_MODE = 1, R_PEER = 2 };

static __always_inline int client_verdict(struct __sk_buff *skb, __u32 cid, struct pgs_conn *c)
{
	__u32 len = skb->len;
	struct pgs_fctx fc;
	struct pgs_names nm;
	struct pgs_pool_stats *ps;
	struct pgs_pool *pool;
	struct pgs_conn *s;
	__u32 sid, tail, nsfq, pool_id = c->pool_id, need = 0;
	__u64 now;
	int fresh = 0, res = R_OK;

	if (MODE(c->word) == PGS_USER && pass_counted(c, len)) {
		stat_add(PGS_ST_PASSED_SKBS, 1);
		stat_add(PGS_ST_PASSED_BYTES, len);
		return SK_PASS;
	}
	pgs_frame_skb(&fc, skb, &c->frame, 0, PGS_ROLE_CLIENT, *(volatile __u32 *)&c->tail_msgs);
	if (fc.error)
		return client_fallback(c, len, PGS_ST_FB_FRAME_ERROR);
	if (fc.first_type == 'X')
		return client_fallback(c, len, PGS_ST_FB_TERMINATE);
	nsfq = fc.n_sync + fc.n_query + fc.n_func;
	now = nsfq ? bpf_ktime_get_ns() : 0; /* no helper calls under the lock */
	/* Transaction pools only: a session client keeps its server, state and all. */
	nm.n = 0;
	pool = bpf_map_lookup_elem(&pools, &pool_id);
	if (pool && pool->mode == PGS_POOL_TRANSACTION) {
		need = pgs_inspect_skb(skb, &fc, 0, &nm);
		/* a Query/FunctionCall after P/B/D/E/C without Sync (this skb's or forwarded
		 * before): if the batch fails PostgreSQL skips it and owes one ReadyForQuery
		 * fewer than counted, so the server would never be released. User space's
		 * tracker follows that rule (docs/kernel-path.md). */
		if (!need && fc.mixed)
			need = PGS_ST_FB_MIXED_PROTOCOL;
	}

	sid = *(volatile __u32 *)&c->peer;
	if (need && !sid)
		return client_fallback(c, len, need); /* before binding: user space serves it */
	if (need)
		return client_handoff(cid, c, sid, len, need);
	for (int attempt = 0; attempt < 2; attempt++) {
		fresh = 0;
		if (!sid) {
			sid = bind_idle(c->pool_id, cid);
			if (!sid)
				return client_fallback(c, len, PGS_ST_FB_NO_IDLE_SERVER);
			fresh = 1;
		}
		/* Named statements: looked up against the server actually bound (a fresh bind
		 * pops first). One it lacks goes to user space, which prepares it there and
		 * records it: a fresh server goes back on its stack (user space pops it
		 * again, LIFO), a bound one is handed over with the client. */
		if (nm.n) {
			__u32 why = pgs_stmt_resolve(skb, cid, sid, &nm);

			if (why) {
				if (!fresh)
					return client_handoff(cid, c, sid, len, why);
				unbind_to_idle(sid, cid);
				return client_fallback(c, len, why);
			}
		}
		/* Reserve: make the server's verdict see this skb's Syncs and tail before
		 * it can decide to release at a ReadyForQuery. */
		bpf_spin_lock(&c->lock);
		tail = pgs_tail_open(&fc, c->tail_open);
		if (MODE(c->word) != PGS_KERNEL) {
			res = R_MODE;
			to_user_locked(c, len);
		} else if (c->peer != (fresh ? 0 : sid)) {
			res = R_PEER; /* released by the server verdict since we looked */
		} else {
			res = R_OK;
			if (fresh) {
				c->peer = sid;
				c->outstanding = 0;
				c->tail_msgs = 0;
				c->tail_answered = 0;
				c->flags &= ~(PGS_F_PARAMS_CHANGED | PGS_F_TAIL_ERROR);
				c->xact_start = 0;
				c->query_start = 0;
			}
			if (nsfq) {
				if (!c->xact_start)
					c->xact_start = now;
				if (!c->query_start)
					c->query_start = now;
			}
			c->outstanding += nsfq;
			c->tail_open = tail;
			c->tail_msgs = fc.have_sfq ? fc.n_ext_tail : c->tail_msgs + fc.n_ext_tail;
			c->frame = fc.f;
		}
		bpf_spin_unlock(&c->lock);
		if (res == R_OK)
			break;
		if (fresh)
			unbind_to_idle(sid, cid);
		if (res == R_MODE) {
			stat_add(PGS_ST_PASSED_SKBS, 1);
			stat_add(PGS_ST_PASSED_BYTES, len);
			return SK_PASS;
		}
		sid = 0;
	}
	if (res != R_OK)
		return client_fallback(c, len, PGS_ST_FB_UNHANDLED);
	if (!in_socks(sid))
		return client_fallback(c, len, PGS_ST_FB_TARGET_MISSING);
	/* bytes queued to the server's egress: user space waits for them to be sent before
	 * it writes to that server itself after a hand-over */
	s = bpf_map_lookup_elem(&conns, &sid);
	if (s)
		__sync_fetch_and_add(&s->redirected, len);
	/* the mirror gets the client's bytes as sent: copied before the names are rewritten;
	 * fresh: the first request of a transaction (mirror.h) */
	if (c->mirror)
		pgs_mirror_copy(skb, cid, PGS_MIRROR_REQUEST, fresh, 0);
	/* Committed to this server: only now may the skb carry its names */
	if (nm.n)
		stat_add(PGS_ST_STMT_REWRITES, pgs_stmt_rewrite(skb, &nm));
	stat_add(PGS_ST_CLIENT_BYTES, len);
	stat_add(PGS_ST_CLIENT_MSGS, fc.n_msgs);
	ps = pool_stats_of(pool_id);
	if (ps) {
		ps->queries += nsfq;
		ps->client_bytes += len;
	}
	return bpf_sk_redirect_hash(skb, &socks, &sid, 0);
}

/* Bytes redirected to client cid that its peer has not acked yet, or 0 if unknown. */
static __always_inline __u64 client_inflight(__u32 cid, struct pgs_conn *c)
{
	struct bpf_sock *sk = bpf_map_lookup_elem(&socks, &cid);
	struct tcp_sock *tp;
	__u64 acked = 0, red;

	if (!sk)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp)
		acked = BPF_CORE_READ(tp, bytes_acked);
	bpf_sk_release(sk);
	if (!tp)
		return 0;
	red = c->redirected + c->acked_base;
	return red > acked ? red - acked : 0;
}

static __always_inline int server_verdict(struct __sk_buff *skb, __u32 sid, struct pgs_conn *s)
{
	__u32 len = skb->len;
	struct pgs_fctx fc;
	struct pgs_conn *c;
	struct pgs_pool *pool;
	struct pgs_pool_stats *ps;
	__u32 cid = 0, pool_id = s->pool_id, mode;
	__u64 inflight = 0, limit = ~0ULL;
	__u64 now, xact_ns = 0, query_ns = 0;
	int ok = 0, action = 0, xacts = 0, apply;

	mode = MODE(s->word);
	if (mode == PGS_USER && pass_counted(s, len))
		goto passed;
	if (mode != PGS_BOUND) {
		/* IDLE: unsolicited bytes (NOTIFY, FATAL...): user space takes the server,
		 * unless a client bound it since we looked; then they are the client's. */
		bpf_spin_lock(&s->lock);
		mode = MODE(s->word);
		if (mode != PGS_BOUND)
			to_user_locked(s, len);
		bpf_spin_unlock(&s->lock);
		if (mode == PGS_IDLE) {
			stat_add(PGS_ST_FB_SERVER_ASYNC, 1);
			emit(PGS_EV_SERVER_TO_USER, sid, PGS_ST_FB_SERVER_ASYNC);
		}
		if (mode != PGS_BOUND)
			goto passed;
	}

	pgs_frame_skb(&fc, skb, &s->frame, 0, PGS_ROLE_SERVER, 0);
	bpf_spin_lock(&s->lock);
	if (MODE(s->word) == PGS_BOUND && !fc.error) {
		cid = s->peer;
		ok = 1;
	}
	bpf_spin_unlock(&s->lock);
	if (!ok) {
		if (fc.error)
			stat_add(PGS_ST_FB_FRAME_ERROR, 1);
		goto to_user;
	}

	c = bpf_map_lookup_elem(&conns, &cid);
	if (!c) {
		stat_add(PGS_ST_DROPPED_CLIENT_GONE, 1);
		return SK_DROP;
	}
	pool = bpf_map_lookup_elem(&pools, &pool_id);
	if (pool && pool->inflight_limit) {
		limit = pool->inflight_limit;
		inflight = client_inflight(cid, c);
	}
	if (inflight + len > limit) {
		/* Hand the pair to user space before this skb counts: its framing, its
		 * ReadyForQuery and its bytes are all user space's now, so user space resumes
		 * from the frame state and outstanding count as they were (docs/kernel-path.md,
		 * bounded memory). It forwards with TCP back-pressure once the kernel-queued
		 * bytes are acked. */
		ok = 0;
		bpf_spin_lock(&c->lock);
		if (c->peer == sid) {
			c->flags |= PGS_F_SLOW;
			if (MODE(c->word) == PGS_KERNEL)
				set_mode(&c->word, PGS_USER);
			ok = 1;
		}
		bpf_spin_unlock(&c->lock);
		if (ok) {
			ok = 0;
			bpf_spin_lock(&s->lock);
			if (MODE(s->word) == PGS_BOUND && s->peer == cid) {
				ok = 1;
				to_user_locked(s, len);
			}
			bpf_spin_unlock(&s->lock);
			if (ok) {
				stat_add(PGS_ST_FB_INFLIGHT_LIMIT, 1);
				emit3(PGS_EV_INFLIGHT_LIMIT, cid, sid, inflight > 0xffffffff ? 0xffffffff : inflight);
				goto passed;
			}
		}
	}
	/* Commit framing only while still BOUND: a TAKE_BOUND that flipped us to USER
	 * meanwhile sees a frame state that matches exactly the bytes sent to the client. */
	ok = 0;
	apply = fc.n_param || fc.n_z || fc.n_fin_tail || fc.n_err_tail;
	bpf_spin_lock(&s->lock);
	if (MODE(s->word) == PGS_BOUND && s->peer == cid) {
		s->frame = fc.f;
		s->applying = apply;
		ok = 1;
	}
	bpf_spin_unlock(&s->lock);
	if (!ok)
		goto to_user;
	if (apply) {
		int txn = pool && pool->mode == PGS_POOL_TRANSACTION;

		now = fc.n_z ? bpf_ktime_get_ns() : 0;
		bpf_spin_lock(&c->lock);
		if (c->peer == sid) {
			if (fc.n_param)
				c->flags |= PGS_F_PARAMS_CHANGED;
			c->tail_answered = fc.n_z ? fc.n_fin_tail : c->tail_answered + fc.n_fin_tail;
			if (fc.n_z)
				c->flags &= ~PGS_F_TAIL_ERROR;
			if (fc.n_err_tail)
				c->flags |= PGS_F_TAIL_ERROR;
			if (fc.n_z) {
				c->outstanding = c->outstanding > fc.n_z ? c->outstanding - fc.n_z : 0;
				/* Z answers the oldest request; the next one's clock starts now */
				if (c->query_start) {
					query_ns = now - c->query_start;
					c->query_start = c->outstanding ? now : 0;
				}
				if (!c->outstanding && fc.last_z == 'I' && c->xact_start) {
					xact_ns = now - c->xact_start;
					c->xact_start = 0;
					xacts = 1;
				}
				if (txn && c->outstanding == 0 && fc.last_z == 'I' && !c->tail_open &&
				    !(c->flags & PGS_F_HANDOFF)) {
					c->peer = 0;
					if (c->flags & PGS_F_PARAMS_CHANGED) {
						/* flag stays set: read() tells Node why the client
						 * left even before the ring-buffer event arrives */
						if (MODE(c->word) == PGS_KERNEL)
							set_mode(&c->word, PGS_USER);
						action = 2;
					} else {
						action = 1;
					}
				}
			}
		}
		bpf_spin_unlock(&c->lock);
		*(volatile __u32 *)&s->applying = 0;
	}
	if (action) {
		ok = 0;
		bpf_spin_lock(&s->lock);
		if (MODE(s->word) == PGS_BOUND && s->peer == cid) {
			/* RECONNECT marked it: user space closes it instead of reusing it */
			if (action == 1 && (s->flags & PGS_F_RETIRE))
				action = 3;
			ok = set_mode(&s->word, action == 1 ? PGS_IDLE : PGS_USER);
			if (ok)
				s->peer = 0;
		}
		bpf_spin_unlock(&s->lock);
		if (ok && action == 1) {
			stat_add(PGS_ST_TRANSACTIONS, 1);
			if (push_idle(s, sid) && pool && pool->waiters)
				emit(PGS_EV_SERVER_RELEASED, pool_id, sid);
		} else if (ok && action == 3) {
			stat_add(PGS_ST_TRANSACTIONS, 1);
			emit(PGS_EV_SERVER_RETIRED, pool_id, sid);
		} else if (ok) {
			stat_add(PGS_ST_FB_PARAMS_CHANGED, 1);
			emit(PGS_EV_PARAMS_CHANGED, cid, sid);
		}
	}
	ps = pool_stats_of(pool_id);
	if (ps && fc.n_z) {
		ps->xacts += xacts;
		ps->xact_ns += xact_ns;
		ps->query_ns += query_ns;
	}
	if (!in_socks(cid)) {
		stat_add(PGS_ST_DROPPED_CLIENT_GONE, 1);
		return SK_DROP; /* the client is gone: nobody is owed these bytes */
	}
	/* (insp_from: where the message carried in from the previous skb ends) */
	if (c->mirror)
		pgs_mirror_copy(skb, cid, PGS_MIRROR_REPLY, action != 0, fc.insp_from);
	__sync_fetch_and_add(&c->redirected, len);
	if (ps)
		ps->server_bytes += len;
	stat_add(PGS_ST_SERVER_BYTES, len);
	stat_add(PGS_ST_SERVER_MSGS, fc.n_msgs);
	return bpf_sk_redirect_hash(skb, &socks, &cid, 0);

to_user:
	/* Lost framing, or the mode changed while we framed (TAKE_BOUND -> USER, or an
	 * undone bind -> IDLE): user space took this skb above. The peer stays set so
	 * that TAKE_BOUND(client) still hands the server over. */
	if (mode == PGS_IDLE) {
		stat_add(PGS_ST_FB_SERVER_ASYNC, 1);
		emit(PGS_EV_SERVER_TO_USER, sid, PGS_ST_FB_SERVER_ASYNC);
	} else if (mode == PGS_BOUND) {
		/* only lost framing leaves BOUND here (a mode change can't go to BOUND) */
		stat_add(PGS_ST_FB_FRAME_ERROR, 1);
		emit(PGS_EV_SERVER_TO_USER, sid, PGS_ST_FB_FRAME_ERROR);
	}
passed:
	stat_add(PGS_ST_PASSED_SKBS, 1);
	stat_add(PGS_ST_PASSED_BYTES, len);
	return SK_PASS;
}

SEC("sk_skb")
int pgs_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	__u32 *idp = bpf_map_lookup_elem(&sock_ids, &cookie);
	struct pgs_conn *c;
	__u32 id;

	if (!idp)
		goto unknown;
	id = *idp;
	c = bpf_map_lookup_elem(&conns, &id);
	if (!c)
		goto unknown;
	if (c->role == PGS_ROLE_CLIENT)
		return client_verdict(skb, id, c);
	return server_verdict(skb, id, c);
unknown:
	stat_add(PGS_ST_FB_UNHANDLED, 1);
	return SK_PASS;
}

/* ---- control operations, run by user space through BPF_PROG_TEST_RUN ---- */

static __always_inline void ctl_read(struct pgs_ctl *a, struct pgs_conn *c)
{
	bpf_spin_lock(&c->lock);
	a->word = c->word;
	a->peer = c->peer;
	a->outstanding = c->outstanding;
	a->tail_open = c->tail_open;
	a->flags = c->flags;
	a->frame = c->frame;
	a->tail_msgs = c->tail_msgs;
	a->tail_answered = c->tail_answered;
	a->applying = c->applying;
	bpf_spin_unlock(&c->lock);
	a->role = c->role;
	a->pool_id = c->pool_id;
	a->redirected = c->redirected;
}

static __always_inline int ctl_pop_idle(struct pgs_ctl *a)
{
	__u32 pool = a->pool;
	void *stack = bpf_map_lookup_elem(&idle, &pool);

	return stack ? pop_idle(stack, pool, PGS_USER, 0, 64) : 0;
}

/* The role of the connection an operation acts on; 0: either (READ, and an unknown
 * operation, which is refused as such). */
static __always_inline __u8 ctl_role(__u32 op)
{
	switch (op) {
	case PGS_OP_CLIENT_TO_KERNEL:
	case PGS_OP_CLIENT_TO_USER:
	case PGS_OP_TAKE_BOUND:
	case PGS_OP_BIND:
	case PGS_OP_ADD:
	case PGS_OP_CLIENT_TO_KERNEL_BOUND:
		return PGS_ROLE_CLIENT;
	case PGS_OP_SERVER_TO_IDLE:
	case PGS_OP_RETIRE:
		return PGS_ROLE_SERVER;
	default:
		return 0;
	}
}

/* Forgets c's transaction: its counts, flags and clocks. Called with c->lock held. */
static __always_inline void clear_xact(struct pgs_conn *c)
{
	c->outstanding = 0;
	c->tail_open = 0;
	c->tail_msgs = 0;
	c->tail_answered = 0;
	c->flags = 0;
	c->xact_start = 0;
	c->query_start = 0;
}

/* Moves c from USER (its word still w) to mode, re-homed to pool (0: its own) in place: a
 * USER verdict never reads pool_id, and unregistering would drop skbs passed but not yet
 * read. Its pool is restored if the word changed meanwhile. Called with c->lock held. */
static __always_inline int move_rehomed(struct pgs_conn *c, __u64 w, __u32 mode, __u32 pool)
{
	__u32 was = c->pool_id;
	int ok;

	if (pool)
		c->pool_id = pool;
	ok = CAS(&c->word, w, MKWORD(mode, w));
	if (!ok)
		c->pool_id = was;
	return ok;
}

SEC("syscall")
int pgs_ctl(struct pgs_ctl *a)
{
	__u32 id = a->id;
	struct pgs_conn *c, *s;
	__u64 w;
	__u8 need;
	int ok = 0;

	if (a->op == PGS_OP_POP_IDLE) {
		a->ret = ctl_pop_idle(a);
		return 0;
	}
	c = bpf_map_lookup_elem(&conns, &id);
	if (!c) {
		a->ret = -2; /* ENOENT */
		return 0;
	}
	need = ctl_role(a->op);
	if (need && c->role != need)
		goto done; /* an operation on the other kind of connection does nothing */
	switch (a->op) {
	case PGS_OP_CLIENT_TO_KERNEL:
		bpf_spin_lock(&c->lock);
		w = c->word;
		if (w == MKWORD(PGS_USER, a->expected) && c->peer == 0) {
			/* still USER: the verdict does not touch frame/pair fields now */
			__builtin_memset(&c->frame, 0, sizeof(c->frame));
			clear_xact(c);
			if (a->written)
				c->acked_base = a->written - c->redirected;
			ok = move_rehomed(c, w, PGS_KERNEL, a->pool);
		}
		bpf_spin_unlock(&c->lock);
		break;
	case PGS_OP_CLIENT_TO_USER:
		bpf_spin_lock(&c->lock);
		w = c->word;
		if (c->peer == 0)
			ok = MODE(w) == PGS_USER || CAS(&c->word, w, MKWORD(PGS_USER, w));
		bpf_spin_unlock(&c->lock);
		break;
	case PGS_OP_SERVER_TO_IDLE:
		bpf_spin_lock(&c->lock);
		w = c->word;
		if (w == MKWORD(PGS_USER, a->expected) && c->peer == 0) {
			__builtin_memset(&c->frame, 0, sizeof(c->frame));
			ok = move_rehomed(c, w, PGS_IDLE, a->pool);
			if (ok)
				c->flags &= ~PGS_F_RETIRE; /* user space reuses it: a mark is spent */
		}
		bpf_spin_unlock(&c->lock);
		if (ok)
			ok = push_idle(c, id);
		break;
	case PGS_OP_TAKE_BOUND: {
		__u32 sid;

		bpf_spin_lock(&c->lock);
		w = c->word;
		if (MODE(w) == PGS_KERNEL)
			CAS(&c->word, w, MKWORD(PGS_USER, w));
		sid = c->peer;
		c->peer = 0;
		bpf_spin_unlock(&c->lock);
		if (!sid)
			break;
		s = bpf_map_lookup_elem(&conns, &sid);
		if (!s)
			break;
		bpf_spin_lock(&s->lock);
		/* USER with our peer: the verdict handed it over (lost framing, in-flight limit) */
		if (s->peer == id && MODE(s->word) != PGS_IDLE) {
			ok = MODE(s->word) == PGS_USER ||
			     set_mode(&s->word, PGS_USER);
			if (ok)
				s->peer = 0;
		}
		bpf_spin_unlock(&s->lock);
		if (ok)
			ok = sid;
		break;
	}
	case PGS_OP_BIND: {
		/* User space got sid for this client's waiting request: the kernel carries
		 * the response and releases sid at its ReadyForQuery. Server first: it is
		 * quiet (nothing unread) and nothing has been written to it yet. The client
		 * stays USER until CLIENT_TO_KERNEL_BOUND: bytes it sends meanwhile reach
		 * user space, which writes them to sid after ADD, so none can overtake. */
		__u32 sid = a->sid;
		__u64 now = bpf_ktime_get_ns();
		int bound = 0;

		s = bpf_map_lookup_elem(&conns, &sid);
		if (!s || s->role != PGS_ROLE_SERVER)
			break;
		bpf_spin_lock(&s->lock);
		w = s->word;
		if (w == MKWORD(PGS_USER, a->expected) && s->peer == 0) {
			__builtin_memset(&s->frame, 0, sizeof(s->frame));
			bound = move_rehomed(s, w, PGS_BOUND, a->pool);
			if (bound) {
				s->peer = id;
				s->flags &= ~PGS_F_RETIRE; /* user space reuses it: a mark is spent */
			}
		}
		bpf_spin_unlock(&s->lock);
		if (!bound)
			break;
		bpf_spin_lock(&c->lock);
		if (MODE(c->word) == PGS_USER && c->peer == 0) {
			__builtin_memset(&c->frame, 0, sizeof(c->frame));
			if (a->pool)
				c->pool_id = a->pool;
			c->peer = sid;
			c->outstanding = a->out_in;
			c->tail_open = a->tail_in;
			c->tail_msgs = 0; /* counts only what the kernel forwards */
			c->tail_answered = 0;
			c->flags = 0;
			/* its request came through user space: the clocks start at the bind */
			c->xact_start = a->out_in ? now : 0;
			c->query_start = a->out_in ? now : 0;
			if (a->written)
				c->acked_base = a->written - c->redirected;
			ok = 1;
		}
		bpf_spin_unlock(&c->lock);
		if (!ok) {
			bpf_spin_lock(&s->lock);
			if (MODE(s->word) == PGS_BOUND && s->peer == id) {
				set_mode(&s->word, PGS_USER);
				s->peer = 0;
			}
			bpf_spin_unlock(&s->lock);
		}
		break;
	}
	case PGS_OP_ADD: {
		__u64 now = bpf_ktime_get_ns();

		bpf_spin_lock(&c->lock);
		/* a hand-over in progress: user space adopts the server instead */
		if (c->peer == a->sid && a->sid && !(c->flags & PGS_F_HANDOFF)) {
			c->outstanding += a->out_in;
			c->tail_open = a->tail_in;
			if (a->out_in && !c->xact_start)
				c->xact_start = now;
			if (a->out_in && !c->query_start)
				c->query_start = now;
			ok = 1;
		}
		bpf_spin_unlock(&c->lock);
		break;
	}
	case PGS_OP_CLIENT_TO_KERNEL_BOUND:
		bpf_spin_lock(&c->lock);
		w = c->word;
		/* Released with PARAMS_CHANGED meanwhile: the client's settings are no longer
		 * those of its kernel pool; user space re-homes it once it knows them. */
		if (w == MKWORD(PGS_USER, a->expected) &&
		    !(c->peer == 0 && (c->flags & PGS_F_PARAMS_CHANGED)) &&
		    !(c->peer && (c->flags & PGS_F_HANDOFF))) {
			/* user space is at a message boundary of the client stream */
			__builtin_memset(&c->frame, 0, sizeof(c->frame));
			if (c->peer == 0)
				clear_xact(c);
			ok = CAS(&c->word, w, MKWORD(PGS_KERNEL, w));
		}
		bpf_spin_unlock(&c->lock);
		break;
	case PGS_OP_RETIRE:
		/* RECONNECT: an idle server comes out now, a bound one at its release */
		bpf_spin_lock(&c->lock);
		c->flags |= PGS_F_RETIRE;
		w = c->word;
		if (MODE(w) == PGS_IDLE)
			ok = CAS(&c->word, w, MKWORD(PGS_USER, w));
		else if (MODE(w) == PGS_BOUND)
			ok = 2;
		bpf_spin_unlock(&c->lock);
		break;
	case PGS_OP_READ:
		ok = 1;
		break;
	default:
		a->ret = -22; /* EINVAL */
		return 0;
	}
done:
	ctl_read(a, c);
	a->ret = ok;
	return 0;
}

/* ---- framing test wrapper (BPF_PROG_TEST_RUN can't run sk_skb) ---- */

SEC("tc")
int pgs_frame_test(struct __sk_buff *skb)
{
	__u32 k = 0;
	struct pgs_frame_test *t = bpf_map_lookup_elem(&frame_test, &k);
	struct pgs_fctx fc;
	struct pgs_names nm = {};

	if (!t)
		return TC_ACT_SHOT;
	/* a constant role per copy: an unknown role doubles the verifier's paths */
	if (t->role == PGS_ROLE_SERVER)
		pgs_frame_skb(&fc, skb, &t->frame, 14, PGS_ROLE_SERVER, 0);
	else
		pgs_frame_skb(&fc, skb, &t->frame, 14, PGS_ROLE_CLIENT, t->tail_msgs);
	/* append this chunk's statuses (at most its last 8) in arrival order */
	for (int i = 7; i >= 0; i--) {
		__u32 at = t->n_z + fc.n_z - 1 - i;

		if ((__u32)i >= fc.n_z || at >= sizeof(t->z_status))
			continue;
		t->z_status[at & 63] = (__u8)(fc.zbits >> (8 * i));
	}
	t->frame = fc.f;
	t->n_sync += fc.n_sync;
	t->n_query += fc.n_query;
	t->n_func += fc.n_func;
	t->n_z += fc.n_z;
	t->n_param += fc.n_param;
	t->n_msgs += fc.n_msgs;
	t->n_term += fc.n_term;
	t->errors += fc.error;
	t->last_tail = pgs_tail_open(&fc, t->last_tail);
	if (t->role == PGS_ROLE_SERVER) {
		t->tail_answered = fc.n_z ? fc.n_fin_tail : t->tail_answered + fc.n_fin_tail;
	} else {
		t->tail_msgs = fc.have_sfq ? fc.n_ext_tail : t->tail_msgs + fc.n_ext_tail;
		/* the verdict passes the first chunk that needs user space, and all after it */
		if (!t->inspect && !fc.error) {
			t->inspect = pgs_inspect_skb(skb, &fc, 1, &nm);
			if (nm.n && !t->n_names) {
				t->name_off = nm.off[0] >= 14 ? nm.off[0] - 14 : 0;
				t->name_len = nm.len[0];
			}
			t->n_names += nm.n;
		}
		if (!t->inspect && !fc.error && fc.mixed)
			t->inspect = PGS_ST_FB_MIXED_PROTOCOL;
	}
	return TC_ACT_OK;
}

/* Never loaded or called: its signature puts struct pgs_abi (every type user space reads,
 * pgsplice.h) and enum bpf_map_type into the object's BTF for scripts/gen-kernel-abi.mjs.
 * A global function in .text that no program calls is not loaded by libbpf. */
__attribute__((used)) int pgs_abi_anchor(struct pgs_abi *abi, enum bpf_map_type t)
{
	return 0;
}

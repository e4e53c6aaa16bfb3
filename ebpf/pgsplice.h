/* Structs and enums shared by the BPF programs and user space. User space reads them
 * through src/kernel/kernel-abi.generated.ts, generated from the object's BTF at build
 * time (scripts/gen-kernel-abi.mjs); test/kernel-abi.test.ts fails when they differ.
 * Every type user space reads must be reachable from struct pgs_abi (pgsplice.bpf.c). */
#ifndef PGSPLICE_H
#define PGSPLICE_H

#ifndef __BPF__
#include <linux/types.h>
#endif

/* Constants are enums, not #defines, so the object's BTF carries them and
 * scripts/gen-kernel-abi.mjs can generate src/kernel/kernel-abi.generated.ts. */
enum pgs_limits {
	PGS_MAX_CONNS = 65536,
	PGS_MAX_POOLS = 256,
	PGS_IDLE_MAX = 4096, /* entries per pool idle stack */
};

/* Named statements in the kernel (statements.h, docs/kernel-path.md). The server-side
 * name of a statement is as long as the client's name, so the verdict rewrites it in
 * place: PGS_STMT_NAME_MAX bounds the copy; PGS_STMT_NO_NAME in stmt_names says user space
 * had no server name of that length left. */
enum pgs_stmt_limits {
	PGS_STMT_NAME_MAX = 63,
	PGS_STMT_NAMES_PER_SKB = 8,
	PGS_STMT_MAX = 262144, /* entries of each statement map */
	PGS_STMT_IDX_LIMIT = 1 << 26, /* indexes user space may assign (packed with the length) */
	PGS_STMT_NO_NAME = 1 << 26, /* a stmt_names value: no server name of that length left */
};

/* stmt_names key: a client and one of its statement names (NUL padded) -> the statement's
 * index among the server names of that length (__u32) */
struct pgs_stmt_key {
	__u32 conn;
	__u8 name[64];
};

/* stmt_servers key: a server has the statement of this name length and index prepared */
struct pgs_stmt_ref {
	__u32 conn;
	__u32 len;
	__u32 idx;
};

/* conn.word: high 16 bits mode, low 48 bits bytes passed to user space. */
enum pgs_word {
	PGS_MODE_SHIFT = 48,
};
#define PGS_COUNT_MASK ((1ULL << PGS_MODE_SHIFT) - 1)

enum pgs_mode {
	PGS_USER = 0,
	PGS_KERNEL = 1, /* client */
	PGS_IDLE = 1,   /* server */
	PGS_BOUND = 2,  /* server */
};

enum pgs_role {
	PGS_ROLE_CLIENT = 1,
	PGS_ROLE_SERVER = 2,
};

enum pgs_conn_flags {
	PGS_F_PARAMS_CHANGED = 1, /* client: its server sent ParameterStatus while bound */
	PGS_F_FRAME_ERROR = 2,    /* framing saw an impossible length */
	PGS_F_SLOW = 4,           /* client: handed to user space by the in-flight limit */
	PGS_F_RETIRE = 8,         /* server: give it to user space at its release (RECONNECT, a cancel in flight); cleared when user space puts it back (SERVER_TO_IDLE, BIND) */
	PGS_F_HANDOFF = 16,       /* client: handed to user space mid-transaction (named
				   * statement or session-state SQL, docs/kernel-path.md) */
	PGS_F_TAIL_ERROR = 32,    /* client: its server sent an ErrorResponse after its last
				   * ReadyForQuery (an open extended batch failed: PostgreSQL
				   * skips to the Sync); user space reads it at a hand-over */
};

/* Framing state of one direction, owned by the socket's own verdict. */
struct pgs_frame {
	__u32 remaining;  /* body bytes left in the current message */
	__u8 cur_type;    /* type of the message whose body is being consumed */
	__u8 hdr_len;     /* bytes of a split header held in hdr */
	__u8 hdr[6];      /* type, 4-byte big-endian length, Z status */
};

struct pgs_conn {
	__u64 word;
	struct bpf_spin_lock lock; /* guards peer, outstanding, tail_open, flags */
	__u32 peer;
	__u32 outstanding;
	__u32 tail_open;
	__u32 flags;
	__u32 pool_id;
	__u32 role;
	struct pgs_frame frame;
	__u64 redirected; /* bytes redirected INTO this socket's egress by the kernel */
	__u64 acked_base; /* tcp bytes_acked of this socket at registration */
	/* client, under lock: bpf_ktime_get_ns() when its open transaction / oldest
	 * unanswered request started, 0 if none (per-pool stats) */
	__u64 xact_start;
	__u64 query_start;
	/* client: P/B/D/E/C forwarded after the last Sync/Query/FunctionCall (0 when
	 * !tail_open), and final responses ('1' '2' '3' 'n' 'T' 'C' 'I' 's') forwarded since
	 * the last ReadyForQuery; guarded by lock. User space places its own answers after
	 * these when it takes a transaction over (PGS_F_HANDOFF). */
	__u32 tail_msgs;
	__u32 tail_answered;
	/* server: 1 while its verdict has committed a frame but not yet applied it to the
	 * client (outstanding, tail_answered): a hand-over waits for 0 */
	__u32 applying;
	/* client: nonzero while it has mirror sessions (set by user space at registration):
	 * the verdicts copy its traffic to mirror_ring (mirror.h, docs/mirroring.md) */
	__u32 mirror;
};

struct pgs_pool {
	__u32 mode; /* enum pgs_pool_mode */
	__u32 waiters;
	__u64 inflight_limit; /* 0 = unlimited; bytes redirected to a client not yet acked */
	__s64 idle_count;     /* best effort: pushes minus pops */
};

/* Traffic a kernel pool carried (per-CPU array `pool_stats`, indexed by pool id):
 * what SHOW STATS counts for user-space traffic. */
struct pgs_pool_stats {
	__u64 xacts;        /* ReadyForQuery 'I' with nothing outstanding */
	__u64 queries;      /* Sync, Query, FunctionCall redirected to a server */
	__u64 client_bytes; /* client -> server, redirected */
	__u64 server_bytes; /* server -> client, redirected */
	__u64 xact_ns;
	__u64 query_ns;
};

enum pgs_pool_mode {
	PGS_POOL_SESSION = 0,
	PGS_POOL_TRANSACTION = 1,
};

/* Per-CPU counters (index into the stats array). */
enum pgs_stat {
	PGS_ST_TRANSACTIONS = 0,
	PGS_ST_CLIENT_BYTES,
	PGS_ST_CLIENT_MSGS,
	PGS_ST_SERVER_BYTES,
	PGS_ST_SERVER_MSGS,
	PGS_ST_PASSED_SKBS,
	PGS_ST_PASSED_BYTES,
	PGS_ST_BINDS,
	PGS_ST_DROPPED_CLIENT_GONE,
	PGS_ST_STALE_IDLE,
	PGS_ST_FB_NO_IDLE_SERVER,
	PGS_ST_FB_TARGET_MISSING,
	PGS_ST_FB_TERMINATE,
	PGS_ST_FB_SERVER_ASYNC,
	PGS_ST_FB_PARAMS_CHANGED,
	PGS_ST_FB_LOOP_LIMIT,
	PGS_ST_FB_UNHANDLED,
	PGS_ST_FB_INFLIGHT_LIMIT,
	PGS_ST_FB_FRAME_ERROR,
	PGS_ST_FB_PUSH_FAILED,
	PGS_ST_FB_NAMED_STATEMENT, /* a named Parse/Bind/Describe/Close: user space renames */
	PGS_ST_FB_SESSION_STATE,   /* SQL that may change session state, or not wholly visible */
	PGS_ST_FB_MIXED_PROTOCOL,  /* a Query/FunctionCall inside an unsynced extended batch */
	/* Named statements in the kernel (statements.h): why a Bind/Describe(S) of a named
	 * statement, or a Close(S), still went to user space */
	PGS_ST_FB_STATEMENT_MISSING, /* the client's name, or its statement on the bound server, is not in the maps */
	PGS_ST_FB_NAME_TOO_SHORT,    /* no server name of the client name's length was left */
	PGS_ST_FB_NAME_TOO_LONG,     /* longer than PGS_STMT_NAME_MAX bytes */
	PGS_ST_FB_NAMES_PER_SKB,     /* more than PGS_STMT_NAMES_PER_SKB names in one skb */
	PGS_ST_FB_STATEMENT_CLOSE,   /* Close of a named statement: the client's name table is user space's */
	PGS_ST_STMT_REWRITES,        /* statement names the verdict rewrote in place */
	PGS_ST_HELD_FOR_WAITERS,     /* no_idle_server because the pool was held for user space's waiters, not empty */
	PGS_ST__MAX,
};

enum pgs_event_type {
	PGS_EV_PARAMS_CHANGED = 1,  /* a = client, b = server */
	PGS_EV_SERVER_RELEASED = 2, /* a = pool, b = server */
	PGS_EV_INFLIGHT_LIMIT = 3,  /* a = client, b = server, c = bytes in flight (capped) */
	PGS_EV_SERVER_TO_USER = 4,  /* a = server, b = reason (stat index) */
	PGS_EV_SERVER_RETIRED = 5,  /* a = pool, b = server: released to USER (PGS_F_RETIRE) */
	PGS_EV_HANDOFF = 6,         /* a = client, b = server, c = reason (stat index) */
};

struct pgs_event {
	__u32 type;
	__u32 a;
	__u32 b;
	__u32 c;
};

/* Control operations run through BPF_PROG_TEST_RUN on the syscall program. */
enum pgs_op {
	PGS_OP_CLIENT_TO_KERNEL = 1, /* id, expected[, pool: re-home] -> ret 1/0 */
	PGS_OP_CLIENT_TO_USER = 2,   /* id */
	PGS_OP_SERVER_TO_IDLE = 3,   /* id, expected[, pool: re-home] */
	PGS_OP_POP_IDLE = 4,         /* pool -> ret server id or 0 */
	PGS_OP_TAKE_BOUND = 5,       /* id (client) -> ret server id or 0 */
	PGS_OP_READ = 6,             /* id -> fields below */
	PGS_OP_BIND = 7,             /* id (client), sid, expected = server's passed count,
				      * out_in, tail_in: user space wrote a request to sid */
	PGS_OP_ADD = 8,              /* id, sid, out_in (delta), tail_in: more of it written */
	PGS_OP_CLIENT_TO_KERNEL_BOUND = 9, /* id, expected: flip keeping the binding */
	PGS_OP_RETIRE = 10,          /* id (server): IDLE -> USER (ret 1), or mark it so its
				      * release gives it to user space (ret 2 while BOUND) */
};

struct pgs_ctl {
	__u32 op;
	__u32 id;
	__u32 pool;
	__s32 ret; /* 1/0 for CAS ops, id for pops, -errno on bad input */
	__u64 expected;
	/* READ results (also filled by the other ops on success) */
	__u64 word;
	__u32 peer;
	__u32 outstanding;
	__u32 tail_open;
	__u32 flags;
	__u32 role;
	__u32 pool_id;
	struct pgs_frame frame;
	__u64 redirected;
	/* CLIENT_TO_KERNEL in: bytes user space has written to the socket so far (0 = keep);
	 * the in-flight bound counts kernel-redirected bytes beyond that */
	__u64 written;
	/* BIND / ADD in */
	__u32 sid;
	__u32 out_in;
	__u32 tail_in;
	__u32 pad_in;
	/* READ results, appended (see struct pgs_conn) */
	__u32 tail_msgs;
	__u32 tail_answered;
	__u32 applying;
	__u32 pad_out;
};

/* Result of framing one buffer (also the tc test wrapper's output). */
struct pgs_frame_test {
	struct pgs_frame frame; /* carried across chunks */
	__u32 role;
	__u32 n_sync;
	__u32 n_query;
	__u32 n_func;
	__u32 n_z;
	__u32 n_param;
	__u32 n_msgs;   /* completed messages */
	__u32 n_term;
	__u32 errors;
	__u32 last_tail; /* tail_open after the last chunk */
	__u8 z_status[64]; /* first 64 Z statuses */
	/* client: what the verdict's inspection decided for the last chunk
	 * (0 stay in the kernel, else PGS_ST_FB_NAMED_STATEMENT / _SESSION_STATE /
	 * _MIXED_PROTOCOL) */
	__u32 inspect;
	__u32 tail_msgs;     /* as pgs_conn.tail_msgs after the last chunk */
	__u32 tail_answered; /* as pgs_conn.tail_answered after the last chunk */
	/* client: statement names of Bind/Describe(S) the last chunk would have rewritten
	 * (statements.h), and the offset and length of the first one */
	__u32 n_names;
	__u32 name_off;
	__u32 name_len;
	__u32 pad_names;
};

#include "mirror-abi.h"

/* Every type and constant user space reads, in one struct: the BPF compiler only emits
 * BTF for types something references, and the enums above are otherwise used only as
 * values. pgsplice.bpf.c references it from pgs_abi_anchor. */
struct pgs_abi {
	enum pgs_limits limits;
	enum pgs_word word;
	enum pgs_mode mode;
	enum pgs_role role;
	enum pgs_conn_flags flags;
	enum pgs_pool_mode pool_mode;
	enum pgs_stat stat;
	enum pgs_event_type event_type;
	enum pgs_op op;
	enum pgs_stmt_limits stmt_limits;
	struct pgs_stmt_key stmt_key;
	struct pgs_stmt_ref stmt_ref;
	struct pgs_frame frame;
	struct pgs_conn conn;
	struct pgs_pool pool;
	struct pgs_pool_stats pool_stats;
	struct pgs_event event;
	struct pgs_ctl ctl;
	struct pgs_frame_test frame_test;
	enum pgs_mirror_limits mirror_limits;
	enum pgs_mirror_kind mirror_kind;
	enum pgs_mirror_replies mirror_replies;
	struct pgs_mirror_rec mirror_rec;
	struct pgs_mirror_state mirror_state;
};

#endif

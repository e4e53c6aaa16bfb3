/* Mirroring from the kernel path (mirror.h, docs/mirroring.md): the records the verdicts
 * write to mirror_ring and the per-client state behind them. Shared with user space
 * through struct pgs_abi (pgsplice.h), like every other type it reads. */
#ifndef PGS_MIRROR_ABI_H
#define PGS_MIRROR_ABI_H

enum pgs_mirror_limits {
	PGS_MIRROR_RING_BYTES = 4 << 20, /* default mirror_ring size (user space may set another) */
	PGS_MIRROR_SMALL = 256,          /* record sizes (header included): a reservation's size */
	PGS_MIRROR_MEDIUM = 1024,        /* must be a constant, so a copy picks one of three */
	PGS_MIRROR_LARGE = 4096,
	PGS_MIRROR_CHUNKS = 64,          /* records per skb at most: a longer skb is a loss */
};

enum pgs_mirror_kind {
	PGS_MIRROR_REQUEST = 1, /* bytes the client sent, as the kernel redirected them to its server */
	PGS_MIRROR_REPLY = 2,   /* bytes its server sent, as the kernel redirected them to it */
	PGS_MIRROR_RESYNC = 3,  /* after a loss: both streams start clean after this record
				 * (a transaction ended and released its server); lost_xacts
				 * transactions ended since the loss */
};

/* What of the server's replies is copied (pgs_mirror_state.replies). */
enum pgs_mirror_replies {
	PGS_MIRROR_REPLIES_WHOLE = 0, /* every byte (compare: rows hashes the DataRows) */
	PGS_MIRROR_REPLIES_TAGS = 1,  /* only CommandComplete, ErrorResponse, EmptyQueryResponse
				       * and ReadyForQuery, plus any message that crosses an skb
				       * edge: all that compare: tags reads */
};

/* A record of mirror_ring: a header, then len bytes of one skb (a chunk of it). seq counts
 * the records of one client and kind (REQUEST, REPLY) from 0; a record the ring had no room
 * for is never written, and none of that client's follow until its RESYNC. */
struct pgs_mirror_rec {
	__u32 conn;
	__u16 kind;
	__u16 len;
	__u32 seq;
	__u32 lost_xacts;
	__u8 data[0];
};

/* mirror_state value, per mirrored client id (created by user space at registration). */
struct pgs_mirror_state {
	__u32 seq_request;
	__u32 seq_reply;
	__u32 lost;       /* enum pgs_mirror_lost (mirror.h): nonzero while nothing is copied */
	__u32 lost_xacts; /* transactions that ended while lost */
	__u64 lost_records; /* skbs not copied since the start (SHOW BYPASS mirror_lost) */
	__u32 replies;      /* enum pgs_mirror_replies, set by user space at registration */
	__u32 pad;
};

#endif

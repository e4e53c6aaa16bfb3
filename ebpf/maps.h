/* Maps of the pgsplice kernel path. Names are the user-space API (KernelPath looks them up by name). */
#ifndef PGS_MAPS_H
#define PGS_MAPS_H

/* conn id -> socket (value = fd from user space) */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, PGS_MAX_CONNS);
	__type(key, __u32);
	__type(value, __u32);
} socks SEC(".maps");

/* socket cookie -> conn id: the verdict gets the socket, not our id */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PGS_MAX_CONNS);
	__type(key, __u64);
	__type(value, __u32);
} sock_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PGS_MAX_CONNS);
	__type(key, __u32);
	__type(value, struct pgs_conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PGS_MAX_POOLS);
	__type(key, __u32);
	__type(value, struct pgs_pool);
} pools SEC(".maps");

/* Per-pool idle server stacks; user space creates one inner STACK per pool. */
struct pgs_idle_stack {
	__uint(type, BPF_MAP_TYPE_STACK);
	__uint(max_entries, PGS_IDLE_MAX);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, PGS_MAX_POOLS);
	__type(key, __u32);
	__array(values, struct pgs_idle_stack);
} idle SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PGS_ST__MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* pool id -> struct pgs_pool_stats, summed over CPUs by user space once a second */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PGS_MAX_POOLS);
	__type(key, __u32);
	__type(value, struct pgs_pool_stats);
} pool_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

/* Framing state for the tc test wrapper (key 0). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pgs_frame_test);
} frame_test SEC(".maps");

#endif

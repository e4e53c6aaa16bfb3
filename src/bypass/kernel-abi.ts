// TypeScript mirror of ebpf/pgsplice.h: enum values and byte layouts (little-endian,
// x86-64). Change both files together; test/ebpf-framing.test.ts checks the sizes
// against the loaded maps.

export const MODE_SHIFT = 48n;
export const COUNT_MASK = (1n << MODE_SHIFT) - 1n;

export const Mode = { USER: 0, KERNEL: 1, IDLE: 1, BOUND: 2 } as const;
export const Role = { CLIENT: 1, SERVER: 2 } as const;
export const ConnFlags = { PARAMS_CHANGED: 1, FRAME_ERROR: 2, SLOW: 4, RETIRE: 8, HANDOFF: 16 } as const;
export const PoolMode = { SESSION: 0, TRANSACTION: 1 } as const;

/** Index of each per-CPU counter in the `stats` map (enum pgs_stat). */
export const Stat = {
  TRANSACTIONS: 0,
  CLIENT_BYTES: 1,
  CLIENT_MSGS: 2,
  SERVER_BYTES: 3,
  SERVER_MSGS: 4,
  PASSED_SKBS: 5,
  PASSED_BYTES: 6,
  BINDS: 7,
  DROPPED_CLIENT_GONE: 8,
  STALE_IDLE: 9,
  FB_NO_IDLE_SERVER: 10,
  FB_TARGET_MISSING: 11,
  FB_TERMINATE: 12,
  FB_SERVER_ASYNC: 13,
  FB_PARAMS_CHANGED: 14,
  FB_LOOP_LIMIT: 15,
  FB_UNHANDLED: 16,
  FB_INFLIGHT_LIMIT: 17,
  FB_FRAME_ERROR: 18,
  FB_PUSH_FAILED: 19,
  FB_NAMED_STATEMENT: 20,
  FB_SESSION_STATE: 21,
} as const;
export const STAT_COUNT = 22;

/** Fallback reasons by stat index, as KernelCounters.fallbacks keys. */
export const FALLBACK_NAMES: Record<number, string> = {
  [Stat.FB_NO_IDLE_SERVER]: 'no_idle_server',
  [Stat.FB_TARGET_MISSING]: 'target_missing',
  [Stat.FB_TERMINATE]: 'terminate',
  [Stat.FB_SERVER_ASYNC]: 'server_async',
  [Stat.FB_PARAMS_CHANGED]: 'params_changed',
  [Stat.FB_LOOP_LIMIT]: 'loop_limit',
  [Stat.FB_UNHANDLED]: 'unhandled',
  [Stat.FB_INFLIGHT_LIMIT]: 'inflight_limit',
  [Stat.FB_FRAME_ERROR]: 'frame_error',
  [Stat.FB_PUSH_FAILED]: 'push_failed',
  [Stat.FB_NAMED_STATEMENT]: 'named_statement',
  [Stat.FB_SESSION_STATE]: 'session_state',
};

export const EventType = { PARAMS_CHANGED: 1, SERVER_RELEASED: 2, INFLIGHT_LIMIT: 3, SERVER_TO_USER: 4, SERVER_RETIRED: 5, HANDOFF: 6 } as const;

export const Op = {
  CLIENT_TO_KERNEL: 1,
  CLIENT_TO_USER: 2,
  SERVER_TO_IDLE: 3,
  POP_IDLE: 4,
  TAKE_BOUND: 5,
  READ: 6,
  BIND: 7,
  ADD: 8,
  CLIENT_TO_KERNEL_BOUND: 9,
  RETIRE: 10,
} as const;

export const MAX_CONNS = 65536;
export const MAX_POOLS = 256;
export const IDLE_MAX = 4096;
export const BPF_MAP_TYPE_STACK = 23;

export const SIZEOF = { frame: 12, conn: 96, pool: 24, event: 16, ctl: 120, frameTest: 128, poolStats: 48 } as const;

export function modeOf(word: bigint): number {
  return Number(word >> MODE_SHIFT);
}
export function countOf(word: bigint): bigint {
  return word & COUNT_MASK;
}
export function mkWord(mode: number, count: bigint): bigint {
  return (BigInt(mode) << MODE_SHIFT) | (count & COUNT_MASK);
}

export interface Frame {
  remaining: number;
  curType: number;
  hdrLen: number;
  hdr: Buffer; // the hdrLen bytes of a split header already seen
}

export function decodeFrame(b: Buffer, off = 0): Frame {
  const hdrLen = b.readUInt8(off + 5);
  return {
    remaining: b.readUInt32LE(off),
    curType: b.readUInt8(off + 4),
    hdrLen,
    hdr: Buffer.from(b.subarray(off + 6, off + 6 + Math.min(hdrLen, 6))),
  };
}

export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}
export function u64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return b;
}

/** struct pgs_conn as user space writes it at registration (lock field left zero). */
export function encodeConn(c: { role: number; poolId: number; word?: bigint; ackedBase?: bigint }): Buffer {
  const b = Buffer.alloc(SIZEOF.conn);
  b.writeBigUInt64LE(c.word ?? 0n, 0);
  b.writeUInt32LE(c.poolId >>> 0, 28);
  b.writeUInt32LE(c.role, 32);
  b.writeBigUInt64LE(c.ackedBase ?? 0n, 56);
  return b;
}

export interface ConnState {
  word: bigint;
  peer: number;
  outstanding: number;
  tailOpen: number;
  flags: number;
  poolId: number;
  role: number;
  frame: Frame;
  redirected: bigint;
  ackedBase: bigint;
  xactStart: bigint; // bpf_ktime_get_ns (CLOCK_MONOTONIC) or 0
  queryStart: bigint;
  tailMessages: number;
  tailAnswered: number;
  applying: number;
}

export function decodeConn(b: Buffer): ConnState {
  return {
    word: b.readBigUInt64LE(0),
    peer: b.readUInt32LE(12),
    outstanding: b.readUInt32LE(16),
    tailOpen: b.readUInt32LE(20),
    flags: b.readUInt32LE(24),
    poolId: b.readUInt32LE(28),
    role: b.readUInt32LE(32),
    frame: decodeFrame(b, 36),
    redirected: b.readBigUInt64LE(48),
    ackedBase: b.readBigUInt64LE(56),
    xactStart: b.readBigUInt64LE(64),
    queryStart: b.readBigUInt64LE(72),
    tailMessages: b.readUInt32LE(80),
    tailAnswered: b.readUInt32LE(84),
    applying: b.readUInt32LE(88),
  };
}

/** struct pgs_pool_stats: what one kernel pool carried (one CPU's share, or their sum). */
export interface PoolStats {
  xacts: bigint;
  queries: bigint;
  clientBytes: bigint;
  serverBytes: bigint;
  xactNs: bigint;
  queryNs: bigint;
}

export function decodePoolStats(b: Buffer): PoolStats {
  return {
    xacts: b.readBigUInt64LE(0),
    queries: b.readBigUInt64LE(8),
    clientBytes: b.readBigUInt64LE(16),
    serverBytes: b.readBigUInt64LE(24),
    xactNs: b.readBigUInt64LE(32),
    queryNs: b.readBigUInt64LE(40),
  };
}

export function encodePool(p: { mode: number; waiters: boolean; inflightLimit: bigint; idleCount?: bigint }): Buffer {
  const b = Buffer.alloc(SIZEOF.pool);
  b.writeUInt32LE(p.mode, 0);
  b.writeUInt32LE(p.waiters ? 1 : 0, 4);
  b.writeBigUInt64LE(p.inflightLimit, 8);
  b.writeBigInt64LE(p.idleCount ?? 0n, 16);
  return b;
}

export function decodePool(b: Buffer): { mode: number; waiters: boolean; inflightLimit: bigint; idleCount: bigint } {
  return {
    mode: b.readUInt32LE(0),
    waiters: b.readUInt32LE(4) !== 0,
    inflightLimit: b.readBigUInt64LE(8),
    idleCount: b.readBigInt64LE(16),
  };
}

export interface CtlArgs {
  op: number;
  id?: number;
  pool?: number;
  expected?: bigint;
  written?: bigint;
  sid?: number;
  outIn?: number;
  tailIn?: number;
}

export interface CtlResult {
  ret: number;
  word: bigint;
  peer: number;
  outstanding: number;
  tailOpen: number;
  flags: number;
  role: number;
  poolId: number;
  frame: Frame;
  redirected: bigint;
  tailMessages: number;
  tailAnswered: number;
  applying: number;
}

export function encodeCtl(a: CtlArgs): Buffer {
  const b = Buffer.alloc(SIZEOF.ctl);
  b.writeUInt32LE(a.op, 0);
  b.writeUInt32LE((a.id ?? 0) >>> 0, 4);
  b.writeUInt32LE((a.pool ?? 0) >>> 0, 8);
  b.writeBigUInt64LE(a.expected ?? 0n, 16);
  b.writeBigUInt64LE(a.written ?? 0n, 80);
  b.writeUInt32LE((a.sid ?? 0) >>> 0, 88);
  b.writeUInt32LE((a.outIn ?? 0) >>> 0, 92);
  b.writeUInt32LE((a.tailIn ?? 0) >>> 0, 96);
  return b;
}

export function decodeCtl(b: Buffer): CtlResult {
  return {
    ret: b.readInt32LE(12),
    word: b.readBigUInt64LE(24),
    peer: b.readUInt32LE(32),
    outstanding: b.readUInt32LE(36),
    tailOpen: b.readUInt32LE(40),
    flags: b.readUInt32LE(44),
    role: b.readUInt32LE(48),
    poolId: b.readUInt32LE(52),
    frame: decodeFrame(b, 56),
    redirected: b.readBigUInt64LE(72),
    tailMessages: b.readUInt32LE(104),
    tailAnswered: b.readUInt32LE(108),
    applying: b.readUInt32LE(112),
  };
}

export interface KernelEventRaw {
  type: number;
  a: number;
  b: number;
  c: number;
}

export function decodeEvent(b: Buffer): KernelEventRaw {
  return { type: b.readUInt32LE(0), a: b.readUInt32LE(4), b: b.readUInt32LE(8), c: b.readUInt32LE(12) };
}

/** struct pgs_frame_test: the tc framing wrapper's state/results (key 0 of `frame_test`). */
export interface FrameTest {
  frame: Frame;
  role: number;
  nSync: number;
  nQuery: number;
  nFunc: number;
  nZ: number;
  nParam: number;
  nMsgs: number;
  nTerm: number;
  errors: number;
  lastTail: number;
  zStatus: string; // first 64 statuses as characters
  inspect: number; // client: 0, or the Stat index of the first chunk's punt
  tailMessages: number;
  tailAnswered: number;
}

export function encodeFrameTest(role: number): Buffer {
  const b = Buffer.alloc(SIZEOF.frameTest);
  b.writeUInt32LE(role, 12);
  return b;
}

export function decodeFrameTest(b: Buffer): FrameTest {
  const nZ = b.readUInt32LE(28);
  return {
    frame: decodeFrame(b, 0),
    role: b.readUInt32LE(12),
    nSync: b.readUInt32LE(16),
    nQuery: b.readUInt32LE(20),
    nFunc: b.readUInt32LE(24),
    nZ,
    nParam: b.readUInt32LE(32),
    nMsgs: b.readUInt32LE(36),
    nTerm: b.readUInt32LE(40),
    errors: b.readUInt32LE(44),
    lastTail: b.readUInt32LE(48),
    zStatus: b.subarray(52, 52 + Math.min(nZ, 64)).toString('latin1'),
    inspect: b.readUInt32LE(116),
    tailMessages: b.readUInt32LE(120),
    tailAnswered: b.readUInt32LE(124),
  };
}

// Typed view of ebpf/pgsplice.h: enum values and byte layouts (little-endian, x86-64).
// Every number comes from kernel-abi.generated.ts, generated from the object's BTF by
// scripts/gen-kernel-abi.mjs; test/kernel-abi.test.ts fails when it is stale or when a
// decoder below reads a field with the wrong width.
import { ENUMS, STRUCTS } from './kernel-abi.generated';

/** `{ PGS_ST_BINDS: 7 }` with prefix `PGS_ST_` -> `{ BINDS: 7 }`. */
type Stripped<T, P extends string> = { readonly [K in keyof T as K extends `${P}${infer R}` ? R : never]: T[K] };
function strip<T extends Record<string, number>, P extends string>(values: T, prefix: P): Stripped<T, P> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(values)) if (k.startsWith(prefix)) out[k.slice(prefix.length)] = v;
  return out as Stripped<T, P>;
}

export const MODE_SHIFT = BigInt(ENUMS.pgs_word.PGS_MODE_SHIFT);
export const COUNT_MASK = (1n << MODE_SHIFT) - 1n;

export const Mode = strip(ENUMS.pgs_mode, 'PGS_');
export const Role = strip(ENUMS.pgs_role, 'PGS_ROLE_');
export const ConnFlags = strip(ENUMS.pgs_conn_flags, 'PGS_F_');
export const PoolMode = strip(ENUMS.pgs_pool_mode, 'PGS_POOL_');

/** Index of each per-CPU counter in the `stats` map (enum pgs_stat). */
export const Stat = strip(ENUMS.pgs_stat, 'PGS_ST_');
export const STAT_COUNT = ENUMS.pgs_stat.PGS_ST__MAX;

/** Fallback reasons by stat index, as KernelCounters.fallbacks keys: PGS_ST_FB_NO_IDLE_SERVER
 * is 'no_idle_server'. */
export const FALLBACK_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(Stat).filter(([k]) => k.startsWith('FB_')).map(([k, v]) => [v, k.slice('FB_'.length).toLowerCase()]),
);

export const EventType = strip(ENUMS.pgs_event_type, 'PGS_EV_');
export const Op = strip(ENUMS.pgs_op, 'PGS_OP_');

export const MAX_CONNS = ENUMS.pgs_limits.PGS_MAX_CONNS;
export const MAX_POOLS = ENUMS.pgs_limits.PGS_MAX_POOLS;
export const IDLE_MAX = ENUMS.pgs_limits.PGS_IDLE_MAX;
export const BPF_MAP_TYPE_STACK = ENUMS.bpf_map_type.BPF_MAP_TYPE_STACK;

export const SIZEOF = {
  frame: STRUCTS.pgs_frame.size,
  conn: STRUCTS.pgs_conn.size,
  pool: STRUCTS.pgs_pool.size,
  event: STRUCTS.pgs_event.size,
  ctl: STRUCTS.pgs_ctl.size,
  frameTest: STRUCTS.pgs_frame_test.size,
  poolStats: STRUCTS.pgs_pool_stats.size,
} as const;

// Field offsets by struct, as the decoders below use them.
const FRAME = STRUCTS.pgs_frame.fields;
const CONN = STRUCTS.pgs_conn.fields;
const POOL = STRUCTS.pgs_pool.fields;
const POOL_STATS = STRUCTS.pgs_pool_stats.fields;
const EVENT = STRUCTS.pgs_event.fields;
const CTL = STRUCTS.pgs_ctl.fields;
const FRAME_TEST = STRUCTS.pgs_frame_test.fields;

interface Field {
  readonly offset: number;
  readonly size: number;
  readonly kind: string;
}
type Scalar = number | bigint;
// TypeScript names that are not their C name in camelCase.
const ALIAS: Record<string, string> = { tail_msgs: 'tailMessages' };

// Every integer field of a struct (padding aside), read at its BTF offset and size and
// named in camelCase (tail_open: tailOpen): the decoders follow the C layout, with no
// hand-written list of offsets to drift from it. Structs and arrays are the caller's.
// The reader is built once per struct, as one function that reads every field at its
// fixed offset into an object literal: the decoders run for every control operation of
// the hand-over path (several per waiting request), where working out names and sizes
// per call cost ~14 µs a decode instead of well under one.
type Reader = (b: Buffer, base: number) => Record<string, Scalar>;
const readers = new WeakMap<object, Reader>();

const READ_METHOD: Record<string, string> = {
  u8: 'readUInt8', s8: 'readInt8', u16: 'readUInt16LE', s16: 'readInt16LE',
  u32: 'readUInt32LE', s32: 'readInt32LE', u64: 'readBigUInt64LE', s64: 'readBigInt64LE',
};

function readerOf(fields: Readonly<Record<string, Field>>): Reader {
  let r = readers.get(fields);
  if (!r) {
    const parts: string[] = [];
    for (const name in fields) {
      const f = fields[name];
      if ((f.kind !== 'u' && f.kind !== 's') || name.startsWith('pad')) continue;
      const method = READ_METHOD[`${f.kind}${f.size * 8}`];
      if (!method || !Number.isInteger(f.offset)) throw new Error(`kernel ABI: field ${name} (${f.kind}, ${f.size} bytes) has no reader`);
      const key = ALIAS[name] ?? name.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
      parts.push(`${JSON.stringify(key)}: b.${method}(base + ${f.offset})`);
    }
    r = new Function('b', 'base', `return { ${parts.join(', ')} };`) as Reader;
    readers.set(fields, r);
  }
  return r;
}

function readScalars(b: Buffer, fields: Readonly<Record<string, Field>>, base = 0): Record<string, Scalar> {
  return readerOf(fields)(b, base);
}

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
  const r = readScalars(b, FRAME, off) as unknown as Frame;
  const at = off + FRAME.hdr.offset;
  r.hdr = Buffer.from(b.subarray(at, at + Math.min(r.hdrLen, FRAME.hdr.size)));
  return r;
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
export function encodeConn(c: { role: number; poolId: number; word?: bigint; ackedBase?: bigint; mirror?: boolean }): Buffer {
  const b = Buffer.alloc(SIZEOF.conn);
  b.writeUInt32LE(c.mirror ? 1 : 0, CONN.mirror.offset);
  b.writeBigUInt64LE(c.word ?? 0n, CONN.word.offset);
  b.writeUInt32LE(c.poolId >>> 0, CONN.pool_id.offset);
  b.writeUInt32LE(c.role, CONN.role.offset);
  b.writeBigUInt64LE(c.ackedBase ?? 0n, CONN.acked_base.offset);
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

// A struct that embeds a struct pgs_frame (pgs_conn, pgs_ctl): its integers and its frame.
function withFrame<T>(b: Buffer, fields: Readonly<Record<string, Field>> & { frame: Field }): T {
  const r = readScalars(b, fields) as Record<string, unknown>;
  r.frame = decodeFrame(b, fields.frame.offset);
  return r as T;
}

export function decodeConn(b: Buffer): ConnState {
  return withFrame<ConnState>(b, CONN);
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
  return readScalars(b, POOL_STATS) as unknown as PoolStats;
}

export function encodePool(p: { mode: number; waiters: boolean; inflightLimit: bigint; idleCount?: bigint }): Buffer {
  const b = Buffer.alloc(SIZEOF.pool);
  b.writeUInt32LE(p.mode, POOL.mode.offset);
  b.writeUInt32LE(p.waiters ? 1 : 0, POOL.waiters.offset);
  b.writeBigUInt64LE(p.inflightLimit, POOL.inflight_limit.offset);
  b.writeBigInt64LE(p.idleCount ?? 0n, POOL.idle_count.offset);
  return b;
}

export function decodePool(b: Buffer): { mode: number; waiters: boolean; inflightLimit: bigint; idleCount: bigint } {
  const r = readScalars(b, POOL) as { mode: number; waiters: number; inflightLimit: bigint; idleCount: bigint };
  return { ...r, waiters: r.waiters !== 0 };
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

/** What a control operation returns: its result code and the connection's state (struct pgs_ctl). */
export interface CtlResult extends Omit<ConnState, 'ackedBase' | 'xactStart' | 'queryStart'> {
  ret: number;
}

export function encodeCtl(a: CtlArgs): Buffer {
  return encodeCtlInto(Buffer.alloc(SIZEOF.ctl), a);
}

// Into a buffer of SIZEOF.ctl bytes that is reused for every control operation (the
// kernel writes the results back into it): zeroed first, so no result of the last one
// is read as an argument.
export function encodeCtlInto(b: Buffer, a: CtlArgs): Buffer {
  b.fill(0);
  b.writeUInt32LE(a.op, CTL.op.offset);
  b.writeUInt32LE((a.id ?? 0) >>> 0, CTL.id.offset);
  b.writeUInt32LE((a.pool ?? 0) >>> 0, CTL.pool.offset);
  b.writeBigUInt64LE(a.expected ?? 0n, CTL.expected.offset);
  b.writeBigUInt64LE(a.written ?? 0n, CTL.written.offset);
  b.writeUInt32LE((a.sid ?? 0) >>> 0, CTL.sid.offset);
  b.writeUInt32LE((a.outIn ?? 0) >>> 0, CTL.out_in.offset);
  b.writeUInt32LE((a.tailIn ?? 0) >>> 0, CTL.tail_in.offset);
  return b;
}

export function decodeCtl(b: Buffer): CtlResult {
  return withFrame<CtlResult>(b, CTL);
}

// Only the result code (ret) of a control operation: what every op but READ answers.
export function ctlRetOf(b: Buffer): number {
  return b.readInt32LE(CTL.ret.offset);
}

export interface KernelEventRaw {
  type: number;
  a: number;
  b: number;
  c: number;
}

// ---- mirroring from the kernel path (ebpf/mirror.h) ----

export const MirrorKind = strip(ENUMS.pgs_mirror_kind, 'PGS_MIRROR_');
/** What of a mirrored client's replies the server's verdict copies (ebpf/mirror-abi.h). */
export const MirrorReplies = strip(ENUMS.pgs_mirror_replies, 'PGS_MIRROR_REPLIES_');
export const MIRROR_RING_BYTES = ENUMS.pgs_mirror_limits.PGS_MIRROR_RING_BYTES;
const MIRROR_REC = STRUCTS.pgs_mirror_rec.fields;
const MIRROR_STATE = STRUCTS.pgs_mirror_state.fields;

/** A record of mirror_ring: data is a view of b (the record is the caller's to keep). */
export interface MirrorRecord {
  conn: number;
  kind: number;
  seq: number;
  lostXacts: number;
  data: Buffer;
}

// The record at [base, base + size) of b (a drained batch of them): one view of b for its
// data, none for the record itself (a batch holds a record per skb copied).
export function decodeMirrorRecord(b: Buffer, base = 0, size = b.length - base): MirrorRecord {
  const r = readScalars(b, MIRROR_REC, base) as { conn: number; kind: number; len: number; seq: number; lostXacts: number };
  const at = base + MIRROR_REC.data.offset;
  return { conn: r.conn, kind: r.kind, seq: r.seq, lostXacts: r.lostXacts, data: b.subarray(at, Math.min(base + size, at + r.len)) };
}

// What of a record the ring's reader copies: its header, up to the data, and `len` bytes
// of data (a record is a fixed-size reservation, mostly unused for a short chunk).
if (MIRROR_REC.len.size !== 2) throw new Error('kernel ABI: pgs_mirror_rec.len is not a u16');
export const MIRROR_REC_TRIM: [number, number] = [MIRROR_REC.data.offset, MIRROR_REC.len.offset];

export interface MirrorState {
  lost: boolean;
  lostXacts: number;
  lostRecords: bigint;
}

export function decodeMirrorState(b: Buffer): MirrorState {
  const r = readScalars(b, MIRROR_STATE) as { lost: number; lostXacts: number; lostRecords: bigint };
  return { lost: r.lost !== 0, lostXacts: r.lostXacts, lostRecords: r.lostRecords };
}

export const SIZEOF_MIRROR_STATE = STRUCTS.pgs_mirror_state.size;

/** A new client's state: nothing copied or lost yet; replies: a MirrorReplies value. */
export function encodeMirrorState(replies: number): Buffer {
  const out = Buffer.alloc(SIZEOF_MIRROR_STATE);
  out.writeUInt32LE(replies, MIRROR_STATE.replies.offset);
  return out;
}

/** The state with lost and lost_xacts cleared (user space counted them), seqs kept. */
export function mirrorStateResumed(b: Buffer): Buffer {
  const out = Buffer.from(b);
  out.writeUInt32LE(0, MIRROR_STATE.lost.offset);
  out.writeUInt32LE(0, MIRROR_STATE.lost_xacts.offset);
  return out;
}

export function decodeEvent(b: Buffer): KernelEventRaw {
  return readScalars(b, EVENT) as unknown as KernelEventRaw;
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
  nNames: number; // client: statement names of Bind/Describe(S) the verdict would rewrite
  nameOff: number; // offset of the first one in its chunk
  nameLen: number;
}

export function encodeFrameTest(role: number): Buffer {
  const b = Buffer.alloc(SIZEOF.frameTest);
  b.writeUInt32LE(role, FRAME_TEST.role.offset);
  return b;
}

export function decodeFrameTest(b: Buffer): FrameTest {
  const r = readScalars(b, FRAME_TEST) as unknown as Omit<FrameTest, 'frame' | 'zStatus'>;
  const at = FRAME_TEST.z_status.offset;
  const zStatus = b.subarray(at, at + Math.min(r.nZ, FRAME_TEST.z_status.size)).toString('latin1');
  return { ...r, frame: decodeFrame(b, FRAME_TEST.frame.offset), zStatus };
}

// ---- named statements in the kernel (ebpf/statements.h) ----

export const STMT_NAME_MAX = ENUMS.pgs_stmt_limits.PGS_STMT_NAME_MAX;
export const STMT_NO_NAME = ENUMS.pgs_stmt_limits.PGS_STMT_NO_NAME;
export const STMT_IDX_LIMIT = ENUMS.pgs_stmt_limits.PGS_STMT_IDX_LIMIT;
const STMT_KEY = STRUCTS.pgs_stmt_key;
const STMT_REF = STRUCTS.pgs_stmt_ref;

/** struct pgs_stmt_key (stmt_names): a client id and its statement name, NUL padded. */
export function encodeStmtKey(conn: number, name: Buffer): Buffer {
  const f = STMT_KEY.fields;
  if (name.length > STMT_NAME_MAX || name.length >= f.name.size) throw new RangeError(`statement name of ${name.length} bytes > ${STMT_NAME_MAX}`);
  const b = Buffer.alloc(STMT_KEY.size);
  b.writeUInt32LE(conn >>> 0, f.conn.offset);
  name.copy(b, f.name.offset);
  return b;
}

/** struct pgs_stmt_ref (stmt_servers): a server id, a name length and index. */
export function encodeStmtRef(conn: number, len: number, idx: number): Buffer {
  const f = STMT_REF.fields;
  const b = Buffer.alloc(STMT_REF.size);
  b.writeUInt32LE(conn >>> 0, f.conn.offset);
  b.writeUInt32LE(len >>> 0, f.len.offset);
  b.writeUInt32LE(idx >>> 0, f.idx.offset);
  return b;
}

// KernelPath: the one TypeScript module that loads the pgsplice addon. It registers
// sockets in the sockhash, runs the control operations (each one atomic transition in
// the kernel, see docs/kernel-path.md) and reads counters and events.
import * as fs from 'fs';
import * as path from 'path';
import * as abi from './kernel-abi';

// The mirror ring is drained this long after the kernel signals records, in one batch with
// those copied meanwhile: under load a wake-up per batch of transactions instead of about
// one per record (each costs the proxy a poll callback and a call into JS). Mirrored
// transactions reach the mirror that much later; the ring holds what is copied meanwhile
// (at 100 MB/s of mirrored traffic, 100 KB of the 4 MiB default). Bytes that reach user
// space another way still drain the ring first (drainMirror), so nothing overtakes.
const MIRROR_DRAIN_DELAY_MS = 1;

export type FallbackReason =
  | 'no_idle_server'
  | 'target_missing'
  | 'terminate'
  | 'server_async'
  | 'params_changed'
  | 'loop_limit'
  | 'unhandled'
  | string;

export interface KernelCounters {
  transactions: bigint;
  clientBytes: bigint;
  serverBytes: bigint;
  passedSkbs: bigint;
  fallbacks: Record<string, bigint>;
  [k: string]: unknown;
}

export type KernelEvent =
  | { type: 'params_changed'; client: number; server: number }
  | { type: 'server_released'; pool: number; server?: number }
  // the in-flight bound handed the pair to user space: takeBound(client) returns the
  // server; write to the client only once its kernel-queued bytes are acked
  | { type: 'inflight_limit'; client: number; server: number; inflight?: number }
  // the kernel gave a server back to user space (unsolicited bytes while idle, lost
  // framing, full idle stack); its bytes now arrive on its socket
  | { type: 'server_to_user'; server: number; reason: FallbackReason }
  // a server marked by retire() was released by the kernel into USER, not IDLE: close it
  | { type: 'server_retired'; pool: number; server: number }
  // a bound client sent a named statement or session-state SQL: the pair is user space's
  | { type: 'handoff'; client: number; server: number; reason: FallbackReason };

export interface ConnRead {
  mode: number;
  passed: bigint;
  peer: number;
  outstanding: number;
  flags: number;
  tailOpen: number;
  role: 'client' | 'server';
  poolId: number;
  /** framing position of the bytes the kernel has seen: after a hand-over mid-message,
   * the next `frame.remaining` bytes are the rest of a message of type `frame.curType`,
   * or, if `frame.hdrLen` > 0, the socket's next bytes complete the header `frame.hdr` */
  frame: abi.Frame;
  redirected: bigint;
  /** client: P/B/D/E/C the kernel forwarded after the last Sync/Query/FunctionCall */
  tailMessages: number;
  /** client: final answers (1 2 3 n T C I s) the kernel forwarded since the last ReadyForQuery */
  tailAnswered: number;
  /** server: its verdict is applying a forwarded skb to its client's counts right now */
  applying: boolean;
}

export interface FrameRun {
  syncs: number;
  queries: number;
  functionCalls: number;
  readyForQuery: number;
  zStatuses: string;
  parameterStatus: number;
  messages: number;
  terminates: number;
  errors: number;
  tailOpen: boolean;
  frame: abi.Frame;
  /** client: null if the kernel may forward every chunk, else why the first one that it
   * may not goes to user space ('named_statement' | 'session_state') */
  inspect: string | null;
  tailMessages: number;
  tailAnswered: number;
  /** client: statement names (Bind/Describe(S)) the verdict would rewrite, and the first one's place */
  names: { count: number; offset: number; length: number };
}

interface BpfObject {
  attachSockmapVerdict(prog: string, map: string): number;
  mapUpdate(map: string, key: Buffer, value: Buffer, flags?: number): void;
  mapLookup(map: string, key: Buffer, flags?: number): Buffer | null;
  mapLookupPercpu(map: string, key: Buffer): Buffer[] | null;
  mapDelete(map: string, key: Buffer): boolean;
  mapPush(map: string, value: Buffer): void;
  mapPop(map: string): Buffer | null;
  mapInfo(map: string): { fd: number; type: number; keySize: number; valueSize: number; maxEntries: number };
  createInnerMap(outer: string, key: Buffer, type: number, keySize: number, valueSize: number, maxEntries: number): number;
  progTestRun(prog: string, data: Buffer | null, ctx: Buffer | null): { retval: number; dataOut: Buffer | null; ctxOut: Buffer | null; duration: number };
  programFd(prog: string): number; // a BPF_PROG_TYPE_SYSCALL program's fd, for runSyscall
  runSyscall(progFd: number, ctx: Buffer): number; // runs it on ctx in place; retval
  // batch: one call per wake-up with every record (u32 length + bytes each); delayMs: the
  // records are consumed that long after the wake-up, with those that arrive meanwhile.
  // trim: [header bytes, offset of a u16 length]: a record is copied up to header + length.
  onEvents(map: string, cb: (b: Buffer) => void, batch?: boolean, delayMs?: number, trim?: [number, number]): void;
  drainEvents(map: string): void;
  globalU64(offset: number): number;
  close(): void;
}

interface Addon {
  // programs: the only programs loaded and verified (default all)
  load(objPath: string, opts?: { mapSizes?: Record<string, number>; programs?: string[] }): BpfObject;
  socketCookie(fd: number): bigint;
  tcpBytesWritten(fd: number): bigint;
  libbpfVersion(): string;
  listenReusePort(host: string, port: number, backlog: number): number;
  tcpOption(fd: number, name: 'keepcnt' | 'keepintvl' | 'user_timeout', value?: number): number; // src/pooling/tcp-options.ts
  sendDatagram(path: string, data: Buffer): number; // src/observe/syslog.ts
}

// The programs the proxy runs: the verdict on the sockhash and the control operations.
const PROXY_PROGRAMS = ['pgs_verdict', 'pgs_ctl'];
// The tc wrapper of the framing code, which only frameChunks (the tests) runs.
const FRAME_TEST_PROGRAM = 'pgs_frame_test';

const ADDON_REL = path.join('addon', 'build', 'Release', 'pgsplice.node');
const OBJ_REL = path.join('ebpf', 'pgsplice.bpf.o');

// Works from src/kernel (ts) and dist/src/kernel (compiled): walk up to the repo root.
function findUp(rel: string): string | null {
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    const p = path.join(dir, rel);
    if (fs.existsSync(p)) return p;
    const up = path.dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return null;
}

let addonCache: Addon | null = null;
// Also used for SO_REUSEPORT listeners (src/workers/listen.ts) TCP options (src/pooling/tcp-options.ts) and syslog (src/observe/syslog.ts).
export function loadAddon(): Addon {
  if (addonCache) return addonCache;
  const p = process.env.PGSPLICE_ADDON ?? findUp(ADDON_REL);
  if (!p) throw new Error(`kernel path unavailable: addon not built (${ADDON_REL} not found; run scripts/bootstrap)`);
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    addonCache = require(p) as Addon;
  } catch (e) {
    throw new Error(`kernel path unavailable: cannot load addon ${p}: ${(e as Error).message}`);
  }
  return addonCache;
}

const FIELD_ROLE = { [abi.Role.CLIENT]: 'client', [abi.Role.SERVER]: 'server' } as const;

interface Reg {
  fd: number;
  cookie: bigint;
  role: number;
  written: bigint; // TCP bytes written at registration
}

export class KernelPath {
  private readonly listeners: Array<(e: KernelEvent) => void> = [];
  private mirrorListener: ((r: abi.MirrorRecord) => void) | null = null;
  private readonly regs = new Map<number, Reg>();
  private readonly stacks = new Set<number>();
  // statement map keys (hex) per conn id, so that unregister removes every entry of it
  private readonly stmtKeys = new Map<number, Map<string, 'stmt_names' | 'stmt_servers'>>();
  private closed = false;

  private constructor(
    private readonly addon: Addon,
    private readonly obj: BpfObject,
    private readonly frameTest: boolean,
  ) {
    this.ctlFd = obj.programFd('pgs_ctl');
  }

  /** Load the BPF object and attach the verdict. Throws an Error saying why not.
   * mirrorRingBytes: the size of the ring mirrored traffic is copied into (ebpf/mirror.h;
   * config key mirror_ring_bytes, a power of two of at least a page).
   * frameTest: also load the tc framing wrapper that frameChunks runs (tests only). The
   * proxy never runs it, and verifying it was ~40% of a load's CPU (~0.45 s of ~1.1 s). */
  static open(opts: { objPath?: string; mirrorRingBytes?: number; frameTest?: boolean } = {}): KernelPath {
    const addon = loadAddon();
    const objPath = opts.objPath ?? process.env.PGSPLICE_BPF_OBJ ?? findUp(OBJ_REL);
    if (!objPath || !fs.existsSync(objPath))
      throw new Error(`kernel path unavailable: BPF object not built (${OBJ_REL}; run scripts/bootstrap)`);
    let obj: BpfObject;
    const ring = opts.mirrorRingBytes ?? abi.MIRROR_RING_BYTES;
    try {
      obj = addon.load(objPath, {
        programs: opts.frameTest ? [...PROXY_PROGRAMS, FRAME_TEST_PROGRAM] : PROXY_PROGRAMS,
        ...(ring === abi.MIRROR_RING_BYTES ? {} : { mapSizes: { mirror_ring: ring } }),
      });
    } catch (e) {
      const uid = typeof process.getuid === 'function' ? process.getuid() : -1;
      const [first, ...log] = (e as Error).message.split('\n');
      const hint = /Operation not permitted|EPERM/.test(first)
        ? ` (needs CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON; uid ${uid})`
        : '';
      // first line says why (callers log it); the libbpf/verifier log tail follows
      throw new Error([`kernel path unavailable: ${first}${hint}`, ...log].join('\n'));
    }
    try {
      obj.attachSockmapVerdict('pgs_verdict', 'socks');
    } catch (e) {
      obj.close();
      throw new Error(`kernel path unavailable: ${(e as Error).message}`);
    }
    const kp = new KernelPath(addon, obj, opts.frameTest === true);
    obj.onEvents('events', (b) => kp.dispatch(b));
    obj.onEvents('mirror_ring', (b) => kp.mirrorBatch(b), true, MIRROR_DRAIN_DELAY_MS, abi.MIRROR_REC_TRIM);
    return kp;
  }

  private check(): void {
    if (this.closed) throw new Error('KernelPath is closed');
  }

  // One control operation: run in place on one reused context buffer (runSyscall), as
  // these run several times per request that waits for a server, on Node's one thread.
  // ret: only the result code (every op but READ), without decoding the rest.
  private runCtl(a: abi.CtlArgs): Buffer {
    this.check();
    this.obj.runSyscall(this.ctlFd, abi.encodeCtlInto(this.ctlBuf, a));
    return this.ctlBuf;
  }
  private ctl(a: abi.CtlArgs): abi.CtlResult {
    return abi.decodeCtl(this.runCtl(a));
  }
  private ctlRet(a: abi.CtlArgs): number {
    return abi.ctlRetOf(this.runCtl(a));
  }
  private readonly ctlBuf = Buffer.alloc(abi.SIZEOF.ctl);
  private readonly ctlFd: number;

  private poolEntry(poolId: number): { mode: number; waiters: boolean; inflightLimit: bigint; idleCount: bigint } {
    const b = this.obj.mapLookup('pools', abi.u32(poolId));
    return b ? abi.decodePool(b) : { mode: abi.PoolMode.SESSION, waiters: false, inflightLimit: 0n, idleCount: 0n };
  }

  private checkPool(poolId: number): void {
    if (!Number.isInteger(poolId) || poolId < 0 || poolId >= abi.MAX_POOLS)
      throw new RangeError(`pool id ${poolId} out of range 0..${abi.MAX_POOLS - 1}`);
  }

  /** Creates the pool's idle stack (4096 entries; maxIdle must not exceed it and is not
   * otherwise enforced in the kernel). inflightLimit: bytes redirected to a client and not
   * yet acked above which the kernel hands the pair to user space (event inflight_limit;
   * 0/undefined = unbounded). */
  configurePool(poolId: number, opts: { mode: 'session' | 'transaction'; maxIdle: number; inflightLimit?: number }): void {
    this.check();
    this.checkPool(poolId);
    if (opts.maxIdle > abi.IDLE_MAX) throw new RangeError(`maxIdle ${opts.maxIdle} > ${abi.IDLE_MAX} (idle stack size)`);
    if (!this.stacks.has(poolId)) {
      this.obj.createInnerMap('idle', abi.u32(poolId), abi.BPF_MAP_TYPE_STACK, 0, 4, abi.IDLE_MAX);
      this.stacks.add(poolId);
    }
    const cur = this.poolEntry(poolId);
    this.obj.mapUpdate(
      'pools',
      abi.u32(poolId),
      abi.encodePool({
        mode: opts.mode === 'transaction' ? abi.PoolMode.TRANSACTION : abi.PoolMode.SESSION,
        waiters: cur.waiters,
        inflightLimit: BigInt(opts.inflightLimit ?? 0),
        idleCount: cur.idleCount,
      }),
    );
  }

  /** While set, the kernel emits server_released after each release in this pool. */
  setPoolWaiters(poolId: number, waiting: boolean): void {
    this.check();
    this.checkPool(poolId);
    // Only user space writes the flag: what it last wrote is known, and an unchanged
    // value costs no map read (this is called on every change of a pool's waiters).
    if (this.waitersSet.get(poolId) === waiting) return;
    const cur = this.poolEntry(poolId);
    this.waitersSet.set(poolId, waiting);
    if (cur.waiters === waiting) return;
    // read-modify-write: only idle_count (best effort) can lose a concurrent update
    this.obj.mapUpdate('pools', abi.u32(poolId), abi.encodePool({ ...cur, waiters: waiting }));
  }
  private readonly waitersSet = new Map<number, boolean>();

  private register(id: number, fd: number, poolId: number, role: number, mirror = false): void {
    this.check();
    this.checkPool(poolId);
    if (!Number.isInteger(id) || id <= 0 || id > 0xffffffff) throw new RangeError(`conn id ${id} must be 1..2^32-1`);
    if (this.regs.has(id)) throw new Error(`conn id ${id} already registered`);
    const cookie = this.addon.socketCookie(fd);
    const written = this.addon.tcpBytesWritten(fd);
    const ackedBase = role === abi.Role.CLIENT ? written : 0n;
    // state first, socket last: the verdict never sees a socket without its state
    this.obj.mapUpdate('conns', abi.u32(id), abi.encodeConn({ role, poolId, ackedBase, mirror }));
    this.obj.mapUpdate('sock_ids', abi.u64(cookie), abi.u32(id));
    try {
      this.obj.mapUpdate('socks', abi.u32(id), abi.u32(fd));
    } catch (e) {
      this.obj.mapDelete('sock_ids', abi.u64(cookie));
      this.obj.mapDelete('conns', abi.u32(id));
      throw e;
    }
    this.regs.set(id, { fd, cookie, role, written });
  }

  /** Mode USER, counters 0. Drain the socket (read to EAGAIN) before: bytes already
   * queued when a socket is inserted are not seen by the verdict.
   * mirrorReplies: for a mirrored client, what of its replies the verdicts copy (a
   * MirrorReplies value); null if it is not mirrored. */
  registerClient(id: number, fd: number, poolId: number, mirrorReplies: number | null = null): void {
    const mirror = mirrorReplies !== null;
    // mirror state first: a verdict that sees conn.mirror finds it (ebpf/mirror.h)
    if (mirror) this.obj.mapUpdate('mirror_state', abi.u32(id), abi.encodeMirrorState(mirrorReplies));
    try {
      this.register(id, fd, poolId, abi.Role.CLIENT, mirror);
    } catch (e) {
      if (mirror) this.obj.mapDelete('mirror_state', abi.u32(id));
      throw e;
    }
  }

  // ---- mirroring (ebpf/mirror.h, docs/mirroring.md) ----

  /** Records the verdicts copied for mirrored clients, in ring order. */
  onMirrorRecord(cb: (r: abi.MirrorRecord) => void): void {
    this.mirrorListener = cb;
  }

  /** Delivers the records already in the ring now (before bytes that reached user space
   * another way, which they precede). */
  drainMirror(): void {
    if (!this.closed && !this.deliveringMirror) this.obj.drainEvents('mirror_ring');
  }

  // A batch of ring records (u32 length + record each), delivered in order; a drain from
  // inside would deliver later records before the rest of this batch, so it waits.
  private deliveringMirror = false;
  /** Batches of mirror records delivered (wake-ups and drains that found records). */
  mirrorBatches = 0;
  private mirrorBatch(b: Buffer): void {
    const cb = this.mirrorListener;
    if (!cb) return;
    this.mirrorBatches++;
    this.deliveringMirror = true;
    try {
      for (let at = 0; at + 4 <= b.length; ) {
        const n = b.readUInt32LE(at);
        cb(abi.decodeMirrorRecord(b, at + 4, n));
        at += 4 + n;
      }
    } finally {
      this.deliveringMirror = false;
    }
  }

  /** Copies lost since the load, over all mirrored clients (ebpf/mirror.h
   * pgs_mirror_losses, read mapped: no system call). */
  mirrorLosses(): number {
    return this.closed ? 0 : this.obj.globalU64(0);
  }

  /** A mirrored client's copy state: lost = the kernel stopped copying it after a record
   * did not fit, until a transaction of it ends in the kernel. */
  mirrorState(id: number): abi.MirrorState | null {
    if (this.closed) return null;
    const b = this.obj.mapLookup('mirror_state', abi.u32(id));
    return b ? abi.decodeMirrorState(b) : null;
  }

  /** User space found a clean boundary itself (the client idle in user space, where no
   * verdict copies it): the kernel copies it again from the next transaction. */
  resumeMirror(id: number): void {
    if (this.closed || !this.regs.has(id)) return;
    const b = this.obj.mapLookup('mirror_state', abi.u32(id));
    if (!b) return;
    this.obj.mapUpdate('mirror_state', abi.u32(id), abi.mirrorStateResumed(b));
  }

  /** The client is no longer mirrored: its mirror state goes, and with it the copies
   * (pgs_mirror_copy finds no state and copies nothing). */
  stopMirror(id: number): void {
    if (this.closed || !this.regs.has(id)) return;
    this.obj.mapDelete('mirror_state', abi.u32(id));
  }

  registerServer(id: number, fd: number, poolId: number): void {
    this.register(id, fd, poolId, abi.Role.SERVER);
  }

  /** Remove from socks, then the cookie and state (idempotent). Read the socket until
   * EAGAIN first: passed data parked in its queue is lost on removal. */
  unregister(id: number): void {
    if (this.closed) return;
    const reg = this.regs.get(id);
    this.obj.mapDelete('socks', abi.u32(id));
    if (reg) this.obj.mapDelete('sock_ids', abi.u64(reg.cookie));
    this.obj.mapDelete('conns', abi.u32(id));
    this.obj.mapDelete('mirror_state', abi.u32(id));
    this.regs.delete(id);
    for (const [hex, map] of this.stmtKeys.get(id) ?? []) this.obj.mapDelete(map, Buffer.from(hex, 'hex'));
    this.stmtKeys.delete(id);
  }

  // ---- named statements (ebpf/statements.h): only what PostgreSQL confirmed ----

  private stmtPut(id: number, map: 'stmt_names' | 'stmt_servers', key: Buffer, value: number): boolean {
    this.check();
    try {
      this.obj.mapUpdate(map, key, abi.u32(value));
    } catch {
      return false; // map full: the kernel punts that statement (a missing entry is always safe)
    }
    let keys = this.stmtKeys.get(id);
    if (!keys) this.stmtKeys.set(id, (keys = new Map()));
    keys.set(key.toString('hex'), map);
    return true;
  }

  private stmtDel(id: number, map: 'stmt_names' | 'stmt_servers', key: Buffer): void {
    if (this.closed) return;
    this.obj.mapDelete(map, key);
    this.stmtKeys.get(id)?.delete(key.toString('hex'));
  }

  /** Client id's statement `name` (its bytes) is the statement of server name (len, idx);
   * idx null: it has no server name the kernel can write (counted name_too_short). */
  setClientStatement(id: number, name: Buffer, idx: number | null): boolean {
    return this.stmtPut(id, 'stmt_names', abi.encodeStmtKey(id, name), idx ?? abi.STMT_NO_NAME);
  }

  deleteClientStatement(id: number, name: Buffer): void {
    this.stmtDel(id, 'stmt_names', abi.encodeStmtKey(id, name));
  }

  /** Server id has the statement of server name (len, idx) prepared, or no longer has it. */
  setServerStatement(id: number, len: number, idx: number, present: boolean): boolean {
    const key = abi.encodeStmtRef(id, len, idx);
    if (present) return this.stmtPut(id, 'stmt_servers', key, 1);
    this.stmtDel(id, 'stmt_servers', key);
    return true;
  }

  /** Entries of both statement maps (tests). */
  statementEntries(): { names: number; servers: number } {
    let names = 0;
    let servers = 0;
    for (const keys of this.stmtKeys.values()) for (const m of keys.values()) if (m === 'stmt_names') names++; else servers++;
    return { names, servers };
  }

  /** USER|n -> KERNEL|n with n = bytes Node has read from the socket since registration.
   * False if the kernel passed bytes Node has not read yet (read them, retry), or the
   * client is still bound (takeBound first). Call at a message boundary, with nothing
   * left to write to the client (the in-flight bound takes its baseline here). */
  // pool: files it under another kernel pool in the same step (0 = keep).
  clientToKernel(id: number, bytesReadSinceRegister: bigint, aboutToWrite = 0, pool = 0): boolean {
    const reg = this.regs.get(id);
    // aboutToWrite: bytes user space writes right after the flip (the login response)
    const written = reg ? this.addon.tcpBytesWritten(reg.fd) + BigInt(aboutToWrite) : 0n;
    if (pool) this.checkPool(pool);
    return this.ctlRet({ op: abi.Op.CLIENT_TO_KERNEL, id, expected: bytesReadSinceRegister, written, pool }) === 1;
  }

  /** KERNEL -> USER, only while unbound (true if the client is now USER and unbound). */
  clientToUser(id: number): boolean {
    return this.ctlRet({ op: abi.Op.CLIENT_TO_USER, id }) === 1;
  }

  /** USER|n -> IDLE|n and push on its pool's idle stack (configurePool first). */
  serverToIdle(id: number, bytesReadSinceRegister: bigint, pool = 0): boolean {
    if (pool) this.checkPool(pool);
    return this.ctlRet({ op: abi.Op.SERVER_TO_IDLE, id, expected: bytesReadSinceRegister, pool }) === 1;
  }

  /** Take an idle server of the pool out of the kernel (IDLE -> USER); 0 if none. */
  popIdle(poolId: number): number {
    this.checkPool(poolId);
    return Math.max(0, this.ctlRet({ op: abi.Op.POP_IDLE, pool: poolId }));
  }

  /** Client died/timed out/handed over: unbind it and take its server (BOUND -> USER).
   * The client is USER afterwards. Returns the server id or 0. A client skb already in
   * its verdict may still reach the server: treat the server as dirty. */
  takeBound(clientId: number): number {
    const r = this.ctlRet({ op: abi.Op.TAKE_BOUND, id: clientId });
    return r > 0 ? r >>> 0 : 0;
  }

  /** User space has a complete request of client id for server sid (USER, quiet, nothing
   * written to it yet): bind them so the kernel carries the response and releases sid at
   * its ReadyForQuery. serverBytesRead: bytes Node read from sid since registration.
   * Then write the request to sid and call clientToKernelBound. */
  bind(id: number, sid: number, serverBytesRead: bigint, outstanding: number, tailOpen: boolean, pool = 0): boolean {
    const reg = this.regs.get(id);
    const written = reg ? this.addon.tcpBytesWritten(reg.fd) : 0n;
    if (pool) this.checkPool(pool);
    return this.ctlRet({ op: abi.Op.BIND, id, sid, expected: serverBytesRead, outIn: outstanding, tailIn: tailOpen ? 1 : 0, written, pool }) === 1;
  }

  /** More request bytes of a bound client are about to be written to sid by user space:
   * count them first. False if the kernel released sid meanwhile (a new transaction). */
  addOutstanding(id: number, sid: number, delta: number, tailOpen: boolean): boolean {
    return this.ctlRet({ op: abi.Op.ADD, id, sid, outIn: delta, tailIn: tailOpen ? 1 : 0 }) === 1;
  }

  /** RECONNECT: 'taken' if the server was idle in the kernel and is USER now (close it),
   * 'at_release' if it is bound: the kernel gives it to user space at its release
   * (event server_retired) instead of its idle stack; 'user' if user space owns it. */
  retire(id: number): 'taken' | 'at_release' | 'user' {
    const r = this.ctlRet({ op: abi.Op.RETIRE, id });
    return r === 1 ? 'taken' : r === 2 ? 'at_release' : 'user';
  }

  /** USER|n -> KERNEL|n keeping a binding made by bind() (or none). */
  clientToKernelBound(id: number, bytesReadSinceRegister: bigint): boolean {
    return this.ctlRet({ op: abi.Op.CLIENT_TO_KERNEL_BOUND, id, expected: bytesReadSinceRegister }) === 1;
  }

  /** True when every byte the kernel redirected to client id has reached its TCP send
   * queue (none is left in the redirect backlog), so that user space may write to it
   * without overtaking them. Valid while user space itself writes nothing to it. */
  redirectsFlushed(id: number): boolean {
    const reg = this.regs.get(id);
    const b = this.obj.mapLookup('conns', abi.u32(id));
    if (!reg || !b) return true;
    const c = abi.decodeConn(b);
    return this.addon.tcpBytesWritten(reg.fd) >= c.ackedBase + c.redirected;
  }

  /** How long the client's open transaction and oldest unanswered request have run in
   * the kernel (ns; null when none), read without the lock: for statistics only. */
  clocks(id: number): { xactNs: bigint | null; queryNs: bigint | null } {
    const b = this.obj.mapLookup('conns', abi.u32(id));
    if (!b) return { xactNs: null, queryNs: null };
    const c = abi.decodeConn(b);
    const now = process.hrtime.bigint(); // CLOCK_MONOTONIC, as bpf_ktime_get_ns
    const age = (t: bigint) => (t === 0n ? null : now > t ? now - t : 0n);
    return { xactNs: age(c.xactStart), queryNs: age(c.queryStart) };
  }

  /** What kernel pool poolId carried since load, summed over CPUs. */
  poolStats(poolId: number): abi.PoolStats {
    this.check();
    this.checkPool(poolId);
    const sum: abi.PoolStats = { xacts: 0n, queries: 0n, clientBytes: 0n, serverBytes: 0n, xactNs: 0n, queryNs: 0n };
    for (const b of this.obj.mapLookupPercpu('pool_stats', abi.u32(poolId)) ?? []) {
      const v = abi.decodePoolStats(b);
      for (const k of Object.keys(sum) as Array<keyof abi.PoolStats>) sum[k] += v[k];
    }
    return sum;
  }

  read(id: number): ConnRead | null {
    const r = this.ctl({ op: abi.Op.READ, id });
    if (r.ret !== 1) return null;
    return {
      mode: abi.modeOf(r.word),
      passed: abi.countOf(r.word),
      peer: r.peer,
      outstanding: r.outstanding,
      flags: r.flags,
      tailOpen: r.tailOpen,
      role: FIELD_ROLE[r.role as 1 | 2] ?? 'client',
      poolId: r.poolId,
      frame: r.frame,
      redirected: r.redirected,
      tailMessages: r.tailMessages,
      tailAnswered: r.tailAnswered,
      applying: r.applying !== 0,
    };
  }

  /** True when every client byte the kernel redirected to server id has left its
   * redirect backlog (is in the TCP send queue or acked), given the bytes user space has
   * written to it since it was registered (quiet) and none still buffered in Node. */
  serverRedirectsFlushed(id: number, userWrittenSinceRegister: bigint): boolean {
    const reg = this.regs.get(id);
    const b = this.obj.mapLookup('conns', abi.u32(id));
    if (!reg || !b) return true;
    return this.addon.tcpBytesWritten(reg.fd) - reg.written >= userWrittenSinceRegister + abi.decodeConn(b).redirected;
  }

  private stat(i: number): bigint {
    const per = this.obj.mapLookupPercpu('stats', abi.u32(i));
    let sum = 0n;
    for (const b of per ?? []) sum += b.readBigUInt64LE(0);
    return sum;
  }

  counters(): KernelCounters {
    this.check();
    const v: bigint[] = [];
    for (let i = 0; i < abi.STAT_COUNT; i++) v.push(this.stat(i));
    const fallbacks: Record<string, bigint> = {};
    for (const [idx, name] of Object.entries(abi.FALLBACK_NAMES)) fallbacks[name] = v[Number(idx)];
    const S = abi.Stat;
    return {
      transactions: v[S.TRANSACTIONS], binds: v[S.BINDS], statementRewrites: v[S.STMT_REWRITES],
      clientBytes: v[S.CLIENT_BYTES], clientMessages: v[S.CLIENT_MSGS], serverBytes: v[S.SERVER_BYTES], serverMessages: v[S.SERVER_MSGS],
      passedSkbs: v[S.PASSED_SKBS], passedBytes: v[S.PASSED_BYTES], heldForWaiters: v[S.HELD_FOR_WAITERS],
      droppedClientGone: v[S.DROPPED_CLIENT_GONE], staleIdle: v[S.STALE_IDLE],
      fallbacks,
    };
  }

  /** Best effort (pushes minus pops, stale entries included). */
  idleCount(poolId: number): number {
    this.check();
    this.checkPool(poolId);
    return Math.max(0, Number(this.poolEntry(poolId).idleCount));
  }

  onEvent(cb: (e: KernelEvent) => void): void {
    this.listeners.push(cb);
  }

  private dispatch(b: Buffer): void {
    const r = abi.decodeEvent(b);
    let e: KernelEvent | null = null;
    switch (r.type) {
      case abi.EventType.PARAMS_CHANGED:
        e = { type: 'params_changed', client: r.a, server: r.b };
        break;
      case abi.EventType.SERVER_RELEASED:
        e = { type: 'server_released', pool: r.a, server: r.b };
        break;
      case abi.EventType.INFLIGHT_LIMIT:
        e = { type: 'inflight_limit', client: r.a, server: r.b, inflight: r.c };
        break;
      case abi.EventType.SERVER_TO_USER:
        e = { type: 'server_to_user', server: r.a, reason: abi.FALLBACK_NAMES[r.b] ?? 'unhandled' };
        break;
      case abi.EventType.SERVER_RETIRED:
        e = { type: 'server_retired', pool: r.a, server: r.b };
        break;
      case abi.EventType.HANDOFF:
        e = { type: 'handoff', client: r.a, server: r.b, reason: abi.FALLBACK_NAMES[r.c] ?? 'unhandled' };
        break;
    }
    if (!e) return;
    for (const cb of this.listeners) cb(e);
  }

  /** Test helper: run chunks through the tc framing wrapper (same code as the verdict),
   * framing state carried across chunks. At most 8 'Z' per chunk are listed. Test-run
   * takes at most one page of skb data (3712 bytes with the Ethernet header), so longer
   * chunks are fed in 3698-byte pieces: big skbs are covered by the sockmap tests. */
  frameChunks(role: 'client' | 'server', chunks: Buffer[]): FrameRun {
    this.check();
    if (!this.frameTest) throw new Error('frameChunks needs a KernelPath opened with { frameTest: true }');
    const k = abi.u32(0);
    this.obj.mapUpdate('frame_test', k, abi.encodeFrameTest(role === 'client' ? abi.Role.CLIENT : abi.Role.SERVER));
    const eth = Buffer.alloc(14);
    eth.writeUInt16BE(0x88b5, 12); // local experimental ethertype: no L3 parsing
    const MAX = 3698;
    for (const c of chunks)
      for (let i = 0; i < c.length; i += MAX)
        this.obj.progTestRun('pgs_frame_test', Buffer.concat([eth, c.subarray(i, i + MAX)]), null);
    const t = abi.decodeFrameTest(this.obj.mapLookup('frame_test', k)!);
    return {
      syncs: t.nSync,
      queries: t.nQuery,
      functionCalls: t.nFunc,
      readyForQuery: t.nZ,
      zStatuses: t.zStatus,
      parameterStatus: t.nParam,
      messages: t.nMsgs,
      terminates: t.nTerm,
      errors: t.errors,
      tailOpen: t.lastTail !== 0,
      frame: t.frame,
      inspect: t.inspect ? abi.FALLBACK_NAMES[t.inspect] ?? String(t.inspect) : null,
      tailMessages: t.tailMessages,
      tailAnswered: t.tailAnswered,
      names: { count: t.nNames, offset: t.nameOff, length: t.nameLen },
    };
  }

  /** Sizes of the loaded maps' values, for ABI checks in tests. */
  mapValueSize(name: string): number {
    return this.obj.mapInfo(name).valueSize;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.obj.close();
    this.regs.clear();
  }
}

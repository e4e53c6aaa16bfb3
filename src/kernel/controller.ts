// The bypass controller: the one module that moves connections between the user
// space data path and the kernel path (src/kernel/kernel-path.ts wraps the addon).
// Every ownership change it makes is one compare-and-swap in the kernel's state
// word for that socket (docs/kernel-path.md); this file decides *when*.
import type { BypassMode, Config } from '../config/types';
import { ClientConnection, ClientState } from '../pooling/client-connection';
import { ServerConnection, ServerState } from '../pooling/server-connection';
import type { Pool } from '../pooling/pool';
import type { Totals } from '../observe/stats';
import {
  BypassStatus, KernelHost, UserPathCounters, UserSpaceOnly, flatUserCounters, statusRows, zeroUserPathCounters,
} from '../pooling/kernel-host';
import { TRACKED_PARAMETERS, serverSettings, settingsSignature } from '../session/session-parameters';
import { anyClientTimeout, cleanServer, clientTimeout, idleServerVerdict, stepsOnLeave } from '../pooling/policy';
import { SqlState } from '../protocol/constants';
import { log } from '../observe/log';
import { isTlsSocket } from '../auth/tls';
import type { ConnRead, KernelCounters, KernelEvent, KernelPath as KernelPathType } from './kernel-path';
import { KernelPoolStats } from './pool-stats';
import { ConnFlags, MirrorReplies, Mode, STMT_NAME_MAX } from './kernel-abi';
import { parseServerName, type ClientStatementObserver } from '../session/statement-names';
import { waitUntil } from './settle';
import { AutoBypass, AutoState, AutoVerdict, autoTimingFromEnv } from '../pooling/bypass-auto';
import { FeedState, KernelMirrorFeed, type KernelMirrorTotals } from '../mirror/kernel-feed';
import type { MirrorRecord } from './kernel-abi';
import type { MirrorSession } from '../mirror/mirror-session';

// Opens the kernel path per the bypass setting: the controller when it loads, else user
// space only. 'on' throws when it cannot load. config: the running config (reload changes it);
// mirrorRingBytes: mirror_ring_bytes of the config at start (a restart-only key).
export function openKernelHost(mode: BypassMode, config: () => Config, mirrorRingBytes?: number): KernelHost {
  if (mode === 'off') return new UserSpaceOnly({ mode, loaded: false, reason: 'bypass: off' });
  let kernel: KernelPathType;
  try {
    // Loaded lazily so 'off' never needs the addon or root.
    const { KernelPath } = require('./kernel-path') as typeof import('./kernel-path');
    kernel = KernelPath.open({ mirrorRingBytes });
  } catch (e) {
    const why = (e as Error).message.split('\n')[0];
    if (mode === 'on') throw new Error(`bypass: on, but the kernel path cannot be used: ${why}`);
    log.warn(`kernel path unavailable, serving in user space: ${why}`);
    return new UserSpaceOnly({ mode, loaded: false, reason: why });
  }
  log.info('kernel path loaded: steady-state traffic bypasses user space');
  return new BypassController(kernel, { mode, loaded: true, reason: 'loaded' }, config);
}

const ERROR_RESPONSE = 0x45; // 'E' from a server
// How long a hand-over may wait for the kernel to finish with the server (see
// handoffSettled). Asynchronous: the wait holds only this pair's input, not the process.
const HANDOFF_SETTLE_MS = 1000;
// Bytes the kernel may queue for a client that reads slowly before user space takes the
// pair over and TCP back-pressure slows the server instead (invariant 5, docs/invariants.md).
export const KERNEL_INFLIGHT_LIMIT = 8 << 20;
const MAX_SETTINGS_PER_POOL = 8; // distinct settings sets per pool served in the kernel
// Kernel conn ids: clients use their id, servers a disjoint range.
const skid = (s: ServerConnection): number => 0x40000000 + s.id;

// Unix-socket clients stay in user space: the verdict programs are written for TCP. A
// destroyed socket's descriptor may be closed, or another socket's by now: the kernel
// must not be given it, even before the connection's own close handler has run.
const liveTcp = (c: ClientConnection): boolean => !c.socket.destroyed && (c.socket.remoteFamily === 'IPv4' || c.socket.remoteFamily === 'IPv6');

// A stable name for a set of session settings.

// The settings a server has now: the tracked reported ones, its startup settings and what the proxy SET on it.
function serverSignature(server: ServerConnection): string {
  return settingsSignature(serverSettings(server));
}

const fdOf = (sock: unknown): number | null => {
  const h = (sock as { _handle?: { fd?: number } })._handle;
  return h && typeof h.fd === 'number' && h.fd >= 0 ? h.fd : null;
};

export class BypassController implements KernelHost {
  private kernel: KernelPathType | null;
  private clients = new Map<number, ClientConnection>(); // registered with the kernel, by kernel id
  private servers = new Map<number, ServerConnection>(); // by kernel id
  private kpools = new Map<Pool, Map<string, number>>(); // settings signature -> kernel pool id
  private kidPool = new Map<number, Pool>();
  private kidOf = new WeakMap<ServerConnection | ClientConnection, number>();
  private freeKids = Array.from({ length: 255 }, (_, i) => i + 1);
  // What each Pool's kernel pools carried, sampled once a second (SHOW STATS, metrics).
  readonly poolStats = new KernelPoolStats();
  readonly counters: UserPathCounters = zeroUserPathCounters();
  // Connections kept in user space because they use TLS (the kernel cannot splice TLS
  // records): SHOW BYPASS fallback_tls_client / fallback_tls_server.
  readonly tlsFallbacks = { client: 0, server: 0 };
  // Pools with a TLS server: their clients stay in user space with them.
  private tlsPools = new WeakSet<Pool>();
  private keptForTls = new WeakSet<ClientConnection | ServerConnection>();

  // True (and counted once per connection) when conn uses TLS and must stay in user space.
  private keepsTls(conn: ClientConnection | ServerConnection): boolean {
    if (!isTlsSocket(conn.socket)) return false;
    if (!this.keptForTls.has(conn)) {
      this.keptForTls.add(conn);
      if (conn instanceof ServerConnection) this.tlsFallbacks.server++;
      else this.tlsFallbacks.client++;
      log.debug(`${conn.label} uses TLS: served in user space`);
    }
    return true;
  }

  // A client stays in user space when it, or its pool's servers, use TLS.
  private tlsBound(client: ClientConnection, pool: Pool): boolean {
    if (this.keepsTls(client)) return true;
    if (!this.tlsPools.has(pool)) return false;
    if (!this.keptForTls.has(client)) {
      this.keptForTls.add(client);
      this.tlsFallbacks.client++;
    }
    return true;
  }

  constructor(
    kernel: KernelPathType,
    readonly status: BypassStatus,
    private readonly config: () => Config,
  ) {
    this.kernel = kernel;
    kernel.onEvent((e) => this.onKernelEvent(e));
    kernel.onMirrorRecord((r) => this.onMirrorRecord(r));
  }

  // ---- mirroring: what the verdicts copied for mirrored clients (src/mirror/kernel-feed.ts) ----

  private readonly mirrorFeeds = new WeakMap<ClientConnection, KernelMirrorFeed>();
  readonly mirrorTotals: KernelMirrorTotals = { records: 0, bytes: 0, resyncs: 0, ignored: 0 };

  private mirrorFeed(client: ClientConnection): KernelMirrorFeed {
    let f = this.mirrorFeeds.get(client);
    if (!f) this.mirrorFeeds.set(client, (f = new KernelMirrorFeed(() => client.mirrors, this.mirrorTotals)));
    return f;
  }

  private onMirrorRecord(r: MirrorRecord): void {
    const client = this.clients.get(r.conn);
    if (client && client.mirrors.length) this.mirrorFeed(client).record(r);
    else this.mirrorTotals.ignored++; // copied before its mirrors were removed, or it left
  }

  // The client's mirrors were all removed (a reload): the verdicts stop copying it now.
  // Its mirror state goes, so the copy finds none (one lookup per skb until it leaves);
  // conn.mirror stays set, as rewriting conns from user space could lose the verdicts'
  // concurrent writes to it.
  mirrorsEnded(client: ClientConnection): void {
    const k = this.kernel;
    if (!k || !this.kidOf.has(client)) return; // never registered: nothing to stop
    k.stopMirror(client.id);
    this.mirrorFeeds.delete(client);
  }

  // The client entered the kernel path: its traffic may be copied there from now on.
  private mirroredInKernel(client: ClientConnection): void {
    if (client.mirrors.length) this.mirrorFeed(client);
  }

  // User space is about to feed the client's mirror sessions bytes it read or wrote: what
  // the kernel copied before them goes first, and a copy the kernel lost (and could not
  // yet report with a RESYNC, or lost before handing the client over) is known before
  // user-space bytes land on a broken stream. One map lookup, for clients that have been
  // on the kernel path only.
  beforeMirrorFeed(client: ClientConnection): void {
    const k = this.kernel;
    const f = this.mirrorFeeds.get(client);
    if (!k || !f) return;
    k.drainMirror();
    f.beforeUserBytes(() => this.kernelLost(client, f));
  }

  // Whether the kernel's copy of the client is lost: a map lookup only if some copy was
  // lost since this one was last read clean (the count is read first: the kernel counts a
  // loss after marking it).
  private kernelLost(client: ClientConnection, f: KernelMirrorFeed): boolean {
    const k = this.kernel!;
    const losses = k.mirrorLosses();
    if (losses === f.cleanAtLosses) return false;
    const lost = k.mirrorState(client.id)?.lost ?? false;
    if (!lost) f.cleanAtLosses = losses;
    return lost;
  }

  // Mirrored clients whose sessions await the primary's answers with no record for a
  // janitor tick: a lost copy whose RESYNC waits for the client's next transaction is seen
  // now (a map lookup each), and what the sessions hold for it is dropped and counted.
  private quietMirrorFeeds(): void {
    const k = this.kernel!;
    for (const client of this.clients.values()) {
      if (!client.mirrors.length) continue;
      const f = this.mirrorFeeds.get(client);
      if (!f || !f.quietWhileAwaiting()) continue;
      k.drainMirror();
      f.checkKernelLoss(() => this.kernelLost(client, f));
    }
  }

  // The client is idle in user space, nothing in flight either way: a clean boundary of
  // both streams, where a lost copy starts again (the kernel copies nothing of it now).
  private resumeMirrorAtIdle(client: ClientConnection): void {
    const k = this.kernel;
    const f = this.mirrorFeeds.get(client);
    if (!k || !f) return;
    this.beforeMirrorFeed(client);
    if (f.state !== FeedState.Lost) return;
    const lost = k.mirrorState(client.id)?.lostXacts ?? 0;
    k.resumeMirror(client.id);
    f.resume(lost);
  }

  // ---- pools ----
  // A Pool's servers and clients are split in the kernel by their session settings: one
  // kernel pool (idle stack) per distinct set, so a kernel-bound pair always agrees on
  // TimeZone, application_name, ... without user space re-applying anything.

  poolCreated(pool: Pool): void {
    if (!this.kernel || pool.settings.mode === 'statement') return;
    this.kpools.set(pool, new Map());
  }

  // While the pool is paused, or bypass: auto serves it in user space, or a client waits
  // in user space, the kernel binds no new transaction and reports each release
  // (server_released), so that user space serves its waiters, FIFO, before the kernel's
  // clients take a server again. At once: holding only for a waiter that has waited some
  // milliseconds measured no better in throughput or p99 and worse in per-client spread,
  // and never holding gave twice the spread and a longer tail (docs/kernel-path.md,
  // "Waiting for a server").
  waitersChanged(pool: Pool): void {
    const k = this.kernel;
    if (!k) return;
    const hold = this.holdKernel(pool);
    for (const kid of this.kpools.get(pool)?.values() ?? []) k.setPoolWaiters(kid, hold);
  }

  private holdKernel(pool: Pool): boolean {
    return pool.paused || this.userPools.has(pool) || pool.waitingCount > 0;
  }

  // ---- bypass: auto, per pool (src/pooling/bypass-auto.ts) ----

  private auto = new AutoBypass<Pool>(autoTimingFromEnv());
  private userPools = new WeakSet<Pool>(); // served in user space by the auto policy
  private autoVerdicts = new Map<Pool, AutoVerdict>();
  private boundFromUser = new Map<Pool, bigint>(); // requests user space bound in the kernel, per pool
  // per pool, the counters at the last auto step, and what they added up to since
  private autoRaw = new Map<Pool, { kernel: bigint; user: bigint; bound: bigint; whole: bigint; others: bigint }>();

  private autoStep(now: number): void {
    const byPool = this.poolStats.byPool();
    for (const pool of this.kpools.keys()) {
      // A transaction whose request was passed up (no idle server, a statement to
      // prepare, ...) and bound in the kernel by user space ended in the kernel but cost
      // both paths: it counts as user space's.
      // (A bound request whose transaction user space took back ended in user space and
      // is counted there already: hence the floor per sample, which errs towards user space.)
      const raw = { kernel: byPool.get(pool)?.xacts ?? 0n, user: BigInt(pool.stats.xacts), bound: this.boundFromUser.get(pool) ?? 0n };
      const last = this.autoRaw.get(pool) ?? { ...raw, whole: 0n, others: 0n };
      const dk = raw.kernel - last.kernel;
      const whole = dk > raw.bound - last.bound ? dk - (raw.bound - last.bound) : 0n;
      const next = { ...raw, whole: last.whole + whole, others: last.others + dk - whole + (raw.user - last.user) };
      this.autoRaw.set(pool, next);
      const v = this.auto.update(pool, { kernelXacts: next.whole, userXacts: next.others }, now);
      const prev = this.autoVerdicts.get(pool);
      this.autoVerdicts.set(pool, v);
      const toUser = v.path === 'user';
      if (toUser !== this.userPools.has(pool)) {
        log.info(`pool ${pool.label}: ${toUser ? 'served in user space' : 'back on the kernel path'} (bypass: auto): ${v.reason}`);
        if (toUser) this.poolToUser(pool);
        else this.poolToKernel(pool);
      } else if (toUser) {
        this.drainIdle(pool); // servers a transaction in flight at the switch released since
      } else if (prev?.state !== v.state) {
        log.info(`pool ${pool.label}: ${v.reason}`);
      }
    }
  }

  // The kernel binds nothing new for the pool (held), its clients idle in the kernel come
  // to user space with their next request, and its servers idle in the kernel come out.
  private poolToUser(pool: Pool): void {
    this.userPools.add(pool);
    this.waitersChanged(pool);
    for (const client of this.clients.values()) {
      if (client.pool === pool && client.state === ClientState.Kernel) this.kernel?.clientToUser(client.id); // refused while bound: it leaves at its release
    }
    this.drainIdle(pool);
  }

  private poolToKernel(pool: Pool): void {
    this.userPools.delete(pool);
    this.waitersChanged(pool);
    pool.reofferIdle(); // clients follow at their next transaction end (offerClient)
  }

  private drainIdle(pool: Pool): void {
    const k = this.kernel;
    if (!k) return;
    for (const kid of this.kpools.get(pool)?.values() ?? []) {
      for (let id = k.popIdle(kid); id !== 0; id = k.popIdle(kid)) {
        const server = this.servers.get(id);
        if (!server || !server.isUsable) continue;
        server.leftKernel();
        this.counters.serversFromKernel++;
        pool.serverAvailable(server);
      }
    }
  }

  // The kernel pool for this Pool and settings, created on first use; null when none can be had.
  private kidFor(pool: Pool, signature: string): number | null {
    const bySig = this.kpools.get(pool);
    if (!bySig) return null;
    const known = bySig.get(signature);
    if (known !== undefined) return known;
    if (bySig.size >= MAX_SETTINGS_PER_POOL || this.freeKids.length === 0) return null;
    const kid = this.freeKids.shift()!;
    this.kernel!.configurePool(kid, {
      mode: pool.settings.mode === 'session' ? 'session' : 'transaction', maxIdle: 4096, inflightLimit: KERNEL_INFLIGHT_LIMIT,
    });
    this.kernel!.setPoolWaiters(kid, this.holdKernel(pool));
    bySig.set(signature, kid);
    this.kidPool.set(kid, pool);
    return kid;
  }

  // Registers a socket under kid the first time. A registered one changes kernel pool
  // in the op that moves it into the kernel (the kid returned here, 0 = no change):
  // unregistering would drop what the verdict passed and Node has not read yet.
  private home(conn: ServerConnection | ClientConnection, kid: number): number | false {
    const k = this.kernel!;
    const cur = this.kidOf.get(conn);
    if (cur === kid) return 0;
    if (cur !== undefined) return kid;
    const fd = fdOf(conn.socket);
    if (fd === null) return false;
    const isServer = conn instanceof ServerConnection;
    const id = isServer ? skid(conn) : conn.id;
    if (isServer) k.registerServer(id, fd, kid);
    else k.registerClient(id, fd, kid, mirrorReplies(conn.mirrors)); // mirrored: the verdicts copy its traffic
    this.mirrorStatements(conn);
    if (isServer) this.writtenAtHome.set(conn, BigInt(conn.socket.bytesWritten));
    conn.bytesRead = 0;
    this.kidOf.set(conn, kid);
    return 0;
  }

  // The kernel's statement maps follow what PostgreSQL confirmed (ebpf/statements.h): the
  // client's names, and which statements each server has. Entries go when the names or
  // statements do (Close, DEALLOCATE, DISCARD, eviction: before anything is written to
  // the server), and all of a connection's with it (KernelPath.unregister).
  private mirrorStatements(conn: ServerConnection | ClientConnection): void {
    const k = this.kernel!;
    if (conn instanceof ServerConnection) {
      const sid = skid(conn);
      conn.statements.observe((name, present) => {
        const kn = parseServerName(name);
        if (kn && this.kernel) k.setServerStatement(sid, kn.len, kn.idx, present);
      });
      return;
    }
    conn.rewriter?.observe(this.clientStatementChanged, conn.id);
  }

  // One observer for all clients' statement names (a closure per client would be memory
  // every idle client pays): the rewriter says whose name changed.
  private readonly clientStatementChanged: ClientStatementObserver = (cid, name, st) => {
    const k = this.kernel;
    const bytes = Buffer.from(name, 'utf8');
    if (!k || bytes.length > STMT_NAME_MAX) return; // the kernel counts name_too_long itself
    if (st === 'gone') k.deleteClientStatement(cid, bytes);
    // a statement that changes session state runs only in user space, which tracks it:
    // no entry, so the kernel hands its Binds up (statement_missing)
    else if (st.effects.length) k.deleteClientStatement(cid, bytes);
    else if (st.kernel) k.setClientStatement(cid, bytes, st.kernel.idx);
    else if (st.kernelMiss === 'name_too_short') k.setClientStatement(cid, bytes, null);
  };

  // A server idle in user space goes to the kernel's idle stack.
  offerIdle(pool: Pool, server: ServerConnection): boolean {
    const k = this.kernel;
    if (!k || !this.kpools.has(pool) || this.userPools.has(pool) || server.state !== ServerState.Idle || server.socket.writableLength > 0) return false;
    if (this.keepsTls(server)) {
      this.tlsPools.add(pool);
      return false;
    }
    const kid = this.kidFor(pool, serverSignature(server));
    if (kid === null) return false;
    if (!this.servers.has(skid(server))) {
      this.servers.set(skid(server), server);
      server.once('close', () => this.serverClosed(server));
    }
    const move = this.home(server, kid);
    if (move === false) return false;
    if (!k.serverToIdle(skid(server), BigInt(server.bytesRead), move)) return false;
    this.kidOf.set(server, kid);
    server.enteredKernel();
    this.counters.serversToKernel++;
    return true;
  }

  // A user-space client takes a server idle in the kernel (its settings are applied by
  // the client, as on any server).
  takeIdle(pool: Pool): ServerConnection | null {
    const k = this.kernel;
    const bySig = this.kpools.get(pool);
    if (!k || !bySig) return null;
    for (const kid of bySig.values()) {
      for (;;) {
        const id = k.popIdle(kid);
        if (id === 0) break;
        const server = this.servers.get(id);
        if (!server || !server.isUsable) continue;
        server.leftKernel();
        this.counters.serversFromKernel++;
        return server;
      }
    }
    return null;
  }

  // ---- clients ----

  // Moves an idle client to the kernel path when that is safe; false keeps it in user space.
  // aboutToWrite: bytes the caller writes to the client right after (its login response).
  offerClient(client: ClientConnection, aboutToWrite: number): boolean {
    const k = this.kernel;
    const pool = client.pool;
    if (!k || !pool || !this.kpools.has(pool) || this.userPools.has(pool) || client.isAdmin || !liveTcp(client)) return false;
    if (this.tlsBound(client, pool)) return false;
    if (client.state !== ClientState.Idle || !client.quiet || this.refreshes.has(client.id) || client.rewriter?.session.pinned) return false;
    if (client.socket.writableLength > 0) {
      // Bytes Node still holds for it would be overtaken by kernel redirects: wait for them.
      client.socket.once('drain', () => this.offerClient(client, 0));
      return false;
    }
    const kid = this.kidFor(pool, client.settingsSignature);
    if (kid === null) return false;
    if (!this.clients.has(client.id)) this.clients.set(client.id, client);
    const move = this.home(client, kid);
    if (move === false) return false;
    this.resumeMirrorAtIdle(client);
    if (!k.clientToKernel(client.id, BigInt(client.bytesRead), aboutToWrite, move)) return false; // passed bytes still unread: retried later
    this.kidOf.set(client, kid);
    this.mirroredInKernel(client);
    client.enteredKernel();
    this.refreshed.delete(client);
    this.counters.clientsToKernel++;
    return true;
  }

  // A waiting request got server: instead of forwarding the transaction in user space,
  // bind the pair in the kernel, write the request, and let the kernel carry the response
  // and release the server at its ReadyForQuery (docs/kernel-path.md, "bind from user space").
  get bindsRequests(): boolean {
    return this.kernel !== null;
  }

  bindInKernel(client: ClientConnection, server: ServerConnection, request: Buffer[]): boolean {
    const k = this.kernel;
    const pool = client.pool;
    if (!k || !pool || !this.kpools.has(pool) || this.userPools.has(pool) || server.state !== ServerState.Idle || server.socket.destroyed || server.socket.writableLength > 0) return false;
    if (this.tlsBound(client, pool)) return false;
    if (this.keepsTls(server)) {
      this.tlsPools.add(pool);
      return false;
    }
    if (!liveTcp(client) || client.socket.writableLength > 0 || client.tracker.outstanding === 0) return false;
    // the kernel starts its tail counts at 0 here: an open extended batch stays in user space
    if (client.tracker.mixesProtocols) return false;
    const sig = client.settingsSignature;
    const kid = this.kidFor(pool, sig);
    if (kid === null || serverSignature(server) !== sig) return false;
    if (!this.clients.has(client.id)) this.clients.set(client.id, client);
    if (!this.servers.has(skid(server))) {
      this.servers.set(skid(server), server);
      server.once('close', () => this.serverClosed(server));
    }
    const moveServer = this.home(server, kid);
    const moveClient = this.home(client, kid);
    if (moveServer === false || moveClient === false) return false;
    const t = client.tracker;
    if (!k.bind(client.id, skid(server), BigInt(server.bytesRead), t.outstanding, t.tailOpen, moveServer || moveClient)) return false;
    this.kidOf.set(server, kid);
    this.kidOf.set(client, kid);
    server.enteredKernel();
    this.mirroredInKernel(client);
    t.reset(); // the kernel counts this transaction now
    client.timing.toKernel(); // its wait ends here; its clocks run in the kernel (BIND)
    if (request.length > 1) server.socket.cork(); // one writev, not a write (and a segment) per message
    for (const b of request) server.socket.write(b);
    if (request.length > 1) server.socket.uncork();
    client.boundInKernel(server);
    this.refreshed.delete(client);
    this.counters.bindsFromUser++;
    this.boundFromUser.set(pool, (this.boundFromUser.get(pool) ?? 0n) + 1n);
    this.tryFlipBound(client);
    return true;
  }

  // Bytes of a client bound in the kernel but still in user space: count, then write them.
  feedKernelBound(client: ClientConnection, data: Buffer): boolean {
    const k = this.kernel;
    const server = client.kernelServer;
    if (!k || !server || !server.isUsable) return false;
    const t = client.tracker;
    if (!k.addOutstanding(client.id, skid(server), t.outstanding, t.tailOpen)) return false;
    t.reset();
    client.timing.toKernel(); // the kernel answers and times these requests
    server.socket.write(data); // (it stays KernelBound: the kernel carries its transaction)
    this.mirroredInKernel(client);
    this.tryFlipBound(client);
    return true;
  }

  // A client bound in the kernel sent what only user space can rewrite (a named
  // statement, session state): user space takes the pair and finishes the transaction.
  reclaimBound(client: ClientConnection): boolean {
    const k = this.kernel;
    const server = client.kernelServer;
    if (!k || !server) return false;
    const clocks = k.clocks(client.id);
    if (k.takeBound(client.id) !== skid(server)) return false;
    const cst = k.read(client.id); // stable now: the kernel no longer carries the pair
    const sst = k.read(skid(server));
    if (!cst || !sst) return false;
    this.counters.reclaims++;
    this.finishInUserSpace(client, server, cst, sst.frame, clocks);
    return true;
  }

  // The last steps of every hand-over of a bound pair (taken by TAKE_BOUND): user space
  // resumes the server's framing where the kernel stopped, places its own replies after
  // what the kernel still owes, and writes to the client only after the kernel's queued
  // bytes to it are out.
  private finishInUserSpace(client: ClientConnection, server: ServerConnection, c: ConnRead,
    frame: ConnRead['frame'], clocks: { xactNs: bigint | null; queryNs: bigint | null }): void {
    server.leftKernel();
    server.resumeFrame(frame);
    client.adoptServer(server, c.outstanding, c.tailOpen !== 0, { tailMessages: c.tailMessages, tailAnswered: c.tailAnswered, failed: (c.flags & ConnFlags.TAIL_ERROR) !== 0 });
    // User space sees this transaction's end: it counts it, timed from its kernel start.
    client.timing.resume(clocks.xactNs, clocks.queryNs, this.kidPool.get(c.poolId) ?? client.pool);
    server.socket.pause();
    client.holdOutput(this.whenFlushed(client, 600_000));
  }

  private tryFlipBound(client: ClientConnection): void {
    if (!client.quietExceptKernelServer) return;
    if (this.kernel!.clientToKernelBound(client.id, BigInt(client.bytesRead))) {
      client.enteredKernel();
      this.counters.clientsToKernel++;
    }
    // else: its next bytes are already on their way to user space; they come through feedKernelBound
  }

  // Resolves once the bytes the kernel redirected to the client are in its TCP send
  // queue, so that user space can write to it without overtaking them (bounded wait).
  // The kernel raises no event when its worker has sent them: waitUntil checks with back-off.
  whenFlushed(client: ClientConnection, maxMs = 2000): Promise<void> {
    const k = this.kernel;
    return waitUntil(() => !k || client.socket.destroyed || !this.clients.has(client.id) || k.redirectsFlushed(client.id), maxMs)
      .then(() => undefined);
  }

  // A client left: whatever server the kernel had bound to it is taken back and made clean.
  clientClosed(client: ClientConnection): void {
    const k = this.kernel;
    if (!k || !this.clients.has(client.id)) return;
    this.clients.delete(client.id);
    client.rewriter?.observe(null);
    const before = k.read(client.id);
    const serverId = k.takeBound(client.id);
    k.unregister(client.id);
    if (!serverId) {
      // No pair to take, but a server of this client's transaction may still be left in
      // user space's Kernel state with nobody to own it: close it.
      const known = client.kernelServer ?? (before?.peer ? this.servers.get(before.peer) : undefined);
      if (known) this.closeOrphan(client.id, known, 'client left during a hand-over from the kernel');
      return;
    }
    const server = this.servers.get(serverId);
    if (!server) return;
    server.leftKernel();
    this.counters.serversFromKernel++;
    // (bytes the kernel forwarded that end inside a message would make the proxy's own
    // query the rest of it: the server waits forever)
    const quiet = before !== null && before.outstanding === 0 && before.tailOpen === 0
      && before.frame.remaining === 0 && before.frame.hdrLen === 0;
    if (client.serverCloseReason) {
      server.close(client.serverCloseReason, false);
      return;
    }
    if (!quiet || !server.isUsable) {
      server.close('client left while its request was in progress in the kernel', false);
      return;
    }
    const pool = client.pool!;
    const s = pool.settings;
    // The kernel path does not track the transaction status: ROLLBACK in any case. It
    // never carries a pinned client.
    const steps = stepsOnLeave({ inTransaction: true, pinned: false, mode: s.mode, resetQuery: s.resetQuery, resetQueryAlways: s.resetQueryAlways });
    cleanServer(server, steps, (x) => pool.release(x), 'reset after client left failed');
  }

  // server was inside the transaction of client clientId, which left. If user space still
  // sees it in the kernel and the kernel still names that client as its peer, nobody else
  // will ever take it (no release, no event): close it, it is mid-transaction, never pool
  // it. Otherwise it has an owner: the kernel's idle stack, another client, an event on
  // its way (params_changed, server_retired) or user space.
  private closeOrphan(clientId: number, server: ServerConnection, why: string): void {
    if (server.state !== ServerState.Kernel) return;
    const k = this.kernel!;
    const st = k.read(skid(server));
    if (!st || st.peer !== clientId) return;
    k.takeBound(clientId); // (no-op when the client's side is already unbound)
    this.counters.serversFromKernel++;
    server.leftKernel();
    server.close(why);
  }

  // The server the kernel has bound to this client now, if any.
  serverOf(client: ClientConnection): ServerConnection | null {
    if (!this.kernel || !this.clients.has(client.id)) return null;
    const st = this.kernel.read(client.id);
    return st && st.peer ? this.servers.get(st.peer) ?? null : null;
  }

  // Whether the kernel has a server bound to this client now (its own bytes may still reach
  // user space: kernelServer), i.e. it is inside a transaction the kernel carries.
  clientBound(client: ClientConnection): boolean {
    return client.kernelServer !== null || this.serverOf(client) !== null;
  }

  // Whether the kernel has bound a server of its own to this one now (SHOW SERVERS, PAUSE).
  serverBound(server: ServerConnection): boolean {
    if (!this.kernel || server.state !== ServerState.Kernel) return false;
    const st = this.kernel.read(skid(server));
    return !!st && st.peer !== 0;
  }

  // The server a cancel for this client must hit: the one the kernel has bound to it,
  // marked (RETIRE) so that the kernel gives it to user space at its release instead of
  // its idle stack, where it could be bound to another client while the cancel is still
  // on its way; user space then holds it until the cancel completes (Pool.cancelDone).
  // The mark is made first and the binding checked after: from the mark on, a server
  // still bound to this client stays this client's until its release.
  cancelServer(client: ClientConnection): ServerConnection | null {
    const k = this.kernel;
    if (!k || !this.clients.has(client.id)) return null;
    const server = client.kernelServer ?? (client.state === ClientState.Kernel ? this.serverOf(client) : null);
    if (!server || server.state !== ServerState.Kernel) return null;
    const r = k.retire(skid(server));
    if (r === 'user') return null; // user space owns it (a hand-over under way): client.server decides
    if (r === 'taken') {
      // Idle in the kernel: the client's transaction is over and there is nothing to cancel.
      this.counters.serversFromKernel++;
      server.leftKernel();
      this.poolOf(server)?.release(server);
      return null;
    }
    this.retireMarked.add(server); // comes to user space at its release (event server_retired)
    const st = k.read(skid(server));
    return st && st.peer === client.id ? server : null; // else bound to another client since
  }
  // Servers marked by cancelServer, until their release reaches user space.
  private retireMarked = new Set<ServerConnection>();

  private poolOf(server: ServerConnection): Pool | undefined {
    return this.kidPool.get(this.kidOf.get(server) ?? -1);
  }

  private writtenAtHome = new WeakMap<ServerConnection, bigint>(); // Node's bytes written when registered

  // ---- servers ----

  // The kernel passed bytes of a server it owned (async message on an idle server).
  // The kernel handed a bound pair to user space (in-flight bound reached, or a hand-over
  // for a named statement or session state): user space finishes the transaction,
  // resuming the server's framing where the kernel stopped and writing to the client only
  // after the kernel's queued bytes to it are out. A hand-over may first have to wait for
  // the kernel to finish with the server (handoffSettled): then it returns a promise, and
  // the input of both connections is held until it settles, so that no byte either sends
  // is read in user space before the pair is adopted (invariant 1, docs/invariants.md).
  private adoptPair(clientId: number, server: ServerConnection): boolean | Promise<boolean> {
    const settling = this.settling.get(server);
    if (settling) return settling;
    const k = this.kernel!;
    const client = this.clients.get(clientId);
    const cst = k.read(clientId);
    const sst = k.read(skid(server));
    if (!client || !cst || !sst || !(cst.flags & (ConnFlags.SLOW | ConnFlags.HANDOFF))) return false;
    if (!(cst.flags & ConnFlags.HANDOFF)) return this.takePair(client, server, cst, sst.frame, false);
    if (this.handoffSettled(server)) return this.takePair(client, server, null, null, true);
    const done = waitUntil(() => this.handoffSettled(server), HANDOFF_SETTLE_MS).then((settled) => {
      this.settling.delete(server);
      try {
        return this.finishHandoff(client, server, clientId, settled);
      } catch (e) {
        // (a promise continuation: no read's boundary is around it) the pair ends, nothing else
        server.close(`internal error at a hand-over: ${(e as Error)?.message ?? String(e)}`, false);
        client.failWith(e);
        return true;
      }
    });
    this.settling.set(server, done);
    server.holdInput(done.then(() => undefined));
    return done;
  }

  // A hand-over's end, once the kernel has finished with the server or the wait timed out.
  private finishHandoff(client: ClientConnection, server: ServerConnection, clientId: number, settled: boolean): boolean {
    const k = this.kernel!;
    if (server.state !== ServerState.Kernel) return true; // the server left meanwhile
    if (!this.clients.has(clientId)) {
      // The client left during the wait: its clean-up (clientClosed) took the server,
      // unless the kernel still held it then.
      this.closeOrphan(clientId, server, 'client left during a hand-over from the kernel');
      return true;
    }
    if (settled && this.takePair(client, server, null, null, true)) return true;
    // Not settled in time, or the kernel released the pair meanwhile: neither can go on.
    k.takeBound(clientId);
    server.leftKernel();
    server.close(settled ? 'the kernel released this server during a hand-over' : 'the kernel did not finish with this server at a hand-over');
    client.fatal({ code: SqlState.ConnectionFailure, message: 'server connection lost (hand-over)' });
    return true;
  }

  // Hand-overs waiting for the kernel to finish with their server.
  private settling = new Map<ServerConnection, Promise<boolean>>();

  // Takes a bound pair from the kernel. A hand-over reads the client's counts and the
  // server's framing again: the server's last kernel-forwarded answers were applied since.
  private takePair(client: ClientConnection, server: ServerConnection, cst: ConnRead | null,
    frame: ConnRead['frame'] | null, handoff: boolean): boolean {
    const k = this.kernel!;
    const c = cst ?? k.read(client.id);
    const f = frame ?? k.read(skid(server))?.frame;
    if (!c || !f) return false;
    const clocks = k.clocks(client.id);
    if (k.takeBound(client.id) !== skid(server)) return false;
    if (handoff) this.counters.handoffs++;
    else this.counters.slowHandovers++;
    client.resumeFrame(c.frame); // where its passed bytes start: maybe inside a message
    this.finishInUserSpace(client, server, c, f, clocks);
    return true;
  }

  // A hand-over from the client verdict (named statement, session state) races the
  // server's own verdict, which may have forwarded an answer and not yet counted it for
  // the client, and the client bytes the kernel queued to the server may not all be sent
  // yet (user space would overtake them). True once neither is the case.
  private handoffSettled(server: ServerConnection): boolean {
    const k = this.kernel!;
    const since = this.writtenAtHome.get(server) ?? 0n;
    const st = k.read(skid(server));
    if (!st) return true; // unregistered: nothing of the kernel's is left to wait for
    const flushed = k.serverRedirectsFlushed(skid(server), BigInt(server.socket.bytesWritten) - since);
    return st.mode !== Mode.BOUND && !st.applying && flushed;
  }

  serverPassed(server: ServerConnection): void {
    const st = this.kernel!.read(skid(server));
    if (st && st.peer) {
      // Bytes of a transaction the kernel was carrying: the pair comes to user space.
      if (this.adoptPair(st.peer, server)) return; // true, or settling (its input is held)
      server.leftKernel();
      const client = this.clients.get(st.peer);
      server.close('the kernel path lost this server\'s framing');
      client?.fatal({ code: SqlState.ConnectionFailure, message: 'server connection lost (framing)' });
      return;
    }
    this.counters.serversFromKernel++;
    server.leftKernel();
    const pool = this.kidPool.get(this.kidOf.get(server) ?? -1);
    // After this chunk is handled (a notice is fine, anything else closes it), it is idle again.
    setImmediate(() => {
      if (!server.isUsable || server.state !== ServerState.Idle || !pool) return;
      if (server.closeNeeded) server.close('close_needed (RECONNECT)');
      else pool.serverAvailable(server);
    });
  }

  private serverClosed(server: ServerConnection): void {
    const k = this.kernel;
    this.servers.delete(skid(server));
    this.retireMarked.delete(server);
    server.statements.observe(null);
    if (!k) return;
    const st = k.read(skid(server));
    k.unregister(skid(server));
    // A server that dies bound to a client in the kernel takes that client's transaction with it.
    if (st && st.peer) {
      const client = this.clients.get(st.peer);
      if (client && (client.state === ClientState.Kernel || client.kernelServer === server)) {
        this.counters.kernelServerLost++;
        // The server's last words (a FATAL error) may still be in the kernel's redirect
        // queue to the client: ours must come after them. If the last message the kernel
        // framed from it is a complete ErrorResponse (nothing, not even ReadyForQuery,
        // after it), it was FATAL and reached the client: no second error of ours.
        const f = st.frame;
        const endedWithError = f.curType === ERROR_RESPONSE && f.remaining === 0 && f.hdrLen === 0;
        this.whenFlushed(client).then(() => {
          if (endedWithError || server.fatalForwarded) client.closeAfterServerFatal();
          else client.fatal({ code: SqlState.ConnectionFailure, message: 'server connection lost while serving this client' });
        });
      }
    }
  }

  // Settings refreshes in progress, by client id (see leftKernel).
  private refreshes = new Map<number, { promise: Promise<void>; resolve: () => void }>();

  private refreshFor(clientId: number) {
    let r = this.refreshes.get(clientId);
    if (!r) {
      let resolve!: () => void;
      const promise = new Promise<void>((res) => (resolve = res));
      r = { promise, resolve };
      this.refreshes.set(clientId, r);
      // The event is normally handled within a loop turn; never hold a client on a lost one.
      setTimeout(() => this.finishRefresh(clientId), 2000).unref();
    }
    return r;
  }

  private refreshed = new WeakSet<ClientConnection>();

  private finishRefresh(clientId: number): void {
    const r = this.refreshes.get(clientId);
    if (!r) return;
    const client = this.clients.get(clientId);
    if (client) this.refreshed.add(client);
    this.refreshes.delete(clientId);
    r.resolve();
  }

  // The kernel passed a client's bytes up. If it did so because the client changed a
  // tracked setting, its next server must wait until the new values are known.
  leftKernel(client: ClientConnection): void {
    this.counters.clientsFromKernel++;
    const st = this.kernel?.read(client.id);
    // Handed over mid-transaction: take its server now, before its bytes are forwarded.
    const peer = st && st.peer ? this.servers.get(st.peer) : undefined;
    if (st && peer && st.flags & (ConnFlags.HANDOFF | ConnFlags.SLOW) && peer.state === ServerState.Kernel) {
      const adopted = this.adoptPair(client.id, peer);
      if (adopted === true) return;
      if (adopted !== false) {
        // Settling: the bytes the kernel passed wait until the pair is adopted (or lost).
        client.holdInput(adopted.then(() => undefined));
        return;
      }
    }
    const bound = st && st.peer ? this.servers.get(st.peer) : undefined;
    if (bound) client.boundInKernel(bound); // it still carries the transaction
    // The kernel's flag stays set until the client is back in the kernel: a refresh done
    // since then already answered it. Its next server waits (settingsLearned).
    if (st && st.flags & ConnFlags.PARAMS_CHANGED && !this.refreshed.has(client)) this.refreshFor(client.id);
  }

  // The refresh of settings the client changed in the kernel, while one is under way.
  settingsLearned(client: ClientConnection): Promise<void> | null {
    return this.refreshes.get(client.id)?.promise ?? null;
  }

  private onKernelEvent(e: KernelEvent): void {
    if (e.type === 'inflight_limit' || e.type === 'handoff') {
      const server = this.servers.get(e.server);
      if (server && server.state === ServerState.Kernel) this.adoptPair(e.client, server);
    } else if (e.type === 'server_released') {
      this.kidPool.get(e.pool)?.serviceWaiters();
    } else if (e.type === 'server_retired') {
      const server = this.servers.get(e.server);
      if (server && server.state === ServerState.Kernel) this.retired(server);
    } else if (e.type === 'params_changed') {
      this.counters.paramsChanged++;
      const client = this.clients.get(e.client);
      const server = this.servers.get(e.server);
      this.refreshFor(e.client);
      if (!server) return this.finishRefresh(e.client);
      server.leftKernel();
      const pool = this.kidPool.get(this.kidOf.get(server) ?? -1);
      // Learn the client's new values from the server it set them on, then clean the server.
      server.queryValues(`SELECT ${TRACKED_PARAMETERS.map((p) => `current_setting('${p}')`).join(', ')}`).then(
        (values) => {
          // The ParameterStatus went straight to the client: the server's own record is stale too.
          TRACKED_PARAMETERS.forEach((p, i) => server.params.set(p, values[i]));
          if (client && client.state !== ClientState.Closed) {
            TRACKED_PARAMETERS.forEach((p, i) => client.setSetting(p, values[i]));
            client.appName = client.settings.get('application_name') ?? '';
          }
          this.finishRefresh(e.client);
          if (pool) pool.release(server);
        },
        (err: Error) => {
          this.finishRefresh(e.client);
          server.close(`reading parameters after a SET failed: ${err.message}`);
        },
      );
    }
  }

  // server_idle_timeout and server_lifetime for servers idle in the kernel: now and then
  // look at them (a map read each, the stack untouched) and, only when one is due, take
  // them out, close the ones that are due, and put the others back. Taking them out
  // empties the pool's idle stack for as long as that takes, and a request arriving then
  // waits in user space: done every few seconds whether or not a server was due, it put
  // a periodic bump in the latency tail. A server's last use is seen from the bytes the
  // kernel has redirected to it.
  janitor(now: number): void {
    const k = this.kernel;
    if (!k) return;
    this.sampleStats();
    if (this.status.mode === 'auto') this.autoStep(now);
    this.kernelClientTimeouts(now);
    this.quietMirrorFeeds();
    // A server marked for a cancel whose release event was lost (ring buffer full).
    // One closed meanwhile (its client timed out, the kernel's pair taken) is forgotten.
    for (const x of [...this.retireMarked]) {
      if (x.state === ServerState.Closed) this.retireMarked.delete(x);
      else if (x.state === ServerState.Kernel) this.retireIfReleased(x);
    }
    for (const [pool, bySig] of this.kpools) {
      const s = pool.settings;
      const reconnect = [...pool.servers].some((x) => x.closeNeeded && x.state === ServerState.Kernel);
      // A retired server whose event was lost (ring buffer full) is USER and unbound in the kernel.
      if (reconnect) for (const x of [...pool.servers]) if (x.closeNeeded && x.state === ServerState.Kernel) this.retireIfReleased(x);
      if (!reconnect && s.serverIdleTimeout <= 0 && s.serverLifetime <= 0) continue;
      const every = Math.max(1000, Math.min(5000, (Math.min(...[s.serverIdleTimeout, s.serverLifetime].filter((x) => x > 0)) * 1000) / 2));
      if (!reconnect && now - (this.lastSweep.get(pool) ?? 0) < every) continue;
      this.lastSweep.set(pool, now);
      if (!reconnect && !this.idleServerDue(pool, now)) continue;
      const taken: ServerConnection[] = [];
      for (const kid of bySig.values()) {
        for (let id = k.popIdle(kid); id !== 0; id = k.popIdle(kid)) {
          const server = this.servers.get(id);
          if (server && server.isUsable) taken.push(server);
        }
      }
      for (const server of taken) {
        server.leftKernel();
        const st = k.read(skid(server));
        const seen = this.activity.get(server);
        if (!seen || (st && st.redirected !== seen.redirected)) this.activity.set(server, { redirected: st?.redirected ?? 0n, since: now });
        const idleSince = Math.max(this.activity.get(server)!.since, server.lastUsed);
        const why = idleServerVerdict(s, { createdAt: server.createdAt, idleSince, closeNeeded: server.closeNeeded }, pool.pairServerCount, now);
        if (why) server.close(why);
        else pool.serverAvailable(server);
      }
    }
  }
  private lastSweep = new Map<Pool, number>();

  // Whether a server of the pool idle in the kernel is due for closing (server_idle_timeout,
  // server_lifetime), read without taking it from the idle stack. Records each server's
  // activity as the sweep does; a bound server is in use, not idle.
  private idleServerDue(pool: Pool, now: number): boolean {
    const k = this.kernel!;
    for (const server of pool.servers) {
      if (server.state !== ServerState.Kernel || !server.isUsable) continue;
      const st = k.read(skid(server));
      if (!st) continue;
      const seen = this.activity.get(server);
      if (!seen || st.redirected !== seen.redirected) this.activity.set(server, { redirected: st.redirected, since: now });
      if (st.peer !== 0) continue;
      const idleSince = Math.max(this.activity.get(server)!.since, server.lastUsed);
      if (idleServerVerdict(pool.settings, { createdAt: server.createdAt, idleSince, closeNeeded: server.closeNeeded }, pool.pairServerCount, now)) return true;
    }
    return false;
  }

  // client_idle_timeout, idle_transaction_timeout, query_timeout and transaction_timeout
  // for clients whose traffic the kernel carries: activity is seen from the kernel's
  // counters (bytes redirected to the client, its binding, its outstanding requests),
  // sampled here; a transaction's age from the start time the verdict records at its first
  // request (conn.xact_start, cleared at its ReadyForQuery 'I').
  private kernelClientTimeouts(now: number): void {
    const k = this.kernel!;
    const c = this.config();
    if (!anyClientTimeout(c)) return;
    for (const client of this.clients.values()) {
      if ((client.state !== ClientState.Kernel && client.state !== ClientState.KernelBound) || this.timingOut.has(client)) continue;
      const st = k.read(client.id);
      if (!st) continue;
      const prev = this.seen.get(client);
      const moved = !prev || prev.redirected !== st.redirected || prev.peer !== st.peer || prev.outstanding !== st.outstanding;
      const since = moved ? now : prev!.since;
      const busySince = st.outstanding > 0 ? (prev && prev.outstanding > 0 ? prev.busySince : now) : 0;
      this.seen.set(client, { redirected: st.redirected, peer: st.peer, outstanding: st.outstanding, since, busySince });
      client.lastActivity = Math.max(client.lastActivity, since);
      const xactNs = c.transaction_timeout > 0 && st.peer !== 0 ? k.clocks(client.id).xactNs : null;
      const why = clientTimeout(c, {
        busySince, quietSince: since, idleInTransaction: st.peer !== 0 && st.outstanding === 0, betweenTransactions: !st.peer,
        transactionAge: xactNs === null ? 0 : Number(xactNs / 1_000_000n),
      }, now);
      if (why) {
        if (why.cancelQuery) client.cancelRunningQuery();
        // Closed rather than cleaned when clientClosed takes it from the kernel.
        if (why.closeServer) client.serverCloseReason = why.message;
        this.timingOut.add(client);
        this.whenFlushed(client).then(() => client.fatal({ code: why.code, message: why.message }));
      }
    }
  }
  private timingOut = new WeakSet<ClientConnection>();
  private seen = new WeakMap<ClientConnection, { redirected: bigint; peer: number; outstanding: number; since: number; busySince: number }>();
  private activity = new WeakMap<ServerConnection, { redirected: bigint; since: number }>();

  // RECONNECT (and a reload that changed a pool's server settings): servers idle in the
  // kernel are closed now, bound ones when the kernel releases them (PgBouncer's
  // close_needed). The kernel marks and takes them under the server's lock, so a server
  // released at this moment is either taken here or handed over at its release.
  closeIdle(pool: Pool, reason: string): void {
    const k = this.kernel;
    if (!k) return;
    for (const server of [...pool.servers]) {
      if (server.state !== ServerState.Kernel) continue;
      const r = k.retire(skid(server));
      if (r === 'taken') {
        server.leftKernel();
        this.counters.serversFromKernel++;
        server.close(reason);
      } else {
        server.closeNeeded = true; // at its release (event server_retired), or by user space
      }
    }
  }

  // The kernel released a retired server into USER instead of its idle stack: RECONNECT
  // closes it; one marked for a cancel goes back through its pool, which holds it until
  // the cancel completes.
  private retired(server: ServerConnection): void {
    this.counters.serversFromKernel++;
    this.retireMarked.delete(server);
    server.leftKernel();
    const pool = this.poolOf(server);
    if (server.closeNeeded || !pool) server.close('close_needed (RECONNECT)');
    else pool.release(server);
  }

  private retireIfReleased(server: ServerConnection): void {
    const st = this.kernel!.read(skid(server));
    if (st && st.mode === Mode.USER && st.peer === 0 && st.flags & ConnFlags.RETIRE) this.retired(server);
  }

  // Sampled each second by the janitor, and again whenever SHOW STATS or /metrics reads
  // them (a few per-CPU map reads), so a reader sees every transaction already answered.
  trafficByPool(): Map<Pool, Partial<Totals>> {
    this.sampleStats();
    return this.poolStats.byPool();
  }

  // Folds what the kernel pools carried since the last sample into their Pools' totals.
  sampleStats(): void {
    const k = this.kernel;
    if (!k) return;
    for (const [kid, pool] of this.kidPool) this.poolStats.add(pool, kid, k.poolStats(kid));
  }

  kernelCounters(): KernelCounters | null {
    return this.kernel ? this.kernel.counters() : null;
  }

  idleInKernel(pool: Pool): number {
    let n = 0;
    for (const kid of this.kpools.get(pool)?.values() ?? []) n += this.kernel?.idleCount(kid) ?? 0;
    return n;
  }

  // Kernel and user-space counters by name, for Prometheus.
  flatCounters(): Record<string, number | bigint> {
    const out = flatUserCounters(this.counters);
    const kc = this.kernelCounters();
    if (kc) {
      out.transactions = kc.transactions;
      out.client_bytes = kc.clientBytes;
      out.server_bytes = kc.serverBytes;
      out.passed_skbs = kc.passedSkbs;
      out.statement_rewrites = kc.statementRewrites as bigint;
      out.held_for_waiters = kc.heldForWaiters as bigint;
      for (const [r, v] of Object.entries(kc.fallbacks)) out[`fallback_${r}`] = v;
      out.fallback_tls_client = this.tlsFallbacks.client;
      out.fallback_tls_server = this.tlsFallbacks.server;
      out.mirror_records = this.mirrorTotals.records;
      out.mirror_bytes = this.mirrorTotals.bytes;
      out.mirror_resyncs = this.mirrorTotals.resyncs;
      out.mirror_losses = this.kernel?.mirrorLosses() ?? 0;
      out.mirror_ignored = this.mirrorTotals.ignored;
      out.mirror_batches = this.kernel?.mirrorBatches ?? 0;
    }
    return out;
  }

  // Rows for SHOW BYPASS and the SIGUSR1 line.
  info(): Array<[string, string]> {
    let clientsInKernel = 0;
    for (const c of this.clients.values()) if (c.state === ClientState.Kernel || c.state === ClientState.KernelBound) clientsInKernel++;
    let serversInKernel = 0;
    for (const s of this.servers.values()) if (s.state === ServerState.Kernel) serversInKernel++;
    const rows = statusRows(this.status, this.counters, clientsInKernel, serversInKernel);
    const kc = this.kernelCounters();
    if (kc) {
      rows.push(['kernel_transactions', String(kc.transactions)], ['kernel_client_bytes', String(kc.clientBytes)],
        ['kernel_server_bytes', String(kc.serverBytes)], ['kernel_passed_skbs', String(kc.passedSkbs)],
        ['kernel_statement_rewrites', String(kc.statementRewrites)], ['kernel_held_for_waiters', String(kc.heldForWaiters)]);
      // Mirrored clients' traffic the verdicts copied (docs/mirroring.md).
      rows.push(['mirror_kernel_records', String(this.mirrorTotals.records)], ['mirror_kernel_bytes', String(this.mirrorTotals.bytes)],
        ['mirror_kernel_resyncs', String(this.mirrorTotals.resyncs)], ['mirror_kernel_losses', String(this.kernel?.mirrorLosses() ?? 0)],
        ['mirror_kernel_ignored', String(this.mirrorTotals.ignored)],
        ['mirror_kernel_batches', String(this.kernel?.mirrorBatches ?? 0)]);
      for (const [r, v] of Object.entries(kc.fallbacks)) rows.push([`fallback_${r}`, String(v)]);
      // Which path serves each pool, and why (bypass: auto decides per pool).
      for (const pool of this.kpools.keys()) {
        const v = this.autoVerdicts.get(pool);
        const path = this.status.mode !== 'auto' ? 'kernel: bypass: on'
          : !v ? 'kernel: measuring'
          : `${v.path}${v.state === AutoState.Probe ? ' (probe)' : ''}: ${v.reason}`;
        rows.push([`pool ${pool.label}`, path]);
      }
      // Kept in user space by user space itself, not by the kernel: TLS connections.
      rows.push(['fallback_tls_client', String(this.tlsFallbacks.client)], ['fallback_tls_server', String(this.tlsFallbacks.server)]);
    }
    return rows;
  }

  close(): void {
    this.kernel?.close();
    this.kernel = null;
  }
}

// What the kernel copies of a mirrored client's replies: only what compare: tags reads if
// every session of the client reads no more (a session keeps its compare mode for life,
// and a client's list of sessions only shrinks); null if the client is not mirrored.
function mirrorReplies(sessions: readonly MirrorSession[]): number | null {
  if (!sessions.length) return null;
  return sessions.every((m) => m.compare === 'tags') ? MirrorReplies.TAGS : MirrorReplies.WHOLE;
}

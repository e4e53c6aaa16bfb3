// A pool of server connections for one (database, user, startup settings): idle servers, clients
// waiting in FIFO order, sizing (pool, min, reserve), and the server lifetimes.
import { ServerConnection, ServerError, ServerState, ServerTarget } from './server-connection';
import type { PoolMode } from '../config/types';
import { log } from '../observe/log';
import { idleServerVerdict, lifetimeReached } from './policy';

export interface PoolSettings {
  mode: PoolMode;
  size: number;
  minSize: number;
  reserveSize: number;
  reserveTimeout: number; // s
  queryWaitTimeout: number; // s, 0 = forever
  serverIdleTimeout: number; // s, 0 = never
  serverLifetime: number; // s, 0 = never
  resetQuery: string;
  resetQueryAlways: boolean;
  checkQuery: string;
  checkDelay: number; // s
  loginRetry: number; // s, server_login_retry: no new server this long after a failed login
}

// Counts server connections across pools: per (database, server user) over the pools of
// its startup-settings variants (pool_size, reserve_pool_size, min_pool_size are budgets of
// that pair, as in PgBouncer), per database (max_db_connections), per user (max_user_connections).
export interface ConnectionBudget {
  // Whether the pool may open a server now, its (database, user) pair holding fewer than `limit`.
  canOpen(pool: Pool, limit: number): boolean;
  // A limit keeps this pool from opening a server: close an idle server of another pool
  // under the same limit so that it can (PgBouncer evicts the same way). True if one closed.
  evictIdleFor(pool: Pool, limit: number): boolean;
  opened(pool: Pool): void;
  closed(pool: Pool): void;
  freed(pool: Pool): void; // a slot was freed: another pool may now open a server
  // Servers of the pool's (database, user) pair over all its variant pools.
  pairServers(pool: Pool): number;
  // Whether this pool is the one that opens servers for min_pool_size (one per pair).
  warms(pool: Pool): boolean;
  // A server of this pool is released while the pair is full: another variant pool whose
  // client has waited longer, and that holds at least two servers fewer, gets the slot.
  yieldsTo(pool: Pool): Pool | null;
}

export class PoolError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = 'PoolError';
  }
}

// Who waits for a server (a client). Called back synchronously, from whatever gave the
// server back: neither method may throw (each is the waiter's own error boundary).
export interface PoolWaiter {
  serverGranted(server: ServerConnection): void;
  serverRefused(e: Error): void;
}

interface Waiter {
  who: PoolWaiter;
  since: number;
}

// The kernel path's say over a pool's idle servers and waiters: the part of the KernelHost
// (src/pooling/kernel-host.ts) a pool calls, declared here so this module does not depend on it.
export interface PoolKernel {
  waitersChanged(pool: Pool): void;
  offerIdle(pool: Pool, server: ServerConnection): boolean;
  takeIdle(pool: Pool): ServerConnection | null;
  closeIdle(pool: Pool, reason: string): void;
}

// What a pool is given to work with.
export interface PoolDeps {
  budget: ConnectionBudget; // max_db_connections across the database's pools
  kernel: PoolKernel;
  newServer(target: ServerTarget): ServerConnection; // not connected yet: the pool connects it
}

let nextPoolId = 1;

export class Pool {
  readonly id = nextPoolId++;
  readonly servers = new Set<ServerConnection>();
  private idle: ServerConnection[] = [];
  private waiters: Waiter[] = [];
  private connecting = 0;
  paused = false;
  lastConnectError: ServerError | null = null;
  private loginFailedAt = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  // Stats (SHOW POOLS / STATS).
  stats = { waitedMicros: 0, served: 0, xacts: 0, maxWaitMs: 0 }; // numbers: exact to 2^53

  constructor(
    readonly database: string,
    readonly user: string,
    public target: ServerTarget,
    public settings: PoolSettings,
    private readonly deps: PoolDeps,
  ) {}

  private get kernel(): PoolKernel {
    return this.deps.kernel;
  }
  private get budget(): ConnectionBudget {
    return this.deps.budget;
  }

  get label(): string {
    return `${this.user}@${this.database}`;
  }
  get idleCount(): number {
    return this.idle.length;
  }
  get waitingCount(): number {
    return this.waiters.length;
  }
  get connectingCount(): number {
    return this.connecting;
  }
  // Servers of this pool's (database, user) pair over its startup-variant pools.
  get pairServerCount(): number {
    return this.budget.pairServers(this);
  }
  // When the oldest waiting client started waiting (Infinity: none waits).
  get oldestWaitSince(): number {
    return this.waiters.length ? this.waiters[0].since : Infinity;
  }
  get activeCount(): number {
    let n = 0;
    for (const s of this.servers) if (s.state === ServerState.Active || s.state === ServerState.Internal) n++;
    return n;
  }

  // Resolves with a server for the caller, in FIFO order with other waiters.
  acquire(): Promise<ServerConnection> {
    return new Promise((resolve, reject) => {
      const s = this.acquireFor({ serverGranted: resolve, serverRefused: reject });
      if (s) resolve(s);
    });
  }

  // A server at once when one is idle, nobody waits before the caller and it needs no
  // server_check_query: the common case, served in the caller's tick with no promise, no
  // microtask and no closure. Otherwise null, and the waiter is called back (granted or
  // refused) in FIFO order: from the release that frees a server, in that same tick.
  acquireFor(who: PoolWaiter): ServerConnection | null {
    if (!this.paused && this.waiters.length === 0) {
      const s = this.takeIdle();
      if (s) {
        if (!this.checkDue(s)) return s;
        this.check(s, who);
        return null;
      }
    }
    // server_login_retry, as PgBouncer: while logins fail and no server is up, a request
    // gets the last login error at once instead of waiting for a retry.
    const failed = this.lastConnectError;
    if (failed && this.loginBackoffLeft() > 0 && !this.hasLiveServer()) {
      who.serverRefused(new PoolError(failed.message, failed.fields?.C ?? '08006'));
      return null;
    }
    this.waiters.push({ who, since: Date.now() });
    this.armWaitTimer();
    this.kernel.waitersChanged(this);
    // A server the kernel released before it learned of this waiter raised no event:
    // look again now that it knows.
    this.serviceWaiters();
    return null;
  }

  // A waiter gave up (its client closed): it leaves the queue.
  cancelWait(who: PoolWaiter): void {
    const i = this.waiters.findIndex((w) => w.who === who);
    if (i < 0) return;
    this.waiters.splice(i, 1);
    this.kernel.waitersChanged(this);
  }

  // query_wait_timeout: one timer per pool, for the oldest waiter (the queue is FIFO, so
  // the others are due later), not one per waiting request.
  private armWaitTimer(): void {
    const t = this.settings.queryWaitTimeout;
    if (t <= 0 || this.waitTimer || this.waiters.length === 0) return;
    const due = this.waiters[0].since + t * 1000 - Date.now();
    this.waitTimer = setTimeout(() => {
      this.waitTimer = null;
      this.expireWaiters();
    }, Math.max(0, due));
  }
  private waitTimer: NodeJS.Timeout | null = null;

  private expireWaiters(): void {
    const t = this.settings.queryWaitTimeout;
    if (t > 0) {
      const limit = Date.now() - t * 1000;
      while (this.waiters.length && this.waiters[0].since <= limit) {
        const w = this.waiters.shift()!;
        this.kernel.waitersChanged(this);
        w.who.serverRefused(new PoolError('query_wait_timeout', '08P01'));
      }
    }
    this.armWaitTimer();
  }

  // A clean, idle server comes back from a client.
  release(server: ServerConnection): void {
    server.unlink();
    if (!server.isUsable) return;
    if (server.closeNeeded) return server.close('close_needed (RECONNECT)');
    if (this.excess > 0) return server.close('pool size lowered');
    const other = this.budget.yieldsTo(this);
    if (other) return server.close(`slot handed to pool ${other.label} (pool_size shared by startup variants)`);
    if (lifetimeReached(this.settings, server.createdAt, Date.now())) {
      server.close('server_lifetime reached');
      return;
    }
    server.parkIdle();
    server.lastUsed = Date.now();
    this.handOut(server);
  }

  // A cancel request is about to be sent for this server's query: hold the server
  // (handOut parks it) until cancelDone().
  cancelStarted(server: ServerConnection): void {
    server.cancelsInFlight++;
  }

  // The cancel request's connection to PostgreSQL has closed (PostgreSQL has acted on
  // it, or it failed): a server released meanwhile may serve others now.
  cancelDone(server: ServerConnection): void {
    if (server.cancelsInFlight > 0) server.cancelsInFlight--;
    if (server.cancelsInFlight > 0 || !server.releaseAfterCancel) return;
    server.releaseAfterCancel = false;
    if (server.isUsable && server.state === ServerState.Idle) this.release(server);
  }

  // A server that is idle (login done, reset done) is given to a waiter or parked.
  private handOut(server: ServerConnection): void {
    if (server.cancelsInFlight > 0) {
      server.releaseAfterCancel = true; // cancelDone() hands it out
      return;
    }
    if (!this.paused) {
      const w = this.waiters.shift();
      if (w) {
        this.kernel.waitersChanged(this);
        this.giveToWaiter(w, server, false);
        return;
      }
    }
    if (!this.kernel.offerIdle(this, server)) this.idle.push(server);
    this.budget.freed(this); // another pool under the same limit may be waiting for it
  }

  // Closes one idle server (another pool needs its slot under a shared limit).
  closeOneIdle(reason: string): boolean {
    const s = this.idle.shift() ?? this.kernel.takeIdle(this) ?? null;
    if (!s) return false;
    s.close(reason);
    return true;
  }

  // The kernel path takes this pool again (bypass: auto): its idle servers go back to it.
  reofferIdle(): void {
    for (const s of this.idle.splice(0)) {
      if (!s.isUsable || s.state !== ServerState.Idle) continue;
      if (!this.kernel.offerIdle(this, s)) this.idle.push(s);
    }
  }

  // Called by the kernel side when a server it owned is usable by user space again.
  serverAvailable(server: ServerConnection): void {
    this.handOut(server);
  }

  // check: the server was idle (maybe long enough for server_check_query); false for one
  // just released or logged in.
  private giveToWaiter(w: Waiter, server: ServerConnection, check: boolean): void {
    const waited = Date.now() - w.since;
    this.stats.waitedMicros += waited * 1000;
    if (waited > this.stats.maxWaitMs) this.stats.maxWaitMs = waited;
    this.stats.served++;
    if (check && this.checkDue(server)) this.check(server, w.who);
    else w.who.serverGranted(server);
  }

  // server_check_query (PgBouncer's meaning): a server idle for server_check_delay or
  // longer runs the query before a client gets it; one that fails it is closed and the
  // client asks again (a new server needs no check). An empty query turns it off. Servers
  // the kernel path binds by itself are not checked (docs/kernel-path.md).
  private checkDue(server: ServerConnection): boolean {
    const s = this.settings;
    return !!s.checkQuery && Date.now() - server.lastUsed >= s.checkDelay * 1000;
  }

  private check(server: ServerConnection, who: PoolWaiter): void {
    server.runInternal(this.settings.checkQuery).then(
      () => {
        server.lastUsed = Date.now();
        who.serverGranted(server);
      },
      (e: Error) => {
        log.info(`${server.label} server_check_query failed: ${e.message}`);
        server.close(`server_check_query failed: ${e.message}`);
        const s = this.acquireFor(who); // asks again, behind those who wait now
        if (s) who.serverGranted(s);
      },
    );
  }

  private takeIdle(): ServerConnection | null {
    while (this.idle.length) {
      const s = this.idle.pop()!; // LIFO: the warmest server
      if (s.isUsable && s.state === ServerState.Idle) return s;
    }
    return this.kernel.takeIdle(this);
  }

  // Wakes waiters when a server may be had (e.g. the kernel released one).
  serviceWaiters(): void {
    while (this.waiters.length && !this.paused) {
      const s = this.takeIdle();
      if (!s) break;
      const w = this.waiters.shift()!;
      this.giveToWaiter(w, s, true);
    }
    this.kernel.waitersChanged(this);
    this.grow();
  }

  // min_pool_size counts the pair's servers; one pool of the pair opens them.
  private get belowMin(): boolean {
    return this.budget.warms(this) && this.budget.pairServers(this) < this.settings.minSize;
  }

  // Milliseconds left before a new server may be tried after a failed login (server_login_retry).
  private loginBackoffLeft(): number {
    if (!this.lastConnectError) return 0;
    return Math.max(0, this.loginFailedAt + this.settings.loginRetry * 1000 - Date.now());
  }

  private hasLiveServer(): boolean {
    for (const x of this.servers) if (x.isUsable && x.state !== ServerState.Connecting) return true;
    return false;
  }

  // Opens servers for waiters (up to the pool size, then the reserve) and up to min_pool_size.
  grow(): void {
    const s = this.settings;
    const wait = this.loginBackoffLeft();
    if (wait > 0) {
      // One retry when the wait is over, if anyone still needs a server then.
      if (!this.retryTimer && (this.waiters.length || this.belowMin)) {
        this.retryTimer = setTimeout(() => {
          this.retryTimer = null;
          this.grow();
        }, wait);
        this.retryTimer.unref();
      }
      return;
    }
    const oldestWait = this.waiters.length ? Date.now() - this.waiters[0].since : 0;
    const limit = s.size + (oldestWait >= s.reserveTimeout * 1000 ? s.reserveSize : 0);
    const forMin = this.budget.warms(this) ? s.minSize - this.budget.pairServers(this) : 0;
    const wanted = Math.max(this.waiters.length - this.connecting, forMin);
    for (let i = 0; i < wanted && this.budget.canOpen(this, limit); i++) this.openServer();
    // Clients wait but the pair's pool_size, the database's or the user's limit is taken:
    // an idle server of another pool under that limit makes room (its close calls grow again).
    if (this.waiters.length > this.connecting && !this.budget.canOpen(this, limit)) this.budget.evictIdleFor(this, limit);
    if (this.waiters.length && this.budget.pairServers(this) >= s.size && s.reserveSize > 0 && !this.reserveTimer) {
      this.reserveTimer = setTimeout(() => {
        this.reserveTimer = null;
        this.grow();
      }, s.reserveTimeout * 1000);
      this.reserveTimer.unref();
    }
  }
  private reserveTimer: NodeJS.Timeout | null = null;

  private openServer(): void {
    const server = this.deps.newServer(this.target);
    this.servers.add(server);
    this.connecting++;
    this.budget.opened(this);
    server.once('close', () => {
      this.servers.delete(server);
      const i = this.idle.indexOf(server);
      if (i >= 0) this.idle.splice(i, 1);
      this.budget.closed(this);
      this.emitChanged();
    });
    server.connect().then(
      () => {
        this.connecting--;
        this.lastConnectError = null;
        log.info(`${server.label} new server connection (pool ${this.label}, ${this.servers.size} servers)`);
        this.handOut(server);
      },
      (err: Error) => {
        const e = err instanceof ServerError ? err : new ServerError(`server login failed: ${err.message}`);
        this.connecting--;
        this.lastConnectError = e;
        this.loginFailedAt = Date.now(); // grow() waits server_login_retry from here
        log.warn(`pool ${this.label}: ${e.message}`);
        // With no logged-in server left, nobody will come back to serve the waiters: tell them now.
        const alive = [...this.servers].some((x) => x.isUsable && x.state !== ServerState.Connecting);
        if (!alive && this.connecting === 0) this.failWaiters(e);
      },
    );
  }

  private failWaiters(e: ServerError): void {
    const ws = this.waiters;
    this.waiters = [];
    this.kernel.waitersChanged(this);
    for (const w of ws) w.who.serverRefused(new PoolError(e.message, e.fields?.C ?? '08006'));
  }

  private emitChanged(): void {
    // A server went away: keep min_pool_size and any waiters served.
    if (this.waiters.length || this.belowMin) setImmediate(() => this.grow());
    this.budget.freed(this);
  }

  // Servers of the pair above its size and reserve (a reload made it smaller).
  private get excess(): number {
    return this.budget.pairServers(this) - (this.settings.size + this.settings.reserveSize);
  }

  // A pool made smaller closes what is above its size: idle servers now (in user space
  // and in the kernel's idle stack), the others as they are released.
  shrink(): void {
    for (const srv of [...this.idle]) { // close() removes from this.idle
      if (this.excess <= 0) return;
      srv.close('pool size lowered');
    }
    while (this.excess > 0) {
      const srv = this.kernel.takeIdle(this);
      if (!srv) return;
      srv.close('pool size lowered');
    }
  }

  // Periodic upkeep: idle timeout, lifetime, min_pool_size, a lowered pool size.
  janitor(): void {
    if (this.excess > 0) this.shrink();
    const now = Date.now();
    const s = this.settings;
    const keep: ServerConnection[] = [];
    for (const srv of [...this.idle]) { // close() removes from this.idle
      if (!srv.isUsable) continue;
      const why = idleServerVerdict(s, { createdAt: srv.createdAt, idleSince: srv.lastUsed, closeNeeded: srv.closeNeeded }, this.budget.pairServers(this), now);
      if (why) srv.close(why);
      else keep.push(srv);
    }
    this.idle = keep;
    if (this.waiters.length) {
      const oldest = now - this.waiters[0].since;
      if (oldest >= s.reserveTimeout * 1000) this.grow();
    }
    if (this.belowMin) this.grow(); // after a failed login, at most once per server_login_retry
  }

  // Closes idle servers now and the others when they come back (RECONNECT, reload).
  closeIdle(reason: string): void {
    for (const s of this.idle.splice(0)) s.close(reason);
    this.kernel.closeIdle(this, reason);
  }

  closeAll(reason: string): void {
    this.failWaiters(new ServerError(reason, { C: '57P01' }));
    for (const s of [...this.servers]) s.close(reason, false);
  }

  pause(): void {
    this.paused = true;
    this.kernel.waitersChanged(this); // the kernel path stops binding new transactions too
  }
  resume(): void {
    this.paused = false;
    this.serviceWaiters();
  }
}

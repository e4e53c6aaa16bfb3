// The pooling policy without PostgreSQL or a kernel: the rules both data paths share
// (src/pooling/policy.ts), table-driven, and Pool driven through fakes of our own
// interfaces (a server factory and a KernelHost) — what it opens, hands out, parks,
// offers to the kernel and closes.
import t from 'tap';
import { EventEmitter } from 'node:events';
import { clientTimeout, idleServerVerdict, stepsAtTransactionEnd, stepsOnLeave, type ClientActivity } from '../src/pooling/policy';
import { Pool, PoolError, type ConnectionBudget, type PoolSettings } from '../src/pooling/pool';
import { ServerError, ServerState, type ServerConnection, type ServerTarget } from '../src/pooling/server-connection';
import { UserSpaceOnly, type KernelHost } from '../src/pooling/kernel-host';
import { SqlState } from '../src/protocol/constants';

t.test('stepsOnLeave: what a server runs after its client left', async (t) => {
  const base = { inTransaction: false, pinned: false, mode: 'transaction' as const, resetQuery: 'DISCARD ALL', resetQueryAlways: false };
  const cases: Array<[string, Partial<typeof base>, string[]]> = [
    ['quiet transaction-mode server: released as it is', {}, []],
    ['open transaction: rolled back', { inTransaction: true }, ['ROLLBACK']],
    ['session mode: server_reset_query', { mode: 'session' as never }, ['DISCARD ALL']],
    ['session mode in a transaction', { mode: 'session' as never, inTransaction: true }, ['ROLLBACK', 'DISCARD ALL']],
    ['server_reset_query_always in transaction mode', { resetQueryAlways: true }, ['DISCARD ALL']],
    ['server_reset_query_always with an open transaction (the kernel path)', { resetQueryAlways: true, inTransaction: true }, ['ROLLBACK', 'DISCARD ALL']],
    ['no server_reset_query: nothing but ROLLBACK', { mode: 'session' as never, resetQuery: '', inTransaction: true }, ['ROLLBACK']],
    ['pinned session state: DISCARD ALL whatever the reset query', { pinned: true, resetQuery: 'RESET ALL' }, ['DISCARD ALL']],
  ];
  for (const [what, over, want] of cases) t.same(stepsOnLeave({ ...base, ...over }), want, what);
  t.same(stepsAtTransactionEnd('DISCARD ALL', false), [], 'transaction end: nothing by default');
  t.same(stepsAtTransactionEnd('DISCARD ALL', true), ['DISCARD ALL'], 'transaction end: server_reset_query_always');
  t.same(stepsAtTransactionEnd('', true), [], 'transaction end: no reset query');
});

t.test('clientTimeout: the same rule for both data paths', async (t) => {
  const now = 1_000_000;
  const cfg = { query_timeout: 5, idle_transaction_timeout: 3, client_idle_timeout: 10, transaction_timeout: 20 };
  const act = (a: Partial<ClientActivity>): ClientActivity => ({ busySince: 0, quietSince: now, idleInTransaction: false, betweenTransactions: false, transactionAge: 0, ...a });
  const cases: Array<[string, Partial<ClientActivity>, string | null]> = [
    ['busy 4 s of 5', { busySince: now - 4000 }, null],
    ['busy 6 s of 5: query_timeout', { busySince: now - 6000 }, SqlState.QueryCanceled],
    ['idle in transaction 2 s of 3', { idleInTransaction: true, quietSince: now - 2000 }, null],
    ['idle in transaction 4 s of 3', { idleInTransaction: true, quietSince: now - 4000 }, SqlState.IdleInTransactionTimeout],
    ['between transactions 9 s of 10', { betweenTransactions: true, quietSince: now - 9000 }, null],
    ['between transactions 11 s of 10', { betweenTransactions: true, quietSince: now - 11000 }, SqlState.IdleSessionTimeout],
    ['quiet 11 s inside a transaction: not client_idle_timeout', { quietSince: now - 11000 }, null],
    ['query_timeout wins over idle', { busySince: now - 6000, betweenTransactions: true, quietSince: now - 11000 }, SqlState.QueryCanceled],
    ['in a transaction 19 s of 20', { transactionAge: 19_000 }, null],
    ['in a transaction 21 s of 20, busy all along: transaction_timeout', { transactionAge: 21_000, busySince: now - 1000 }, SqlState.ProtocolViolation],
    ['idle_transaction_timeout before transaction_timeout (PgBouncer\'s order)', { transactionAge: 21_000, idleInTransaction: true, quietSince: now - 4000 }, SqlState.IdleInTransactionTimeout],
  ];
  for (const [what, a, code] of cases) t.equal(clientTimeout(cfg, act(a), now)?.code ?? null, code, what);
  t.equal(clientTimeout(cfg, act({ busySince: now - 6000 }), now)?.cancelQuery, true, 'query_timeout cancels the query on the server');
  const tx = clientTimeout(cfg, act({ transactionAge: 21_000, busySince: now - 1000 }), now);
  t.same(tx && { message: tx.message, cancelQuery: tx.cancelQuery, closeServer: tx.closeServer },
    { message: 'transaction timeout', cancelQuery: true, closeServer: true }, 'transaction_timeout: PgBouncer\'s message, the running query cancelled, the server closed');
  t.equal(clientTimeout(cfg, act({ transactionAge: 21_000 }), now)?.cancelQuery, false, 'transaction_timeout with no query running cancels nothing');
  const off = { query_timeout: 0, idle_transaction_timeout: 0, client_idle_timeout: 0, transaction_timeout: 0 };
  t.equal(clientTimeout(off, act({ busySince: 1, betweenTransactions: true, quietSince: 1, transactionAge: 1e9 }), now), null, '0 turns each off');
});

t.test('idleServerVerdict: RECONNECT, server_idle_timeout, server_lifetime', async (t) => {
  const now = 1_000_000;
  const s = { serverIdleTimeout: 60, serverLifetime: 3600, minSize: 2 };
  const srv = { createdAt: now - 1000, idleSince: now - 1000, closeNeeded: false };
  const cases: Array<[string, Partial<typeof srv>, number, string | null]> = [
    ['fresh', {}, 5, null],
    ['close_needed', { closeNeeded: true }, 5, 'close_needed (RECONNECT)'],
    ['idle 61 s', { idleSince: now - 61_000 }, 5, 'server_idle_timeout'],
    ['idle 61 s but the pool is at min_pool_size', { idleSince: now - 61_000 }, 2, null],
    ['older than server_lifetime', { createdAt: now - 3_601_000 }, 5, 'server_lifetime reached'],
    ['older than server_lifetime at min_pool_size', { createdAt: now - 3_601_000 }, 1, 'server_lifetime reached'],
  ];
  for (const [what, over, servers, want] of cases) t.equal(idleServerVerdict(s, { ...srv, ...over }, servers, now), want, what);
  t.equal(idleServerVerdict({ serverIdleTimeout: 0, serverLifetime: 0, minSize: 0 }, { ...srv, idleSince: 0, createdAt: 0 }, 5, now), null, '0 = never');
});

// ---- Pool with fakes ----

// A server as the pool sees it: login succeeds or fails when the test says so.
class FakeServer extends EventEmitter {
  static next = 1;
  readonly id = FakeServer.next++;
  state = ServerState.Connecting;
  createdAt = Date.now();
  lastUsed = Date.now();
  closeNeeded = false;
  cancelsInFlight = 0;
  releaseAfterCancel = false;
  retiring = false;
  closedFor: string | null = null;
  private login!: { resolve: () => void; reject: (e: Error) => void };
  constructor(readonly target: ServerTarget) {
    super();
  }
  get label(): string {
    return `F-${this.id}`;
  }
  get isUsable(): boolean {
    return this.state !== ServerState.Closed;
  }
  connect(): Promise<void> {
    return new Promise((resolve, reject) => (this.login = { resolve, reject }));
  }
  loginOk(): void {
    this.state = ServerState.Idle;
    this.login.resolve();
  }
  loginFails(code: string): void {
    this.close('login failed');
    this.login.reject(new ServerError('server login failed: no', { C: code }));
  }
  unlink(): void {
    if (this.state === ServerState.Active) this.state = ServerState.Idle;
  }
  parkIdle(): void {
    this.state = ServerState.Idle;
  }
  close(reason: string): void {
    if (this.state === ServerState.Closed) return;
    this.state = ServerState.Closed;
    this.closedFor = reason;
    this.emit('close', reason);
  }
}

// The kernel side, recording what the pool asks of it.
class FakeKernel extends UserSpaceOnly implements KernelHost {
  acceptIdle = false;
  offered: ServerConnection[] = [];
  kernelIdle: ServerConnection[] = [];
  waiterSignals = 0;
  constructor() {
    super({ mode: 'auto', loaded: true, reason: 'fake' });
  }
  override waitersChanged = (): void => {
    this.waiterSignals++;
  };
  override offerIdle = (_pool: Pool, server: ServerConnection): boolean => {
    if (!this.acceptIdle) return false;
    this.offered.push(server);
    return true;
  };
  override takeIdle = (): ServerConnection | null => this.kernelIdle.pop() ?? null;
}

const SETTINGS: PoolSettings = {
  mode: 'transaction', size: 2, minSize: 0, reserveSize: 0, reserveTimeout: 5, queryWaitTimeout: 0, serverIdleTimeout: 0,
  serverLifetime: 0, resetQuery: 'DISCARD ALL', resetQueryAlways: false, checkQuery: 'select 1', checkDelay: 30, loginRetry: 15,
};
const TARGET: ServerTarget = { host: '127.0.0.1', port: 1, dbname: 'db', user: 'u', connectTimeout: 5 };

function fixture(settings: Partial<PoolSettings> = {}) {
  const made: FakeServer[] = [];
  const kernel = new FakeKernel();
  let open = 0;
  // One pool per (database, user) pair here: no shared limit, no sibling variant pools.
  const budget: ConnectionBudget = {
    canOpen: (p, limit) => p.servers.size < limit, evictIdleFor: () => false, opened: () => void open++, closed: () => void open--,
    freed: () => {}, pairServers: (p) => p.servers.size, warms: () => true, yieldsTo: () => null,
  };
  const pool = new Pool('db', 'u', TARGET, { ...SETTINGS, ...settings }, {
    budget, kernel, newServer: (target) => {
      const s = new FakeServer(target);
      made.push(s);
      return s as unknown as ServerConnection;
    },
  });
  const tick = () => new Promise((r) => setImmediate(r));
  return { pool, made, kernel, tick, open: () => open };
}

t.test('Pool: opens a server for a waiter and hands it out', async (t) => {
  const { pool, made, tick } = fixture();
  const got = pool.acquire();
  t.equal(made.length, 1, 'one server opened for one waiter');
  t.equal(pool.waitingCount, 1);
  made[0].loginOk();
  t.equal(await got, made[0] as unknown as ServerConnection, 'the waiter gets it');
  t.equal(pool.waitingCount, 0);
  pool.release(await got);
  await tick();
  t.equal(pool.idleCount, 1, 'released: parked idle');
  t.equal(await pool.acquire(), made[0] as unknown as ServerConnection, 'the next request takes the idle one');
  t.equal(made.length, 1, 'no second server');
});

t.test('Pool: waiters are served FIFO within the pool size', async (t) => {
  const { pool, made } = fixture({ size: 1 });
  const order: number[] = [];
  const a = pool.acquire().then((s) => (order.push(1), s));
  const b = pool.acquire().then((s) => (order.push(2), s));
  t.equal(made.length, 1, 'pool_size 1: one server for two waiters');
  made[0].loginOk();
  const s = await a;
  pool.release(s);
  await b;
  t.same(order, [1, 2], 'first come, first served');
});

// A waiter as a client is one: records what the pool calls back, and when.
class Recorder {
  got: Array<ServerConnection | Error> = [];
  serverGranted(s: ServerConnection): void {
    this.got.push(s);
  }
  serverRefused(e: Error): void {
    this.got.push(e);
  }
}

t.test('Pool: an idle server is had in the same tick, a waiter is called back by the release', async (t) => {
  const { pool, made } = fixture({ size: 1, checkQuery: '' });
  const first = new Recorder();
  t.equal(pool.acquireFor(first), null, 'no server yet: the caller waits');
  made[0].loginOk();
  await new Promise((r) => setImmediate(r)); // the login's promise settles
  t.same(first.got, [made[0]], 'the waiter got the new server');
  const s = first.got[0] as ServerConnection;
  const second = new Recorder();
  const third = new Recorder();
  t.equal(pool.acquireFor(second), null, 'the only server is busy: second waits');
  t.equal(pool.acquireFor(third), null, 'third waits behind it');
  pool.release(s);
  t.same(second.got, [s], 'the release hands the server to the first waiter synchronously');
  t.same(third.got, [], 'the next waiter still waits');
  pool.cancelWait(third);
  t.equal(pool.waitingCount, 0, 'a waiter that gives up leaves the queue');
  pool.release(s);
  t.same(third.got, [], 'nothing for a waiter that left');
  t.equal(pool.acquireFor(new Recorder()), s, 'idle and nobody waiting: the server is returned at once');
});

t.test('Pool: query_wait_timeout refuses the waiters in order, each when its time is up', async (t) => {
  const { pool, made } = fixture({ size: 1, queryWaitTimeout: 0.2, checkQuery: '' });
  const a = new Recorder();
  pool.acquireFor(a);
  made[0].loginOk();
  await new Promise((r) => setImmediate(r));
  const b = new Recorder();
  const c = new Recorder();
  const since = { b: Date.now(), c: 0 };
  pool.acquireFor(b);
  await new Promise((r) => setTimeout(r, 100));
  since.c = Date.now();
  pool.acquireFor(c);
  const refusedAt: Record<string, number> = {};
  for (let i = 0; i < 500 && !(b.got.length && c.got.length); i++) {
    await new Promise((r) => setTimeout(r, 10));
    if (b.got.length) refusedAt.b ??= Date.now();
    if (c.got.length) refusedAt.c ??= Date.now();
  }
  t.match(b.got, [{ code: '08P01', message: 'query_wait_timeout' }], 'the oldest waiter is refused');
  t.match(c.got, [{ code: '08P01', message: 'query_wait_timeout' }], 'then the next');
  t.ok(refusedAt.b - since.b >= 195 && refusedAt.c - since.c >= 195, 'neither before its query_wait_timeout');
  t.ok(refusedAt.b <= refusedAt.c, 'in the order they came');
  t.equal(pool.waitingCount, 0);
});

t.test('Pool: a failed login fails the waiters, and server_login_retry answers at once', async (t) => {
  const { pool, made } = fixture();
  const w = pool.acquire();
  made[0].loginFails('28P01');
  await t.rejects(w, { code: '28P01' }, 'the waiter gets the login error');
  const again = pool.acquire();
  await t.rejects(again, PoolError, 'within server_login_retry: the last error at once');
  t.equal(made.length, 1, 'no new login attempt within server_login_retry');
});

t.test('Pool: release closes what it must not keep', async (t) => {
  const { pool, made, tick } = fixture({ serverLifetime: 1 });
  const w = pool.acquire();
  made[0].loginOk();
  const s = await w;
  made[0].createdAt = Date.now() - 2000;
  pool.release(s);
  t.equal(made[0].closedFor, 'server_lifetime reached', 'past server_lifetime: closed at release');
  const w2 = pool.acquire();
  await tick();
  made[1].loginOk();
  const s2 = await w2;
  made[1].closeNeeded = true;
  pool.release(s2);
  t.equal(made[1].closedFor, 'close_needed (RECONNECT)', 'RECONNECT: closed at release');
});

t.test('Pool: a cancel in flight holds the released server', async (t) => {
  const { pool, made, tick } = fixture();
  const w = pool.acquire();
  made[0].loginOk();
  const s = await w;
  pool.cancelStarted(s);
  pool.release(s);
  await tick();
  t.equal(pool.idleCount, 0, 'not idle while its cancel is in flight');
  t.equal(made[0].releaseAfterCancel, true);
  pool.cancelDone(s);
  t.equal(pool.idleCount, 1, 'idle once the cancel completed');
});

t.test('Pool: the kernel host is offered idle servers and told of waiters', async (t) => {
  const { pool, made, kernel, tick } = fixture();
  kernel.acceptIdle = true;
  const w = pool.acquire();
  t.ok(kernel.waiterSignals >= 1, 'a queued waiter is signalled (the kernel stops binding)');
  made[0].loginOk();
  const s = await w;
  pool.release(s);
  await tick();
  t.same(kernel.offered, [s], 'an idle server goes to the kernel first');
  t.equal(pool.idleCount, 0, 'not also parked in user space');
  kernel.kernelIdle.push(s);
  t.equal(await pool.acquire(), s, 'a request takes a server idle in the kernel');
  pool.pause();
  const signals = kernel.waiterSignals;
  pool.resume();
  t.ok(kernel.waiterSignals > signals, 'pause/resume are signalled');
});

t.test('Pool: janitor closes idle servers past server_idle_timeout down to min_pool_size', async (t) => {
  const { pool, made, tick } = fixture({ size: 3, minSize: 1, serverIdleTimeout: 1 });
  await tick();
  t.equal(made.length, 0, 'grow() is the caller\'s: nothing opened yet');
  pool.grow();
  t.equal(made.length, 1, 'min_pool_size opened');
  made[0].loginOk();
  const a = pool.acquire();
  const b = pool.acquire();
  await tick();
  for (const m of made) if (m.state === ServerState.Connecting) m.loginOk();
  const [sa, sb] = await Promise.all([a, b]);
  pool.release(sa);
  pool.release(sb);
  await tick();
  const before = pool.servers.size;
  for (const m of made) m.lastUsed = Date.now() - 5000;
  pool.janitor();
  t.ok(before >= 2, `${before} servers before`);
  t.equal(pool.servers.size, 1, 'closed down to min_pool_size');
  t.ok(made.filter((m) => m.closedFor === 'server_idle_timeout').length >= 1, 'for server_idle_timeout');
});

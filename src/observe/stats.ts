// Traffic accounting shared by the admin console (SHOW STATS/TOTALS/POOLS) and the
// Prometheus endpoint. Per-client counters live on ClientConnection (stats, timing);
// when a client closes its counters are folded into its pool's retired totals, so
// per-pool and per-database totals are: retired + the live clients of the pool.

// A pool as its traffic is counted: its names (Pool, src/pooling/pool.ts). Declared here,
// not imported, so that this module depends on nothing of pooling's.
export interface CountedPool {
  readonly database: string;
  readonly user: string;
}

// A client as its traffic is counted (ClientConnection).
export interface CountedClient<P extends CountedPool = CountedPool> {
  readonly pool: P | null;
  readonly database: string;
  readonly stats: { xacts: number; queries: number; bytesIn: number; bytesOut: number }; // counted as numbers on the hot path
  readonly timing: ClientTiming;
}

const nowUs = (): number => performance.now() * 1000;

// Observers the Prometheus module installs (histograms, counters); no-ops otherwise.
export interface StatsSink {
  wait(pool: CountedPool | null, micros: number): void;
  xact(pool: CountedPool | null, micros: number): void;
  query(pool: CountedPool | null, micros: number): void;
}

export const statsEvents = {
  sink: null as StatsSink | null,
  logins: 0,
  loginsByDb: new Map<string, number>(),
  errors: new Map<string, number>(), // "source\0sqlstate" -> count
};

// A client logged in (to a pool or the admin console).
export function countLogin(client: { readonly database: string }): void {
  statsEvents.logins++;
  statsEvents.loginsByDb.set(client.database, (statsEvents.loginsByDb.get(client.database) ?? 0) + 1);
}

// An ErrorResponse went to a client: from a server ('server') or raised by pgsplice ('proxy').
export function countError(source: 'server' | 'proxy', sqlstate: string | undefined): void {
  const k = `${source}\0${sqlstate ?? ''}`;
  statsEvents.errors.set(k, (statsEvents.errors.get(k) ?? 0) + 1);
}

// Time accounting of one client in user space: wait for a server, query and transaction time.
export class ClientTiming {
  xactUs = 0;
  queryUs = 0;
  waitUs = 0;
  lastRequestAt = 0; // wall clock ms of the last request
  private xactStart = 0;
  private queryStart = 0;
  private waitStart = 0;
  pool: CountedPool | null = null;

  // A Query, Sync or FunctionCall came from the client.
  request(): void {
    const n = nowUs();
    this.lastRequestAt = Date.now();
    if (!this.queryStart) this.queryStart = n;
    if (!this.xactStart) this.xactStart = n;
  }

  // The client starts waiting for a server.
  waiting(pool: CountedPool | null): void {
    this.pool = pool;
    this.waitStart = nowUs();
  }

  // ms its open transaction has run in user space so far (0 when none): transaction_timeout.
  get transactionAgeMs(): number {
    return this.xactStart ? (nowUs() - this.xactStart) / 1000 : 0;
  }

  // µs the client has been waiting so far (0 when not waiting).
  get waitingFor(): number {
    return this.waitStart ? nowUs() - this.waitStart : 0;
  }

  // A server is linked to the client: the wait ends, query and transaction clocks start now.
  attached(): void {
    const n = nowUs();
    if (this.waitStart) {
      const w = n - this.waitStart;
      this.waitUs += w;
      this.waitStart = 0;
      statsEvents.sink?.wait(this.pool, w);
    }
    if (this.queryStart) this.queryStart = n;
    if (this.xactStart) this.xactStart = n;
  }

  // The client's request goes to a server bound in the kernel path: its wait ends here, and
  // the kernel times and counts that transaction (it sees its ReadyForQuery, not us).
  toKernel(): void {
    this.attached();
    this.queryStart = 0;
    this.xactStart = 0;
  }

  // The kernel handed over a transaction it started (in-flight bound): user space sees its
  // end, so its clocks continue from when the kernel started them (ages in ns, null: none).
  resume(xactAgeNs: bigint | null, queryAgeNs: bigint | null, pool: CountedPool | null): void {
    const n = nowUs();
    this.pool ??= pool;
    this.xactStart = xactAgeNs === null ? 0 : n - Number(xactAgeNs) / 1000;
    this.queryStart = queryAgeNs === null ? 0 : n - Number(queryAgeNs) / 1000;
  }

  // A ReadyForQuery reached the client; outstanding = requests still unanswered.
  ready(outstanding: number, status: string): void {
    const n = nowUs();
    if (this.queryStart) {
      const q = n - this.queryStart;
      this.queryUs += q;
      statsEvents.sink?.query(this.pool, q);
      this.queryStart = outstanding > 0 ? n : 0;
    }
    if (outstanding === 0 && status === 'I' && this.xactStart) {
      const x = n - this.xactStart;
      this.xactUs += x;
      this.xactStart = 0;
      statsEvents.sink?.xact(this.pool, x);
    }
  }
}

export interface Totals {
  xacts: bigint;
  queries: bigint;
  bytesIn: bigint; // from clients
  bytesOut: bigint; // to clients
  xactUs: number;
  queryUs: number;
  waitUs: number;
}

export function zeroTotals(): Totals {
  return { xacts: 0n, queries: 0n, bytesIn: 0n, bytesOut: 0n, xactUs: 0, queryUs: 0, waitUs: 0 };
}

function addClient(t: Totals, c: CountedClient): void {
  t.xacts += BigInt(c.stats.xacts);
  t.queries += BigInt(c.stats.queries);
  t.bytesIn += BigInt(c.stats.bytesIn);
  t.bytesOut += BigInt(c.stats.bytesOut);
  t.xactUs += c.timing.xactUs;
  t.queryUs += c.timing.queryUs;
  t.waitUs += c.timing.waitUs + c.timing.waitingFor;
}

export function addTotals(t: Totals, o: Totals): Totals {
  t.xacts += o.xacts;
  t.queries += o.queries;
  t.bytesIn += o.bytesIn;
  t.bytesOut += o.bytesOut;
  t.xactUs += o.xactUs;
  t.queryUs += o.queryUs;
  t.waitUs += o.waitUs;
  return t;
}

const retired = new WeakMap<CountedPool, Totals>();

// A client closed: keep its counters in its pool's totals.
export function retireClient(client: CountedClient): void {
  if (!client.pool) return;
  let t = retired.get(client.pool);
  if (!t) retired.set(client.pool, (t = zeroTotals()));
  addClient(t, client);
}

export interface StatsHost<P extends CountedPool> {
  readonly clients: Iterable<CountedClient<P>>;
  readonly pools: Map<string, P>;
  readonly kernel: { trafficByPool(): Map<P, Partial<Totals>> }; // what the kernel path carried
}

// Totals per pool (retired + live clients).
export function poolTotals<P extends CountedPool>(host: StatsHost<P>): Map<P, Totals> {
  const out = new Map<P, Totals>();
  for (const p of host.pools.values()) out.set(p, addTotals(zeroTotals(), retired.get(p) ?? zeroTotals()));
  for (const c of host.clients) {
    if (!c.pool) continue;
    const t = out.get(c.pool);
    if (t) addClient(t, c);
  }
  // Traffic the kernel path carried (cumulative since start-up; time fields in µs).
  for (const [p, k] of host.kernel.trafficByPool()) {
    const t = out.get(p);
    if (t) addTotals(t, { ...zeroTotals(), ...k });
  }
  return out;
}

// Totals per database name.
export function databaseTotals<P extends CountedPool>(host: StatsHost<P>): Map<string, Totals> {
  const out = new Map<string, Totals>();
  for (const [p, t] of poolTotals(host)) {
    const cur = out.get(p.database);
    if (cur) addTotals(cur, t);
    else out.set(p.database, t);
  }
  return out;
}

// Averages per second over the last stats period (PgBouncer's avg_* columns).
export interface Averages {
  xactsPerSec: number;
  queriesPerSec: number;
  recvPerSec: number;
  sentPerSec: number;
  xactUs: number; // per transaction
  queryUs: number; // per query
  waitUs: number; // per transaction
}

export const STATS_PERIOD_MS = 15000;

export class StatsAverager {
  private prev = new Map<string, Totals>();
  private cur = new Map<string, Totals>();
  private prevAt = Date.now();
  private curAt = Date.now();
  private timer: NodeJS.Timeout;

  constructor(
    private readonly host: StatsHost<CountedPool>,
    periodMs = STATS_PERIOD_MS,
  ) {
    this.cur = databaseTotals(host);
    this.timer = setInterval(() => this.rotate(), periodMs);
    this.timer.unref();
  }

  private rotate(): void {
    this.prev = this.cur;
    this.prevAt = this.curAt;
    this.cur = databaseTotals(this.host);
    this.curAt = Date.now();
  }

  averages(db: string): Averages {
    const a = this.cur.get(db) ?? zeroTotals();
    const b = this.prev.get(db) ?? zeroTotals();
    const secs = Math.max((this.curAt - this.prevAt) / 1000, 0.001);
    const dx = Number(a.xacts - b.xacts);
    const dq = Number(a.queries - b.queries);
    if (this.curAt === this.prevAt) return { xactsPerSec: 0, queriesPerSec: 0, recvPerSec: 0, sentPerSec: 0, xactUs: 0, queryUs: 0, waitUs: 0 };
    return {
      xactsPerSec: dx / secs,
      queriesPerSec: dq / secs,
      recvPerSec: Number(a.bytesIn - b.bytesIn) / secs,
      sentPerSec: Number(a.bytesOut - b.bytesOut) / secs,
      xactUs: dx > 0 ? (a.xactUs - b.xactUs) / dx : 0,
      queryUs: dq > 0 ? (a.queryUs - b.queryUs) / dq : 0,
      waitUs: dx > 0 ? (a.waitUs - b.waitUs) / dx : 0,
    };
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

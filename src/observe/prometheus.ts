// Prometheus endpoint (prom-client) on its own address: GET /metrics. Pool gauges and
// traffic counters are computed from the pooler's state at scrape time (the same numbers
// as SHOW POOLS / SHOW STATS); wait, query and transaction histograms are observed live;
// the kernel path's counters come from ProxyControl.bypassCounters().
// Pool series are per (database, user): its startup-settings variant pools are summed, so no
// two series share a label set (SHOW POOLS does the same).
import * as http from 'node:http';
import { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Pooler } from '../pooling/pooler';
import type { Pool } from '../pooling/pool';
import type { MetricsConfig } from '../config/types';
import type { ProxyControl } from '../admin/console';
import { VERSION, pairCounts, type PairCounts } from '../admin/console';
import { poolTotals, statsEvents, type Totals } from './stats';
import { log } from './log';
import { type Mirror, MirrorState } from '../mirror/mirror';
import { reusePortFd } from '../workers/listen';

const TIME_BUCKETS = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export class MetricsServer {
  readonly registry = new Registry();
  private server: http.Server | null = null;
  private kernel = new Map<string, Counter>();
  private stopped = false;

  constructor(
    pooler: Pooler,
    private readonly control: ProxyControl,
  ) {
    const r = this.registry;
    collectDefaultMetrics({ register: r }); // process_* and nodejs_*, as prom-client names them
    const pooler_ = pooler;
    const pl = ['database', 'user'];

    new Gauge({
      name: 'pgsplice_info', help: 'pgsplice version (always 1)', labelNames: ['version'], registers: [r],
      collect() {
        this.set({ version: VERSION }, 1);
      },
    });
    // A gauge per (database, user) from SHOW POOLS' counts: one value, or one per state (label `state`).
    const poolGauge = (name: string, help: string, values: Record<string, (n: PairCounts) => number> | ((n: PairCounts) => number)) =>
      new Gauge({
        name, help, labelNames: typeof values === 'function' ? pl : [...pl, 'state'], registers: [r],
        collect() {
          this.reset();
          for (const [p, n] of pairCounts(pooler_)) {
            const l = { database: p.database, user: p.user };
            if (typeof values === 'function') this.set(l, values(n));
            else for (const [state, v] of Object.entries(values)) this.set({ ...l, state }, v(n));
          }
        },
      });
    poolGauge('pgsplice_pool_clients', 'Clients of a pool by state (active: logged in, not waiting; waiting: waiting for a server)',
      { active: (n) => n.clActive, waiting: (n) => n.clWaiting });
    poolGauge('pgsplice_pool_clients_pinned', 'Transaction-mode clients that keep their server because of session state (LISTEN, temp tables, ...)',
      (n) => n.clPinned);
    poolGauge('pgsplice_pool_servers', 'Server connections of a pool by state (active, idle, used: being reset/checked, login)',
      { active: (n) => n.svActive, idle: (n) => n.svIdle, used: (n) => n.svUsed, login: (n) => n.svLogin });
    poolGauge('pgsplice_pool_max_wait_seconds', 'How long the oldest waiting client of a pool has waited', (n) => n.maxWaitUs / 1e6);
    new Gauge({
      name: 'pgsplice_pool_paused', help: '1 when the pool is paused (PAUSE)', labelNames: pl, registers: [r],
      collect() {
        this.reset();
        for (const [p, n] of pairCounts(pooler_)) this.set({ database: p.database, user: p.user }, n.paused ? 1 : 0);
      },
    });
    new Gauge({
      name: 'pgsplice_client_connections', help: 'Client connections open now (all states, admin console included)', registers: [r],
      collect() {
        this.set(pooler_.clients.size);
      },
    });

    // Counters computed from totals (retired + live clients) at scrape time.
    const totalsCounter = (name: string, help: string, pick: (t: Totals) => number) =>
      new Counter({
        name, help, labelNames: pl, registers: [r],
        collect() {
          this.reset();
          for (const [p, t] of poolTotals(pooler_)) this.inc({ database: p.database, user: p.user }, pick(t));
        },
      });
    totalsCounter('pgsplice_transactions_total', 'Transactions completed (both data paths)', (t) => Number(t.xacts));
    totalsCounter('pgsplice_queries_total', 'Queries (Query, Sync, FunctionCall) sent by clients (both data paths)', (t) => Number(t.queries));
    totalsCounter('pgsplice_client_received_bytes_total', 'Bytes received from clients (both data paths)', (t) => Number(t.bytesIn));
    totalsCounter('pgsplice_client_sent_bytes_total', 'Bytes sent to clients (both data paths)', (t) => Number(t.bytesOut));
    totalsCounter('pgsplice_transaction_time_seconds_total', 'Time spent in transactions while linked to a server', (t) => t.xactUs / 1e6);
    totalsCounter('pgsplice_query_time_seconds_total', 'Time spent in queries while linked to a server', (t) => t.queryUs / 1e6);
    totalsCounter('pgsplice_client_wait_time_seconds_total', 'Time clients spent waiting for a server', (t) => t.waitUs / 1e6);

    new Counter({
      name: 'pgsplice_client_logins_total', help: 'Successful client logins by database', labelNames: ['database'], registers: [r],
      collect() {
        this.reset();
        for (const [db, n] of statsEvents.loginsByDb) this.inc({ database: db }, n);
      },
    });
    new Counter({
      name: 'pgsplice_errors_total', help: 'ErrorResponses sent to clients, by origin (server, proxy) and SQLSTATE', labelNames: ['source', 'sqlstate'],
      registers: [r],
      collect() {
        this.reset();
        for (const [k, n] of statsEvents.errors) {
          const [source, sqlstate] = k.split('\0');
          this.inc({ source, sqlstate }, n);
        }
      },
    });

    // Mirrors (SHOW MIRRORS' numbers), per (database, mirror).
    const ml = ['database', 'mirror'];
    const mirrorMetric = (kind: typeof Gauge | typeof Counter, name: string, help: string, pick: (m: Mirror) => number) =>
      new kind({
        name, help, labelNames: ml, registers: [r],
        collect(this: Gauge | Counter) {
          this.reset();
          for (const m of pooler_.mirrors.all.values()) {
            const l = { database: m.database, mirror: m.name };
            if (this instanceof Gauge) this.set(l, pick(m));
            else this.inc(l, pick(m));
          }
        },
      });
    mirrorMetric(Gauge, 'pgsplice_mirror_up', '1 while the mirror answers (state up or idle), 0 while down', (m) => (m.state === MirrorState.Down ? 0 : 1));
    mirrorMetric(Gauge, 'pgsplice_mirror_clients', 'Clients mirrored now (each holds a mirror connection)', (m) => m.sessions.size);
    mirrorMetric(Gauge, 'pgsplice_mirror_queued_bytes', 'Bytes held for the mirror: gathered, queued, sent and not yet answered', (m) => m.queuedBytes);
    mirrorMetric(Gauge, 'pgsplice_mirror_peak_queued_bytes', 'Most bytes held for the mirror at once', (m) => m.peakQueuedBytes);
    mirrorMetric(Gauge, 'pgsplice_mirror_queue_limit_bytes', 'queue_bytes of the mirror', (m) => m.config.queue_bytes);
    mirrorMetric(Gauge, 'pgsplice_mirror_lag_seconds', 'From the primary ending the last mirrored transaction to the mirror answering it', (m) => m.lagMs / 1000);
    mirrorMetric(Counter, 'pgsplice_mirror_transactions_total', 'Transactions the mirror ran and answered', (m) => Number(m.transactions));
    mirrorMetric(Counter, 'pgsplice_mirror_dropped_total', 'Transactions not mirrored (queue full, mirror down, or lost with its connection)', (m) => Number(m.dropped));
    mirrorMetric(Counter, 'pgsplice_mirror_diverged_total', 'Mirrored transactions whose answers differed from the primary\'s', (m) => Number(m.diverged));
    mirrorMetric(Counter, 'pgsplice_mirror_clients_skipped_total', 'Sampled clients not mirrored because pool_size mirror connections were in use', (m) => Number(m.clientsSkipped));

    const wait = new Histogram({
      name: 'pgsplice_client_wait_duration_seconds', help: 'Time a client waited for a server, per wait', labelNames: ['database'],
      buckets: TIME_BUCKETS, registers: [r],
    });
    const xact = new Histogram({
      name: 'pgsplice_transaction_duration_seconds', help: 'Transaction time on a server, per transaction', labelNames: ['database'],
      buckets: TIME_BUCKETS, registers: [r],
    });
    const query = new Histogram({
      name: 'pgsplice_query_duration_seconds', help: 'Query time on a server, per query', labelNames: ['database'],
      buckets: TIME_BUCKETS, registers: [r],
    });
    statsEvents.sink = {
      wait: (p, us) => wait.observe({ database: p?.database ?? '' }, us / 1e6),
      xact: (p, us) => xact.observe({ database: p?.database ?? '' }, us / 1e6),
      query: (p, us) => query.observe({ database: p?.database ?? '' }, us / 1e6),
    };
  }

  // Kernel path counters: pgsplice_kernel_<name>_total, created as names appear.
  private updateKernel(): void {
    let counters: Record<string, number | bigint>;
    try {
      counters = this.control.bypassCounters();
    } catch (e) {
      log.warn(`metrics: kernel counters unavailable: ${(e as Error).message}`);
      return;
    }
    for (const [raw, v] of Object.entries(counters)) {
      const name = `pgsplice_kernel_${raw.replace(/[^a-zA-Z0-9_]/g, '_').replace(/_total$/, '')}_total`;
      let c = this.kernel.get(name);
      if (!c) {
        c = new Counter({ name, help: `Kernel path counter ${raw}`, registers: [this.registry] });
        this.kernel.set(name, c);
      }
      c.reset();
      c.inc(Number(v));
    }
  }

  async text(): Promise<string> {
    this.updateKernel();
    return this.registry.metrics();
  }

  // shared: bound with SO_REUSEPORT, as the client listeners of processes sharing a port.
  listen(cfg: MetricsConfig, shared = false): Promise<void> {
    return new Promise((resolve, reject) => {
      const srv = http.createServer((req, res) => {
        const url = (req.url ?? '/').split('?')[0];
        if (req.method !== 'GET' && req.method !== 'HEAD') {
          res.writeHead(405, { Allow: 'GET' }).end();
          return;
        }
        if (url === '/metrics') {
          this.text().then(
            (body) => res.writeHead(200, { 'Content-Type': this.registry.contentType }).end(body),
            (e: Error) => res.writeHead(500, { 'Content-Type': 'text/plain' }).end(`metrics failed: ${e.message}\n`),
          );
          return;
        }
        // Liveness: the event loop answered, so the process is not wedged.
        if (url === '/healthz') {
          res.writeHead(200, { 'Content-Type': 'text/plain' }).end('ok\n');
          return;
        }
        // Readiness: the config is loaded, every listener is open, the proxy is not paused as a
        // whole (PAUSE / SIGUSR1) and not shutting down. 503 with the reason otherwise.
        if (url === '/readyz') {
          const r = this.control.readiness();
          res.writeHead(r.ready ? 200 : 503, { 'Content-Type': 'text/plain' }).end(`${r.ready ? 'ready' : 'not ready'}: ${r.reason}\n`);
          return;
        }
        if (url === '/') {
          res.writeHead(200, { 'Content-Type': 'text/plain' }).end('pgsplice: metrics at /metrics, health at /healthz and /readyz\n');
          return;
        }
        res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
      });
      srv.once('error', (e) => reject(new Error(`cannot listen on metrics ${cfg.host}:${cfg.port}: ${e.message}`)));
      const where = shared ? { fd: reusePortFd(cfg.host, cfg.port, 511) } : { port: cfg.port, host: cfg.host };
      srv.listen(where, () => {
        srv.removeAllListeners('error');
        srv.on('error', (e) => log.error(`metrics listener: ${e.message}`));
        this.server = srv;
        const a = srv.address() as AddressInfo;
        log.info(`metrics on http://${cfg.host}:${a.port}/metrics`);
        resolve();
      });
    });
  }

  close(): void {
    if (this.stopped) return;
    this.stopped = true;
    statsEvents.sink = null;
    this.server?.close();
    this.server?.closeAllConnections?.();
  }
}

export async function startMetrics(cfg: MetricsConfig, pooler: Pooler, control: ProxyControl, shared = false): Promise<MetricsServer> {
  const m = new MetricsServer(pooler, control);
  await m.listen(cfg, shared);
  return m;
}

// The admin console: a virtual database ("pgsplice", alias "pgbouncer") speaking the
// simple query protocol. admin_users may run everything, stats_users only SHOW.
// Column names follow PgBouncer 1.18+ so its exporters and scripts read the answers.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { TLSSocket } from 'node:tls';
import { ClientConnection, ClientState } from '../pooling/client-connection';
import type { Pooler } from '../pooling/pooler';
import type { Pool } from '../pooling/pool';
import { ServerConnection, ServerState } from '../pooling/server-connection';
import { Frontend, SqlState } from '../protocol/constants';
import type { ErrorFields } from '../protocol/messages';
import type { Config } from '../config/types';
import { ConfigError } from '../config/types';
import { DEFAULT_SESSION_STATE, DEFAULT_UNIX_SOCKET_MODE, RESTART_KEYS, applySetting, defaultSettings, describeConfig } from '../config/load';
import { Cell, ResultSet, columns, commandComplete, emptyQueryResponse, error, notice, ready } from './result-set';
import { Command, CommandSyntaxError, parseCommand, splitStatements } from './parse';
import { StatsAverager, Totals, addTotals, databaseTotals, zeroTotals } from '../observe/stats';
import { log } from '../observe/log';
import type { KernelHost } from '../pooling/kernel-host';
import { ShutdownMode, type Readiness } from '../proxy-state';
import { workerRole } from '../workers/role';
import { getLocalPeerId } from '../workers/cancel-key';

// What the console needs from the running proxy (src/admin/control.ts builds it).
export interface ProxyControl {
  // Rereads the config file and applies it; returns a line for the operator.
  reload(): string;
  // Applies a changed in-memory config (SET); returns the keys that need a restart.
  apply(next: Config): string[];
  // Every mode ends the process when done (ShutdownMode: PgBouncer's three).
  shutdown(mode: ShutdownMode): void;
  // /readyz: running and not paused as a whole.
  readiness(): Readiness;
  // SHOW SUMMARY: one line of counters, per data path.
  summary(): string;
  // No new server assignments for the database (all when omitted).
  pause(db?: string): void;
  resume(db?: string): void;
  isPaused(db: string): boolean;
  // SHOW BYPASS rows (KernelHost.info).
  bypassInfo(): Array<[string, string]>;
  // Kernel path counters for Prometheus (pgsplice_kernel_<name>_total).
  bypassCounters(): Record<string, number | bigint>;
}

export const VERSION: string = (() => {
  for (const rel of ['../../../package.json', '../../package.json']) {
    try {
      return JSON.parse(fs.readFileSync(path.join(__dirname, rel), 'utf8')).version as string;
    } catch {
      /* next */
    }
  }
  return '0.0.0';
})();

const HELP = [
  'SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION',
  'SHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS|LISTS|STATE|BYPASS|SUMMARY|MIRRORS',
  'SET key = arg',
  'RELOAD',
  'PAUSE [<db>]',
  'RESUME [<db>]',
  'RECONNECT [<db>]',
  'KILL <db>',
  'KILL_CLIENT <id>',
  'SHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS]',
];

// Session settings some drivers send; accepted and ignored, as PgBouncer does.
const FAKE_PARAMS: Record<string, string> = {
  client_encoding: 'UTF8',
  default_transaction_isolation: 'read committed',
  standard_conforming_strings: 'on',
  datestyle: 'ISO',
  timezone: 'GMT',
  extra_float_digits: '2',
  application_name: '',
};

class AdminError extends Error {
  constructor(
    message: string,
    readonly code: string = '42601',
  ) {
    super(message);
  }
}

const averagers = new WeakMap<Pooler, StatsAverager>();
function averager(pooler: Pooler): StatsAverager {
  let a = averagers.get(pooler);
  if (!a) averagers.set(pooler, (a = new StatsAverager(pooler)));
  return a;
}

// ---- state naming shared by SHOW POOLS / CLIENTS / SERVERS ----

export function clientStateName(c: ClientConnection, kernel: KernelHost): string {
  if (c.isAdmin) return 'active';
  switch (c.state) {
    case ClientState.Active:
      return 'active';
    case ClientState.Waiting:
      return 'waiting';
    case ClientState.Login:
      return 'login';
    case ClientState.KernelBound:
      return 'active';
    case ClientState.Kernel:
      return kernel.clientBound(c) ? 'active' : 'idle';
    default:
      return 'idle'; // idle, or in the kernel path between its transactions
  }
}

// PgBouncer's server lists: active, idle, used (being reset/checked), new (logging in).
export function serverStateName(s: ServerConnection, kernel: KernelHost): 'active' | 'idle' | 'used' | 'new' | null {
  switch (s.state) {
    case ServerState.Active:
      return 'active';
    case ServerState.Internal:
      return s.peer ? 'active' : 'used';
    case ServerState.Idle:
      return 'idle';
    case ServerState.Kernel: // owned by the kernel path: bound to a client, or idle there
      return kernel.serverBound(s) ? 'active' : 'idle';
    case ServerState.Connecting:
    case ServerState.Login:
      return 'new';
    default:
      return null;
  }
}

export interface PoolCounts {
  clActive: number;
  clWaiting: number;
  svActive: number;
  svIdle: number;
  svUsed: number;
  svLogin: number;
  svBeingCanceled: number; // released, held until a cancel for them completes
  maxWaitUs: number;
  clPinned: number; // transaction mode: clients that keep their server for session state
}

export function poolCounts(pooler: Pooler): Map<Pool, PoolCounts> {
  const out = new Map<Pool, PoolCounts>();
  for (const p of pooler.pools.values()) {
    const n: PoolCounts = { clActive: 0, clWaiting: 0, svActive: 0, svIdle: 0, svUsed: 0, svLogin: 0, svBeingCanceled: 0, maxWaitUs: 0, clPinned: 0 };
    for (const s of p.servers) {
      const st = serverStateName(s, pooler.kernel);
      if (s.releaseAfterCancel && s.isUsable) n.svBeingCanceled++;
      else if (st === 'active') n.svActive++;
      else if (st === 'idle') n.svIdle++;
      else if (st === 'used') n.svUsed++;
      else if (st === 'new') n.svLogin++;
    }
    out.set(p, n);
  }
  for (const c of pooler.clients) {
    if (!c.pool || c.state === ClientState.Closed || c.state === ClientState.Startup || c.state === ClientState.Auth || c.state === ClientState.AuthLookup) continue;
    const n = out.get(c.pool);
    if (!n) continue;
    if (c.state === ClientState.Waiting) {
      n.clWaiting++;
      n.maxWaitUs = Math.max(n.maxWaitUs, c.timing.waitingFor);
    } else n.clActive++;
    if (c.rewriter?.session.pinned) n.clPinned++;
  }
  return out;
}

// One entry per (database, user) pair, its startup-variant pools summed (PgBouncer's tools
// read SHOW POOLS and the metrics by database and user): keyed by the pair's first pool.
export interface PairCounts extends PoolCounts {
  variants: number; // pools with startup settings in the pair (docs/transaction-mode.md)
  paused: boolean; // any of its pools
}
export function pairCounts(pooler: Pooler): Map<Pool, PairCounts> {
  const first = new Map<string, Pool>();
  const out = new Map<Pool, PairCounts>();
  for (const [p, n] of poolCounts(pooler)) {
    const key = `${p.database}\0${p.user}`;
    const head = first.get(key) ?? p;
    first.set(key, head);
    const variant = Object.keys(pooler.startupOf(p)).length > 0 ? 1 : 0;
    const sum = out.get(head);
    if (!sum) {
      out.set(head, { ...n, variants: variant, paused: p.paused });
      continue;
    }
    for (const k of Object.keys(n) as (keyof PoolCounts)[]) sum[k] = k === 'maxWaitUs' ? Math.max(sum[k], n[k]) : sum[k] + n[k];
    sum.variants += variant;
    sum.paused ||= p.paused;
  }
  return out;
}

function pgTime(ms: number): string {
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

function tlsInfo(sock: unknown): string {
  const t = sock as Partial<TLSSocket> & { encrypted?: boolean };
  if (!t || !t.encrypted || typeof t.getProtocol !== 'function') return '';
  const cipher = typeof t.getCipher === 'function' ? t.getCipher()?.name : undefined;
  return `${t.getProtocol() ?? 'TLS'}${cipher ? `/${cipher}` : ''}`;
}

const SOCKET_COLUMNS = columns(
  'type', 'user', 'database', 'state', 'addr', 'port:int4', 'local_addr', 'local_port:int4', 'connect_time', 'request_time',
  'wait:int4', 'wait_us:int4', 'close_needed:int4', 'ptr', 'link', 'remote_pid:int4', 'tls', 'application_name', 'id:int8', 'path',
  'pinned', // transaction mode: why the client keeps its server (docs/transaction-mode.md)
);

// ---- the console session ----

type Access = 'admin' | 'stats';

class AdminSession {
  private queue: Array<[number, Buffer]> = [];
  private running = false;
  private skipToSync = false;

  constructor(
    private readonly client: ClientConnection,
    private readonly pooler: Pooler,
    private readonly control: ProxyControl,
    private readonly access: Access,
  ) {}

  onMessage(type: number, body: Buffer): void {
    this.queue.push([type, body]);
    if (!this.running) void this.drain();
  }

  private async drain(): Promise<void> {
    this.running = true;
    try {
      while (this.queue.length) {
        const [type, body] = this.queue.shift()!;
        await this.handle(type, body);
      }
    } catch (e) {
      this.queue = [];
      this.client.failWith(e); // the console's error boundary: this admin client only
    } finally {
      this.running = false;
    }
  }

  private write(b: Buffer): void {
    if (!this.client.socket.destroyed) this.client.socket.write(b);
  }

  private async handle(type: number, body: Buffer): Promise<void> {
    if (this.client.state === ClientState.Closed) return;
    if (type === Frontend.Query) {
      this.skipToSync = false;
      const end = body.indexOf(0);
      await this.runQuery(body.subarray(0, end < 0 ? body.length : end).toString('utf8'));
      return;
    }
    if (type === Frontend.Sync) {
      this.skipToSync = false;
      this.write(ready());
      return;
    }
    if (type === Frontend.Flush) return;
    if (!this.skipToSync) {
      this.skipToSync = true;
      this.write(error({ code: SqlState.FeatureNotSupported, message: 'admin console supports only the simple query protocol' }));
    }
  }

  private async runQuery(sql: string): Promise<void> {
    const out: Buffer[] = [];
    try {
      for (const stmt of splitStatements(sql)) {
        const cmd = parseCommand(stmt);
        log.debug(`admin ${this.client.user}: ${stmt}`);
        out.push(await this.execute(cmd));
      }
    } catch (e) {
      const f: ErrorFields =
        e instanceof AdminError ? { code: e.code, message: e.message }
        : e instanceof CommandSyntaxError ? { code: '42601', message: e.message }
        : e instanceof ConfigError ? { code: '22023', message: e.message }
        : { code: SqlState.InternalError, message: `admin command failed: ${(e as Error).message}` };
      if (!(e instanceof AdminError || e instanceof CommandSyntaxError || e instanceof ConfigError)) log.error(`admin command failed: ${(e as Error).stack}`);
      out.push(error(f));
    }
    out.push(ready());
    this.write(Buffer.concat(out));
  }

  private requireAdmin(): void {
    if (this.access !== 'admin') throw new AdminError('admin access needed', '42501');
  }

  private async execute(cmd: Command): Promise<Buffer> {
    if (cmd.verb === 'EMPTY') return emptyQueryResponse();
    if (cmd.verb === 'SET') return this.set(cmd as Extract<Command, { verb: 'SET' }>);
    const arg = 'arg' in cmd ? cmd.arg : undefined;
    if (cmd.verb === 'SHOW') {
      if (!arg) throw new AdminError('SHOW needs an argument, use SHOW HELP;');
      return this.show(arg);
    }
    this.requireAdmin();
    switch (cmd.verb) {
      case 'PAUSE':
        return this.pause(arg);
      case 'RESUME':
        if (arg) this.knownDatabase(arg);
        this.control.resume(arg);
        return commandComplete('RESUME');
      case 'RECONNECT':
        if (arg) this.knownDatabase(arg);
        this.reconnect(arg);
        return commandComplete('RECONNECT');
      case 'KILL':
        if (!arg) throw new AdminError('KILL needs a database name');
        this.knownDatabase(arg);
        this.kill(arg);
        return commandComplete('KILL');
      case 'KILL_CLIENT':
        if (!arg) throw new AdminError('KILL_CLIENT needs a client id (SHOW CLIENTS, column id)');
        this.killClient(arg);
        return commandComplete('KILL_CLIENT');
      case 'RELOAD': {
        if (arg) throw new AdminError('RELOAD takes no argument');
        const msg = this.control.reload();
        log.info(`admin ${this.client.user}: RELOAD: ${msg}`);
        return Buffer.concat([notice(msg), commandComplete('RELOAD')]);
      }
      case 'SHUTDOWN': {
        // PgBouncer's: SHUTDOWN (immediate), WAIT_FOR_SERVERS (SIGINT), WAIT_FOR_CLIENTS (SIGTERM).
        const modes: Record<string, ShutdownMode> = { '': ShutdownMode.Immediate, WAIT_FOR_SERVERS: ShutdownMode.WaitForServers, WAIT_FOR_CLIENTS: ShutdownMode.WaitForClients };
        const mode = modes[(arg ?? '').toUpperCase()];
        if (mode === undefined) throw new AdminError(`SHUTDOWN: unknown option ${arg}`);
        log.info(`admin ${this.client.user}: SHUTDOWN${arg ? ` ${arg.toUpperCase()}` : ''}`);
        setImmediate(() => this.control.shutdown(mode));
        return commandComplete('SHUTDOWN');
      }
      default:
        throw new AdminError(`invalid command '${cmd.verb}${arg ? ` ${arg}` : ''}', use SHOW HELP;`);
    }
  }

  // ---- commands ----

  private knownDatabase(db: string): void {
    if (this.pooler.config.databases.has(db)) return;
    for (const p of this.pooler.pools.values()) if (p.database === db) return;
    throw new AdminError(`no such database: ${db}`, SqlState.InvalidCatalogName);
  }

  private poolsOf(db?: string): Pool[] {
    return [...this.pooler.pools.values()].filter((p) => db === undefined || p.database === db);
  }

  private async pause(db?: string): Promise<Buffer> {
    if (db) this.knownDatabase(db);
    this.control.pause(db);
    log.info(`admin ${this.client.user}: PAUSE ${db ?? '(all)'}: waiting for servers to be released`);
    // Returns once no server of the database serves a client (transactions ended).
    for (;;) {
      if (this.client.state === ClientState.Closed) break;
      const busy = this.poolsOf(db).reduce((n, p) => n + [...p.servers].filter((s) => serverStateName(s, this.pooler.kernel) === 'active').length, 0);
      if (busy === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    return commandComplete('PAUSE');
  }

  private reconnect(db?: string): void {
    for (const p of this.poolsOf(db)) {
      for (const s of [...p.servers]) {
        if (s.state === ServerState.Idle) s.close('RECONNECT');
        else s.closeNeeded = true;
      }
      p.closeIdle('RECONNECT');
      p.grow();
    }
  }

  private kill(db: string): void {
    this.control.pause(db); // as in PgBouncer: new clients wait for RESUME
    for (const c of [...this.pooler.clients]) {
      if (c.database === db && c !== this.client) c.fatal({ code: SqlState.AdminShutdown, message: `database "${db}" killed by admin (KILL)` });
    }
    for (const p of this.poolsOf(db)) p.closeAll(`KILL ${db}`);
  }

  private killClient(arg: string): void {
    const id = Number(arg);
    const c = [...this.pooler.clients].find((x) => x.id === id);
    if (!Number.isInteger(id) || !c) throw new AdminError(`no such client: ${arg}`, '42704');
    log.info(`admin ${this.client.user}: KILL_CLIENT ${c.label}`);
    c.fatal({ code: SqlState.AdminShutdown, message: 'terminating connection due to administrator command (KILL_CLIENT)' });
  }

  private set(cmd: { key: string; value: string; quoted: boolean }): Buffer {
    if (cmd.key in FAKE_PARAMS) return Buffer.concat([notice('SET ignored'), commandComplete('SET')]);
    this.requireAdmin();
    if (RESTART_KEYS.includes(cmd.key)) throw new AdminError(`${cmd.key} cannot be changed while running; edit the config file and restart`, '55P02');
    const next = applySetting(this.pooler.config, cmd.key, cmd.quoted ? JSON.stringify(cmd.value) : cmd.value);
    this.control.apply(next);
    log.info(`admin ${this.client.user}: SET ${cmd.key} = ${cmd.value}`);
    return commandComplete(`SET ${cmd.key}=${cmd.value}`);
  }

  // ---- SHOW ----

  // SHOW commands answered by a method of this class, by name.
  private static readonly SHOW_TABLES: Record<string, (c: AdminSession) => Buffer> = {
    POOLS: (c) => c.showPools(),
    STATS: (c) => c.showStats(),
    TOTALS: (c) => c.showTotals(),
    STATS_TOTALS: (c) => c.showStatsTotals(false),
    STATS_AVERAGES: (c) => c.showStatsTotals(true),
    CLIENTS: (c) => c.showClients(),
    SERVERS: (c) => c.showServers(),
    DATABASES: (c) => c.showDatabases(),
    USERS: (c) => c.showUsers(),
    CONFIG: (c) => c.showConfig(),
    LISTS: (c) => c.showLists(),
    STATE: (c) => c.showState(),
    BYPASS: (c) => c.showBypass(),
    SUMMARY: (c) => new ResultSet(columns('summary')).add([c.control.summary()]).toBuffer(),
    MIRRORS: (c) => c.showMirrors(),
  };

  private show(what: string): Buffer {
    if (what === 'HELP') return Buffer.concat([notice('Console usage', HELP.join('\n\t')), commandComplete('SHOW')]);
    if (what === 'VERSION') return new ResultSet(columns('version')).add([`pgsplice ${VERSION}`]).toBuffer();
    const table = AdminSession.SHOW_TABLES[what];
    if (table) {
      // With workers, or during a takeover, each process has its own clients, pools and
      // servers: say whose these are.
      const peer = getLocalPeerId();
      if (peer === 0) return table(this);
      const w = workerRole();
      const who = `${w ? `worker ${w.index} of ${w.count}` : 'process'} (peer_id ${peer}, pid ${process.pid})`;
      return Buffer.concat([notice(`${who}: SHOW ${what} shows this ${w ? 'worker' : 'process'} only`), table(this)]);
    }
    const fake = FAKE_PARAMS[what.toLowerCase()];
    if (fake !== undefined) return new ResultSet(columns(what.toLowerCase())).add([fake]).toBuffer();
    throw new AdminError(`invalid command 'SHOW ${what}', use SHOW HELP;`);
  }

  // The controller's rows (loaded, reason, kernel counters, ...), then connections by path and the totals.
  private showBypass(): Buffer {
    const rs = new ResultSet(columns('key', 'value'));
    for (const [k, v] of this.control.bypassInfo()) rs.add([k, v]);
    let clUser = 0;
    let clKernel = 0;
    for (const c of this.pooler.clients) {
      if (!c.pool || c.state === ClientState.Closed || c.state === ClientState.Startup || c.state === ClientState.Auth || c.state === ClientState.AuthLookup) continue;
      if (c.state === ClientState.Kernel || c.state === ClientState.KernelBound) clKernel++;
      else clUser++;
    }
    let svUser = 0;
    let svKernel = 0;
    for (const p of this.pooler.pools.values()) {
      for (const s of p.servers) {
        if (s.state === ServerState.Closed) continue;
        if (s.state === ServerState.Kernel) svKernel++;
        else svUser++;
      }
    }
    const t: Totals = zeroTotals();
    for (const d of databaseTotals(this.pooler).values()) addTotals(t, d);
    rs.add(['clients_user', String(clUser)]).add(['clients_kernel', String(clKernel)]);
    rs.add(['servers_user', String(svUser)]).add(['servers_kernel', String(svKernel)]);
    rs.add(['transactions_total', String(t.xacts)]).add(['bytes_received_total', String(t.bytesIn)]).add(['bytes_sent_total', String(t.bytesOut)]);
    return rs.toBuffer();
  }

  // One row per mirror of a database (docs/mirroring.md); the metrics carry the same numbers.
  private showMirrors(): Buffer {
    const rs = new ResultSet(
      columns(
        'database', 'mirror', 'state', 'clients:int8', 'queued_bytes:int8', 'peak_queued_bytes:int8', 'queue_bytes:int8',
        'transactions:int8', 'dropped:int8', 'diverged:int8', 'lag_ms:int8', 'clients_mirrored:int8', 'clients_skipped:int8',
        'last_error', 'last_divergence',
      ),
    );
    for (const m of this.pooler.mirrors.all.values()) {
      rs.add([m.database, m.name, m.state, m.sessions.size, m.queuedBytes, m.peakQueuedBytes, m.config.queue_bytes,
        m.transactions, m.dropped, m.diverged, m.lagMs, m.clientsMirrored, m.clientsSkipped, m.lastError, m.divergences.last]);
    }
    return rs.toBuffer();
  }

  private showPools(): Buffer {
    const rs = new ResultSet(
      columns(
        'database', 'user', 'cl_active:int4', 'cl_waiting:int4', 'cl_active_cancel_req:int4', 'cl_waiting_cancel_req:int4',
        'sv_active:int4', 'sv_active_cancel:int4', 'sv_being_canceled:int4', 'sv_idle:int4', 'sv_used:int4', 'sv_tested:int4',
        'sv_login:int4', 'maxwait:int4', 'maxwait_us:int4', 'pool_mode', 'cl_pinned:int4', 'variants:int4',
      ),
    );
    for (const [p, n] of pairCounts(this.pooler)) {
      const w = Math.floor(n.maxWaitUs);
      rs.add([p.database, p.user, n.clActive, n.clWaiting, 0, 0, n.svActive, 0, n.svBeingCanceled, n.svIdle, n.svUsed, 0, n.svLogin,
        Math.floor(w / 1e6), w % 1e6, p.settings.mode, n.clPinned, n.variants]);
    }
    return rs.toBuffer();
  }

  private showStats(): Buffer {
    const rs = new ResultSet(
      columns(
        'database', 'total_xact_count:int8', 'total_query_count:int8', 'total_received:int8', 'total_sent:int8',
        'total_xact_time:int8', 'total_query_time:int8', 'total_wait_time:int8', 'avg_xact_count:int8', 'avg_query_count:int8',
        'avg_recv:int8', 'avg_sent:int8', 'avg_xact_time:int8', 'avg_query_time:int8', 'avg_wait_time:int8',
      ),
    );
    const avg = averager(this.pooler);
    for (const [db, t] of databaseTotals(this.pooler)) {
      const a = avg.averages(db);
      rs.add([db, t.xacts, t.queries, t.bytesIn, t.bytesOut, Math.floor(t.xactUs), Math.floor(t.queryUs), Math.floor(t.waitUs),
        a.xactsPerSec, a.queriesPerSec, a.recvPerSec, a.sentPerSec, a.xactUs, a.queryUs, a.waitUs]);
    }
    return rs.toBuffer();
  }

  // SHOW STATS_TOTALS / STATS_AVERAGES: the two halves of SHOW STATS, unprefixed column names.
  private showStatsTotals(averages: boolean): Buffer {
    const rs = new ResultSet(
      columns('database', 'xact_count:int8', 'query_count:int8', 'bytes_received:int8', 'bytes_sent:int8', 'xact_time:int8', 'query_time:int8', 'wait_time:int8'),
    );
    const avg = averager(this.pooler);
    for (const [db, t] of databaseTotals(this.pooler)) {
      if (averages) {
        const a = avg.averages(db);
        rs.add([db, a.xactsPerSec, a.queriesPerSec, a.recvPerSec, a.sentPerSec, a.xactUs, a.queryUs, a.waitUs]);
      } else {
        rs.add([db, t.xacts, t.queries, t.bytesIn, t.bytesOut, Math.floor(t.xactUs), Math.floor(t.queryUs), Math.floor(t.waitUs)]);
      }
    }
    return rs.toBuffer();
  }

  private showTotals(): Buffer {
    const t: Totals = zeroTotals();
    for (const d of databaseTotals(this.pooler).values()) addTotals(t, d);
    const rs = new ResultSet(columns('name', 'value:int8'));
    const rows: Array<[string, Cell]> = [
      ['total_xact_count', t.xacts], ['total_query_count', t.queries], ['total_received', t.bytesIn], ['total_sent', t.bytesOut],
      ['total_xact_time', Math.floor(t.xactUs)], ['total_query_time', Math.floor(t.queryUs)], ['total_wait_time', Math.floor(t.waitUs)],
    ];
    for (const r of rows) rs.add(r);
    return rs.toBuffer();
  }

  private socketRow(c: ClientConnection): Cell[] {
    const s = c.socket;
    const w = Math.floor(c.timing.waitingFor);
    return [
      'C', c.user, c.database, clientStateName(c, this.pooler.kernel), s.remoteAddress ?? 'unix', s.remotePort ?? 0, s.localAddress ?? 'unix', s.localPort ?? 0,
      pgTime(c.connectedAt), pgTime(c.timing.lastRequestAt || c.connectedAt), Math.floor(w / 1e6), w % 1e6, 0,
      `C-${c.id}`, c.server ? `S-${c.server.id}` : '', 0, tlsInfo(s), c.appName, c.id,
      c.state === ClientState.Kernel || c.state === ClientState.KernelBound ? 'kernel' : 'user',
      c.rewriter?.session.pins.join(',') ?? '',
    ];
  }

  private showClients(): Buffer {
    const rs = new ResultSet(SOCKET_COLUMNS);
    for (const c of this.pooler.clients) {
      if (c.state === ClientState.Startup || c.state === ClientState.Auth || c.state === ClientState.AuthLookup || c.state === ClientState.Closed) continue;
      rs.add(this.socketRow(c));
    }
    return rs.toBuffer();
  }

  private showServers(): Buffer {
    const rs = new ResultSet(SOCKET_COLUMNS);
    const linked = new Map<ServerConnection, ClientConnection>();
    for (const c of this.pooler.clients) if (c.server) linked.set(c.server, c);
    for (const p of this.pooler.pools.values()) {
      for (const s of p.servers) {
        const st = serverStateName(s, this.pooler.kernel);
        if (!st) continue;
        const sock = s.socket;
        const peer = linked.get(s);
        rs.add([
          'S', p.user, p.database, st, sock?.remoteAddress ?? s.target.host, sock?.remotePort ?? s.target.port,
          sock?.localAddress ?? 'unix', sock?.localPort ?? 0, pgTime(s.createdAt), pgTime(s.lastUsed), 0, 0, s.closeNeeded ? 1 : 0,
          `S-${s.id}`, peer ? `C-${peer.id}` : '', s.backendPid, tlsInfo(sock), s.params.get('application_name') ?? '', s.id,
          s.state === ServerState.Kernel ? 'kernel' : 'user',
          peer?.rewriter?.session.pins.join(',') ?? '',
        ]);
      }
    }
    return rs.toBuffer();
  }

  private showDatabases(): Buffer {
    const cfg = this.pooler.config;
    const rs = new ResultSet(
      columns(
        'name', 'host', 'port:int4', 'database', 'force_user', 'pool_size:int4', 'min_pool_size:int4', 'reserve_pool:int4',
        'server_lifetime:int4', 'pool_mode', 'max_connections:int4', 'current_connections:int4', 'paused:int4', 'disabled:int4',
      ),
    );
    const serversOf = (db: string) => this.poolsOf(db).reduce((n, p) => n + p.servers.size, 0);
    const names = new Set<string>(cfg.databases.keys());
    for (const p of this.pooler.pools.values()) names.add(p.database);
    for (const name of names) {
      const own = cfg.databases.get(name);
      const star = cfg.databases.get('*');
      const d = own ?? (star ? { ...star, name, dbname: star.dbname || name } : undefined);
      if (!d) continue;
      rs.add([
        name, d.host, d.port, d.dbname, d.user ?? null, d.pool_size ?? cfg.default_pool_size, d.min_pool_size ?? cfg.min_pool_size,
        d.reserve_pool_size ?? cfg.reserve_pool_size, Math.floor(cfg.server_lifetime), d.pool_mode ?? null,
        d.max_db_connections ?? cfg.max_db_connections, serversOf(name), this.control.isPaused(name) ? 1 : 0, 0,
      ]);
    }
    return rs.toBuffer();
  }

  private showUsers(): Buffer {
    const cfg = this.pooler.config;
    const rs = new ResultSet(columns('name', 'pool_size', 'reserve_pool_size', 'pool_mode', 'max_user_connections:int4', 'current_connections:int4'));
    for (const u of cfg.users.values()) {
      let servers = 0;
      for (const p of this.pooler.pools.values()) if (p.user === u.name) servers += p.servers.size;
      rs.add([u.name, u.pool_size ?? '', '', u.pool_mode ?? null, u.max_user_connections ?? cfg.max_user_connections, servers]);
    }
    return rs.toBuffer();
  }

  private showConfig(): Buffer {
    const cfg = this.pooler.config;
    const defs = defaultSettings() as unknown as Record<string, unknown>;
    const defaults: Record<string, string> = {
      'listen.host': '127.0.0.1', 'listen.port': '6432', 'listen.unix_socket_dir': '', 'listen.unix_socket_mode': `0${DEFAULT_UNIX_SOCKET_MODE.toString(8)}`,
    };
    for (const [k, v] of Object.entries(defs)) defaults[k] = Array.isArray(v) ? v.join(',') : String(v);
    for (const [k, v] of Object.entries(DEFAULT_SESSION_STATE)) defaults[`session_state.${k}`] = v;
    const rs = new ResultSet(columns('key', 'value', 'default', 'changeable'));
    for (const [k, v] of describeConfig(cfg)) rs.add([k, v, defaults[k] ?? '', RESTART_KEYS.includes(k) ? 'no' : 'yes']);
    rs.add(['metrics.host', cfg.metrics?.host ?? '', '', 'no']);
    rs.add(['metrics.port', cfg.metrics ? String(cfg.metrics.port) : '', '', 'no']);
    return rs.toBuffer();
  }

  private showLists(): Buffer {
    let login = 0;
    let used = 0;
    for (const c of this.pooler.clients) {
      if (c.state === ClientState.Startup || c.state === ClientState.Auth || c.state === ClientState.AuthLookup || c.state === ClientState.Login) login++;
      else if (c.state !== ClientState.Closed) used++;
    }
    let servers = 0;
    for (const p of this.pooler.pools.values()) servers += p.servers.size;
    const dbs = new Set<string>(this.pooler.config.databases.keys());
    for (const p of this.pooler.pools.values()) dbs.add(p.database);
    const rs = new ResultSet(columns('list', 'items:int4'));
    const rows: Array<[string, number]> = [
      ['databases', dbs.size], ['users', this.pooler.config.users.size], ['pools', this.pooler.pools.size],
      ['free_clients', 0], ['used_clients', used], ['login_clients', login], ['free_servers', 0], ['used_servers', servers],
      ['dns_names', 0], ['dns_zones', 0], ['dns_queries', 0], ['dns_pending', 0],
    ];
    for (const r of rows) rs.add(r);
    return rs.toBuffer();
  }

  private showState(): Buffer {
    const paused = [...this.pooler.config.databases.keys()].some((d) => this.control.isPaused(d));
    return new ResultSet(columns('key', 'value'))
      .add(['active', this.pooler.accepting ? 'yes' : 'no'])
      .add(['paused', paused ? 'yes' : 'no'])
      .add(['suspended', 'no'])
      .toBuffer();
  }
}

// Called after a client authenticated to the admin database (the Pooler's AdminStarter).
export function startAdminConsole(client: ClientConnection, pooler: Pooler, control: ProxyControl): void {
  const cfg = pooler.config;
  const access: Access | null = cfg.admin_users.includes(client.user) ? 'admin' : cfg.stats_users.includes(client.user) ? 'stats' : null;
  if (!access) {
    log.info(`${client.label} refused: not in admin_users or stats_users`);
    client.fatal({ code: SqlState.InvalidAuthorization, message: 'not allowed' });
    return;
  }
  const session = new AdminSession(client, pooler, control, access);
  client.serveAdmin((type, body) => session.onMessage(type, body));
  log.info(`${client.label} admin console (${access})`);
}

// The things a benchmark run drives: PostgreSQL directly, PgBouncer, pgsplice with
// the kernel path off, on and auto (and on with a mirror), and extra poolers given on
// the command line.
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Client } from 'pg';
import { freePort } from '../scripts/scratch-postgres';

// pgsplice-mirror: bypass: on with one mirror PostgreSQL on the same cores at equal CPU
// priority; pgsplice-mirror-idle: the same with the mirror PostgreSQL at SCHED_IDLE, so it
// only gets CPU the primary side leaves (standing in for a mirror on another host).
export type TargetKind = 'direct' | 'pgbouncer' | 'pgsplice-off' | 'pgsplice-on' | 'pgsplice-auto' | 'pgsplice-mirror' | 'pgsplice-mirror-idle' | 'extra';
export const MIRROR_KINDS: TargetKind[] = ['pgsplice-mirror', 'pgsplice-mirror-idle'];
export const BUILTIN_TARGETS: TargetKind[] = ['direct', 'pgbouncer', 'pgsplice-off', 'pgsplice-on', 'pgsplice-auto'];

// A mirror PostgreSQL for pgsplice's `mirrors:` (a database's traffic sent to a second
// server as well); the keys are the database entry's `mirrors:` list items.
export interface MirrorSpec {
  host: string;
  port: number;
  dbname: string;
  user: string;
  password: string;
  pool_size?: number; // mirrored clients at most (the proxy's default is 20)
}

export interface Backend {
  host: string;
  port: number;
  user: string;
  password: string;
  db: string;
}

export interface RunningTarget {
  label: string;
  kind: TargetKind;
  host: string;
  port: number;
  pid: number | null; // the proxy process, for CPU and memory; null for direct
  // pgsplice: its inspector's loopback port, through which the idle-clients run collects
  // garbage in it before reading its memory (bench/inspector.ts).
  inspectPort?: number;
  note: string | null; // e.g. what the proxy said about its data path
  stop(): Promise<void>;
  logTail(): string;
  output(): string; // everything the process printed so far (bounded)
  exitInfo(): string | null; // 'exited with code N' / 'exited with SIGNAL' once it has exited
}

export class TargetStartError extends Error {}

const PGBOUNCER_CANDIDATES = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer', '/usr/local/bin/pgbouncer'];
export function pgbouncerBinary(): string | null {
  return PGBOUNCER_CANDIDATES.find((p) => fs.existsSync(p)) ?? null;
}

export function pgbouncerVersion(): string | null {
  const bin = pgbouncerBinary();
  if (!bin) return null;
  try {
    return execFileSync(bin, ['--version'], { encoding: 'utf8' }).split('\n')[0].trim();
  } catch {
    return null;
  }
}

export function canConnect(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// Runs a server program and waits until it accepts TCP connections on port (or
// prints readyLine). Fails with the output's tail if it exits or times out.
async function startServer(opts: {
  label: string;
  cmd: string;
  args: string[];
  host: string;
  port: number;
  readyLine?: RegExp;
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}): Promise<{ child: ChildProcess; output: () => string; exitInfo: () => string | null }> {
  let out = '';
  const child = spawn(opts.cmd, opts.args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env }, cwd: opts.cwd });
  const keep = (d: Buffer) => {
    out += d.toString();
    if (out.length > 200_000) out = out.slice(-100_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  let exited: string | null = null;
  child.on('exit', (code, sig) => (exited = `exited with ${sig ?? `code ${code}`} at ${new Date().toISOString()}`));
  child.on('error', (e) => (exited = `could not start: ${e.message}`));
  const deadline = Date.now() + (opts.timeoutMs ?? 20_000);
  for (;;) {
    if (exited) throw new TargetStartError(`${opts.label} ${exited}: ${tail(out)}`);
    if (opts.readyLine?.test(out) || (await canConnect(opts.host, opts.port))) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new TargetStartError(`${opts.label} not ready after ${(opts.timeoutMs ?? 20_000) / 1000} s: ${tail(out)}`);
    }
    await sleep(100);
  }
  // The port may be announced a moment before it accepts; wait for it.
  while (!(await canConnect(opts.host, opts.port))) {
    if (exited) throw new TargetStartError(`${opts.label} ${exited}: ${tail(out)}`);
    if (Date.now() > deadline) throw new TargetStartError(`${opts.label} printed ready but does not accept connections`);
    await sleep(100);
  }
  return { child, output: () => out, exitInfo: () => exited };
}

export function tail(s: string, lines = 8): string {
  return s.trim().split('\n').slice(-lines).join(' | ').slice(0, 2000);
}

function stopChild(child: ChildProcess, signal: NodeJS.Signals, graceMs = 5000): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    child.kill(signal);
  });
}

export function directTarget(b: Backend): RunningTarget {
  return {
    label: 'direct', kind: 'direct', host: b.host, port: b.port, pid: null, note: null,
    stop: async () => undefined, logTail: () => '', output: () => '', exitInfo: () => null,
  };
}

// host:port:label[:pid]
export function parseExtraTarget(spec: string): RunningTarget {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+):([^:]+)(?::(\d+))?$/.exec(spec.trim());
  if (!m) throw new Error(`--extra '${spec}': expected host:port:label[:pid]`);
  return {
    label: m[3], kind: 'extra', host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2]),
    pid: m[4] ? Number(m[4]) : null, note: null, stop: async () => undefined, logTail: () => '', output: () => '', exitInfo: () => null,
  };
}

// Builds the pgbouncer.ini the benchmark uses; exported for the test and the docs.
export function pgbouncerIni(o: { dir: string; port: number; backend: Backend; poolSize: number; maxClientConn: number }): string {
  return `;; written by pgsplice bench/targets.ts
[databases]
${o.backend.db} = host=${o.backend.host} port=${o.backend.port} dbname=${o.backend.db}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${o.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = ${path.join(o.dir, 'userlist.txt')}
pool_mode = transaction
default_pool_size = ${o.poolSize}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = ${o.maxClientConn}
max_db_connections = 0
ignore_startup_parameters = extra_float_digits,options
logfile = ${path.join(o.dir, 'pgbouncer.log')}
pidfile = ${path.join(o.dir, 'pgbouncer.pid')}
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 3600
`;
}

export async function startPgbouncer(o: {
  dir: string;
  port: number;
  backend: Backend;
  poolSize: number;
  maxClientConn: number;
  // The user's SCRAM verifier from pg_authid: PgBouncer then checks client logins
  // without PBKDF2 and logs into PostgreSQL with the client's proof (its fastest
  // SCRAM set-up). Without it, the plain-text password is used.
  scramVerifier?: string | null;
}): Promise<RunningTarget> {
  const bin = pgbouncerBinary();
  if (!bin) throw new TargetStartError('pgbouncer is not installed (apt-get install pgbouncer)');
  fs.mkdirSync(o.dir, { recursive: true });
  const ini = path.join(o.dir, 'pgbouncer.ini');
  fs.writeFileSync(ini, pgbouncerIni(o));
  const secret = o.scramVerifier?.startsWith('SCRAM-SHA-256$') ? o.scramVerifier : o.backend.password;
  fs.writeFileSync(path.join(o.dir, 'userlist.txt'), `"${o.backend.user}" "${secret.replace(/"/g, '""')}"\n`);
  // PgBouncer refuses to run as root: run it as the postgres user, reading files it owns.
  const root = process.getuid?.() === 0;
  if (root) execFileSync('chown', ['-R', 'postgres:postgres', o.dir]);
  const exec = root ? `exec setpriv --reuid=postgres --regid=postgres --init-groups ${bin} ${ini}` : `exec ${bin} ${ini}`;
  const { child, output, exitInfo } = await startServer({
    label: 'pgbouncer', cmd: 'bash', args: ['-c', `ulimit -n ${fdLimit(o.maxClientConn)} 2>/dev/null; ${exec}`],
    host: '127.0.0.1', port: o.port,
  });
  const logTail = () => {
    let log = output();
    try {
      log += fs.readFileSync(path.join(o.dir, 'pgbouncer.log'), 'utf8');
    } catch {
      /* none yet */
    }
    return tail(log, 20);
  };
  return {
    label: 'pgbouncer', kind: 'pgbouncer', host: '127.0.0.1', port: o.port, pid: child.pid ?? null, note: null,
    stop: () => stopChild(child, 'SIGINT'), logTail, output, exitInfo,
  };
}

function fdLimit(clients: number): number {
  return Math.max(4096, clients * 2 + 1024);
}

export function pgspliceYaml(o: { port: number; backend: Backend; poolSize: number; maxClientConn: number; bypass: 'on' | 'off' | 'auto'; mirrors?: MirrorSpec[] }): string {
  const q = (s: string) => JSON.stringify(s);
  const mirrors = o.mirrors?.length
    ? `, mirrors: [${o.mirrors.map((m) => `{ host: ${m.host}, port: ${m.port}, dbname: ${q(m.dbname)}, user: ${q(m.user)}, password: ${q(m.password)}${m.pool_size ? `, pool_size: ${m.pool_size}` : ''} }`).join(', ')}]`
    : '';
  return `# written by pgsplice bench/targets.ts
listen: { host: 127.0.0.1, port: ${o.port} }
pool_mode: transaction
default_pool_size: ${o.poolSize}
max_client_conn: ${o.maxClientConn}
bypass: ${o.bypass}
admin_users: [${o.backend.user}]
databases:
  ${o.backend.db}: { host: ${o.backend.host}, port: ${o.backend.port}, dbname: ${q(o.backend.db)}${mirrors} }
users:
  ${o.backend.user}: { password: ${q(o.backend.password)} }
`;
}

export const PGSPLICE_CLI = path.resolve(__dirname, '..', 'src', 'cli.js'); // dist/src/cli.js

// Lines in which the proxy says the kernel path is not in use.
const KERNEL_PATH_UNAVAILABLE = /(fall(ing)?\s*back|falls back|kernel path (is )?(unavailable|disabled|not available)|user[- ]space only|cannot load|could not (load|attach)|failed to (load|attach))/i;

export async function startPgsplice(o: {
  dir: string;
  port: number;
  backend: Backend;
  poolSize: number;
  maxClientConn: number;
  bypass: 'on' | 'off' | 'auto';
  mirrors?: MirrorSpec[];
  label?: string;
  kind?: TargetKind;
  logLevel?: string;
  extraNodeArgs?: string[];
  cli?: string; // another build's dist/src/cli.js (bench/build-ab.ts); this build's by default
}): Promise<RunningTarget> {
  const label = o.label ?? `pgsplice-${o.bypass}`;
  const cli = o.cli ?? PGSPLICE_CLI;
  if (!fs.existsSync(cli)) throw new TargetStartError(`${label}: ${cli} does not exist (proxy not built)`);
  fs.mkdirSync(o.dir, { recursive: true });
  const cfg = path.join(o.dir, `${label}.yaml`);
  fs.writeFileSync(cfg, pgspliceYaml(o));
  // The inspector listens on loopback and stays detached until the idle-clients run (the
  // last) asks for a collection; detached, it costs the proxy nothing measurable.
  const inspectPort = await freePort();
  const nodeArgs = [...(o.extraNodeArgs ?? []), `--inspect=127.0.0.1:${inspectPort}`, cli, '--config', cfg, '--log-level', o.logLevel ?? 'warn'];
  const { child, output, exitInfo } = await startServer({
    label, cmd: 'bash',
    args: ['-c', `ulimit -n ${fdLimit(o.maxClientConn)} 2>/dev/null; exec "$0" "$@"`, process.execPath, ...nodeArgs],
    host: '127.0.0.1', port: o.port, readyLine: /(?<!Debugger )listening on \S+:\d+/, // (not the inspector's line)
  });
  await sleep(300); // let start-up warnings (kernel path) arrive
  const said = output().split('\n').filter((l) => KERNEL_PATH_UNAVAILABLE.test(l));
  // The admin console says whether the kernel path is loaded, and why not.
  let info: Record<string, string> | null = null;
  let infoError: string | null = null;
  try {
    info = await pgspliceBypassInfo({ host: '127.0.0.1', port: o.port, user: o.backend.user, password: o.backend.password });
  } catch (e) {
    infoError = (e as Error).message;
  }
  if (o.bypass === 'on') {
    const notLoaded = info && !/^(yes|true|on|1)$/i.test(info.loaded ?? '');
    if (notLoaded || said.length > 0) {
      await stopChild(child, 'SIGINT');
      const why = notLoaded ? `SHOW BYPASS: loaded=${info!.loaded ?? '?'}, reason: ${info!.reason ?? '?'}` : said[0].trim().slice(0, 300);
      throw new TargetStartError(`${label}: kernel path not in use (${why})`);
    }
  }
  return {
    label, kind: o.kind ?? (o.mirrors?.length ? 'pgsplice-mirror' : `pgsplice-${o.bypass}`), host: '127.0.0.1', port: o.port,
    pid: child.pid ?? null, inspectPort,
    note: said.length ? said[0].trim().slice(0, 300) : infoError ? `SHOW BYPASS failed: ${infoError.slice(0, 200)}` : info ? `SHOW BYPASS: loaded=${info.loaded ?? '?'}${info.reason ? `, reason: ${info.reason}` : ''}` : null,
    stop: () => stopChild(child, 'SIGINT'), logTail: () => tail(output(), 20), output, exitInfo,
  };
}

// pgsplice's counters line (clients, pools, user_xacts and SHOW BYPASS's keys) from the
// admin console's SHOW SUMMARY (SIGUSR1 is PgBouncer's PAUSE now). null if it does not answer.
export async function pgspliceCounters(o: { host: string; port: number; user: string; password: string }): Promise<string | null> {
  const c = new Client({ host: o.host, port: o.port, user: o.user, password: o.password, database: 'pgsplice', connectionTimeoutMillis: 5000 });
  c.on('error', () => undefined);
  try {
    await c.connect();
    const r = await c.query('SHOW SUMMARY');
    return String((r.rows[0] as Record<string, unknown> | undefined)?.summary ?? '') || null;
  } catch {
    return null;
  } finally {
    await c.end().catch(() => undefined);
  }
}

// SHOW BYPASS on pgsplice's admin console (database "pgsplice"): key/value rows
// (loaded, reason, mode, clients_kernel, clients_user, transactions_total, kernel_*).
export async function pgspliceBypassInfo(o: { host: string; port: number; user: string; password: string }): Promise<Record<string, string>> {
  const c = new Client({ host: o.host, port: o.port, user: o.user, password: o.password, database: 'pgsplice', connectionTimeoutMillis: 5000 });
  c.on('error', () => undefined);
  await c.connect();
  try {
    const r = await c.query('SHOW BYPASS');
    const out: Record<string, string> = {};
    for (const row of r.rows as Array<Record<string, unknown>>) {
      const vals = Object.values(row);
      if (vals.length >= 2) out[String(vals[0])] = String(vals[1]);
    }
    return out;
  } finally {
    await c.end().catch(() => undefined);
  }
}

// From SHOW BYPASS rows: the kernel's transaction count (transactions whose end the
// kernel path carried: also those that waited for a server in user space and were bound
// back into the kernel) and its hand-backs to user space (the fallback_* counters, one per
// request passed up). null when the kernel path is not loaded (bypass: off, or auto/on
// without it) or the row is absent.
export interface KernelCounts {
  transactions: number;
  handbacks: number;
}
export function kernelCounts(info: Record<string, string>): KernelCounts | null {
  if (!/^(yes|true|on|1)$/i.test(info.loaded ?? '')) return null;
  const v = Number(info.kernel_transactions);
  if (info.kernel_transactions === undefined || !Number.isFinite(v)) return null;
  let handbacks = 0;
  for (const [k, x] of Object.entries(info)) if (/^fallback_/.test(k) && Number.isFinite(Number(x))) handbacks += Number(x);
  return { transactions: v, handbacks };
}

// SHOW MIRRORS on pgsplice's admin console, the counters the bench reads (summed over the
// mirrors, the bench configures one). null if it does not answer.
export interface MirrorCounters {
  mirrors: number; // rows
  states: string; // each row's state, comma-separated
  transactions: number; // answered by the mirror
  dropped: number;
  diverged: number;
  queued_bytes: number;
  peak_queued_bytes: number;
  clients_mirrored: number;
  clients_skipped: number;
  lag_ms: number;
  last_error: string;
}
export async function pgspliceMirrorCounters(o: { host: string; port: number; user: string; password: string }): Promise<MirrorCounters | null> {
  const c = new Client({ host: o.host, port: o.port, user: o.user, password: o.password, database: 'pgsplice', connectionTimeoutMillis: 5000 });
  c.on('error', () => undefined);
  try {
    await c.connect();
    return mirrorCountersOf((await c.query('SHOW MIRRORS')).rows as Array<Record<string, unknown>>);
  } catch {
    return null;
  } finally {
    await c.end().catch(() => undefined);
  }
}
export function mirrorCountersOf(rows: Array<Record<string, unknown>>): MirrorCounters {
  const sum = (k: string) => rows.reduce((n, r) => n + (Number(r[k]) || 0), 0);
  return {
    mirrors: rows.length, states: rows.map((r) => String(r.state)).join(','),
    transactions: sum('transactions'), dropped: sum('dropped'), diverged: sum('diverged'), queued_bytes: sum('queued_bytes'),
    peak_queued_bytes: Math.max(0, ...rows.map((r) => Number(r.peak_queued_bytes) || 0)), clients_mirrored: sum('clients_mirrored'),
    clients_skipped: sum('clients_skipped'), lag_ms: Math.max(0, ...rows.map((r) => Number(r.lag_ms) || 0)),
    last_error: rows.map((r) => String(r.last_error ?? '')).filter(Boolean).join('; '),
  };
}

// One scratch PostgreSQL per test file, with the application role and database the
// proxy serves, plus the config and client helpers most tests share.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Client, ClientConfig } from 'pg';
import type { Test } from 'tap';
import { freePort, ScratchPostgres } from '../../scripts/scratch-postgres';
import { TeardownHost } from './proxy';

export { freePort, ScratchPostgres };

export const APP_USER = 'app';
export const APP_PASSWORD = 'app-pw';
export const APP_DB = 'app';

export interface Cluster {
  pg: ScratchPostgres;
  user: string;
  password: string;
  db: string;
  // Runs SQL as the superuser on the app database (directly, not through the proxy).
  sql(query: string, db?: string): string;
}

export async function startCluster(t: TeardownHost, opts: Parameters<typeof ScratchPostgres.create>[0] = {}): Promise<Cluster> {
  const pg = await ScratchPostgres.create({ owner: { user: APP_USER, password: APP_PASSWORD, db: APP_DB }, ...opts });
  t.teardown(() => pg.destroy());
  return {
    pg,
    user: APP_USER,
    password: APP_PASSWORD,
    db: APP_DB,
    sql: (q, db = APP_DB) => pg.psql(q, db),
  };
}

// A proxy config for the cluster: database "app" -> the app database, user app.
// Overrides are merged at the top level.
export async function proxyConfig(c: Cluster, overrides: Record<string, unknown> = {}): Promise<Record<string, any>> {
  return {
    listen: { host: '127.0.0.1', port: await freePort() },
    pool_mode: 'transaction',
    default_pool_size: 4,
    max_client_conn: 200,
    auth_type: 'scram-sha-256',
    bypass: 'off',
    databases: { [c.db]: { host: '127.0.0.1', port: c.pg.port, dbname: c.db } },
    users: { [c.user]: { password: c.password } },
    ...overrides,
  };
}

// The databases of the pooling tests, all on the app database: app (default_pool_size),
// app_one (a pool of one server: clients must share it) and app_session (session mode).
export function poolingDatabases(c: Cluster, names: Array<'app' | 'app_one' | 'app_session'> = ['app', 'app_one', 'app_session']): Record<string, object> {
  const all: Record<string, object> = {
    app: { host: '127.0.0.1', port: c.pg.port, dbname: c.db },
    app_one: { host: '127.0.0.1', port: c.pg.port, dbname: c.db, pool_size: 1 },
    app_session: { host: '127.0.0.1', port: c.pg.port, dbname: c.db, pool_mode: 'session' },
  };
  return Object.fromEntries(names.map((n) => [n, all[n]]));
}

// The proxy config of the pooling tests with real clients: the three databases above, a
// pool of 8 per database, room for 300 clients, 30 s of query_wait_timeout.
export async function poolingConfig(c: Cluster, bypass: string, overrides: Record<string, unknown> = {}): Promise<Record<string, any>> {
  return proxyConfig(c, { bypass, default_pool_size: 8, max_client_conn: 300, query_wait_timeout: 30, databases: poolingDatabases(c), ...overrides });
}

// pgbench's tables (scale 1) in the app database, created directly (not through the proxy).
export async function pgbenchInit(t: Test, c: Cluster): Promise<void> {
  const init = await run('pgbench', ['-i', '-q', '-s', '1', '-h', c.pg.socketDir, '-p', String(c.pg.port), '-U', c.user, c.db], { timeoutMs: 60000 });
  t.equal(init.code, 0, `pgbench -i (${init.stderr.slice(-300)})`);
}

export interface Endpoint {
  host: string;
  port: number;
}

// node-postgres keeps the BackendKeyData on the client; its typings do not say so.
export type PgTestClient = Client & { errors: Error[]; processID: number | null; secretKey: number | null };

// A connected node-postgres client through the proxy, ended at teardown.
// Unexpected connection errors are recorded in client.errors instead of crashing the test.
// 30 s to log in: a SCRAM login through a proxy that just started (and, with bypass: on, just
// verified its BPF programs) took over 10 s on a machine at load 20.
export async function pgClient(
  t: TeardownHost,
  ep: Endpoint,
  cfg: Partial<ClientConfig> = {},
): Promise<PgTestClient> {
  const c = new Client({ host: ep.host, port: ep.port, user: APP_USER, password: APP_PASSWORD, database: APP_DB, connectionTimeoutMillis: 30000, ...cfg }) as PgTestClient;
  c.errors = [];
  c.on('error', (e) => c.errors.push(e));
  t.teardown(() => c.end().catch(() => undefined));
  await c.connect();
  return c;
}

// Connects, expecting failure; returns the error (with .code when the proxy sent one).
export async function pgConnectError(ep: Endpoint, cfg: Partial<ClientConfig> = {}): Promise<Error & { code?: string }> {
  const c = new Client({ host: ep.host, port: ep.port, user: APP_USER, password: APP_PASSWORD, database: APP_DB, connectionTimeoutMillis: 10000, ...cfg });
  c.on('error', () => undefined);
  try {
    await c.connect();
  } catch (e) {
    await c.end().catch(() => undefined);
    return e as Error & { code?: string };
  }
  await c.end().catch(() => undefined);
  throw new Error('connection unexpectedly succeeded');
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// Polls fn until it returns a truthy value, or throws with the last value after timeoutMs.
export async function waitUntil<T>(fn: () => T | Promise<T>, timeoutMs = 10000, what = 'condition', everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  let lastErr: unknown;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeoutMs} ms (last: ${JSON.stringify(last)}${lastErr ? `, error: ${String(lastErr)}` : ''})`);
    await sleep(everyMs);
  }
}

// Rejects if p does not settle within ms: a hang is a failure, never a wait forever.
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms (hang)`)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

// Runs a client program (psql, pgbench, python3, java) to completion, killed after timeoutMs.
export function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { env: { ...process.env, ...opts.env }, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    const timer = setTimeout(() => {
      stderr += `\n[killed after ${opts.timeoutMs} ms]`;
      p.kill('SIGKILL');
    }, opts.timeoutMs ?? 60000);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    if (opts.input !== undefined) p.stdin.end(opts.input);
    else p.stdin.end();
  });
}

// libpq environment for psql/pgbench through the proxy.
export function libpqEnv(ep: Endpoint, db = APP_DB, user = APP_USER, password = APP_PASSWORD): NodeJS.ProcessEnv {
  return { PGHOST: ep.host, PGPORT: String(ep.port), PGUSER: user, PGPASSWORD: password, PGDATABASE: db, PGSSLMODE: 'disable', PGCONNECT_TIMEOUT: '10' };
}

// psql -X -A -t through the proxy; returns trimmed stdout, throws with stderr on failure.
export async function psqlVia(ep: Endpoint, sql: string, opts: { db?: string; user?: string; password?: string; timeoutMs?: number } = {}): Promise<string> {
  const r = await run('psql', ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-c', sql], {
    env: libpqEnv(ep, opts.db, opts.user, opts.password),
    timeoutMs: opts.timeoutMs ?? 30000,
  });
  if (r.code !== 0) throw new Error(`psql failed (${r.code}): ${r.stderr}`);
  return r.stdout.trim();
}

// A python3 that has psycopg2 (Debian's python3-psycopg2 lives in /usr/bin/python3).
export function pythonWithPsycopg2(): string {
  for (const p of ['/usr/bin/python3', 'python3']) {
    try {
      require('node:child_process').execFileSync(p, ['-c', 'import psycopg2'], { stdio: 'ignore' });
      return p;
    } catch {
      /* try next */
    }
  }
  throw new Error('no python3 with psycopg2 (apt-get install python3-psycopg2)');
}

export const FIXTURES = path.resolve(__dirname, '..', 'fixtures');
export const JDBC_JAR = '/usr/share/java/postgresql.jar';
export function haveJava(): boolean {
  return fs.existsSync(JDBC_JAR);
}

// Server connections of a role as PostgreSQL sees them (excludes the caller's own backend).
export function backendCount(c: Cluster, user = APP_USER, where = 'true'): number {
  return Number(c.pg.psql(`SELECT count(*) FROM pg_stat_activity WHERE usename = '${user}' AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND (${where})`));
}

// A node-postgres connection as the superuser, directly over the unix socket (not through
// the proxy), ended at teardown.
export async function superuserClient(t: TeardownHost, c: Cluster, db = 'postgres'): Promise<Client> {
  const su = new Client({ host: c.pg.socketDir, port: c.pg.port, user: c.pg.superuser, database: db });
  su.on('error', () => undefined);
  t.teardown(() => su.end().catch(() => undefined));
  await su.connect();
  return su;
}

// The most server connections of a role seen at once while it runs, sampled every everyMs
// over one superuser connection (the unix socket): unlike backendCount, a sample does not
// block this process (a synchronous psql every 100 ms held up the clients under test).
export async function maxBackendSampler(t: TeardownHost, c: Cluster, user = APP_USER, everyMs = 100): Promise<{ stop(): Promise<number> }> {
  const su = await superuserClient(t, c);
  const sql = `SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1 AND backend_type = 'client backend'`;
  let max = 0;
  let sampling = true;
  const loop = (async () => {
    while (sampling) {
      try {
        max = Math.max(max, (await su.query(sql, [user])).rows[0].n);
      } catch {
        /* sampling only */
      }
      if (sampling) await sleep(everyMs);
    }
  })();
  return {
    stop: async () => {
      sampling = false;
      await loop;
      await su.end().catch(() => undefined);
      return max;
    },
  };
}

// Turns on TLS in a running cluster (ssl can change on reload): the server's key and
// certificate, and optionally the CA whose client certificates it verifies (PostgreSQL
// asks clients for a certificate only when ssl_ca_file is set). Files are PEM text.
export function enableServerSsl(c: Cluster, files: { cert: string; key: string; ca?: string }): void {
  const dir = c.pg.dataDir;
  const put = (name: string, text: string) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, text, { mode: 0o600 });
    if (process.getuid && process.getuid() === 0) require('node:child_process').execFileSync('chown', ['postgres:postgres', f]);
  };
  put('server.crt', files.cert);
  put('server.key', files.key);
  const settings = [`ALTER SYSTEM SET ssl_cert_file = 'server.crt'`, `ALTER SYSTEM SET ssl_key_file = 'server.key'`];
  if (files.ca) {
    put('root.crt', files.ca);
    settings.push(`ALTER SYSTEM SET ssl_ca_file = 'root.crt'`);
  }
  settings.push('ALTER SYSTEM SET ssl = on');
  for (const s of settings) c.pg.psql(s);
  c.pg.psql('SELECT pg_reload_conf()');
}

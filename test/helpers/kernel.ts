// Helpers of the kernel-path end-to-end tests (test/kernel-*.test.ts): a config with an
// admin user, the proxy's counters (SHOW SUMMARY and SHOW BYPASS / POOLS / CLIENTS), the
// proxy's RSS, pgbench output, and the failure log the lead reads.
import * as fs from 'node:fs';
import * as net from 'node:net';
import { Cluster, proxyConfig, run, libpqEnv, sleep } from './cluster';
import type { ProxyHandle } from './proxy';
import { KernelPath } from '../../src/kernel/kernel-path';

export const ADMIN = { user: 'kadmin', password: 'kadmin-pw' };
export const FAILURES_FILE = '/tmp/pgsplice-kernel-failures.md';

// The modes every kernel-*.test.ts runs in: the same assertions on results in both,
// counter assertions only for 'on'. PGSPLICE_KERNEL_TEST_MODES narrows it for debugging.
export const KERNEL_TEST_MODES: string[] = (process.env.PGSPLICE_KERNEL_TEST_MODES ?? 'off,on')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);

// proxyConfig plus the admin console user (not a PostgreSQL role: the proxy authenticates it).
export async function kernelConfig(c: Cluster, bypass: string, overrides: Record<string, unknown> = {}): Promise<Record<string, any>> {
  const base = await proxyConfig(c, { bypass, admin_users: [ADMIN.user] });
  const users = { ...(base.users as object), [ADMIN.user]: { password: ADMIN.password }, ...((overrides.users as object) ?? {}) };
  return { ...base, ...overrides, users, admin_users: [ADMIN.user] };
}

export type Row = Record<string, string>;

// psql against the admin console (as ADMIN unless told); rows as objects keyed by column name.
export async function adminRows(proxy: ProxyHandle, sql: string, timeoutMs = 20000, who: { user: string; password: string } = ADMIN): Promise<Row[]> {
  const r = await run('psql', ['-X', '-q', '-A', '-F', '|', '-P', 'footer=off', '-v', 'ON_ERROR_STOP=1', '-c', sql], {
    env: libpqEnv(proxy, 'pgsplice', who.user, who.password),
    timeoutMs,
  });
  if (r.code !== 0) throw new Error(`psql ${sql} failed (${r.code}): ${r.stderr.trim()}`);
  const lines = r.stdout.split('\n').filter((l) => l !== '');
  if (lines.length === 0) return [];
  const cols = lines[0].split('|');
  return lines.slice(1).map((l) => {
    const cells = l.split('|');
    return Object.fromEntries(cols.map((col, i) => [col, cells[i] ?? '']));
  });
}

// SHOW BYPASS as key -> value.
export async function showBypass(proxy: ProxyHandle): Promise<Record<string, string>> {
  return Object.fromEntries((await adminRows(proxy, 'SHOW BYPASS')).map((r) => [r.key, r.value]));
}

// Parses "stats: a=1 b=2 reason=\"x y\"" into a record (numbers stay strings).
export function parseStatsLine(line: string): Record<string, string> {
  const out: Record<string, string> = {};
  const body = line.slice(line.indexOf('stats:') + 6);
  const re = /([A-Za-z_][\w]*)=("(?:[^"\\]|\\.)*"|\S*)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(body))) out[m[1]] = m[2].startsWith('"') ? JSON.parse(m[2]) : m[2];
  return out;
}

// The counters line (clients, pools, user_xacts, then SHOW BYPASS's keys) from the admin
// console's SHOW SUMMARY, as a record.
export async function statsLine(proxy: ProxyHandle, timeoutMs = 20000): Promise<Record<string, string>> {
  const rows = await adminRows(proxy, 'SHOW SUMMARY', timeoutMs);
  if (rows.length !== 1) throw new Error(`SHOW SUMMARY: expected one row, got ${JSON.stringify(rows)}`);
  return parseStatsLine(rows[0].summary);
}

export const num = (s: string | undefined): number => (s === undefined || s === '' ? NaN : Number(s));

// Resident set size of a process in kB (/proc/<pid>/status VmRSS).
export function rssKb(pid: number): number {
  const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(s);
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

// CPU time (user + system) a process has used, in ms: what a request cost it, whatever
// else the machine was doing meanwhile (wall time on a loaded machine says little).
export function cpuMs(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields from the 3rd (state) on
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // utime, stime in USER_HZ (100)
}

// Memory charged to TCP sockets machine-wide (/proc/net/sockstat "TCP: ... mem N", pages)
// in kB; the kernel path's redirected-but-unsent bytes show here, not in the proxy's RSS.
export function tcpMemKb(): number {
  const s = fs.readFileSync('/proc/net/sockstat', 'utf8');
  const m = /^TCP:.*\bmem (\d+)/m.exec(s);
  return m ? (Number(m[1]) * 4096) / 1024 : NaN;
}

// /proc/meminfo field in kB (MemAvailable, Slab, ...).
export function meminfoKb(field: string): number {
  const s = fs.readFileSync('/proc/meminfo', 'utf8');
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(s);
  return m ? Number(m[1]) : NaN;
}

// pgbench's summary counts.
export function pgbenchCounts(out: string): { processed: number; failed: number } {
  const p = /number of transactions actually processed: (\d+)/.exec(out);
  const f = /number of failed transactions: (\d+)/.exec(out);
  return { processed: p ? Number(p[1]) : -1, failed: f ? Number(f[1]) : 0 };
}

// One line per failure the proxy is to blame for, for the lead:
// "- <test>: <observation> | log: <excerpt>". The test still fails.
export function recordFailure(test: string, observation: string, logExcerpt = ''): void {
  const flat = (s: string) => s.replace(/\s+/g, ' ').trim();
  const line = `- ${new Date().toISOString()} ${flat(test)}: ${flat(observation)}${logExcerpt ? ` | log: ${flat(logExcerpt).slice(-600)}` : ''}\n`;
  try {
    fs.appendFileSync(FAILURES_FILE, line);
  } catch {
    /* the report is best effort */
  }
}

// The log lines worth quoting: warnings, errors, kernel events, the last stats line.
export function logExcerpt(proxy: ProxyHandle, max = 600): string {
  const lines = proxy.logs().split('\n').filter((l) => /warn|error|fatal|kernel|fallback|inflight|lost|stats:/i.test(l));
  const st = proxy.exited();
  const last = proxy.logs().trim().split('\n').slice(-1)[0] ?? '';
  return (st ? `PROXY EXITED ${JSON.stringify(st)}, last line: ${last.slice(0, 200)} // ` : '') + lines.slice(-6).join(' / ').slice(-max);
}

// Waits until the admin console says every server of the app pool is idle (user space or kernel)
// and none is active, nothing waits. Returns the last SHOW POOLS row.
export async function poolsQuiet(proxy: ProxyHandle, db = 'app', timeoutMs = 15000): Promise<Row> {
  const deadline = Date.now() + timeoutMs;
  let last: Row = {};
  for (;;) {
    const rows = await adminRows(proxy, 'SHOW POOLS');
    last = rows.find((r) => r.database === db) ?? {};
    if (num(last.sv_active) === 0 && num(last.cl_waiting) === 0 && num(last.cl_active) >= 0) return last;
    if (Date.now() > deadline) return last;
    await sleep(200);
  }
}

// A deterministic PRNG (mulberry32) so a failing random split can be replayed from its seed.
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

// Proves every server of a pool is free and usable: poolSize clients each hold a server for
// holdMs at the same time; with no leaked binding they get poolSize distinct backends and
// finish together. Returns the distinct backend pids seen and the time it took.
export async function probePool(ep: { host: string; port: number }, poolSize: number, holdMs = 500, timeoutMs = 15000): Promise<{ pids: number; ms: number; errors: string[] }> {
  const { Client } = await import('pg');
  const start = Date.now();
  const errors: string[] = [];
  const one = async (): Promise<number | null> => {
    const cl = new Client({ host: ep.host, port: ep.port, user: 'app', password: 'app-pw', database: 'app', connectionTimeoutMillis: timeoutMs, query_timeout: timeoutMs });
    cl.on('error', () => undefined);
    try {
      await cl.connect();
      const r = await cl.query(`SELECT pg_backend_pid() AS pid, pg_sleep(${holdMs / 1000})`);
      return Number(r.rows[0].pid);
    } catch (e) {
      errors.push((e as Error).message);
      return null;
    } finally {
      await cl.end().catch(() => undefined);
    }
  };
  const pids = await Promise.all(Array.from({ length: poolSize }, one));
  return { pids: new Set(pids.filter((p) => p !== null)).size, ms: Date.now() - start, errors };
}

// One ss snapshot of the sockets between a client, the proxy (proxyPort) and PostgreSQL
// (pgPort): pgAcked = bytes PostgreSQL's sockets have had acked (handed to the proxy host's
// kernel); queued = bytes sitting in socket buffers on the way (the proxy's PostgreSQL-side
// receive queues, its client-side send queues, the clients' receive queues). What PostgreSQL
// sent, minus what the client read, minus queued, is held by the proxy itself: Node's
// buffers, or the kernel path's redirect queues.
export async function transitSnapshot(pgPort: number, proxyPort: number): Promise<{ pgAcked: number; queued: number }> {
  const r = await run('ss', ['-tinH', 'state', 'established'], { timeoutMs: 5000 });
  let pgAcked = 0;
  let queued = 0;
  const lines = r.stdout.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const m = /^(\d+)\s+(\d+)\s+\S+:(\d+)\s+\S+:(\d+)/.exec(lines[i]);
    if (!m) continue;
    const [recvQ, sendQ, lport, pport] = [Number(m[1]), Number(m[2]), Number(m[3]), Number(m[4])];
    const info = lines[i + 1] ?? '';
    if (lport === pgPort) pgAcked += Number(/bytes_acked:(\d+)/.exec(info)?.[1] ?? 0);
    else if (pport === pgPort) queued += recvQ;
    else if (lport === proxyPort) queued += sendQ;
    else if (pport === proxyPort) queued += recvQ;
  }
  return { pgAcked, queued };
}

// Opens the kernel path for a test file, or fails the file with the reason (needs root).
// frameTest: also load the tc framing wrapper (KernelPath.frameChunks).
export function openKernelPath(t: { fail(msg: string): unknown; teardown(fn: () => void): unknown }, opts: { frameTest?: boolean } = {}): KernelPath | null {
  try {
    const k = KernelPath.open(opts);
    t.teardown(() => k.close());
    return k;
  } catch (e) {
    t.fail(`KernelPath.open() failed: ${(e as Error).message}`);
    return null;
  }
}

/** A connected loopback pair for sockmap tests: [outer end, the end a proxy would own]. */
export async function socketPair(opts: { noDelay?: boolean } = {}): Promise<[net.Socket, net.Socket]> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((r) => srv.once('connection', r));
  const outer = net.connect(port, '127.0.0.1');
  await new Promise<void>((r) => outer.once('connect', () => r()));
  const inner = await accepted;
  srv.close();
  if (opts.noDelay) for (const s of [outer, inner]) s.setNoDelay(true);
  return [outer, inner];
}
/** The file descriptor under a socket (what the sockhash is given). */
export const fdOf = (s: net.Socket): number => (s as unknown as { _handle: { fd: number } })._handle.fd;

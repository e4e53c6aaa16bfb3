// The idle-connections run: open N clients through a proxy, each doing a real
// startup and SCRAM login (the `pg` package), keep them idle, and measure how long
// opening them took and how much the proxy's resident memory grew per client.
import { Client } from 'pg';
import { rssKiB } from './proc';

// The client side of a SCRAM login spends most of its time in PBKDF2 (4096 rounds).
// Every login here uses the same password, and the proxy's salt per user does not
// change, so cache the salted password like a long-lived client could: the run then
// measures the proxy's login path rather than this process's PBKDF2.
let scramCacheInstalled = false;
function installScramCache(): void {
  if (scramCacheInstalled) return;
  scramCacheInstalled = true;
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const utils = require('pg/lib/crypto/utils') as { deriveKey?: (p: string, salt: Uint8Array, it: number) => Promise<unknown> };
    const orig = utils.deriveKey;
    if (typeof orig !== 'function') return;
    const cache = new Map<string, Promise<unknown>>();
    utils.deriveKey = (p, salt, it) => {
      const key = `${p}\0${Buffer.from(salt).toString('base64')}\0${it}`;
      let v = cache.get(key);
      if (!v) {
        v = orig(p, salt, it);
        if (cache.size < 1000) cache.set(key, v);
      }
      return v;
    };
  } catch {
    /* another pg version: no cache, only slower */
  }
}

export interface IdleResult {
  clients_requested: number;
  clients_opened: number;
  open_seconds: number;
  opens_per_second: number;
  rss_before_kib: number | null;
  rss_after_kib: number | null;
  // Slope of a least-squares line through (clients open, proxy RSS) samples taken
  // while opening: robust against a garbage collection shrinking the RSS once.
  bytes_per_client: number | null;
  error: string | null;
}

export function slope(points: Array<[number, number]>): number | null {
  if (points.length < 3) return null;
  const n = points.length;
  const mx = points.reduce((s, p) => s + p[0], 0) / n;
  const my = points.reduce((s, p) => s + p[1], 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (const [x, y] of points) {
    sxy += (x - mx) * (y - my);
    sxx += (x - mx) ** 2;
  }
  return sxx === 0 ? null : sxy / sxx;
}

export async function idleRun(o: {
  host: string;
  port: number;
  user: string;
  password: string;
  db: string;
  clients: number;
  proxyPid: number | null;
  concurrency?: number;
  log?: (s: string) => void;
}): Promise<IdleResult> {
  installScramCache();
  const open: Client[] = [];
  const connectOne = async (): Promise<void> => {
    const c = new Client({ host: o.host, port: o.port, user: o.user, password: o.password, database: o.db, connectionTimeoutMillis: 30_000 });
    c.on('error', () => undefined); // an idle client dropped by the proxy must not crash the run
    await c.connect();
    open.push(c);
  };
  let error: string | null = null;
  try {
    // Warm up the proxy (first pool, allocator arenas, JIT) before the baseline.
    await connectOne();
    await open[0].query('SELECT 1');
    const warmN = Math.min(200, Math.ceil(o.clients / 10));
    for (let i = 0; i < warmN; i += 20) await Promise.all(Array.from({ length: Math.min(20, warmN - i) }, connectOne));
    await Promise.all(open.splice(1).map((c) => c.end().catch(() => undefined)));
  } catch (e) {
    return { clients_requested: o.clients, clients_opened: 0, open_seconds: 0, opens_per_second: 0, rss_before_kib: null, rss_after_kib: null, bytes_per_client: null, error: String((e as Error).message) };
  }
  const warm = open.length;
  await new Promise((r) => setTimeout(r, 300));
  const before = o.proxyPid ? rssKiB(o.proxyPid) : null;
  const t0 = process.hrtime.bigint();
  let next = 0;
  const samples: Array<[number, number]> = [];
  if (before !== null) samples.push([0, before * 1024]);
  const step = Math.max(1, Math.floor(o.clients / 20));
  let nextSample = step;
  const worker = async () => {
    while (next < o.clients && !error) {
      next++;
      try {
        await connectOne();
      } catch (e) {
        error = `after ${open.length - warm} clients: ${(e as Error).message}`;
      }
      if (o.proxyPid && open.length - warm >= nextSample) {
        nextSample += step;
        const r = rssKiB(o.proxyPid);
        if (r !== null) samples.push([open.length - warm, r * 1024]);
      }
    }
  };
  await Promise.all(Array.from({ length: o.concurrency ?? 64 }, worker));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  await new Promise((r) => setTimeout(r, 1000));
  const after = o.proxyPid ? rssKiB(o.proxyPid) : null;
  const opened = open.length - warm;
  if (after !== null) samples.push([opened, after * 1024]);
  const perClient = slope(samples);
  // Prove the clients are alive: one round trip on a few of them.
  try {
    await Promise.all(open.slice(-5).map((c) => c.query('SELECT 1')));
  } catch (e) {
    error ??= `idle clients not usable: ${(e as Error).message}`;
  }
  o.log?.(`idle: ${opened} clients in ${seconds.toFixed(1)} s`);
  await Promise.all(open.map((c) => c.end().catch(() => undefined)));
  return {
    clients_requested: o.clients,
    clients_opened: opened,
    open_seconds: round(seconds, 3),
    opens_per_second: round(opened / seconds, 1),
    rss_before_kib: before,
    rss_after_kib: after,
    bytes_per_client: perClient === null ? null : round(perClient, 0),
    error,
  };
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

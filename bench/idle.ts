// The idle-connections run: open N clients through a proxy, each doing a real
// startup and SCRAM login (the `pg` package), keep them idle, and measure how long
// opening them took and how much the proxy's resident memory grew per client.
import { Client } from 'pg';
import { rssKiB } from './proc';
import type { ProxyMemory } from './inspector';

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
  // With a probe (the proxy's memory read after a full collection in it, before the
  // clients and after): what the idle clients keep alive, apart from the garbage and the
  // young generation V8 grew during the logins and keeps (its size is no per-client cost).
  after_gc?: {
    rss_bytes_per_client: number;
    heap_used_bytes_per_client: number;
    // RSS growth less the young generation's growth: what the clients themselves hold.
    rss_less_young_gen_bytes_per_client: number;
    young_gen_growth_bytes: number;
    external_bytes_per_client: number;
    // RSS growth outside V8's heap pages: native socket state (libuv handle, Node's TCP
    // wrap), the kernel-path addon, malloc's overhead and fragmentation.
    outside_v8_heap_bytes_per_client: number;
  } | null;
  // With a snapshot hook: the heap objects the clients added, per constructor, per client.
  heap_growth?: Array<{ what: string; count_per_client: number; bytes_per_client: number }>;
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
  probe?: () => Promise<ProxyMemory>;
  settleSeconds?: number;
  snapshot?: (label: string) => Promise<Array<{ what: string; count: number; bytes: number }>>;
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
  const mem0 = o.probe ? await o.probe().catch(() => null) : null;
  const snap0 = o.snapshot ? await o.snapshot('before') : null;
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
  if (o.settleSeconds && o.proxyPid) {
    const series: number[] = [];
    for (let i = 0; i < o.settleSeconds; i++) {
      series.push(rssKiB(o.proxyPid) ?? 0);
      await new Promise((r) => setTimeout(r, 1000));
    }
    o.log?.(`settle RSS KiB: ${series.join(' ')}`);
  }
  const after = o.proxyPid ? rssKiB(o.proxyPid) : null;
  const opened = open.length - warm;
  if (after !== null) samples.push([opened, after * 1024]);
  const perClient = slope(samples);
  const mem1 = mem0 && o.probe ? await o.probe().catch(() => null) : null;
  let afterGc: IdleResult['after_gc'] = null;
  if (mem0 && mem1 && opened > 0) {
    const young = (mem1.spaces.new_space ?? 0) - (mem0.spaces.new_space ?? 0);
    afterGc = {
      rss_bytes_per_client: round((mem1.rss - mem0.rss) / opened, 0),
      heap_used_bytes_per_client: round((mem1.heap_used - mem0.heap_used) / opened, 0),
      rss_less_young_gen_bytes_per_client: round((mem1.rss - mem0.rss - young) / opened, 0),
      young_gen_growth_bytes: young,
      external_bytes_per_client: round((mem1.external - mem0.external) / opened, 0),
      outside_v8_heap_bytes_per_client: round((mem1.rss - mem0.rss - (sum(mem1.spaces) - sum(mem0.spaces))) / opened, 0),
    };
  }
  let heapGrowth: IdleResult['heap_growth'];
  if (snap0 && o.snapshot && opened > 0) {
    const snap1 = await o.snapshot('after');
    const was = new Map(snap0.map((e) => [e.what, e]));
    heapGrowth = snap1
      .map((e) => ({ what: e.what, count_per_client: round((e.count - (was.get(e.what)?.count ?? 0)) / opened, 2), bytes_per_client: round((e.bytes - (was.get(e.what)?.bytes ?? 0)) / opened, 1) }))
      .filter((e) => Math.abs(e.bytes_per_client) >= 8)
      .sort((a, b) => b.bytes_per_client - a.bytes_per_client);
  }
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
    after_gc: afterGc,
    ...(heapGrowth ? { heap_growth: heapGrowth } : {}),
    error,
  };
}

function sum(spaces: Record<string, number>): number {
  return Object.values(spaces).reduce((a, b) => a + b, 0);
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

// What an idle client costs the proxy: 1,000 clients log in (SCRAM, through pg) and stay
// idle; the proxy's RSS growth and JS heap growth (nodejs_heap_size_used_bytes from its
// own metrics endpoint) divided by the number of clients stay under generous bounds, about
// twice what was measured. Both include the logins' garbage not yet collected (nothing
// forces a collection in the proxy), so they catch a regression of kind (a buffer or a
// timer per client), not of a few hundred bytes. Bytes per client, not time: a loaded
// machine changes neither much.
import t from 'tap';
import * as fs from 'node:fs';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import { startCluster, proxyConfig, freePort, pgClient, PgTestClient } from './helpers/cluster';

const CLIENTS = 1000;
// Measured on a loaded 2-core machine: RSS 15-18 KB and heap used 7-10 KB per client
// (off/on), of which ~3.9 KB is live (a heap snapshot after collection).
const MAX_RSS_PER_CLIENT = 32 * 1024;
const MAX_HEAP_PER_CLIENT = 20 * 1024;

const rssBytes = (pid: number): number => Number(/^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024;

async function heapUsed(url: string): Promise<number> {
  const text = await (await fetch(url)).text();
  const m = /^nodejs_heap_size_used_bytes (\d+(?:\.\d+)?(?:e\+\d+)?)$/m.exec(text);
  if (!m) throw new Error('nodejs_heap_size_used_bytes not in the metrics');
  return Number(m[1]);
}

t.test('idle clients: memory per client', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;
    t.test(`${CLIENTS} idle clients ${B}`, async (t) => {
      const mport = await freePort();
      const proxy = await startProxy(t, await proxyConfig(c, {
        bypass, max_client_conn: CLIENTS + 100, default_pool_size: 4, metrics: { host: '127.0.0.1', port: mport },
      }));
      const url = `http://127.0.0.1:${mport}/metrics`;
      const pid = proxy.proc.pid!;
      // Warm-up: the login path's code and the pool's servers exist before the baseline.
      const warm: PgTestClient[] = [];
      for (let i = 0; i < 5; i++) warm.push(await pgClient(t, proxy));
      for (const w of warm) await w.query('SELECT 1');
      await Promise.all(warm.slice(1).map((w) => w.end()));
      await new Promise((r) => setTimeout(r, 500));
      const rss0 = rssBytes(pid);
      const heap0 = await heapUsed(url);

      const open: PgTestClient[] = [];
      for (let i = 0; i < CLIENTS; i += 50) {
        open.push(...(await Promise.all(Array.from({ length: Math.min(50, CLIENTS - i) }, () => pgClient(t, proxy)))));
      }
      await new Promise((r) => setTimeout(r, 1000));
      const rss1 = rssBytes(pid);
      const heap1 = await heapUsed(url);
      const rssPer = (rss1 - rss0) / CLIENTS;
      const heapPer = (heap1 - heap0) / CLIENTS;
      t.comment(`${B} per idle client: RSS ${Math.round(rssPer)} B, JS heap ${Math.round(heapPer)} B`);
      t.equal(open.length, CLIENTS, `${CLIENTS} clients logged in`);
      t.ok(rssPer < MAX_RSS_PER_CLIENT, `RSS growth per idle client ${Math.round(rssPer)} B < ${MAX_RSS_PER_CLIENT} B`);
      t.ok(heapPer < MAX_HEAP_PER_CLIENT, `JS heap growth per idle client ${Math.round(heapPer)} B < ${MAX_HEAP_PER_CLIENT} B`);
      // Idle is not dead: the first and the last client still get answers.
      t.same((await open[0].query('SELECT 1 AS x')).rows, [{ x: 1 }], 'the first idle client is served');
      t.same((await open[CLIENTS - 1].query('SELECT 2 AS x')).rows, [{ x: 2 }], 'the last idle client is served');
      await Promise.all([...open, warm[0]].map((o) => o.end().catch(() => undefined)));
    });
  }
});

// What an idle client costs the proxy: 1,000 clients log in (SCRAM, through pg) and stay
// idle; the proxy's RSS growth and JS heap growth divided by the number of clients stay
// under bounds. Both readings (before the clients, after) follow a full garbage collection
// in the proxy, asked for through its inspector (NODE_OPTIONS=--inspect on a loopback
// port), so they count what the clients keep alive: not the logins' garbage, not the young
// generation V8 grew during them. Bytes per client, not time: a loaded machine changes
// neither much.
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, PgTestClient } from './helpers/cluster';
import { Inspector } from '../bench/inspector';

const CLIENTS = 1000;
// Measured after a collection, 1,000 clients: JS heap 2.8 KB (off) and 3.1 KB (on) per
// client, RSS 5.6 and 10.7 KB (at 10,000 clients: heap 2.4 KB, RSS 3.2 / 3.8 KB; with
// 1,000 the hash tables' doublings and the allocator's arenas weigh more). The heap bound
// catches an object or a closure per client coming back; RSS, of which 1,000 clients are
// a few MB, moves with the allocator: its bound catches a buffer per client.
const MAX_RSS_PER_CLIENT = 16 * 1024;
const MAX_HEAP_PER_CLIENT = 3.5 * 1024;

t.test('idle clients: memory per client', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;
    t.test(`${CLIENTS} idle clients ${B}`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, {
        bypass, max_client_conn: CLIENTS + 100, default_pool_size: 4,
      }), { env: { NODE_OPTIONS: '--inspect=127.0.0.1:0' } });
      const listening = await proxy.waitForLog(/Debugger listening on ws:\/\/127\.0\.0\.1:(\d+)\//, 10_000);
      const insp = await Inspector.connect(Number(/127\.0\.0\.1:(\d+)\//.exec(listening)![1]));
      t.teardown(() => insp.close());
      // Warm-up: the login path's code and the pool's servers exist before the baseline.
      const warm: PgTestClient[] = [];
      for (let i = 0; i < 5; i++) warm.push(await pgClient(t, proxy));
      for (const w of warm) await w.query('SELECT 1');
      await Promise.all(warm.slice(1).map((w) => w.end()));
      await new Promise((r) => setTimeout(r, 500));
      const m0 = await insp.memory();

      const open: PgTestClient[] = [];
      for (let i = 0; i < CLIENTS; i += 50) {
        open.push(...(await Promise.all(Array.from({ length: Math.min(50, CLIENTS - i) }, () => pgClient(t, proxy)))));
      }
      await new Promise((r) => setTimeout(r, 1000));
      const m1 = await insp.memory();
      const rssPer = (m1.rss - m0.rss) / CLIENTS;
      const heapPer = (m1.heap_used - m0.heap_used) / CLIENTS;
      t.comment(`${B} per idle client: RSS ${Math.round(rssPer)} B, JS heap ${Math.round(heapPer)} B`);
      t.equal(open.length, CLIENTS, `${CLIENTS} clients logged in`);
      t.ok(rssPer < MAX_RSS_PER_CLIENT, `RSS growth per idle client ${Math.round(rssPer)} B < ${MAX_RSS_PER_CLIENT} B`);
      t.ok(heapPer < MAX_HEAP_PER_CLIENT, `JS heap growth per idle client ${Math.round(heapPer)} B < ${MAX_HEAP_PER_CLIENT} B`);
      t.ok(heapPer > 0, 'the clients are in the heap (the reading is real)');
      // Idle is not dead: the first and the last client still get answers.
      t.same((await open[0].query('SELECT 1 AS x')).rows, [{ x: 1 }], 'the first idle client is served');
      t.same((await open[CLIENTS - 1].query('SELECT 2 AS x')).rows, [{ x: 2 }], 'the last idle client is served');
      await Promise.all([...open, warm[0]].map((o) => o.end().catch(() => undefined)));
    });
  }
});

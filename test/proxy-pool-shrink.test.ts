// Lowering default_pool_size by reload closes the extra servers promptly: idle ones at
// once, busy ones as their transactions end, not at server_idle_timeout (10 min here).
// Counted in SHOW SERVERS and in pg_stat_activity, both data paths.
import t from 'tap';
import { Client } from 'pg';
import { startProxy } from './helpers/proxy';
import { startCluster, waitUntil, backendCount, withTimeout } from './helpers/cluster';
import { BYPASS_MODES } from './helpers/modes';
import { kernelConfig, adminRows } from './helpers/kernel';

const BIG = 12;
const SMALL = 2;

// n clients each hold a server for holdMs at the same time; resolves when all are done.
async function busy(port: number, n: number, holdMs: number): Promise<string[]> {
  const errors: string[] = [];
  await Promise.all(Array.from({ length: n }, async () => {
    const cl = new Client({ host: '127.0.0.1', port, user: 'app', password: 'app-pw', database: 'app' });
    cl.on('error', () => undefined);
    try {
      await cl.connect();
      await cl.query(`SELECT pg_sleep(${holdMs / 1000})`);
    } catch (e) {
      errors.push((e as Error).message);
    } finally {
      await cl.end().catch(() => undefined);
    }
  }));
  return errors;
}

t.test('reload that shrinks the pool', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    t.test(`${BIG} -> ${SMALL} servers [bypass=${bypass}]`, async (t) => {
      const cfg = await kernelConfig(c, bypass, { default_pool_size: BIG, server_idle_timeout: 600 });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const servers = async () => (await adminRows(proxy, 'SHOW SERVERS')).filter((r) => r.database === 'app').length;

      // Idle servers: closed at once.
      // Each holds its server until all are seen at once: the pool then has BIG servers.
      const first = busy(proxy.port, BIG, 3000);
      await waitUntil(() => backendCount(c, 'app', `query LIKE '%pg_sleep(3)%' AND state = 'active'`) === BIG, 20000, `${BIG} busy servers`);
      t.same(await withTimeout(first, 20000, 'first load'), [], `${BIG} clients at once`);
      t.equal(backendCount(c, 'app'), BIG, `${BIG} backends`);
      t.equal(await servers(), BIG, `SHOW SERVERS: ${BIG}`);
      let started = Date.now();
      await proxy.reload({ ...cfg, default_pool_size: SMALL });
      await waitUntil(async () => backendCount(c, 'app') <= SMALL && (await servers()) <= SMALL, 20000, `${SMALL} servers after the reload`, 250);
      t.pass(`idle servers: ${SMALL} left ${Date.now() - started} ms after the reload (pg_stat_activity ${backendCount(c, 'app')}, SHOW SERVERS ${await servers()})`);

      // Busy servers: closed as their transactions end.
      await proxy.reload({ ...cfg, default_pool_size: BIG });
      const load = busy(proxy.port, BIG, 3000);
      await waitUntil(() => backendCount(c, 'app', `query LIKE '%pg_sleep(3)%' AND state = 'active'`) === BIG, 20000, `${BIG} busy servers`);
      started = Date.now();
      await proxy.reload({ ...cfg, default_pool_size: SMALL });
      t.same(await withTimeout(load, 20000, 'the busy clients'), [], 'the busy clients finish their queries');
      await waitUntil(async () => backendCount(c, 'app') <= SMALL && (await servers()) <= SMALL, 20000, `${SMALL} servers after the busy ones ended`, 250);
      t.pass(`busy servers: ${SMALL} left ${Date.now() - started} ms after the reload (their queries ran 3 s)`);
      t.same(await busy(proxy.port, SMALL, 100), [], 'the pool serves clients afterwards');
      t.notOk(proxy.exited(), 'the proxy is still running');
    });
  }
});

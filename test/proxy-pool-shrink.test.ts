// Lowering default_pool_size by reload closes the extra servers promptly: idle ones at
// once, busy ones as their transactions end, not at server_idle_timeout (10 min here).
// Counted in SHOW SERVERS and in pg_stat_activity, both data paths.
import t from 'tap';
import { Client } from 'pg';
import { startProxy } from './helpers/proxy';
import { startCluster, waitUntil, backendCount, withTimeout, pgClient, sleep } from './helpers/cluster';
import { BYPASS_MODES } from './helpers/modes';
import { kernelConfig, adminRows } from './helpers/kernel';

const BIG = 12;
const SMALL = 2;

// n clients each hold a server until the gate opens: their query waits for a shared
// advisory lock that the test holds exclusively on a direct connection (a transaction-level
// lock, so nothing stays on the pooled servers). Resolves when all are done.
const GATE = 4242;
async function busy(port: number, n: number): Promise<string[]> {
  const errors: string[] = [];
  await Promise.all(Array.from({ length: n }, async () => {
    const cl = new Client({ host: '127.0.0.1', port, user: 'app', password: 'app-pw', database: 'app', connectionTimeoutMillis: 30000 });
    cl.on('error', () => undefined);
    try {
      await cl.connect();
      await cl.query(`SELECT pg_advisory_xact_lock_shared(${GATE})`);
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
  c.sql(`CREATE ROLE gate LOGIN PASSWORD 'gate-pw'`); // a user of its own: not counted as app's
  const gate = await pgClient(t, { host: '127.0.0.1', port: c.pg.port }, { user: 'gate', password: 'gate-pw' });
  const waiting = () => backendCount(c, 'app', `query LIKE '%pg_advisory_xact_lock_shared%' AND state = 'active'`);
  for (const bypass of BYPASS_MODES) {
    t.test(`${BIG} -> ${SMALL} servers [bypass=${bypass}]`, async (t) => {
      const cfg = await kernelConfig(c, bypass, { default_pool_size: BIG, server_idle_timeout: 600 });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const servers = async () => (await adminRows(proxy, 'SHOW SERVERS')).filter((r) => r.database === 'app').length;

      // Idle servers: closed at once.
      // Each holds its server until all are seen at once: the pool then has BIG servers.
      await gate.query('SELECT pg_advisory_lock($1)', [GATE]);
      const first = busy(proxy.port, BIG);
      await waitUntil(() => waiting() === BIG, 45000, `${BIG} busy servers`);
      await gate.query('SELECT pg_advisory_unlock($1)', [GATE]);
      t.same(await withTimeout(first, 20000, 'first load'), [], `${BIG} clients at once`);
      t.equal(backendCount(c, 'app'), BIG, `${BIG} backends`);
      t.equal(await servers(), BIG, `SHOW SERVERS: ${BIG}`);
      let started = Date.now();
      await proxy.reload({ ...cfg, default_pool_size: SMALL });
      await waitUntil(async () => backendCount(c, 'app') <= SMALL && (await servers()) <= SMALL, 20000, `${SMALL} servers after the reload`, 250);
      t.pass(`idle servers: ${SMALL} left ${Date.now() - started} ms after the reload (pg_stat_activity ${backendCount(c, 'app')}, SHOW SERVERS ${await servers()})`);

      // Busy servers: closed as their transactions end.
      await proxy.reload({ ...cfg, default_pool_size: BIG });
      await gate.query('SELECT pg_advisory_lock($1)', [GATE]);
      const load = busy(proxy.port, BIG);
      await waitUntil(() => waiting() === BIG, 45000, `${BIG} busy servers`);
      started = Date.now();
      await proxy.reload({ ...cfg, default_pool_size: SMALL });
      await sleep(1000); // the reload applied while every server is busy
      await gate.query('SELECT pg_advisory_unlock($1)', [GATE]);
      t.same(await withTimeout(load, 20000, 'the busy clients'), [], 'the busy clients finish their queries');
      await waitUntil(async () => backendCount(c, 'app') <= SMALL && (await servers()) <= SMALL, 20000, `${SMALL} servers after the busy ones ended`, 250);
      t.pass(`busy servers: ${SMALL} left ${Date.now() - started} ms after the reload (their transactions were held 1 s past it)`);
      t.same(await busy(proxy.port, SMALL), [], 'the pool serves clients afterwards');
      t.notOk(proxy.exited(), 'the proxy is still running');
    });
  }
});

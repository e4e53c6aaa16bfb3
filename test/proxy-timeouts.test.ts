// client_idle_timeout, idle_transaction_timeout and query_timeout fire with their
// SQLSTATE on both data paths (in the kernel path the proxy sees no bytes of the
// transaction, so these are watched through the kernel's counters), and a client that
// keeps working is never hit. The server behind a timed-out transaction is left clean.
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, withTimeout, sleep, waitUntil, backendCount } from './helpers/cluster';

t.test('timeouts', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;

    t.test(`each timeout fires with its SQLSTATE; a busy client is untouched ${B}`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, {
        bypass, default_pool_size: 4, client_idle_timeout: 2, idle_transaction_timeout: 2, query_timeout: 2,
      }));
      const errorOf = (client: { errors: Error[] }) => client.errors[0] as (Error & { code?: string }) | undefined;

      const idle = await pgClient(t, proxy);
      await idle.query('SELECT 1');
      const inTx = await pgClient(t, proxy);
      await inTx.query('BEGIN');
      await inTx.query('CREATE TEMP TABLE IF NOT EXISTS timeout_probe (x int)');
      await inTx.query('INSERT INTO timeout_probe VALUES (1)');
      const slow = await pgClient(t, proxy);
      const slowQuery = slow.query('SELECT pg_sleep(20)').then(() => undefined, (e) => e);
      const busy = await pgClient(t, proxy);
      let busyErrors = 0;
      const keepBusy = setInterval(() => busy.query('SELECT 1').catch(() => busyErrors++), 300);

      const e = await withTimeout(slowQuery, 15000, 'query_timeout');
      t.equal(e?.code, '57014', `query_timeout: 57014 (${e?.message})`);
      await waitUntil(() => errorOf(idle) && errorOf(inTx), 10000, 'idle clients closed');
      t.equal(errorOf(idle)?.code, '57P05', `client_idle_timeout: 57P05 (${errorOf(idle)?.message})`);
      t.equal(errorOf(inTx)?.code, '25P03', `idle_transaction_timeout: 25P03 (${errorOf(inTx)?.message})`);
      clearInterval(keepBusy);
      t.equal(busyErrors, 0, 'a client that keeps sending queries is not timed out');
      t.same((await busy.query('SELECT 2 AS x')).rows, [{ x: 2 }], 'and still works');

      // Nothing of the timed-out transaction or query is left running on the servers.
      await waitUntil(() => backendCount(c, 'app', `state IN ('idle in transaction', 'idle in transaction (aborted)')`) === 0, 10000, 'no idle-in-transaction server');
      await waitUntil(() => backendCount(c, 'app', `query LIKE 'SELECT pg_sleep(20)%' AND state = 'active'`) === 0, 10000, 'no sleep left running');
      t.pass('servers left clean');
      await sleep(100);
    });
  }
});

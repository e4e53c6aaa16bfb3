// workers: 2 on one port (SO_REUSEPORT), in both data paths: pgbench through them with no
// failed transaction; both workers serve clients (the per-worker SHOW CLIENTS); the server
// connections stay within default_pool_size in total (each worker has its share); a
// CancelRequest cancels the query whichever worker it lands on (the owner's or the other,
// which forwards it to the owner), tried until both routings happened.
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, run, libpqEnv, withTimeout, waitUntil, backendCount, type PgTestClient } from './helpers/cluster';
import { sendCancel } from './helpers/pgwire';
import { pgbenchCounts, showOnce } from './helpers/workers';

t.test('workers', async (t) => {
  const c = await startCluster(t);
  const init = await run('pgbench', ['-i', '-q', '-s', '1', '-h', c.pg.socketDir, '-p', String(c.pg.port), '-U', 'app', 'app'], { timeoutMs: 60000 });
  t.equal(init.code, 0, `pgbench -i (${init.stderr.slice(-300)})`);

  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;

    t.test(`two workers share the port, the pool size and the cancel keys ${B}`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, {
        bypass, workers: 2, default_pool_size: 4, admin_users: ['app'], server_idle_timeout: 600,
      }), { logLevel: 'info', startTimeoutMs: 90000 });
      await proxy.waitForLog(/2 workers listening/, 90000);

      // pgbench: every transaction succeeds; 16 connections land on both workers.
      const r = await run('pgbench', ['-n', '-M', 'extended', '-c', '16', '-j', '2', '-T', '5', 'app'], { env: libpqEnv(proxy), timeoutMs: 60000 });
      const counts = pgbenchCounts(r.stdout);
      t.equal(r.code, 0, `pgbench exits 0 (${r.stderr.slice(-800)})`);
      t.equal(counts.failed, 0, 'no failed transaction');
      t.ok(counts.processed > 0, `${counts.processed} transactions`);
      const servers = backendCount(c);
      t.ok(servers <= 4, `server connections of both workers together: ${servers} <= default_pool_size 4`);

      // 16 idle clients, then admin connections until both workers have answered SHOW CLIENTS.
      const clients: PgTestClient[] = [];
      for (let i = 0; i < 16; i++) clients.push(await pgClient(t, proxy));
      const seen = new Map<number, number>(); // peer id -> its app clients
      for (let i = 0; i < 60 && seen.size < 2; i++) {
        const a = await showOnce(proxy, 'CLIENTS');
        seen.set(a.peer, a.rows.filter((row) => row.database === 'app').length);
      }
      t.equal(seen.size, 2, `both workers answered the admin console (${JSON.stringify([...seen])})`);
      const total = [...seen.values()].reduce((a, b) => a + b, 0);
      t.equal(total, 16, `the workers' SHOW CLIENTS add up to the 16 clients (${JSON.stringify([...seen])})`);
      t.ok([...seen.values()].every((n) => n > 0), 'each worker serves some of them');
      for (const pg of clients) await pg.end();

      // Cancels: the request lands on either worker; tried until both routings happened.
      const forwarded = () => (proxy.logs().match(/cancel request forwarded to peer/g) ?? []).length;
      let local = 0;
      let remote = 0;
      for (let i = 0; i < 40 && (i < 6 || local === 0 || remote === 0); i++) {
        const pg = await pgClient(t, proxy);
        const q = pg.query('SELECT pg_sleep(30)').then(() => undefined, (e) => e);
        await waitUntil(() => backendCount(c, 'app', `query = 'SELECT pg_sleep(30)' AND state = 'active'`) === 1, 10000, 'sleep running');
        const before = forwarded();
        await sendCancel(proxy.port, pg.processID!, pg.secretKey!);
        const err = await withTimeout(q, 10000, `cancelled query (try ${i + 1})`);
        t.equal(err?.code, '57014', `try ${i + 1}: SQLSTATE 57014 (${err?.message})`);
        if (forwarded() > before) remote++;
        else local++;
        t.same((await pg.query('SELECT 1 AS ok')).rows, [{ ok: 1 }], 'the client goes on');
        await pg.end();
      }
      t.ok(local > 0, `cancels that reached the owning worker: ${local}`);
      t.ok(remote > 0, `cancels forwarded by the other worker: ${remote}`);
      t.notMatch(proxy.logs(), /died|uncaught/i, 'no worker died');
    });
  }
});

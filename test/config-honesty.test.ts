// Config keys do what PgBouncer's do, against a real PostgreSQL, in both data paths:
// max_user_connections (server connections per user over all pools), pool_mode: statement
// (server released after each statement, transaction blocks refused), server_check_query
// and server_check_delay (an idle server is checked before reuse, a failing one replaced),
// the "*" fallback database (one resolution rule), and a reload that needs a restart for
// some keys says so once.
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, withTimeout, sleep, waitUntil, backendCount, type PgTestClient } from './helpers/cluster';

t.test('config honesty', async (t) => {
  const c = await startCluster(t);
  const servers = () => backendCount(c, 'app');
  const clean = async () => {
    c.pg.psql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'`);
    await waitUntil(() => servers() === 0, 5000, 'no server of user app left');
  };
  const pid = async (pg: PgTestClient): Promise<number> => Number((await pg.query('SELECT pg_backend_pid() AS p')).rows[0].p);

  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;

    t.test(`max_user_connections caps a user's servers over all its pools ${B}`, async (t) => {
      await clean();
      const cfg = await proxyConfig(c, { bypass, default_pool_size: 4, max_user_connections: 3, query_wait_timeout: 30, server_idle_timeout: 600 });
      cfg.databases.app2 = { ...cfg.databases.app }; // a second pool of the same user
      const proxy = await startProxy(t, cfg);
      const clients = await Promise.all(['app', 'app', 'app2', 'app2'].map((database) => pgClient(t, proxy, { database })));
      for (const pg of clients.slice(0, 3)) {
        await pg.query('BEGIN');
        await pg.query('SELECT 1');
      }
      let done = false;
      const fourth = clients[3].query('SELECT 4 AS x').then((r) => { done = true; return r; });
      await sleep(1000);
      t.equal(servers(), 3, 'three servers for user app over two pools');
      t.notOk(done, 'the fourth client waits for a server');
      await clients[0].query('COMMIT');
      const r = await withTimeout(fourth, 10000, 'the waiting client');
      t.same(r.rows, [{ x: 4 }], 'it runs once a server of the user is free');
      t.ok(servers() <= 3, `still at most three servers (${servers()})`);
      for (const pg of clients.slice(1, 3)) await pg.query('COMMIT');
    });

    t.test(`pool_mode statement: servers go back after each statement, transaction blocks are refused ${B}`, async (t) => {
      await clean();
      const proxy = await startProxy(t, await proxyConfig(c, { bypass, pool_mode: 'statement', default_pool_size: 1, server_idle_timeout: 600 }));
      const a = await pgClient(t, proxy);
      const b = await pgClient(t, proxy);
      const pa = await pid(a);
      const pb = await pid(b);
      t.equal(pa, pb, 'two clients take turns on the one server');
      const multi = (await a.query('BEGIN; SELECT 7 AS x; COMMIT')) as unknown as Array<{ rows: unknown[] }>;
      t.same(multi[1].rows, [{ x: 7 }], 'a transaction inside one query string is fine');
      t.same((await a.query('SELECT 1 AS x')).rows, [{ x: 1 }], 'an error-free statement after it');

      const bad = await pgClient(t, proxy);
      const refused = await withTimeout(
        bad.query('BEGIN').then(
          async () => waitUntil(() => bad.errors[0], 5000, 'the error after BEGIN'),
          (e: Error) => e,
        ),
        8000,
        'BEGIN in statement mode',
      );
      t.match(refused.message, /transaction blocks not allowed in statement pooling mode/, `the client is told why (${refused.message})`);
      t.equal((refused as Error & { code?: string }).code ?? '08P01', '08P01', 'SQLSTATE 08P01');
      await t.rejects(bad.query('SELECT 1'), 'and disconnected');
      // the open block was rolled back: the server serves the others, outside a transaction
      t.same((await b.query("SELECT pg_catalog.current_setting('transaction_isolation') <> '' AS ok, now() = statement_timestamp() AS fresh")).rows,
        [{ ok: true, fresh: true }], 'the next statement runs in a transaction of its own');
      t.equal(await pid(b), pa, 'on the same server');
      t.equal(servers(), 1, 'still one server');
    });

    t.test(`the "*" fallback database keeps its fixed dbname ${B}`, async (t) => {
      const cfg = await proxyConfig(c, { bypass });
      cfg.databases = { '*': { host: '127.0.0.1', port: c.pg.port, dbname: c.db } };
      const proxy = await startProxy(t, cfg);
      const pg = await pgClient(t, proxy, { database: 'any_name' });
      t.same((await pg.query('SELECT current_database() AS d')).rows, [{ d: c.db }], 'a client of any_name reaches the fixed dbname');
    });

    t.test(`a reload reports the keys needing a restart once ${B}`, async (t) => {
      const cfg = await proxyConfig(c, { bypass });
      const proxy = await startProxy(t, cfg);
      const from = proxy.logs().length;
      await proxy.reload({ ...cfg, listen: { ...cfg.listen, port: cfg.listen.port + 1 }, default_pool_size: 2 });
      await sleep(300);
      const lines = proxy.logs().slice(from).split('\n').filter((l) => /need a restart/.test(l));
      t.equal(lines.length, 1, `one log line (${lines.join(' | ')})`);
      t.match(lines[0] ?? '', /listen\.port/, 'naming listen.port');
      const pg = await pgClient(t, proxy);
      t.same((await pg.query('SELECT 1 AS x')).rows, [{ x: 1 }], 'still serving on the old port');
    });
  }

  // server_check_query runs where user space hands a server to a client. With the kernel
  // path on, the verdict binds idle servers itself, unchecked (docs/kernel-path.md, Known
  // limits), so these run in user space only.
  t.test(`server_check_query: an idle server is checked, a failing one replaced [bypass=off]`, async (t) => {
    await clean();
    c.pg.psql('DROP SEQUENCE IF EXISTS check_seq; CREATE SEQUENCE check_seq; GRANT ALL ON SEQUENCE check_seq TO app', 'app');
    const lastValue = () => Number(c.pg.psql("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM check_seq", 'app'));
    // The first check divides by zero (fails), every later one succeeds.
    const proxy = await startProxy(t, await proxyConfig(c, {
      bypass: 'off', pool_mode: 'session', default_pool_size: 1, server_idle_timeout: 600,
      server_check_delay: 1, server_check_query: "select 1/(nextval('check_seq') - 1)::int",
    }));
    let pg = await pgClient(t, proxy);
    const p1 = await pid(pg);
    await pg.end();
    pg = await pgClient(t, proxy);
    t.equal(await pid(pg), p1, 'reused at once: no check');
    t.equal(lastValue(), 0, 'no check ran');
    await pg.end();

    await sleep(1500);
    pg = await pgClient(t, proxy);
    const p2 = await pid(pg);
    t.equal(lastValue(), 1, 'idle past server_check_delay: checked');
    t.not(p2, p1, 'the server failing its check was replaced');
    t.match(proxy.logs(), /server_check_query failed/, 'the proxy logged the failed check');
    await pg.end();

    await sleep(1500);
    pg = await pgClient(t, proxy);
    t.equal(await pid(pg), p2, 'a server passing its check is handed out');
    t.equal(lastValue(), 2, 'checked again after another idle second');
    await pg.end();
  });

  t.test(`server_check_query "" turns checks off [bypass=off]`, async (t) => {
    await clean();
    c.pg.psql('DROP SEQUENCE IF EXISTS check_seq; CREATE SEQUENCE check_seq; GRANT ALL ON SEQUENCE check_seq TO app', 'app');
    const proxy = await startProxy(t, await proxyConfig(c, { bypass: 'off', pool_mode: 'session', default_pool_size: 1, server_check_delay: 0, server_check_query: '' }));
    let pg = await pgClient(t, proxy);
    const p1 = await pid(pg);
    await pg.end();
    await sleep(300);
    pg = await pgClient(t, proxy);
    t.equal(await pid(pg), p1, 'same server, unchecked');
    t.notMatch(proxy.logs(), /server_check_query/, 'no check logged');
  });
});

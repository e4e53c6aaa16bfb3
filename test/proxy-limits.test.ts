// Limits and pool maintenance: max_client_conn (53300), query_wait_timeout, FIFO waiting,
// min_pool_size kept warm, server_idle_timeout and server_lifetime closing servers,
// max_db_connections and the pool size capping server connections.
import t from 'tap';
import * as net from 'node:net';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, pgConnectError, withTimeout, sleep, waitUntil, backendCount, freePort, maxBackendSampler } from './helpers/cluster';
import { RawConn, startupMessage, parseFields } from './helpers/pgwire';
import { kernelConfig, showBypass } from './helpers/kernel';

t.test('limits', async (t) => {
  const c = await startCluster(t);
  const servers = () => backendCount(c, 'app');

  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;

    t.test(`max_client_conn: the client beyond the limit gets 53300 ${B}`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, { bypass, max_client_conn: 3 }));
      const held = await Promise.all([0, 1, 2].map(() => pgClient(t, proxy)));
      const e = await pgConnectError(proxy);
      t.equal(e.code, '53300', `4th client: 53300 (${e.message})`);
      const raw = await RawConn.connect(proxy.port);
      raw.write(startupMessage({ user: 'app', database: 'app' }));
      const r = await raw.readAllUntilClose(5000);
      const err = r.msgs.find((m) => m.type === 'E');
      t.equal(err && parseFields(err.body).C, '53300', 'raw: ErrorResponse 53300');
      t.ok(r.closed, 'raw: then closed');
      raw.destroy();
      for (const h of held) t.same((await h.query('SELECT 1 AS x')).rows, [{ x: 1 }], 'the connected clients keep working');
      await held[0].end();
      const again = await waitUntil(async () => {
        try {
          return await pgClient(t, proxy);
        } catch {
          return undefined;
        }
      }, 5000, 'a free slot after one client left');
      t.same((await again!.query('SELECT 2 AS x')).rows, [{ x: 2 }], 'a new client gets the freed slot');
    });

    t.test(`query_wait_timeout: a waiting client gets an error, others unaffected ${B}`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, { bypass, default_pool_size: 1, query_wait_timeout: 1 }));
      const a = await pgClient(t, proxy);
      await a.query('BEGIN');
      await a.query('SELECT 1');
      const b = await pgClient(t, proxy);
      const started = Date.now();
      const err = await withTimeout(b.query('SELECT 2').then(() => undefined, (e) => e), 8000, 'waiting client');
      const waited = Date.now() - started;
      t.ok(err, 'the waiting query fails');
      t.match(err?.code ?? '', /^08/, `SQLSTATE class 08 (${err?.code})`);
      t.match(err?.message ?? '', /query_wait_timeout/, `message names query_wait_timeout (${err?.message})`);
      t.ok(waited >= 900 && waited < 5000, `after about 1 s (${waited} ms)`);
      t.same((await a.query('SELECT 3 AS x')).rows, [{ x: 3 }], 'the client holding the server is unaffected');
      await a.query('COMMIT');
      const d = await pgClient(t, proxy);
      t.same((await d.query('SELECT 4 AS x')).rows, [{ x: 4 }], 'a new client runs once the server is free');
      t.match(proxy.logs(), /query_wait_timeout/, 'the proxy logged it');
    });

    t.test(`waiting clients are served in FIFO order ${B}`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, { bypass, default_pool_size: 1, query_wait_timeout: 30 }));
      const holder = await pgClient(t, proxy);
      await holder.query('BEGIN');
      const waiters = await Promise.all([0, 1, 2, 3, 4].map(() => pgClient(t, proxy)));
      const order: number[] = [];
      const qs: Promise<unknown>[] = [];
      for (let i = 0; i < waiters.length; i++) {
        qs.push(waiters[i].query('SELECT pg_sleep(0.05)').then(() => order.push(i)));
        await sleep(150);
      }
      await holder.query('COMMIT');
      await withTimeout(Promise.all(qs), 10000, 'queued clients');
      t.same(order, [0, 1, 2, 3, 4], 'served in arrival order');
    });

    t.test(`min_pool_size keeps servers warm and refills them ${B}`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, { bypass, default_pool_size: 5, min_pool_size: 3, server_idle_timeout: 600 }));
      const pg = await pgClient(t, proxy);
      await pg.query('SELECT 1');
      await pg.end();
      await waitUntil(() => servers() >= 3, 10000, 'three warm servers');
      await sleep(1500);
      t.ok(servers() >= 3, `still at least 3 server connections after idling (${servers()})`);
      t.ok(servers() <= 5, 'and no more than the pool size');
      c.pg.psql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'`);
      await waitUntil(() => servers() >= 3, 15000, 'warm servers replaced after pg_terminate_backend');
      t.pass('the pool refilled to min_pool_size after its servers were terminated');
      const pg2 = await pgClient(t, proxy);
      t.same((await pg2.query('SELECT 5 AS x')).rows, [{ x: 5 }], 'clients still served');
    });

    t.test(`server_idle_timeout closes idle servers ${B}`, async (t) => {
      c.pg.psql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'`);
      await waitUntil(() => servers() === 0, 5000, 'no app servers left from earlier tests');
      const proxy = await startProxy(t, await proxyConfig(c, { bypass, default_pool_size: 4, min_pool_size: 0, server_idle_timeout: 1 }));
      const clients = await Promise.all([0, 1, 2, 3].map(() => pgClient(t, proxy)));
      await Promise.all(clients.map((cl) => cl.query('SELECT pg_sleep(0.3)')));
      t.ok(servers() >= 2, `several servers opened (${servers()})`);
      await waitUntil(() => servers() === 0, 8000, 'idle servers closed');
      t.pass('all idle servers closed after server_idle_timeout');
      t.same((await clients[0].query('SELECT 6 AS x')).rows, [{ x: 6 }], 'the clients stay connected and get a new server');
      t.same(clients[0].errors, [], 'no client error');
    });

    // A pool grows for its waiting clients in parallel: each request that finds no idle
    // server starts a login of its own, without waiting for another login to finish. Here
    // a gate in front of PostgreSQL holds every connection until four are pending at once;
    // logins opened one after another would never get four there (the gate then gives up
    // after 5 s, and the test fails instead of hanging).
    t.test(`a pool opens servers for its waiting clients concurrently ${B}`, async (t) => {
      const N = 4;
      const pending: Array<() => void> = [];
      let open = false;
      let maxPending = 0;
      let openedBy = '';
      const release = (why: string) => {
        if (open) return;
        open = true;
        openedBy = why;
        for (const go of pending.splice(0)) go();
      };
      const gate = net.createServer((sock) => {
        sock.pause();
        const go = () => {
          const up = net.connect(c.pg.port, '127.0.0.1');
          sock.pipe(up).pipe(sock);
          sock.resume();
          const done = () => { sock.destroy(); up.destroy(); };
          sock.on('error', done);
          up.on('error', done);
          sock.on('close', done);
          up.on('close', done);
        };
        if (open) return go();
        pending.push(go);
        maxPending = Math.max(maxPending, pending.length);
        if (pending.length >= N) release('four logins pending at once');
      });
      const gatePort = await freePort();
      await new Promise<void>((r) => gate.listen(gatePort, '127.0.0.1', () => r()));
      let timer: NodeJS.Timeout | undefined;
      t.teardown(() => {
        clearTimeout(timer);
        gate.close();
      });
      const cfg = await kernelConfig(c, bypass, { default_pool_size: N, min_pool_size: 0, databases: { app: { host: '127.0.0.1', port: gatePort, dbname: 'app' } } });
      const proxy = await startProxy(t, cfg);
      // The gate's fallback, so a proxy that opens servers one at a time fails instead of
      // hanging. Armed once the proxy is up: a start slower than 5 s on a busy machine
      // (loading the kernel path) opened the gate before any login, and the check failed.
      timer = setTimeout(() => release('timeout'), 5000);
      const clients = await Promise.all(Array.from({ length: N }, () => pgClient(t, proxy)));
      const rows = await withTimeout(Promise.all(clients.map((cl, i) => cl.query(`SELECT ${i} AS i, pg_sleep(0.2)`))), 20000, 'queries through the gate');
      t.same(rows.map((r) => r.rows[0].i), [0, 1, 2, 3], 'every client is answered');
      t.equal(openedBy, 'four logins pending at once', `the gate opened because ${N} server logins were under way together (most pending: ${maxPending})`);
    });

    // The sweep for server_idle_timeout and server_lifetime runs every few seconds; with no
    // server due it must leave the servers where they are: on the kernel path, taking them
    // out of the kernel's idle stack and putting them back sent every request arriving
    // meanwhile to wait in user space, a bump in the latency tail every 5 s.
    t.test(`servers not due for closing stay idle where they are across sweeps ${B}`, async (t) => {
      const proxy = await startProxy(t, await kernelConfig(c, bypass, { default_pool_size: 3, min_pool_size: 0, server_idle_timeout: 600 }));
      const clients = await Promise.all([0, 1, 2].map(() => pgClient(t, proxy)));
      const pids = (await Promise.all(clients.map((cl) => cl.query('SELECT pg_backend_pid() AS p, pg_sleep(0.3)')))).map((r) => r.rows[0].p).sort();
      const before = await showBypass(proxy);
      await sleep(6500); // more than one sweep period (5 s with these timeouts)
      const after = await showBypass(proxy);
      const now = c.pg.psql(`SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE usename = 'app' AND pid IN (${pids.join(',')})`);
      t.equal(now, [...pids].sort((a, b) => a - b).join(','), 'the same server connections are still open');
      if (bypass === 'on') {
        t.equal(after.user_serversToKernel, before.user_serversToKernel, `no server put back into the kernel (${before.user_serversToKernel} -> ${after.user_serversToKernel})`);
        t.equal(after.user_serversFromKernel, before.user_serversFromKernel, 'none taken out');
        t.equal(after.servers_in_kernel, '3', 'all three idle in the kernel');
      }
      t.same((await clients[0].query('SELECT 7 AS x')).rows, [{ x: 7 }], 'clients are served');
    });

    t.test(`server_lifetime replaces old servers, never mid-transaction ${B}`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, { bypass, default_pool_size: 1, server_lifetime: 1, server_idle_timeout: 600 }));
      const pg = await pgClient(t, proxy);
      const p1 = (await pg.query('SELECT pg_backend_pid() AS p')).rows[0].p;
      await pg.query('BEGIN');
      await pg.query('SELECT pg_sleep(1.5)');
      const pIn = (await pg.query('SELECT pg_backend_pid() AS p')).rows[0].p;
      t.equal(pIn, p1, 'same server for the whole transaction even past its lifetime');
      await pg.query('COMMIT');
      await sleep(1500);
      const p2 = (await pg.query('SELECT pg_backend_pid() AS p')).rows[0].p;
      t.not(p2, p1, `a new server after server_lifetime (${p1} -> ${p2})`);
      await waitUntil(() => c.pg.psql(`SELECT count(*) FROM pg_stat_activity WHERE pid = ${p1}`) === '0', 5000, 'old server gone');
      t.pass('the old server connection was closed');
    });

    t.test(`max_db_connections and pool size cap server connections ${B}`, async (t) => {
      c.pg.psql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'`);
      await waitUntil(() => servers() === 0, 5000, 'clean start');
      for (const [label, overrides, cap] of [
        ['max_db_connections: 2', { default_pool_size: 6, max_db_connections: 2 }, 2],
        ['default_pool_size: 3', { default_pool_size: 3 }, 3],
      ] as const) {
        const proxy = await startProxy(t, await proxyConfig(c, { bypass, query_wait_timeout: 30, server_idle_timeout: 600, ...overrides }));
        const sampler = await maxBackendSampler(t, c);
        let max = 0;
        try {
          const clients = await Promise.all(Array.from({ length: 8 }, () => pgClient(t, proxy)));
          const rs = await withTimeout(Promise.all(clients.map((cl, i) => cl.query('SELECT pg_sleep(0.4), $1::int AS i', [i]))), 20000, 'eight clients');
          t.same(rs.map((r) => r.rows[0].i), [0, 1, 2, 3, 4, 5, 6, 7], `${label}: all 8 clients served`);
        } finally {
          max = await sampler.stop();
        }
        t.ok(max >= 1 && max <= cap, `${label}: at most ${cap} server connections (saw ${max})`);
        await proxy.stop('SIGINT');
        await waitUntil(() => servers() === 0, 5000, 'servers closed with the proxy');
      }
    });
  }
});

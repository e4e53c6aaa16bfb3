// CancelRequest: the client's proxy-issued key cancels the query running on the server
// that serves it now (node-postgres key + raw CancelRequest, psql + SIGINT, a raw
// session's own BackendKeyData); a wrong key or another client's key cancels nothing.
import t from 'tap';
import { spawn } from 'node:child_process';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, libpqEnv, withTimeout, sleep, waitUntil, backendCount, superuserClient } from './helpers/cluster';
import { login, sendCancel, query, summarize } from './helpers/pgwire';

t.test('cancel', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;
    let proxy: ProxyHandle;
    t.before(async () => {
      proxy = await startProxy(t, await proxyConfig(c, {
        bypass,
        pool_mode: 'transaction',
        default_pool_size: 3,
        databases: {
          app: { host: '127.0.0.1', port: c.pg.port, dbname: 'app' },
          app_session: { host: '127.0.0.1', port: c.pg.port, dbname: 'app', pool_mode: 'session' },
        },
      }));
    });

    for (const db of ['app', 'app_session']) {
      t.test(`node-postgres: pg_sleep(30) cancelled with the client's key (${db}) ${B}`, async (t) => {
        const pg = await pgClient(t, proxy, { database: db });
        t.ok(pg.processID !== null && pg.secretKey !== null, 'client has a BackendKeyData key');
        const started = Date.now();
        // Handle the outcome from the start: the error may arrive while the cancel is still being sent.
        const q = pg.query('SELECT pg_sleep(30)').then(() => undefined, (e) => e);
        await waitUntil(() => backendCount(c, 'app', `query = 'SELECT pg_sleep(30)' AND state = 'active'`) === 1, 5000, 'sleep running');
        await sendCancel(proxy.port, pg.processID!, pg.secretKey!);
        const err = await withTimeout(q, 10000, 'cancelled query');
        t.ok(err, 'the query fails');
        t.equal(err?.code, '57014', `SQLSTATE 57014 (${err?.message})`);
        t.ok(Date.now() - started < 10000, `cancelled in ${Date.now() - started} ms, not after 30 s`);
        t.same((await pg.query('SELECT 1 AS ok')).rows, [{ ok: 1 }], 'the client goes on');
        t.same(pg.errors, [], 'no connection error');
      });
    }

    t.test(`raw session: cancel with the BackendKeyData read off the socket ${B}`, async (t) => {
      const s = await login(proxy.port, { user: 'app', password: 'app-pw' });
      t.teardown(() => s.conn.destroy());
      s.conn.write(query('BEGIN; SELECT pg_sleep(30)'));
      await waitUntil(() => backendCount(c, 'app', `query LIKE '%pg_sleep(30)%' AND state = 'active'`) === 1, 5000, 'sleep running');
      await sendCancel(proxy.port, s.pid, s.secret);
      const r = summarize(await s.conn.readUntil('Z', 10000));
      t.equal(r.errors[0]?.C, '57014', `57014 (${r.errors[0]?.M})`);
      t.equal(r.status, 'E', 'the transaction is now failed');
      s.conn.write(query('ROLLBACK'));
      const rb = summarize(await s.conn.readUntil('Z'));
      t.equal(rb.status, 'I', 'ROLLBACK');
    });

    t.test(`psql + SIGINT cancels its query ${B}`, async (t) => {
      const p = spawn('psql', ['-X', '-c', 'SELECT pg_sleep(30)'], { env: { ...process.env, ...libpqEnv(proxy) } });
      let stderr = '';
      p.stderr.on('data', (d) => (stderr += d));
      const exited = new Promise<number | null>((r) => p.on('close', (code) => r(code)));
      await waitUntil(() => backendCount(c, 'app', `query = 'SELECT pg_sleep(30)' AND state = 'active'`) === 1, 10000, 'psql sleep running');
      const started = Date.now();
      p.kill('SIGINT');
      const code = await withTimeout(exited, 10000, 'psql after SIGINT');
      t.not(code, 0, 'psql exits non-zero');
      t.match(stderr, /canceling statement due to user request/, `psql reports the cancel (${stderr.trim()})`);
      t.ok(Date.now() - started < 5000, 'promptly');
    });

    t.test(`a wrong key or another client's key cancels nothing ${B}`, async (t) => {
      const a = await pgClient(t, proxy);
      const b = await pgClient(t, proxy);
      const started = Date.now();
      const qa = a.query('SELECT pg_sleep(1.5) AS slept').then((r) => r, (e) => ({ rows: [{ error: e.code }] }));
      await waitUntil(() => backendCount(c, 'app', `query LIKE '%pg_sleep(1.5)%' AND state = 'active'`) === 1, 5000, 'sleep running');
      await sendCancel(proxy.port, a.processID!, (a.secretKey! ^ 0x5a5a5a5a) | 0); // right pid, wrong secret
      await sendCancel(proxy.port, (a.processID! + 1) | 0, a.secretKey!); // wrong pid
      await sendCancel(proxy.port, b.processID!, b.secretKey!); // B is idle: nothing to cancel
      await sendCancel(proxy.port, 0, 0);
      const r = await withTimeout(qa, 10000, 'query A');
      t.same(r.rows, [{ slept: '' }], 'A completes normally');
      t.ok(Date.now() - started >= 1400, 'after the full sleep');
      t.same((await b.query('SELECT 2 AS x')).rows, [{ x: 2 }], 'B unaffected');
    });

    t.test(`cancel hits only the server of the client, with several busy servers ${B}`, async (t) => {
      const clients = await Promise.all([0, 1, 2].map(() => pgClient(t, proxy)));
      const qs = clients.map((cl, i) => cl.query(`SELECT pg_sleep(2), ${i} AS i`).then((r) => ({ ok: r.rows[0].i as number }), (e) => ({ err: e.code as string })));
      await waitUntil(() => backendCount(c, 'app', `query LIKE '%pg_sleep(2)%' AND state = 'active'`) === 3, 5000, 'three sleeps running');
      await sendCancel(proxy.port, clients[1].processID!, clients[1].secretKey!);
      const res = await withTimeout(Promise.all(qs), 10000, 'three queries');
      t.same(res, [{ ok: 0 }, { err: '57014' }, { ok: 2 }], 'only client 1 was cancelled');
    });

    t.test(`cancel after the query finished does not hit the next client on that server ${B}`, async (t) => {
      const a = await pgClient(t, proxy);
      await a.query('SELECT 1');
      const pidA = (await a.query('SELECT pg_backend_pid() AS p')).rows[0].p;
      // Keep all three servers busy except possibly A's old one; B runs a sleep there.
      const b = await pgClient(t, proxy);
      const qb = b.query('SELECT pg_sleep(1.5) AS slept, pg_backend_pid() AS p').then((r) => r, (e) => ({ rows: [{ slept: `error ${e.code}`, p: '?' }] }));
      await sleep(300);
      await sendCancel(proxy.port, a.processID!, a.secretKey!);
      const rb = await withTimeout(qb, 10000, 'query B');
      t.equal(rb.rows[0].slept, '', `B's query (on server ${rb.rows[0].p}, A's was ${pidA}) is not cancelled by A's idle key`);
    });

    t.test(`cancel while waiting for a server ${B}`, async (t) => {
      // All 3 servers busy; a fourth client waits in the queue; cancelling it must not hit anyone else.
      // The busy clients wait for an advisory lock this test holds: busy until it lets go,
      // however long the machine takes to bring all three to the server (a pg_sleep(1.5)
      // could end before a loaded machine saw the third start).
      const lock = await superuserClient(t, c, c.db);
      await lock.query('SELECT pg_advisory_lock(4242)');
      const busy = await Promise.all([0, 1, 2].map(() => pgClient(t, proxy)));
      const bq = busy.map((cl) => cl.query('SELECT pg_advisory_xact_lock(4242) AS s').then(() => 'ok', (e) => e.code));
      await waitUntil(() => backendCount(c, 'app', `query LIKE '%pg_advisory_xact_lock(4242)%' AND state = 'active'`) === 3, 30000, 'three busy');
      const w = await pgClient(t, proxy);
      const wq = w.query('SELECT 42 AS x').then((r) => r.rows[0].x, (e) => e.code);
      await sleep(200);
      await sendCancel(proxy.port, w.processID!, w.secretKey!);
      // A cancel sent on to a busy server would end its query: give it a second to land (or
      // the waiting client its answer to the cancel) before the busy clients may finish.
      await Promise.race([wq, sleep(1000)]);
      await lock.query('SELECT pg_advisory_unlock(4242)');
      t.same(await withTimeout(Promise.all(bq), 10000, 'busy clients'), ['ok', 'ok', 'ok'], 'busy clients not cancelled');
      const wr = await withTimeout(wq, 10000, 'waiting client');
      t.ok(wr === 42 || wr === '57014', `the waiting client either runs or is cancelled cleanly (${wr})`);
      t.same((await w.query('SELECT 1 AS one')).rows, [{ one: 1 }], 'and goes on');
    });
  }
});

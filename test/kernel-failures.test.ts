// Failures around the data path, in both modes: clients killed mid-transaction (idle in
// it, or with a query running), a server killed with pg_terminate_backend while bound to a
// client (idle in a transaction, or running a query), PostgreSQL restarted under load
// (fast and immediate).
// Every time: no hang (clients get an error or a closed connection, never silence), nothing
// left behind (no 'idle in transaction' backend, no row of a rolled-back transaction, no
// server left bound: SHOW POOLS / SHOW BYPASS quiet and every server usable at once).
import t, { Test } from 'tap';
import { Client } from 'pg';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, withTimeout, sleep, run, waitUntil, Cluster, backendCount, ScratchPostgres } from './helpers/cluster';
import { pgBinDir } from '../scripts/scratch-postgres';
import { login, simpleQuery, query, RawConn } from './helpers/pgwire';
import { KERNEL_TEST_MODES, kernelConfig, statsLine, showBypass, adminRows, num, probePool, recordFailure, logExcerpt } from './helpers/kernel';

const POOL = 4;

// The path the proxy reports for the client on this local port (SHOW CLIENTS).
async function clientPath(proxy: ProxyHandle, conn: RawConn): Promise<string> {
  const rows = await adminRows(proxy, 'SHOW CLIENTS');
  return rows.find((r) => r.port === String(conn.sock.localPort))?.path ?? '(not listed)';
}

// Everything back to normal: no backend of app in a transaction or active, the proxy's pool
// with nothing active or waiting, every server usable at once.
async function checkRecovered(t: Test, proxy: ProxyHandle, c: Cluster, what: string, bypass: string): Promise<void> {
  if (!t.notOk(proxy.exited(), `${what}: the proxy is still running`)) {
    recordFailure(`kernel-failures ${what} [bypass=${bypass}]`, `the proxy exited ${JSON.stringify(proxy.exited())}`, `${logExcerpt(proxy)} // tail: ${proxy.logs().slice(-800)}`);
    return;
  }
  let detail = '';
  const ok = await waitUntil(
    async () => {
      const dirty = backendCount(c, 'app', "state <> 'idle'");
      const pool = (await adminRows(proxy, 'SHOW POOLS')).find((r) => r.database === 'app') ?? {};
      detail = `pg: ${backendCount(c, 'app')} backends, ${dirty} not idle (${c.sql("SELECT string_agg(state || ':' || left(query, 30), ', ') FROM pg_stat_activity WHERE usename = 'app' AND state <> 'idle'")}); SHOW POOLS sv_active=${pool.sv_active} sv_idle=${pool.sv_idle} sv_used=${pool.sv_used} cl_active=${pool.cl_active} cl_waiting=${pool.cl_waiting}`;
      return dirty === 0 && num(pool.sv_active) === 0 && num(pool.cl_waiting) === 0;
    },
    15000,
    'recovery',
    250,
  ).then(
    () => true,
    () => false,
  );
  if (!t.ok(ok, `${what}: nothing left active or in a transaction (${detail})`)) recordFailure(`kernel-failures ${what} [bypass=${bypass}]`, `not recovered: ${detail}`, logExcerpt(proxy));
  const probe = await probePool(proxy, POOL);
  if (!t.equal(probe.pids, POOL, `${what}: all ${POOL} servers usable at once (${probe.ms} ms, errors ${JSON.stringify(probe.errors)})`)) {
    recordFailure(`kernel-failures ${what} [bypass=${bypass}]`, `afterwards only ${probe.pids} of ${POOL} servers could be had at once (${probe.errors.join('; ')})`, logExcerpt(proxy));
  }
  if (bypass === 'on') {
    const by = await showBypass(proxy);
    t.comment(`${what}: SHOW BYPASS servers_user=${by.servers_user} servers_kernel=${by.servers_kernel} clients_kernel=${by.clients_kernel} user_kernelServerLost=${by.user_kernelServerLost} fallback_target_missing=${by.fallback_target_missing}`);
    t.ok(num(by.servers_user) + num(by.servers_kernel) <= POOL, `${what}: no more servers than the pool size (${by.servers_user} + ${by.servers_kernel})`);
  }
}

// Async pg_ctl (the ScratchPostgres methods block this process, which would freeze the load).
async function pgCtl(pg: ScratchPostgres, args: string[]): Promise<void> {
  const cmd = process.getuid && process.getuid() === 0 ? 'runuser' : `${pgBinDir()}/pg_ctl`;
  const a = process.getuid && process.getuid() === 0 ? ['-u', 'postgres', '--', `${pgBinDir()}/pg_ctl`, ...args] : args;
  const r = await run(cmd, a, { timeoutMs: 90000 });
  if (r.code !== 0) throw new Error(`pg_ctl ${args.join(' ')}: ${r.stderr}`);
}

t.test('kernel path: failures', async (t) => {
  const c: Cluster = await startCluster(t);
  c.sql('CREATE TABLE kf (id serial PRIMARY KEY, v text NOT NULL); ALTER TABLE kf OWNER TO app;');

  for (const bypass of KERNEL_TEST_MODES) {
    const B = `[bypass=${bypass}]`;
    let proxy: ProxyHandle;
    t.before(async () => {
      const cfg = await kernelConfig(c, bypass, { default_pool_size: POOL, min_pool_size: POOL, query_wait_timeout: 30, server_login_retry: 1, server_connect_timeout: 5 });
      proxy = await startProxy(t, cfg, { logLevel: 'info' });
    });

    t.test(`clients killed mid-transaction ${B}`, async (t) => {
      const tag = `killed-${bypass}`;
      const victims: RawConn[] = [];
      const paths: string[] = [];
      // Three at a time (the pool has 4 servers): BEGIN + INSERT, then the socket is destroyed.
      await probePool(proxy, POOL); // the pool exists with all its servers
      for (let round = 0; round < 3; round++) {
        // The previous round's servers are rolled back (or replaced) first: otherwise a victim
        // may find no idle server in the kernel and rightly run its transaction in user space.
        if (bypass === 'on') {
          const w0 = Date.now();
          let last: Record<string, string> = {};
          await waitUntil(async () => num((last = await statsLine(proxy)).servers_in_kernel) >= POOL, 15000, 'the servers back in the kernel', 200).catch(() => undefined);
          t.comment(`round ${round}: waited ${Date.now() - w0} ms for the servers (servers_in_kernel=${last.servers_in_kernel})`);
        }
        const batch = await Promise.all(
          [0, 1, 2].map(async (i) => {
            const s = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app' });
            victims.push(s.conn);
            t.equal((await simpleQuery(s.conn, 'SELECT 1')).status, 'I', 'warm-up');
            await sleep(50); // let the proxy move it to the kernel (bypass: on)
            t.equal((await simpleQuery(s.conn, 'BEGIN')).status, 'T');
            const r = await simpleQuery(s.conn, `INSERT INTO kf(v) VALUES ('${tag}-${round}-${i}')`);
            t.equal(r.status, 'T', 'inside the transaction');
            return s.conn;
          }),
        );
        if (bypass === 'on') for (const conn of batch) paths.push(await clientPath(proxy, conn));
        for (const conn of batch) conn.destroy();
      }
      if (bypass === 'on') t.ok(paths.every((p) => p === 'kernel'), `the victims were served in the kernel (${paths.join(',')})`);
      // A fourth kind: killed while its query runs (the server is busy when the client goes).
      const s = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app' });
      await simpleQuery(s.conn, 'SELECT 1');
      await sleep(50);
      await simpleQuery(s.conn, 'BEGIN');
      s.conn.write(query(`INSERT INTO kf(v) VALUES ('${tag}-running'); SELECT pg_sleep(2)`));
      await sleep(300);
      s.conn.destroy();
      await checkRecovered(t, proxy, c, 'clients killed mid-transaction', bypass);
      const leaked = c.sql(`SELECT count(*) FROM kf WHERE v LIKE '${tag}-%'`);
      if (!t.equal(leaked, '0', 'no row of a killed transaction is visible')) recordFailure(`kernel-failures killed clients ${B}`, `${leaked} rows of killed transactions committed`, logExcerpt(proxy));
      // And a normal client still works, with its own transaction.
      const ok = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app' });
      t.teardown(() => ok.conn.destroy());
      const r = await simpleQuery(ok.conn, `BEGIN; INSERT INTO kf(v) VALUES ('${tag}-after'); COMMIT; SELECT count(*) FROM kf WHERE v = '${tag}-after'`);
      t.same(r.rows, [['1']], 'a new client commits normally');
    });

    t.test(`a server killed with pg_terminate_backend while bound ${B}`, async (t) => {
      // (1) idle in a transaction: the next query gets an error or a closed connection.
      const s1 = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app' });
      t.teardown(() => s1.conn.destroy());
      await simpleQuery(s1.conn, 'SELECT 1');
      await sleep(50);
      const r1 = await simpleQuery(s1.conn, 'BEGIN; SELECT pg_backend_pid()');
      const pid1 = r1.rows[0][0];
      if (bypass === 'on') t.equal(await clientPath(proxy, s1.conn), 'kernel', 'bound in the kernel');
      t.equal(c.sql(`SELECT pg_terminate_backend(${pid1})`), 't', 'terminated');
      await sleep(200);
      const after1 = await outcome(s1.conn, 'SELECT 1');
      t.ok(after1.kind !== 'hang', `idle in transaction, then terminated: the client is told (${after1.detail})`);
      t.not(after1.kind, 'ok', 'the query does not silently succeed on another server inside the lost transaction');
      if (after1.kind === 'hang' || after1.kind === 'ok') recordFailure(`kernel-failures terminate idle-in-transaction ${B}`, `after pg_terminate_backend the client's next query: ${after1.detail}`, logExcerpt(proxy));

      // (2) running a query: the answer is an error, promptly.
      const s2 = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app' });
      t.teardown(() => s2.conn.destroy());
      await simpleQuery(s2.conn, 'SELECT 1');
      await sleep(50);
      s2.conn.write(query('SELECT pg_sleep(20)'));
      const pid2 = await waitUntil(() => c.sql("SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND query = 'SELECT pg_sleep(20)' AND state = 'active'"), 5000, 'the sleeping backend');
      const t0 = Date.now();
      c.sql(`SELECT pg_terminate_backend(${pid2})`);
      const after2 = await outcome(s2.conn, null);
      t.ok(after2.kind === 'error' || after2.kind === 'closed', `running, then terminated: error or close, not a hang (${after2.detail}, ${Date.now() - t0} ms)`);
      if (after2.kind === 'hang' || after2.kind === 'ok') recordFailure(`kernel-failures terminate running ${B}`, `after pg_terminate_backend of a running query: ${after2.detail}`, logExcerpt(proxy));

      await checkRecovered(t, proxy, c, 'server terminated', bypass);
      const fresh = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app' });
      t.teardown(() => fresh.conn.destroy());
      t.same((await simpleQuery(fresh.conn, 'SELECT 40 + 2')).rows, [['42']], 'a new client works');
    });

    for (const stopMode of ['fast', 'immediate'] as const)
    t.test(`PostgreSQL restarted (${stopMode}) under load ${B}`, async (t) => {
      const WORKERS = 8;
      let stop = false;
      let restartDone = 0;
      const stats = Array.from({ length: WORKERS }, () => ({ ok: 0, okAfter: 0, errors: 0, hangs: 0, lastError: '' }));
      const worker = async (w: number) => {
        let cl: Client | null = null;
        let seq = 0;
        while (!stop) {
          try {
            if (!cl) {
              cl = new Client({ host: proxy.host, port: proxy.port, user: 'app', password: 'app-pw', database: 'app', connectionTimeoutMillis: 10000 });
              cl.on('error', () => undefined);
              await withTimeout(cl.connect(), 15000, 'connect');
            }
            const v = `load-${bypass}-${w}-${seq++}`;
            const r = await withTimeout(cl.query('INSERT INTO kf(v) VALUES ($1) RETURNING v', [v]), 15000, 'query');
            if (r.rows[0].v !== v) throw new Error(`wrong answer ${JSON.stringify(r.rows)} for ${v}`);
            stats[w].ok++;
            if (restartDone && Date.now() > restartDone) stats[w].okAfter++;
          } catch (e) {
            const msg = (e as Error).message;
            if (/hang/.test(msg)) stats[w].hangs++;
            else stats[w].errors++;
            stats[w].lastError = msg;
            const old = cl;
            cl = null;
            if (old) void old.end().catch(() => undefined);
            await sleep(100);
          }
        }
        if (cl) await cl.end().catch(() => undefined);
      };
      const load = Promise.all(Array.from({ length: WORKERS }, (_, w) => worker(w)));
      await sleep(1500);
      const okBefore = stats.reduce((a, s) => a + s.ok, 0);
      // fast: PostgreSQL rolls back and closes every session; immediate: a crash (no
      // goodbye to the sessions, crash recovery at start).
      await pgCtl(c.pg, ['-D', c.pg.dataDir, '-l', c.pg.logFile, '-m', stopMode, '-w', '-t', '60', 'restart']);
      restartDone = Date.now();
      // Every worker must get through again after the restart.
      const recovered = await waitUntil(() => stats.every((s) => s.okAfter >= 5), 30000, 'every worker succeeding after the restart', 100).then(
        () => true,
        () => false,
      );
      stop = true;
      await withTimeout(load, 40000, 'the load to stop');
      const errors = stats.reduce((a, s) => a + s.errors, 0);
      const hangs = stats.reduce((a, s) => a + s.hangs, 0);
      t.comment(`${B} ${okBefore} ok before the restart; per worker ok/after/errors/hangs: ${stats.map((s) => `${s.ok}/${s.okAfter}/${s.errors}/${s.hangs}`).join(' ')}; last errors: ${[...new Set(stats.map((s) => s.lastError).filter(Boolean))].join(' | ').slice(0, 400)}`);
      t.ok(okBefore > 0, 'the load ran before the restart');
      t.equal(hangs, 0, 'no query or connect hung (each got an answer or an error within 15 s)');
      if (!t.ok(recovered, `every worker succeeds again after the restart (${stats.map((s) => s.okAfter).join(',')})`) || hangs) {
        recordFailure(`kernel-failures PostgreSQL restart (${stopMode}) ${B}`, `hangs ${hangs}, per-worker successes after restart ${stats.map((s) => s.okAfter).join(',')}; errors: ${[...new Set(stats.map((s) => s.lastError))].join(' | ')}`, logExcerpt(proxy));
      }
      await checkRecovered(t, proxy, c, `PostgreSQL restarted (${stopMode})`, bypass);
      if (bypass === 'on') {
        const st = await statsLine(proxy);
        t.comment(`${B} after the restart: servers_in_kernel=${st.servers_in_kernel} clients_in_kernel=${st.clients_in_kernel} kernel_transactions=${st.kernel_transactions} user_kernelServerLost=${st.user_kernelServerLost} fallback_target_missing=${st.fallback_target_missing}`);
        t.ok(num(st.kernel_transactions) > 0, 'the kernel carried transactions');
      }
    });
  }
});

// What a connection does next: sends sql (or nothing) and waits for ReadyForQuery, an
// error, or a close; 'hang' if none comes within 10 s.
async function outcome(conn: RawConn, sql: string | null): Promise<{ kind: 'ok' | 'error' | 'closed' | 'hang'; detail: string }> {
  if (sql !== null && !conn.closed) {
    try {
      conn.write(query(sql));
    } catch {
      /* closed */
    }
  }
  try {
    const msgs = await conn.readUntil('Z', 10000);
    const err = msgs.find((m) => m.type === 'E');
    if (err) return { kind: 'error', detail: `error: ${err.body.toString('utf8').replace(/\0/g, ' ').slice(0, 160)}` };
    return { kind: 'ok', detail: `answered: ${msgs.map((m) => m.type).join('')}` };
  } catch (e) {
    const msg = (e as Error).message;
    if (/closed/.test(msg)) {
      // Closed, possibly after an ErrorResponse: either is a clean answer.
      return { kind: 'closed', detail: msg };
    }
    return { kind: 'hang', detail: msg };
  }
}

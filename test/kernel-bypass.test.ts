// The steady state really bypasses user space: 8 clients on a pool of 8 (nobody waits)
// run N autocommit transactions through pgbench -M extended; with bypass: on the kernel
// counters show ~N transactions carried in the kernel and Node read (was passed) almost no
// skbs of them. Plus session settings: a client that SETs TimeZone keeps it, and another
// client sharing the same single server never sees it. Both modes, same result checks.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, pgClient, run, libpqEnv, withTimeout, Cluster } from './helpers/cluster';
import { KERNEL_TEST_MODES, kernelConfig, statsLine, showBypass, adminRows, num, pgbenchCounts, recordFailure, logExcerpt } from './helpers/kernel';

const CLIENTS = 8;
const PER_CLIENT = 500;
const N = CLIENTS * PER_CLIENT;

t.test('kernel path: steady state bypasses user space', async (t) => {
  const c: Cluster = await startCluster(t);
  c.sql(`CREATE TABLE kb (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); ALTER TABLE kb OWNER TO app;
         INSERT INTO kb SELECT g FROM generate_series(1, 1000) g;`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-kb-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // One autocommit UPDATE per script run: pgbench's count is the transaction count, and the
  // sum of v counts how many reached PostgreSQL.
  const script = path.join(dir, 'tx.sql');
  fs.writeFileSync(script, '\\set id random(1, 1000)\nUPDATE kb SET v = v + 1 WHERE id = :id;\n');

  for (const bypass of KERNEL_TEST_MODES) {
    const B = `[bypass=${bypass}]`;
    t.test(`${N} autocommit transactions from ${CLIENTS} clients on a pool of ${CLIENTS} ${B}`, async (t) => {
      const cfg = await kernelConfig(c, bypass, { default_pool_size: CLIENTS, min_pool_size: CLIENTS, query_wait_timeout: 30 });
      const proxy: ProxyHandle = await startProxy(t, cfg, { logLevel: 'info' });
      // Warm-up: every server logged in and (with bypass on) handed to the kernel before we count.
      const warm = await run('pgbench', ['-n', '-M', 'extended', '-c', String(CLIENTS), '-j', '2', '-t', '20', '-f', script], { env: libpqEnv(proxy), timeoutMs: 60000 });
      t.equal(warm.code, 0, `warm-up pgbench (${warm.stderr.slice(-400)})`);
      const sumBefore = Number(c.sql('SELECT sum(v) FROM kb'));
      const before = await statsLine(proxy);
      const r = await withTimeout(
        run('pgbench', ['-n', '-M', 'extended', '-c', String(CLIENTS), '-j', '2', '-t', String(PER_CLIENT), '-f', script], { env: libpqEnv(proxy), timeoutMs: 120000 }),
        130000,
        'pgbench',
      );
      const after = await statsLine(proxy);
      const counts = pgbenchCounts(r.stdout);
      t.equal(r.code, 0, `pgbench exit (${r.stderr.slice(-400)})`);
      t.equal(counts.processed, N, 'every transaction processed');
      t.equal(counts.failed, 0, 'no failed transaction');
      t.equal(Number(c.sql('SELECT sum(v) FROM kb')) - sumBefore, N, 'every UPDATE reached PostgreSQL exactly once');
      t.comment(`${B} stats after: ${JSON.stringify(after)}`);
      if (bypass !== 'on') return;

      const d = (k: string) => num(after[k]) - num(before[k]);
      t.equal(after.loaded, 'yes', 'the kernel path is loaded');
      const kx = d('kernel_transactions');
      const passed = d('kernel_passed_skbs');
      const userX = d('user_xacts');
      t.comment(`${B} delta: kernel_transactions=${kx} kernel_passed_skbs=${passed} user_xacts=${userX} client_bytes=${d('kernel_client_bytes')} server_bytes=${d('kernel_server_bytes')} fallback_no_idle_server=${d('fallback_no_idle_server')}`);
      // Allow a handful per client: a client's first transaction may run before it is moved in.
      const slack = 2 * CLIENTS;
      if (!t.ok(kx >= N - slack, `kernel_transactions grew by >= ${N - slack} (got ${kx})`)) {
        recordFailure('kernel-bypass steady state', `kernel_transactions grew by ${kx} for ${N} pgbench transactions (8 clients, pool 8); passed_skbs +${passed}, user_xacts +${userX}`, logExcerpt(proxy));
      }
      // Every transaction is at least one client skb and one server skb: if Node had read
      // them, passed_skbs would be >= N. A tiny number (login leftovers, one skb per client
      // switch) proves Node read almost none of their bytes.
      if (!t.ok(passed <= Math.max(2 * CLIENTS, N / 100), `kernel_passed_skbs grew by at most ${Math.max(2 * CLIENTS, N / 100)} (got ${passed})`)) {
        recordFailure('kernel-bypass steady state', `kernel_passed_skbs grew by ${passed} over ${N} transactions: Node read their bytes`, logExcerpt(proxy));
      }
      t.ok(d('kernel_client_bytes') > N * 20, `kernel redirected client bytes (${d('kernel_client_bytes')})`);
      t.ok(d('kernel_server_bytes') > N * 20, `kernel redirected server bytes (${d('kernel_server_bytes')})`);
      const by = await showBypass(proxy);
      t.equal(by.loaded, 'yes', 'SHOW BYPASS: loaded');
      t.ok(num(by.kernel_transactions) >= num(after.kernel_transactions), 'SHOW BYPASS agrees with the SIGUSR1 line');
    });

    t.test(`a client's SET TimeZone stays its own ${B}`, async (t) => {
      // One server for both clients: any leak of A's setting would reach B.
      const cfg = await kernelConfig(c, bypass, {
        default_pool_size: 1,
        query_wait_timeout: 30,
        databases: { app: { host: '127.0.0.1', port: c.pg.port, dbname: 'app' } },
      });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const a = await pgClient(t, proxy);
      const b = await pgClient(t, proxy);
      const dflt = (await b.query('SHOW TimeZone')).rows[0].TimeZone as string;
      t.not(dflt, 'Asia/Tokyo', 'the default is not the zone A picks');
      const HOUR = "SELECT to_char(timestamptz '2020-01-01 00:00:00+00', $1) AS h";
      const hourB = c.sql(`SET TimeZone = '${dflt}'; ${HOUR.replace('$1', "'HH24'")}`);
      await a.query("SET TimeZone = 'Asia/Tokyo'");
      const before = bypass === 'on' ? await statsLine(proxy) : {};
      for (let i = 0; i < 150; i++) {
        let ra, rb;
        try {
          [ra, rb] = await withTimeout(Promise.all([a.query('SHOW TimeZone'), b.query('SHOW TimeZone')]), 10000, `round ${i}`);
        } catch (e) {
          // Say where everything stands: which client waits, where the server is.
          const pools = (await adminRows(proxy, 'SHOW POOLS')).map((r) => `cl_waiting=${r.cl_waiting} sv_idle=${r.sv_idle} sv_active=${r.sv_active}`);
          const clients = (await adminRows(proxy, 'SHOW CLIENTS')).filter((r) => r.database === 'app').map((r) => `${r.ptr}:${r.state}/${r.path}`);
          const servers = (await adminRows(proxy, 'SHOW SERVERS')).map((r) => `${r.ptr}:${r.state}/${r.path}`);
          const detail = `${(e as Error).message}; SHOW POOLS ${pools.join(' ')}; clients ${clients.join(' ')}; servers ${servers.join(' ')}`;
          t.fail(detail);
          recordFailure('kernel-bypass SET TimeZone', `${B} 2 clients on 1 server, one with SET TimeZone: ${detail}`, logExcerpt(proxy));
          break;
        }
        if (ra.rows[0].TimeZone !== 'Asia/Tokyo' || rb.rows[0].TimeZone !== dflt) {
          t.fail(`round ${i}: A sees ${ra.rows[0].TimeZone} (want Asia/Tokyo), B sees ${rb.rows[0].TimeZone} (want ${dflt})`);
          recordFailure('kernel-bypass SET TimeZone', `${B} round ${i}: A sees ${ra.rows[0].TimeZone}, B sees ${rb.rows[0].TimeZone} (default ${dflt})`, logExcerpt(proxy));
          break;
        }
        // Extended protocol too, and a value that depends on the zone.
        const [ea, eb] = await Promise.all([a.query({ text: HOUR, values: ['HH24'] }), b.query({ text: HOUR, values: ['HH24'] })]);
        if (ea.rows[0].h !== '09' || eb.rows[0].h !== hourB) {
          t.fail(`round ${i}: hour in A ${ea.rows[0].h} (want 09), in B ${eb.rows[0].h} (want ${hourB})`);
          recordFailure('kernel-bypass SET TimeZone', `${B} round ${i}: to_char hour A=${ea.rows[0].h} B=${eb.rows[0].h}`, logExcerpt(proxy));
          break;
        }
      }
      t.equal((await a.query('SHOW TimeZone')).rows[0].TimeZone, 'Asia/Tokyo', 'A keeps its zone');
      t.equal((await b.query('SHOW TimeZone')).rows[0].TimeZone, dflt, 'B keeps the default');
      // A changes again, B sets its own: both kept.
      await a.query("SET TimeZone = 'America/New_York'");
      await b.query("SET TimeZone = 'Europe/Paris'");
      for (let i = 0; i < 10; i++) {
        const [ra, rb] = await Promise.all([a.query('SHOW TimeZone'), b.query('SHOW TimeZone')]);
        t.equal(ra.rows[0].TimeZone, 'America/New_York', `A after its second SET (${i})`);
        t.equal(rb.rows[0].TimeZone, 'Europe/Paris', `B after its own SET (${i})`);
        if (ra.rows[0].TimeZone !== 'America/New_York' || rb.rows[0].TimeZone !== 'Europe/Paris') break;
      }
      // A third client that never SET anything sees the default.
      const c3 = await pgClient(t, proxy);
      t.equal((await c3.query('SHOW TimeZone')).rows[0].TimeZone, dflt, 'a fresh client sees the default');
      t.same([...a.errors, ...b.errors, ...c3.errors].map(String), [], 'no connection errors');
      if (bypass === 'on') {
        const after = await statsLine(proxy);
        t.comment(`${B} kernel_transactions +${num(after.kernel_transactions) - num(before.kernel_transactions)}, fallback_params_changed=${after.fallback_params_changed}, user_paramsChanged=${after.user_paramsChanged}`);
        t.ok(num(after.kernel_transactions) > num(before.kernel_transactions), 'some of those transactions ran in the kernel');
      }
    });
  }
});

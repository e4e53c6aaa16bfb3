// Protocol fuzzing against both data paths: mutated pre-login packets and mutated logged-in
// sessions (test/helpers/fuzz.ts) on a transaction pool and a session pool, while pgbench runs
// on the same transaction pool. Asserts: the proxy stays up, pgbench has zero failed
// transactions, every fuzz client got replies, an error or a close (never a hang), and the
// proxy's descriptors and RSS come back to their baseline once the fuzz clients are gone.
//
// CI runs a bounded, seeded run (PGSPLICE_FUZZ_SECONDS per mode, default 20). Reproduce with
//   PGSPLICE_FUZZ_SEED=<seed> [PGSPLICE_FUZZ_CASE=<index>] npx tap test/protocol-fuzz.test.ts
// and run long with
//   PGSPLICE_FUZZ_SECONDS=600 npm run fuzz
import * as fs from 'node:fs';
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import { startCluster, pgbenchInit, run, libpqEnv, waitUntil, backendCount, sleep } from './helpers/cluster';
import { runFuzz, FuzzTarget, listening } from './helpers/fuzz';
import { pgbenchCounts, rssKb, kernelConfig, adminRows, Row } from './helpers/kernel';
import { login, simpleQuery } from './helpers/pgwire';

const SECONDS = Number(process.env.PGSPLICE_FUZZ_SECONDS ?? 20);
// A fixed seed by default, so that CI plays the same cases every run; `random` explores.
const SEED_ENV = process.env.PGSPLICE_FUZZ_SEED ?? '1';
const SEED = SEED_ENV === 'random' ? (Date.now() ^ (process.pid << 16)) >>> 0 : Number(SEED_ENV) >>> 0;
const ONLY_CASE = process.env.PGSPLICE_FUZZ_CASE !== undefined ? Number(process.env.PGSPLICE_FUZZ_CASE) : undefined;
const WORKERS = Number(process.env.PGSPLICE_FUZZ_WORKERS ?? 6);
const CLIENT_TIMEOUT_MS = 10000; // per step of one fuzz client: a hang is a failure, never a wait
const POOL = 6;
// Descriptors may differ from the baseline by the pool's servers (opened or closed by the
// fuzz sessions) and a few transient ones; a leak of one per bad client would show far above.
const FD_SLACK = POOL + 4;
const RSS_SLACK_KB = 96 * 1024;

t.setTimeout(Math.max(420, BYPASS_MODES.length * (SECONDS + 90)) * 1000);
t.comment(`fuzz seed ${SEED} (replay: PGSPLICE_FUZZ_SEED=${SEED}${ONLY_CASE !== undefined ? ` PGSPLICE_FUZZ_CASE=${ONLY_CASE}` : ''}), ${SECONDS} s per mode, ${WORKERS} workers`);

const fdCount = (pid: number): number => fs.readdirSync(`/proc/${pid}/fd`).length;

t.test('protocol fuzz', async (t) => {
  const c = await startCluster(t);
  c.sql('CREATE TABLE fuzz_t (v int)');
  c.sql('GRANT ALL ON fuzz_t TO app');
  await pgbenchInit(t, c);

  for (const bypass of BYPASS_MODES) {
    t.test(`mutated sessions against the proxy while pgbench runs [bypass=${bypass}]`, async (t) => {
      // kernelConfig: proxyConfig plus the admin user that describeHang below reads the proxy as.
      const cfg = await kernelConfig(c, bypass, {
        default_pool_size: POOL,
        max_client_conn: 500,
        query_wait_timeout: 60,
        client_login_timeout: 30,
        databases: {
          app: { host: '127.0.0.1', port: c.pg.port, dbname: 'app' },
          app_session: { host: '127.0.0.1', port: c.pg.port, dbname: 'app', pool_mode: 'session', pool_size: 4 },
        },
      });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const pid = proxy.proc.pid!;
      // A hang seen once under load must explain itself: what the proxy, its log and
      // PostgreSQL say of the hung client, its server and its pool, read before it closes.
      const describeHang = async (clientPort: number): Promise<string> => {
        const line = (r: Row) => Object.entries(r).filter(([, v]) => v !== '').map(([k, v]) => `${k}=${v}`).join(' ');
        const clients = await adminRows(proxy, 'SHOW CLIENTS', 5000);
        const me = clients.find((r) => r.port === String(clientPort));
        const servers = await adminRows(proxy, 'SHOW SERVERS', 5000);
        const pools = await adminRows(proxy, 'SHOW POOLS', 5000);
        const bypassRows = bypass === 'off' ? [] : await adminRows(proxy, 'SHOW BYPASS', 5000);
        const backends = c.sql(`SELECT pid, state, wait_event, left(query, 60) FROM pg_stat_activity WHERE datname = 'app' AND backend_type = 'client backend'`);
        const label = me ? `C-${me.id}` : `:${clientPort}`;
        const logLines = proxy.logs().split('\n').filter((l) => l.includes(`${label} `) || l.includes(`:${clientPort} `)).slice(-20);
        return [
          `client: ${me ? line(me) : `no SHOW CLIENTS row for port ${clientPort}`}`,
          `clients (${clients.length}): ${clients.map((r) => `C-${r.id}:${r.state}${r.link ? `->${r.link}` : ''}/${r.path}${r.wait !== '0' || r.wait_us !== '0' ? ` wait ${r.wait}s${r.wait_us}us` : ''}`).join(', ')}`,
          `servers: ${servers.map((r) => `${r.ptr}:${r.database}:${r.state}${r.link ? `->${r.link}` : ''}/${r.path}`).join(', ')}`,
          ...pools.map((r) => `pool: ${line(r)}`),
          bypassRows.length ? `bypass: ${bypassRows.map((r) => `${r.key}=${r.value}`).join(' ')}` : '',
          `backends: ${backends.trim().split('\n').join('; ')}`,
          `log of ${label}:`, ...logLines,
        ].filter(Boolean).join('\n    ');
      };
      const target: FuzzTarget = { host: proxy.host, port: proxy.port, user: 'app', password: 'app-pw', databases: ['app', 'app_session'], describeHang };

      // Baseline once the pool is warm: every server of the transaction pool opened.
      const warm = await run('pgbench', ['-n', '-M', 'extended', '-c', String(POOL), '-j', '2', '-t', '20', 'app'], { env: libpqEnv(proxy), timeoutMs: 60000 });
      t.equal(warm.code, 0, `warm-up pgbench (${warm.stderr.slice(-300)})`);
      const s = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app_session' });
      await simpleQuery(s.conn, 'SELECT 1');
      s.conn.destroy();
      await sleep(500);
      const fd0 = fdCount(pid);
      const rss0 = rssKb(pid);

      // pgbench on the same transaction pool for the whole fuzz run.
      // Killed well inside the test's own timeout, so that a stuck pgbench is reported with
      // the fuzz failures instead of the whole test timing out silently.
      const bench = run('pgbench', ['-n', '-M', 'extended', '-c', '4', '-j', '2', '-T', String(SECONDS + 2), 'app'], { env: libpqEnv(proxy), timeoutMs: (SECONDS + 60) * 1000 });
      const stats = await runFuzz({
        seed: SEED,
        seconds: SECONDS,
        workers: ONLY_CASE !== undefined ? 1 : WORKERS,
        target,
        timeoutMs: CLIENT_TIMEOUT_MS,
        onlyCase: ONLY_CASE,
        shouldStop: () => (proxy.exited() ? 'proxy exited' : undefined),
      });
      // pgbench late: say what its clients, their servers and PostgreSQL wait on, while they still do.
      let late: NodeJS.Timeout | undefined;
      let b = await Promise.race([bench, new Promise<undefined>((resolve) => { late = setTimeout(resolve, 40000); })]);
      clearTimeout(late);
      if (!b) {
        const servers = await adminRows(proxy, 'SHOW SERVERS', 5000).catch(() => [] as Row[]);
        const clients = await adminRows(proxy, 'SHOW CLIENTS', 5000).catch(() => [] as Row[]);
        const backends = c.sql(`SELECT pid, state, wait_event_type, wait_event, pg_blocking_pids(pid), xact_start IS NOT NULL, left(query, 70) FROM pg_stat_activity WHERE datname = 'app' AND backend_type = 'client backend' AND pid <> pg_backend_pid()`);
        t.fail(`pgbench still running 40 s after the fuzz ended (${stats.cases} fuzz cases, ${stats.failures.length} failures)\n  clients: ${clients.map((r) => `C-${r.id}:${r.database}:${r.state}${r.link ? `->${r.link}` : ''}/${r.path}`).join(', ')}\n  servers: ${servers.map((r) => `${r.ptr}(pid ${r.remote_pid}):${r.database}:${r.state}${r.link ? `->${r.link}` : ''}/${r.path}`).join(', ')}\n  backends: ${backends.trim().split('\n').join('; ')}`);
        b = await bench;
      }
      const counts = pgbenchCounts(b.stdout);

      t.comment(`[bypass=${bypass}] seed ${SEED}: ${stats.cases} cases; verdicts ${JSON.stringify(stats.verdicts)}; SQLSTATEs ${JSON.stringify(stats.errorCodes)}`);
      t.comment(`[bypass=${bypass}] cases per family: ${JSON.stringify(stats.labels)}`);
      t.equal(proxy.exited(), undefined, `the proxy is still running (exit: ${JSON.stringify(proxy.exited())}; log tail: ${proxy.exited() ? proxy.logs().slice(-1500) : '-'})`);
      t.ok(await listening(proxy.host, proxy.port), 'the proxy still accepts connections');
      // An exception no connection's boundary caught is logged and survived, but it leaves
      // that connection half-handled (a hang, at best): there must be none.
      const escaped = proxy.logs().split('\n').filter((l) => /uncaught exception|unhandled promise rejection| internal error/.test(l));
      t.same(escaped, [], 'no exception escaped a connection\'s error boundary');
      t.ok(stats.cases >= (ONLY_CASE !== undefined ? 1 : 20), `fuzz cases played: ${stats.cases}`);
      if (stats.stopped) {
        for (const f of stats.stopped.inFlight) t.comment(`in flight when the proxy stopped (${stats.stopped.reason}): case ${f.index} (${f.label})\n  replay: PGSPLICE_FUZZ_SEED=${SEED} PGSPLICE_FUZZ_CASE=${f.index} PGSPLICE_TEST_MODES=${bypass}\n  bytes: ${f.hex}`);
      }
      for (const f of stats.failures.slice(0, 10)) {
        t.fail(`case ${f.index} (${f.label}): ${f.failure}\n  replay: PGSPLICE_FUZZ_SEED=${SEED} PGSPLICE_FUZZ_CASE=${f.index} PGSPLICE_TEST_MODES=${bypass}\n  bytes: ${f.hex}${f.diagnosis ? `\n  diagnosis:\n    ${f.diagnosis}` : ''}`);
      }
      t.equal(stats.failures.length, 0, `every fuzz client got replies, an error or a close (failures: ${stats.failures.length})`);
      t.equal(b.code, 0, `pgbench exits 0 (${b.stderr.slice(-800)})`);
      t.ok(counts.processed > 0, `pgbench made progress: ${counts.processed} transactions`);
      t.equal(counts.failed, 0, 'pgbench: zero failed transactions');

      if (!proxy.exited()) {
        // Everything the fuzz clients left behind must go: descriptors, memory, backends.
        let fd1 = 0;
        const fdOk = await waitUntil(() => (fd1 = fdCount(pid)) <= fd0 + FD_SLACK, 15000, 'descriptors back to baseline', 250).then(() => true, () => false);
        t.ok(fdOk, `descriptors back to baseline: ${fd0} before, ${fd1} after (slack ${FD_SLACK})`);
        let rss1 = 0;
        const rssOk = await waitUntil(() => (rss1 = rssKb(pid)) <= rss0 + RSS_SLACK_KB, 15000, 'RSS back to baseline', 500).then(() => true, () => false);
        t.ok(rssOk, `RSS back to baseline: ${rss0} kB before, ${rss1} kB after (slack ${RSS_SLACK_KB} kB)`);
        const stuck = await waitUntil(() => backendCount(c, 'app', `state LIKE 'idle in transaction%' OR state = 'active'`) === 0, 15000, 'no backend busy').then(() => 0, () => backendCount(c, 'app', `state LIKE 'idle in transaction%' OR state = 'active'`));
        // (if one is: what PostgreSQL and the proxy say of it)
        const stuckWhy = stuck === 0 ? '' : `: ${c.sql(`SELECT pid, state, wait_event, xact_start IS NOT NULL, left(query, 60) FROM pg_stat_activity WHERE datname = 'app' AND backend_type = 'client backend' AND (state LIKE 'idle in transaction%' OR state = 'active') AND pid <> pg_backend_pid()`).trim().split('\n').join('; ')}; proxy's servers: ${(await adminRows(proxy, 'SHOW SERVERS', 5000)).map((r) => `${r.ptr}(pid ${r.remote_pid}):${r.database}:${r.state}${r.link ? `->${r.link}` : ''}/${r.path}`).join(', ')}`;
        t.equal(stuck, 0, `no server left in a transaction or running${stuckWhy}`);
        // A server the proxy is resetting or preparing ('used': its own query in flight) for
        // 15 s after the run is a lost pool slot, even when PostgreSQL shows its backend idle.
        let used: Row[] = [];
        const usedOk = await waitUntil(async () => (used = (await adminRows(proxy, 'SHOW SERVERS', 5000)).filter((r) => r.state === 'used')).length === 0, 15000, 'no server left used', 500).then(() => true, () => false);
        t.ok(usedOk, `no server left 'used' (the proxy's own query unanswered)${usedOk ? '' : `: ${used.map((r) => `${r.ptr}(pid ${r.remote_pid}):${r.database}`).join(', ')}; backends: ${c.sql(`SELECT pid, state, left(query, 60) FROM pg_stat_activity WHERE pid IN (${used.map((r) => Number(r.remote_pid) || 0).join(',')})`).trim().split('\n').join('; ')}`}`);
        // And a normal client is served at once.
        const after = await run('pgbench', ['-n', '-M', 'simple', '-c', '2', '-j', '2', '-t', '20', 'app'], { env: libpqEnv(proxy), timeoutMs: 60000 });
        t.equal(pgbenchCounts(after.stdout).processed, 40, `a pgbench after the fuzz run completes (${after.stderr.slice(-300)})`);
      }
    });
  }
});

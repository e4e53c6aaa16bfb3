// 1,000 concurrent clients on a pool of 16, each running 8 pgbench -M extended scripts:
// every script run done, zero failed transactions, every client connected, and afterwards
// the pool is whole. Both modes; with bypass: on the counters say how the load split
// between the kernel and user space. A transaction count, not a duration: the run lasts
// as long as the machine needs for it (a few seconds plus 1,000 logins on a quiet one),
// and every client must finish all of its transactions.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, run, libpqEnv, Cluster } from './helpers/cluster';
import { KERNEL_TEST_MODES, kernelConfig, statsLine, num, pgbenchCounts, probePool, recordFailure, logExcerpt, adminRows } from './helpers/kernel';

const CLIENTS = 1000;
const POOL = 16;
const RUNS_PER_CLIENT = 8;

t.test('kernel path: 1000 clients on a pool of 16', async (t) => {
  const c: Cluster = await startCluster(t);
  c.sql(`CREATE TABLE km (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); ALTER TABLE km OWNER TO app;
         INSERT INTO km SELECT g FROM generate_series(1, 10000) g;`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-km-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // A read and a write per transaction (autocommit each: two transactions per script run).
  const script = path.join(dir, 'km.sql');
  fs.writeFileSync(script, '\\set id random(1, 10000)\nSELECT v FROM km WHERE id = :id;\nUPDATE km SET v = v + 1 WHERE id = :id;\n');

  for (const bypass of KERNEL_TEST_MODES) {
    const B = `[bypass=${bypass}]`;
    t.test(`pgbench -M extended -c ${CLIENTS} -j 2 -t ${RUNS_PER_CLIENT} ${B}`, async (t) => {
      const cfg = await kernelConfig(c, bypass, {
        default_pool_size: POOL,
        min_pool_size: POOL,
        max_client_conn: 1100,
        query_wait_timeout: 120,
        client_login_timeout: 120,
      });
      const proxy: ProxyHandle = await startProxy(t, cfg, { logLevel: 'info' });
      const before = bypass === 'on' ? await statsLine(proxy) : {};
      const sumBefore = Number(c.sql('SELECT sum(v) FROM km'));
      const r = await run('pgbench', ['-n', '-M', 'extended', '-c', String(CLIENTS), '-j', '2', '-t', String(RUNS_PER_CLIENT), '-f', script], {
        env: libpqEnv(proxy),
        timeoutMs: 180_000,
      });
      const counts = pgbenchCounts(r.stdout);
      const tps = /tps = ([\d.]+)/.exec(r.stdout)?.[1];
      const aborted = (r.stderr.match(/aborted|error|FATAL/gi) ?? []).length;
      t.comment(`${B} pgbench: ${counts.processed} processed, ${counts.failed} failed, tps ${tps}; stderr: ${r.stderr.trim().split('\n').slice(-3).join(' / ').slice(0, 300)}`);
      const okRun = t.equal(r.code, 0, 'pgbench exit 0');
      t.equal(counts.processed, CLIENTS * RUNS_PER_CLIENT, `every client ran its ${RUNS_PER_CLIENT} scripts`);
      const okFailed = t.equal(counts.failed, 0, 'zero failed transactions');
      const okAborted = t.equal(aborted, 0, 'no client aborted, no error on stderr');
      t.match(r.stdout, new RegExp(`number of clients: ${CLIENTS}\\b`), `${CLIENTS} clients`);
      if (!okRun || !okFailed || !okAborted) {
        recordFailure(`kernel-many-clients ${B}`, `pgbench exit ${r.code}, ${counts.failed} failed, stderr: ${r.stderr.trim().split('\n').slice(-2).join(' / ')}`, logExcerpt(proxy));
      }
      // Every UPDATE reached PostgreSQL exactly once: each processed script run did one.
      t.equal(Number(c.sql('SELECT sum(v) FROM km')) - sumBefore, counts.processed, 'one UPDATE per processed transaction');

      const pool = (await adminRows(proxy, 'SHOW POOLS')).find((x) => x.database === 'app') ?? {};
      t.equal(num(pool.cl_waiting), 0, 'nobody waits afterwards');
      t.equal(num(pool.sv_active), 0, 'no server active afterwards');
      const probe = await probePool(proxy, POOL);
      if (!t.equal(probe.pids, POOL, `all ${POOL} servers usable at once afterwards (${probe.ms} ms ${JSON.stringify(probe.errors.slice(0, 2))})`)) {
        recordFailure(`kernel-many-clients ${B}`, `afterwards only ${probe.pids} of ${POOL} servers could be had at once`, logExcerpt(proxy));
      }
      if (bypass === 'on') {
        const after = await statsLine(proxy);
        const d = (k: string) => num(after[k]) - num(before[k]);
        t.comment(`${B} kernel_transactions +${d('kernel_transactions')} of ~${2 * counts.processed} statements; passed_skbs +${d('kernel_passed_skbs')} no_idle_server +${d('fallback_no_idle_server')} clientsToKernel +${d('user_clientsToKernel')} clientsFromKernel +${d('user_clientsFromKernel')} frame_error +${d('fallback_frame_error')} stale_idle/unhandled +${d('fallback_unhandled')}`);
        t.equal(d('fallback_frame_error'), 0, 'no framing error in the kernel');
        t.ok(d('kernel_transactions') > 0, 'the kernel carried part of the load');
      }
    });
  }
});

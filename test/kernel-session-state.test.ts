// The kernel path hands named Parses and session-state SQL to user space (ebpf/inspect.h,
// docs/kernel-path.md "Named prepared statements and session state"): pgbench -M extended
// (unnamed statements) stays in the kernel, pgbench -M prepared prepares in user space and
// then runs its Binds in the kernel (statement names renamed in place), a SET through
// a simple Query is punted before binding, and a SET LOCAL inside a transaction that the
// kernel carries hands the pair over mid-way; a session pool keeps its SET in the kernel.
// Both modes, same result checks; counter checks with bypass on.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startProxy } from './helpers/proxy';
import { startCluster, pgClient, run, libpqEnv, withTimeout, Cluster } from './helpers/cluster';
import { KERNEL_TEST_MODES, kernelConfig, statsLine, num, pgbenchCounts, recordFailure, logExcerpt } from './helpers/kernel';

const CLIENTS = 4;
const PER_CLIENT = 150;

t.test('kernel path: named statements and session state go to user space', async (t) => {
  const c: Cluster = await startCluster(t);
  c.sql(`CREATE TABLE ks (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); ALTER TABLE ks OWNER TO app;
         INSERT INTO ks SELECT g FROM generate_series(1, 1000) g;
         CREATE SCHEMA ks_other AUTHORIZATION app;`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-ks-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // A transaction of the tpcb-like shape: UPDATE ... SET is not a SET command.
  const script = path.join(dir, 'tx.sql');
  fs.writeFileSync(script, '\\set id random(1, 1000)\nBEGIN;\nUPDATE ks SET v = v + 1 WHERE id = :id;\nSELECT v FROM ks WHERE id = :id;\nEND;\n');
  const pgbench = (proxy: { host: string; port: number }, mode: string, clients: number, perClient: number) =>
    withTimeout(
      run('pgbench', ['-n', '-M', mode, '-c', String(clients), '-j', '2', '-t', String(perClient), '-f', script], { env: libpqEnv(proxy), timeoutMs: 120000 }),
      130000,
      `pgbench -M ${mode}`,
    );

  for (const bypass of KERNEL_TEST_MODES) {
    const B = `[bypass=${bypass}]`;

    t.test(`pgbench -M extended stays in the kernel ${B}`, async (t) => {
      const cfg = await kernelConfig(c, bypass, { default_pool_size: CLIENTS, min_pool_size: CLIENTS, query_wait_timeout: 30 });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const warm = await pgbench(proxy, 'extended', CLIENTS, 10);
      t.equal(warm.code, 0, `warm-up (${warm.stderr.slice(-300)})`);
      const sumBefore = Number(c.sql('SELECT sum(v) FROM ks'));
      const before = await statsLine(proxy);
      const r = await pgbench(proxy, 'extended', CLIENTS, PER_CLIENT);
      const after = await statsLine(proxy);
      const counts = pgbenchCounts(r.stdout);
      t.equal(r.code, 0, `pgbench exit (${r.stderr.slice(-300)})`);
      t.equal(counts.processed, CLIENTS * PER_CLIENT, 'every transaction processed');
      t.equal(counts.failed, 0, 'no failed transaction');
      t.equal(Number(c.sql('SELECT sum(v) FROM ks')) - sumBefore, CLIENTS * PER_CLIENT, 'every UPDATE reached PostgreSQL once');
      if (bypass !== 'on') return;
      const d = (k: string) => num(after[k]) - num(before[k]);
      t.comment(`${B} kernel_transactions +${d('kernel_transactions')} named_statement +${d('fallback_named_statement')} session_state +${d('fallback_session_state')}`);
      t.equal(d('fallback_named_statement'), 0, 'no named_statement fallback');
      t.equal(d('fallback_session_state'), 0, 'no session_state fallback');
      if (!t.ok(d('kernel_transactions') >= CLIENTS * PER_CLIENT * 0.9, 'the transactions ran in the kernel')) {
        recordFailure('kernel-session-state extended', `kernel_transactions +${d('kernel_transactions')} for ${CLIENTS * PER_CLIENT}`, logExcerpt(proxy));
      }
    });

    t.test(`pgbench -M prepared: Parses in user space, then the kernel ${B}`, async (t) => {
      const cfg = await kernelConfig(c, bypass, { default_pool_size: 1, min_pool_size: 1, query_wait_timeout: 30 });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const warm = await pgbench(proxy, 'extended', 1, 5);
      t.equal(warm.code, 0, `warm-up (${warm.stderr.slice(-300)})`);
      const sumBefore = Number(c.sql('SELECT sum(v) FROM ks'));
      const before = bypass === 'on' ? await statsLine(proxy) : {};
      const N = 200;
      const r = await pgbench(proxy, 'prepared', 1, N);
      const counts = pgbenchCounts(r.stdout);
      t.equal(r.code, 0, `pgbench exit (${r.stderr.slice(-300)})`);
      t.equal(counts.processed, N, 'every transaction processed');
      t.equal(counts.failed, 0, 'no failed transaction');
      t.equal(Number(c.sql('SELECT sum(v) FROM ks')) - sumBefore, N, 'every UPDATE reached PostgreSQL once');
      if (bypass !== 'on') return;
      const after = await statsLine(proxy);
      const d = (k: string) => num(after[k]) - num(before[k]);
      t.comment(`${B} named_statement +${d('fallback_named_statement')} kernel_transactions +${d('kernel_transactions')} user_xacts +${d('user_xacts')}`);
      // The named Parses go to user space (named_statement); the Binds of statements the
      // server has are renamed by the verdict (test/kernel-prepared-statements.test.ts).
      if (!t.ok(d('fallback_named_statement') >= 1, `named_statement grew (got ${d('fallback_named_statement')})`)) {
        recordFailure('kernel-session-state prepared', `named_statement +${d('fallback_named_statement')} for ${N} pgbench -M prepared transactions`, logExcerpt(proxy));
      }
      t.ok(d('kernel_transactions') >= N * 0.9, `the kernel released >= 90% of them (${d('kernel_transactions')})`);
    });

    t.test(`SET through a simple Query, and SET LOCAL inside a kernel transaction ${B}`, async (t) => {
      const cfg = await kernelConfig(c, bypass, { default_pool_size: 1, min_pool_size: 1, query_wait_timeout: 30 });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const a = await pgClient(t, proxy);
      for (let i = 0; i < 5; i++) await a.query('SELECT 1'); // settled in the kernel
      const s0 = bypass === 'on' ? await statsLine(proxy) : {};
      const set = await a.query('SET search_path = ks_other, public');
      t.equal(set.command, 'SET');
      t.equal((await a.query('SHOW search_path')).rows[0].search_path, 'ks_other, public', 'SET took effect (one server)');
      const s1 = bypass === 'on' ? await statsLine(proxy) : {};
      if (bypass === 'on') t.ok(num(s1.fallback_session_state) - num(s0.fallback_session_state) >= 1, 'session_state counted');

      // Mid-transaction: BEGIN and a SELECT are carried by the kernel, SET LOCAL is not.
      for (let round = 0; round < 3; round++) {
        await a.query('BEGIN');
        t.equal((await a.query('SELECT v FROM ks WHERE id = 1')).rowCount, 1);
        await a.query("SET LOCAL work_mem = '3MB'");
        t.equal((await a.query('SHOW work_mem')).rows[0].work_mem, '3MB', `SET LOCAL in force (${round})`);
        await a.query('UPDATE ks SET v = v + 1 WHERE id = 2');
        await a.query('COMMIT');
        t.not((await a.query('SHOW work_mem')).rows[0].work_mem, '3MB', `gone after COMMIT (${round})`);
      }
      // The next transactions run in the kernel again.
      for (let i = 0; i < 20; i++) await a.query('SELECT 1');
      t.same(a.errors.map(String), [], 'no connection errors');
      if (bypass !== 'on') return;
      const s2 = await statsLine(proxy);
      const d = (k: string) => num(s2[k]) - num(s1[k]);
      t.comment(`${B} session_state +${d('fallback_session_state')} user_handoffs +${d('user_handoffs')} kernel_transactions +${d('kernel_transactions')}`);
      t.ok(d('fallback_session_state') >= 1, 'SET LOCAL counted when it reached the kernel');
      if (!t.ok(d('user_handoffs') >= 1, 'at least one hand-over mid-transaction')) {
        recordFailure('kernel-session-state SET LOCAL', `user_handoffs +${d('user_handoffs')}`, logExcerpt(proxy));
      }
      t.ok(d('kernel_transactions') >= 15, `later transactions ran in the kernel again (+${d('kernel_transactions')})`);
    });

    t.test(`a session pool keeps SET in the kernel ${B}`, async (t) => {
      const cfg = await kernelConfig(c, bypass, { pool_mode: 'session', default_pool_size: 2, query_wait_timeout: 30 });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const a = await pgClient(t, proxy);
      for (let i = 0; i < 5; i++) await a.query('SELECT 1');
      const s0 = bypass === 'on' ? await statsLine(proxy) : {};
      await a.query('SET search_path = ks_other, public');
      t.equal((await a.query('SHOW search_path')).rows[0].search_path, 'ks_other, public');
      if (bypass !== 'on') return;
      const s1 = await statsLine(proxy);
      t.equal(num(s1.fallback_session_state) - num(s0.fallback_session_state), 0, 'no session_state fallback in a session pool');
    });
  }
});

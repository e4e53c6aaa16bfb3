// pgbench through the proxy: -M simple and -M extended in transaction mode, -M prepared
// in session mode, each with zero failed transactions, and the acceptance run
// `pgbench -M extended -c 64 -j 2 -T 6` with default_pool_size 8.
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, pgbenchInit, poolingConfig, run, libpqEnv, waitUntil, backendCount, maxBackendSampler } from './helpers/cluster';

// pgbench's summary: processed and failed transaction counts.
function pgbenchCounts(out: string): { processed: number; failed: number } {
  const p = /number of transactions actually processed: (\d+)/.exec(out);
  const f = /number of failed transactions: (\d+)/.exec(out);
  return { processed: p ? Number(p[1]) : -1, failed: f ? Number(f[1]) : 0 };
}

t.test('pgbench through the proxy', async (t) => {
  const c = await startCluster(t);
  // A role of its own for the 64-client run, so its server connections can be counted apart.
  c.sql(`CREATE ROLE bench LOGIN PASSWORD 'bench-pw'`);
  // pgbench tables, created directly (not through the proxy).
  await pgbenchInit(t, c);
  c.sql('GRANT ALL ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO bench');

  for (const bypass of BYPASS_MODES) {
    const cfg = await poolingConfig(c, bypass, { users: { app: { password: 'app-pw' }, bench: { password: 'bench-pw' } } });
    const B = `[bypass=${bypass}]`;
    let proxy: ProxyHandle;
    t.before(async () => {
      proxy = await startProxy(t, cfg, { logLevel: 'info' });
    });
    const bench = async (t: tap.Test, args: string[], db: string, label: string, user = 'app', password = 'app-pw') => {
      const r = await run('pgbench', ['-n', '-r', ...args, db], { env: libpqEnv(proxy, db, user, password), timeoutMs: 45000 });
      const counts = pgbenchCounts(r.stdout);
      t.equal(r.code, 0, `${label}: pgbench exits 0 (${r.stderr.slice(-1500)})`);
      t.ok(counts.processed > 0, `${label}: ${counts.processed} transactions processed`);
      t.equal(counts.failed, 0, `${label}: zero failed transactions`);
      t.notMatch(r.stderr, /error|abort/i, `${label}: no client errors`);
      return counts;
    };
    t.test(`pgbench -M simple and -M extended in transaction mode ${B}`, async (t) => {
      const s = await bench(t, ['-M', 'simple', '-c', '16', '-j', '2', '-t', '100'], 'app', 'simple');
      t.equal(s.processed, 1600, 'simple: every transaction done');
      const e = await bench(t, ['-M', 'extended', '-c', '16', '-j', '2', '-t', '100'], 'app', 'extended');
      t.equal(e.processed, 1600, 'extended: every transaction done');
      const sel = await bench(t, ['-M', 'extended', '-S', '-c', '32', '-j', '2', '-t', '50'], 'app_one', 'extended -S, pool size 1');
      t.equal(sel.processed, 1600, 'select-only through one server');
    });
    t.test(`pgbench -M prepared in session mode ${B}`, async (t) => {
      const p = await bench(t, ['-M', 'prepared', '-c', '8', '-j', '2', '-t', '200'], 'app_session', 'prepared');
      t.equal(p.processed, 1600, 'prepared: every transaction done');
    });
    t.test(`pgbench -M extended -c 64 -j 2 -T 6 with default_pool_size 8 ${B}`, async (t) => {
      const sampler = await maxBackendSampler(t, c, 'bench', 500);
      let maxServers = 0;
      try {
        await bench(t, ['-M', 'extended', '-c', '64', '-j', '2', '-T', '6'], 'app', '64 clients', 'bench', 'bench-pw');
      } finally {
        maxServers = await sampler.stop();
      }
      t.ok(maxServers > 0 && maxServers <= 8, `64 clients served by at most 8 server connections: saw ${maxServers}`);
    });

    t.test(`the proxy stops cleanly ${B}`, async (t) => {
      t.equal(proxy.exited(), undefined, 'still running after all runs');
      const st = await proxy.stop('SIGINT', 15000);
      t.equal(st.code, 0, 'SIGINT (safe shutdown): exit 0');
      await waitUntil(() => backendCount(c, 'app') + backendCount(c, 'bench') === 0, 5000, 'server connections closed');
    });
  }
});

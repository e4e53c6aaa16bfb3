// Restart without dropping clients, in both data paths: a pgsplice with so_reuseport
// serves a pgbench run; a second pgsplice started with --takeover binds the same port and
// makes the first drain. The first keeps serving pgbench's connections to the end of the
// run (zero failed transactions), as it does four sessions held open across the takeover,
// and exits once they are gone; every new connection after
// the takeover (admin console, a second pgbench) is served by the second one.
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, run, libpqEnv, waitUntil } from './helpers/cluster';
import { pgbenchCounts, showOnce } from './helpers/workers';

t.test('takeover', async (t) => {
  const c = await startCluster(t);
  const init = await run('pgbench', ['-i', '-q', '-s', '1', '-h', c.pg.socketDir, '-p', String(c.pg.port), '-U', 'app', 'app'], { timeoutMs: 60000 });
  t.equal(init.code, 0, `pgbench -i (${init.stderr.slice(-300)})`);

  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;

    t.test(`a new pgsplice takes the port over while the old one drains ${B}`, async (t) => {
      const cfg = await proxyConfig(c, { bypass, so_reuseport: true, default_pool_size: 4, admin_users: ['app'] });
      const opts = { logLevel: 'info' as const, startTimeoutMs: 90000 };
      const old = await startProxy(t, cfg, opts);

      // Long-lived connections on the old process (no -C): they must finish there. 6 s
      // outlasts the takeover on a quiet machine (~3 s); on a slow one the held sessions
      // below still span it.
      const bench1 = run('pgbench', ['-n', '-c', '4', '-j', '2', '-T', '6', 'app'], { env: libpqEnv(old), timeoutMs: 120000 });
      await waitUntil(async () => (await showOnce(old, 'CLIENTS')).rows.filter((r) => r.database === 'app').length === 4, 30000, 'pgbench connected to the old process');
      // And four sessions that run transactions until the test ends them, whatever the
      // machine's speed: they are on the old process for the whole takeover.
      let stop = false;
      let done = 0;
      const errors: Error[] = [];
      const held = await Promise.all([1, 2, 3, 4].map(() => pgClient(t, old)));
      const loops = held.map(async (pg) => {
        while (!stop) {
          try {
            await pg.query('BEGIN');
            await pg.query('SELECT count(*) FROM pgbench_branches');
            await pg.query('COMMIT');
            done++;
          } catch (e) {
            errors.push(e as Error);
            return;
          }
        }
      });

      const next = await startProxy(t, cfg, { ...opts, extraArgs: ['--takeover'] });
      await old.waitForLog(/draining: new connections go to the other processes/, 60000);
      t.ok(await next.waitForLog(/takeover: asked peer \d+ to drain/, 30000), 'the new process asked the old one to drain');

      const doneAtDrain = done;
      // Every new connection now reaches the new process.
      for (let i = 0; i < 8; i++) {
        const a = await showOnce(next, 'CLIENTS');
        t.equal(a.pid, next.proc.pid, `admin connection ${i + 1} is served by the new process`);
      }
      const bench2 = await run('pgbench', ['-n', '-c', '2', '-T', '3', 'app'], { env: libpqEnv(next), timeoutMs: 60000 });
      const c2 = pgbenchCounts(bench2.stdout);
      t.equal(bench2.code, 0, `pgbench on the new process exits 0 (${bench2.stderr.slice(-800)})`);
      t.equal(c2.failed, 0, 'no failed transaction on the new process');
      t.ok(c2.processed > 0, `${c2.processed} transactions on the new process`);

      stop = true;
      await Promise.all(loops);
      t.same(errors.map((e) => e.message), [], 'no error in the sessions held across the takeover');
      t.ok(done > doneAtDrain, `they ran transactions on the old process while it drained (${done - doneAtDrain})`);
      for (const pg of held) await pg.end();
      t.same(held.flatMap((pg) => pg.errors), [], 'no connection error');

      const r1 = await bench1;
      const c1 = pgbenchCounts(r1.stdout);
      t.equal(r1.code, 0, `pgbench across the takeover exits 0 (${r1.stderr.slice(-800)})`);
      t.equal(c1.failed, 0, 'no failed transaction across the takeover');
      t.ok(c1.processed > 0, `${c1.processed} transactions across the takeover`);

      const exit = await old.waitExit(30000);
      t.same(exit, { code: 0, signal: null }, 'the old process exits once its clients have left');
      // The old process served pgbench's connections until pgbench ended them, then stopped.
      const log = old.logs();
      const drainAt = log.search(/draining: new connections/);
      const ended = (log.slice(drainAt).match(/app@app \S+ closed: client sent Terminate/g) ?? []).length;
      t.ok(ended >= 4, `the held sessions (and pgbench's, if it outlasted the takeover) ended on the old process after the drain began (${ended})`);
      t.ok(log.search(/drained: every client has disconnected/) > drainAt, 'then it drained');
      const pg = await pgClient(t, next);
      t.same((await pg.query('SELECT 1 AS ok')).rows, [{ ok: 1 }], 'the new process serves on');
    });
  }
});

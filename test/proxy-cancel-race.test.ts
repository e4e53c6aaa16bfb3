// A cancel never hits another client's query (PgBouncer's hold-until-done rule): with a
// pool of one server, client A cancels its own few-ms queries in a loop, at varying
// moments around their end; client B runs queries on the same server and never cancels.
// B must get no 57014, in both data paths. The race runs PGSPLICE_CANCEL_RACE_SECONDS
// per mode (default 15; the full run is 60).
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import { startCluster, proxyConfig } from './helpers/cluster';
import { login, query, sendCancel, summarize } from './helpers/pgwire';
import { prng } from './helpers/kernel';

const SECONDS = Number(process.env.PGSPLICE_CANCEL_RACE_SECONDS ?? 15);

t.test('cancel race at pool size 1', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    t.test(`A cancels its own queries, B never does, ${SECONDS}s [bypass=${bypass}]`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, { bypass, pool_mode: 'transaction', default_pool_size: 1 }), { logLevel: 'info' });
      const a = await login(proxy.port, { user: 'app', password: 'app-pw' });
      const b = await login(proxy.port, { user: 'app', password: 'app-pw' });
      t.teardown(() => {
        a.conn.destroy();
        b.conn.destroy();
      });
      const until = Date.now() + SECONDS * 1000;
      const rnd = prng(10);
      const stats = { aQueries: 0, aCancelled: 0, aOther: [] as string[], bQueries: 0, bCancelled: 0, bOther: [] as string[] };

      const runA = async () => {
        while (Date.now() < until) {
          // Mostly 2 ms queries (over before the cancel arrives: the race), some long
          // enough for the cancel to reach them (the cancels do work).
          a.conn.write(query(`SELECT pg_sleep(${rnd() < 0.2 ? 0.05 : 0.002})`));
          // Cancel at a moment around the query's end: before, during, or just after it.
          const delay = rnd() * 5;
          const cancel = new Promise<void>((r) => setTimeout(r, delay)).then(() => sendCancel(proxy.port, a.pid, a.secret));
          const r = summarize(await a.conn.readUntil('Z', 20000));
          await cancel;
          stats.aQueries++;
          for (const e of r.errors) {
            if (e.C === '57014') stats.aCancelled++;
            else stats.aOther.push(`${e.C} ${e.M}`);
          }
        }
      };
      const runB = async () => {
        while (Date.now() < until) {
          b.conn.write(query('SELECT pg_sleep(0.002)'));
          const r = summarize(await b.conn.readUntil('Z', 20000));
          stats.bQueries++;
          for (const e of r.errors) {
            if (e.C === '57014') stats.bCancelled++;
            else stats.bOther.push(`${e.C} ${e.M}`);
          }
        }
      };
      await Promise.all([runA(), runB()]);
      const forwarded = (proxy.logs().match(/cancel request forwarded/g) ?? []).length;
      t.comment(`[bypass=${bypass}] A: ${stats.aQueries} queries, ${stats.aCancelled} cancelled; B: ${stats.bQueries} queries, ${stats.bCancelled} cancelled; ${forwarded} cancels forwarded`);
      t.ok(forwarded > stats.aCancelled, `cancels were forwarded that did not cancel A's query (${forwarded}): the race was run`);
      t.ok(stats.aCancelled > 0, `A's cancels do cancel its own queries (${stats.aCancelled} of ${stats.aQueries})`);
      t.ok(stats.bQueries > 0, `B ran queries meanwhile (${stats.bQueries})`);
      t.equal(stats.bCancelled, 0, `none of B's ${stats.bQueries} queries was cancelled`);
      t.same(stats.aOther, [], 'A got no other error');
      t.same(stats.bOther, [], 'B got no other error');
      t.notOk(proxy.exited(), 'the proxy is still running');
    });
  }
});

// A client ended by a malformed message inside its transaction never costs the pool a
// server (issue 10): with a pool of 2, every in-transaction malformed case of
// proxy-hostile-input is played many times; after each, SHOW SERVERS lists every server
// idle (none left bound, resetting or waiting for a client that is gone), SHOW POOLS
// agrees, and a fresh client gets a server at once. On the kernel path these clients are
// handed over from the kernel mid-transaction, where a server could be left behind.
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import { pgClient, sleep, startCluster } from './helpers/cluster';
import { ADMIN, Row, kernelConfig, num } from './helpers/kernel';
import { login, simpleQuery, sync } from './helpers/pgwire';
import { MALFORMED, errorsOf, readToEnd } from './helpers/hostile';

const ROUNDS = Number(process.env.PGSPLICE_HOSTILE_ROUNDS ?? 20);
const POOL = 2;

t.test('malformed messages inside transactions lose no server', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    t.test(`pool of ${POOL}, ${ROUNDS} rounds of each case [bypass=${bypass}]`, async (t) => {
      const proxy = await startProxy(t, await kernelConfig(c, bypass, { default_pool_size: POOL, query_wait_timeout: 5 }), { logLevel: 'info', startTimeoutMs: 30000 });
      // Servers of the app pool that are not idle, with the rows that say so (SHOW SERVERS),
      // and the SHOW POOLS counts: with no client of the pool left, all must become idle.
      // (one admin connection for all: a psql per look is slow on a loaded machine)
      const admin = await pgClient(t, proxy, { user: ADMIN.user, password: ADMIN.password, database: 'pgsplice' });
      const show = async (what: string): Promise<Row[]> => (await admin.query(what)).rows.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, String(v)])));
      const notIdle = async (): Promise<{ servers: Row[]; pool: Row | undefined }> => {
        const servers = (await show('SHOW SERVERS')).filter((r) => r.database === 'app' && r.state !== 'idle');
        const pool = (await show('SHOW POOLS')).find((r) => r.database === 'app');
        return { servers, pool };
      };
      const poolBusy = (p: Row | undefined) => !!p && (num(p.sv_active) + num(p.sv_used) + num(p.sv_login) + num(p.cl_active) + num(p.cl_waiting) > 0);
      let cases = 0;
      let slowest = 0;
      for (let round = 0; round < ROUNDS; round++) {
        for (const m of MALFORMED) {
          const label = `round ${round + 1}: ${m.label} inside a transaction`;
          const tc = Date.now();
          const s = await login(proxy.port, { user: 'app', password: 'app-pw' });
          const begin = await simpleQuery(s.conn, 'BEGIN');
          if (begin.status !== 'T') t.fail(`${label}: BEGIN left status ${begin.status}`);
          s.conn.write(Buffer.concat([m.bytes, sync()]));
          const r = await readToEnd(s.conn);
          if (errorsOf(r.msgs).length === 0) t.fail(`${label}: no ErrorResponse (got ${r.msgs.map((x) => x.type).join('') || 'nothing'})`);
          s.conn.destroy(); // gone mid-transaction, whether or not the proxy closed it first
          // Every server idle again soon (a reset after the client left takes one round trip).
          const t0 = Date.now();
          let state = await notIdle();
          while ((state.servers.length > 0 || poolBusy(state.pool)) && Date.now() - t0 < 5000) {
            await sleep(50);
            state = await notIdle();
          }
          slowest = Math.max(slowest, Date.now() - t0);
          if (state.servers.length > 0 || poolBusy(state.pool)) {
            t.fail(`${label}: a server is neither idle nor used by a live client`, {
              servers: state.servers.map((x) => `${x.ptr} ${x.state} ${x.path} link=${x.link}`), pool: state.pool,
            });
            return;
          }
          // A fresh client gets a server at once (query_wait_timeout 5 s would fail it).
          const f = await login(proxy.port, { user: 'app', password: 'app-pw' });
          const q = await simpleQuery(f.conn, 'SELECT 1', 5000);
          f.conn.destroy();
          if (q.rows[0]?.[0] !== '1' || q.errors.length) {
            t.fail(`${label}: a fresh client got no answer`, { q });
            return;
          }
          cases++;
          if (process.env.PGSPLICE_HOSTILE_DEBUG) t.comment(`${label}: idle after ${Date.now() - t0} ms (total ${Date.now() - tc} ms)`);
        }
      }
      t.equal(cases, ROUNDS * MALFORMED.length, `${cases} clients ended mid-transaction; every server idle after each (slowest ${slowest} ms), a fresh client served after each`);
      const servers = (await show('SHOW SERVERS')).filter((r) => r.database === 'app');
      t.ok(servers.length <= POOL, `at most ${POOL} servers in the end (${servers.length})`);
      t.equal(proxy.exited(), undefined, 'the proxy still runs');
    });
  }
});

// The proxy's own login to PostgreSQL: SCRAM-SHA-256 (the other files), md5 and trust
// (here, each against a PostgreSQL configured that way), per-user pool settings, and a
// wrong upstream password giving the client a clean error instead of a hang.
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, pgConnectError, withTimeout, backendCount, waitUntil } from './helpers/cluster';

for (const method of ['md5', 'trust'] as const) {
  t.test(`PostgreSQL with ${method} authentication`, async (t) => {
    const c = await startCluster(t, { hbaMethod: method, settings: method === 'md5' ? { password_encryption: "'md5'" } : {} });
    if (method === 'md5') {
      t.match(c.pg.psql(`SELECT rolpassword FROM pg_authid WHERE rolname = 'app'`), /^md5/, 'the role has an md5 password');
    }
    for (const bypass of BYPASS_MODES) {
      t.test(`the proxy logs in with ${method} and serves clients [bypass=${bypass}]`, async (t) => {
        const proxy = await startProxy(t, await proxyConfig(c, { bypass }));
        const pg = await pgClient(t, proxy);
        t.same((await pg.query('SELECT current_user AS u, 40 + 2 AS n')).rows, [{ u: 'app', n: 42 }], 'query through a pooled server');
        const pg2 = await pgClient(t, proxy);
        t.same((await pg2.query('SELECT 1 AS x')).rows, [{ x: 1 }], 'a second client');
        t.ok(backendCount(c) >= 1, 'server connections exist in pg_stat_activity');
      });
    }
  });
}

t.test('upstream problems and per-user pool settings', async (t) => {
  const c = await startCluster(t);
  c.pg.psql(`CREATE ROLE solo LOGIN PASSWORD 'solo-pw'; GRANT ALL ON DATABASE app TO solo`);
  for (const bypass of BYPASS_MODES) {
    t.test(`a wrong upstream password: the client gets a clean error, no hang [bypass=${bypass}]`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, {
        bypass,
        databases: {
          app: { host: '127.0.0.1', port: c.pg.port, dbname: 'app' },
          badfixed: { host: '127.0.0.1', port: c.pg.port, dbname: 'app', user: 'app', password: 'not-the-password' },
        },
      }));
      const e = await withTimeout(
        (async () => {
          try {
            const pg = await pgClient(t, proxy, { database: 'badfixed' });
            await pg.query('SELECT 1');
            return undefined;
          } catch (err: any) {
            return err;
          }
        })(),
        15000,
        'client of a database whose server login fails',
      );
      t.ok(e, 'the client gets an error');
      t.match(e?.code ?? '', /^(28P01|08|57P03)/, `SQLSTATE ${e?.code} (${e?.message})`);
      const ok = await pgClient(t, proxy);
      t.same((await ok.query('SELECT 1 AS x')).rows, [{ x: 1 }], 'other databases are still served');
    });

    t.test(`per-user pool_size and pool_mode [bypass=${bypass}]`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, {
        bypass,
        default_pool_size: 4,
        query_wait_timeout: 30,
        users: { app: { password: 'app-pw' }, solo: { password: 'solo-pw', pool_size: 1, pool_mode: 'session' } },
      }));
      // solo: session mode with one server: a second solo client waits until the first leaves.
      const s1 = await pgClient(t, proxy, { user: 'solo', password: 'solo-pw' });
      await s1.query(`SET TimeZone = 'Asia/Tokyo'`);
      const s1pid = (await s1.query('SELECT pg_backend_pid() AS p')).rows[0].p;
      const s2 = await pgClient(t, proxy, { user: 'solo', password: 'solo-pw' }).catch((e) => e);
      let s2done = false;
      const s2q = (s2 instanceof Error ? Promise.reject(s2) : s2.query('SELECT pg_backend_pid() AS p, current_setting($1) AS tz', ['TimeZone'])).then((r: any) => {
        s2done = true;
        return r.rows[0];
      });
      s2q.catch(() => undefined);
      await new Promise((r) => setTimeout(r, 600));
      t.notOk(s2done, 'session mode, pool_size 1: the second solo client waits for the server');
      t.equal((await s1.query('SHOW TimeZone')).rows[0].TimeZone, 'Asia/Tokyo', 'the first keeps its session');
      await s1.end();
      const row: any = await withTimeout(s2q, 10000, 'second solo client');
      // The server is reset and reused, or closed and replaced; never two servers for a pool of one.
      t.ok(row.p === s1pid || c.pg.psql(`SELECT count(*) FROM pg_stat_activity WHERE pid = ${s1pid}`) === '0', `then gets the server back (${s1pid} -> ${row.p}, the old one reused or closed)`);
      t.ok(backendCount(c, 'solo') <= 1, 'never more than one solo server');
      t.not(row.tz, 'Asia/Tokyo', 'reset between the two sessions');
      // app: transaction mode, pool size 4: four concurrent queries run side by side. Each
      // waits on an advisory lock a direct connection holds (a user of its own), so all four
      // are seen at once however slow the machine, and then released.
      c.sql(`DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'gate') THEN CREATE ROLE gate LOGIN PASSWORD 'gate-pw'; END IF; END $$`);
      const gate = await pgClient(t, { host: '127.0.0.1', port: c.pg.port }, { user: 'gate', password: 'gate-pw' });
      await gate.query('SELECT pg_advisory_lock(4243)');
      const apps = await Promise.all([0, 1, 2, 3].map(() => pgClient(t, proxy)));
      const queries = Promise.all(apps.map((a) => a.query('SELECT pg_advisory_xact_lock_shared(4243)')));
      const waiting = () => backendCount(c, 'app', `state = 'active' AND query LIKE '%pg_advisory_xact_lock_shared%'`);
      const maxActive = await waitUntil(() => (waiting() === 4 ? 4 : 0), 30_000, 'four queries at once').catch(() => waiting());
      await gate.query('SELECT pg_advisory_unlock(4243)');
      await queries;
      t.equal(maxActive, 4, `app's pool of 4 runs the four queries side by side (saw ${maxActive} at once)`);
    });
  }
});

// Through pgsplice a client sees what PostgreSQL shows it on a direct connection. Every
// check runs the same statements on a direct connection and through the proxy, in session
// and transaction mode, and compares the two answers (no expectation is written down):
// 1. startup settings (PGDATESTYLE, PGTZ, PGOPTIONS -c) are the session defaults that
//    RESET, RESET ALL and DISCARD ALL return to, with pg_settings.source 'client';
// 2. ALTER DATABASE ... SET reaches clients on servers opened after it (no pool cache);
// 3. a client that left a superuser-only setting and SET ROLE on a server never costs the
//    next client an error, and its own settings follow it in the right order;
// 4. session pooling reuses its servers (resets sent one statement at a time) and the
//    next client finds a clean session.
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, run, libpqEnv, Cluster, Endpoint, PgTestClient } from './helpers/cluster';

const POOL_MODES = ['session', 'transaction'] as const;

// psql's output (errors included) for a script, on an endpoint.
async function psqlOut(ep: Endpoint, sql: string, env: NodeJS.ProcessEnv = {}): Promise<string> {
  const r = await run('psql', ['-X', '-A', '-t', '-f', '-'], { env: { ...libpqEnv(ep), ...env }, input: sql, timeoutMs: 30000 });
  return `${r.stdout}${r.stderr}`.replace(/^psql:<stdin>/gm, 'psql');
}

// Each statement's rows, or its SQLSTATE.
async function answers(c: PgTestClient, sqls: string[]): Promise<unknown[]> {
  const out: unknown[] = [];
  for (const q of sqls) {
    try {
      out.push((await c.query(q)).rows);
    } catch (e) {
      out.push({ error: (e as { code?: string }).code ?? String(e) });
    }
  }
  return out;
}

t.test('pgsplice answers as PostgreSQL does', async (t) => {
  const c: Cluster = await startCluster(t);
  const direct: Endpoint = { host: '127.0.0.1', port: c.pg.port };
  // A role the client may SET ROLE to, which may not change lo_compat_privileges; the
  // client itself may (PostgreSQL 15's GRANT SET ON PARAMETER).
  c.sql(`CREATE ROLE lesser NOLOGIN; GRANT lesser TO app; GRANT SET ON PARAMETER lo_compat_privileges TO app`);

  for (const bypass of BYPASS_MODES) {
    for (const mode of POOL_MODES) {
      const B = `[${mode}, bypass=${bypass}]`;
      let proxy: ProxyHandle;
      t.test(`start the proxy ${B}`, async () => {
        proxy = await startProxy(t, await proxyConfig(c, {
          bypass, pool_mode: mode, default_pool_size: 1, query_wait_timeout: 30, admin_users: ['app'],
        }));
      });

      t.test(`startup settings are the session defaults ${B}`, async (t) => {
        const env = { PGDATESTYLE: 'Postgres, MDY', PGTZ: 'PST8PDT', PGOPTIONS: '-c work_mem=3MB -c intervalstyle=sql_standard' };
        const script = [
          `SET datestyle = iso;`, `RESET datestyle;`, `SHOW datestyle;`,
          `SET timezone = 'UTC';`, `SET work_mem = '9MB';`, `RESET ALL;`, `SHOW timezone;`, `SHOW work_mem;`, `SHOW intervalstyle;`,
          `SELECT name, setting, source FROM pg_settings WHERE name IN ('DateStyle', 'TimeZone', 'work_mem', 'IntervalStyle') ORDER BY name;`,
          `SET intervalstyle = postgres;`, `DISCARD ALL;`, `SHOW intervalstyle;`, `SELECT interval '1 day 2 hours';`,
          `SELECT '2024-01-15 12:00'::timestamptz;`,
        ].join('\n');
        const want = await psqlOut(direct, script, env);
        t.match(want, /Postgres, MDY/, 'the direct answer shows the startup DateStyle');
        t.equal(await psqlOut(proxy, script, env), want, 'the same through pgsplice');
      });

      t.test(`server defaults changed with ALTER DATABASE reach new servers ${B}`, async (t) => {
        await psqlOut(proxy, 'SELECT 1;'); // the pool exists and has a server
        c.sql(`ALTER DATABASE app SET intervalstyle = 'postgres_verbose'`);
        t.teardown(() => c.sql(`ALTER DATABASE app RESET intervalstyle`));
        const r = await run('psql', ['-X', '-A', '-t', '-c', 'RECONNECT app'], { env: libpqEnv(proxy, 'pgsplice') });
        t.equal(r.code, 0, `RECONNECT ${r.stderr}`);
        const script = `SHOW intervalstyle;\nSELECT interval '1 day';\nRESET intervalstyle;\nSHOW intervalstyle;\nSELECT setting, source FROM pg_settings WHERE name = 'IntervalStyle';\n`;
        const want = await psqlOut(direct, script);
        t.match(want, /postgres_verbose/);
        t.equal(await psqlOut(proxy, script), want, 'the same through pgsplice');
      });

      t.test(`another client's role and superuser-only settings never reach the next client ${B}`, async (t) => {
        const run1 = async (ep: Endpoint) => {
          const a = await pgClient(t, ep);
          const first = await answers(a, [
            `SET lo_compat_privileges = on`, `SET ROLE lesser`, `SHOW lo_compat_privileges`, `SELECT current_user`,
            `RESET lo_compat_privileges`, `SHOW lo_compat_privileges`,
          ]);
          await answers(a, [`RESET ROLE`, `SET lo_compat_privileges = on`, `SET ROLE lesser`]);
          // Transaction mode: B runs on A's server (pool size 1) between A's transactions,
          // then after A left. Session mode: B gets the server once A left.
          const b = mode === 'transaction' ? await pgClient(t, ep) : null;
          const mid = b ? await answers(b, [`SHOW lo_compat_privileges`, `SELECT current_user`, `SHOW role`]) : [];
          const again = await answers(a, [`SHOW lo_compat_privileges`, `SELECT current_user`, `SHOW role`]);
          await a.end();
          const b2 = b ?? await pgClient(t, ep);
          const after = await answers(b2, [`SHOW lo_compat_privileges`, `SELECT current_user`, `SHOW role`, `SELECT 1 AS ok`]);
          await b2.end();
          return { first, mid, again, after, errors: [...a.errors, ...b2.errors].map(String) };
        };
        const want = await run1(direct);
        t.same(await run1(proxy), want, 'the same through pgsplice');
        t.same(await run1(proxy), want, 'and again on the reused server');
      });

      t.test(`a server is reused after a client left, clean ${B}`, async (t) => {
        const leave = async (ep: Endpoint) => {
          const a = await pgClient(t, ep);
          const pid = (await a.query('SELECT pg_backend_pid() AS p')).rows[0].p as number;
          // Pins in transaction mode, so the server gets DISCARD ALL when the client leaves.
          await answers(a, [`SET work_mem = '7MB'`, `CREATE TEMP TABLE gone (x int)`, `BEGIN`, `SELECT 1`]);
          await a.end();
          return pid;
        };
        const look = async (ep: Endpoint) => {
          const b = await pgClient(t, ep);
          const out = await answers(b, [`SHOW work_mem`, `SELECT count(*)::int AS n FROM pg_class WHERE relname = 'gone'`, `SELECT pg_backend_pid() AS p`]);
          await b.end();
          return out;
        };
        await leave(direct);
        const want = (await look(direct)).slice(0, 2);
        const pids = new Set<number>();
        for (let i = 0; i < 4; i++) {
          pids.add(await leave(proxy));
          const got = await look(proxy);
          t.same(got.slice(0, 2), want, `round ${i}: the next client sees what a new session sees`);
          pids.add((got[2] as { p: number }[])[0].p);
        }
        t.equal(pids.size, 1, 'one server served every client (reset, not replaced)');
      });
    }
  }
});

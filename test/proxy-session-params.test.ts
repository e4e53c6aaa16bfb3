// Session parameters in transaction mode: client_encoding, DateStyle, TimeZone,
// IntervalStyle, standard_conforming_strings and application_name set by a client
// (in its startup packet or with SET) follow it to whichever server it gets, and no
// other client ever sees them. Pool size 1 makes every client share one server.
// Also: session mode resets a server (server_reset_query) before the next client.
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, withTimeout } from './helpers/cluster';
import { login, simpleQuery, parseParameterStatus, Session } from './helpers/pgwire';

async function show(c: { query: (q: string) => Promise<{ rows: any[] }> }, name: string): Promise<string> {
  const r = await withTimeout(c.query(`SHOW ${name}`), 10000, `SHOW ${name}`);
  return String(Object.values(r.rows[0])[0]);
}
async function rawShow(s: Session, name: string): Promise<{ value: string; reported: [string, string][] }> {
  const r = await withTimeout(simpleQuery(s.conn, `SHOW ${name}`), 10000, `raw SHOW ${name}`);
  if (r.errors.length) throw new Error(JSON.stringify(r.errors[0]));
  const reported = r.messages.filter((m) => m.type === 'S').map((m) => parseParameterStatus(m.body));
  return { value: String(r.rows[0]?.[0]), reported };
}

t.test('session parameters', async (t) => {
  const c = await startCluster(t);
  const defaults: Record<string, string> = {};
  for (const k of ['TimeZone', 'DateStyle', 'IntervalStyle', 'standard_conforming_strings', 'client_encoding', 'application_name']) {
    defaults[k] = c.pg.psql(`SHOW ${k}`, 'app');
  }
  defaults.application_name = '';

  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;
    let proxy: ProxyHandle;
    t.before(async () => {
      proxy = await startProxy(t, await proxyConfig(c, {
        bypass,
        pool_mode: 'transaction',
        default_pool_size: 1,
        query_wait_timeout: 20,
        databases: {
          app: { host: '127.0.0.1', port: c.pg.port, dbname: 'app' },
          app_session: { host: '127.0.0.1', port: c.pg.port, dbname: 'app', pool_mode: 'session', pool_size: 1 },
        },
      }));
    });

    t.test(`SET TimeZone: two clients interleaving on one server each see their own ${B}`, async (t) => {
      const a = await pgClient(t, proxy);
      const b = await pgClient(t, proxy);
      const cc = await pgClient(t, proxy);
      await a.query(`SET TimeZone = 'Asia/Tokyo'`);
      await b.query(`SET TimeZone = 'America/New_York'`);
      const pids = new Set<number>();
      for (let i = 0; i < 5; i++) {
        t.equal(await show(a, 'TimeZone'), 'Asia/Tokyo', `round ${i}: A sees Asia/Tokyo`);
        t.equal(await show(b, 'TimeZone'), 'America/New_York', `round ${i}: B sees America/New_York`);
        t.equal(await show(cc, 'TimeZone'), defaults.TimeZone, `round ${i}: C sees the server default`);
        await a.query('BEGIN');
        t.equal(await show(a, 'TimeZone'), 'Asia/Tokyo', `round ${i}: A inside a transaction`);
        t.equal((await a.query(`SELECT extract(timezone_hour FROM now())::int AS h`)).rows[0].h, 9, 'and the server computes with it');
        await a.query('COMMIT');
        await b.query('BEGIN');
        t.equal((await b.query(`SELECT extract(timezone_hour FROM '2024-01-15 12:00'::timestamptz)::int AS h`)).rows[0].h, -5, 'B computes in New York time');
        await b.query('COMMIT');
        for (const x of [a, b, cc]) pids.add((await x.query('SELECT pg_backend_pid() AS p')).rows[0].p);
      }
      t.equal(pids.size, 1, 'all three clients used the same single server');
    });

    t.test(`each tracked parameter, set with SET, stays with its client ${B}`, async (t) => {
      const cases: [string, string, string][] = [
        ['DateStyle', `'SQL, DMY'`, 'SQL, DMY'],
        ['IntervalStyle', `'iso_8601'`, 'iso_8601'],
        ['standard_conforming_strings', 'off', 'off'],
        ['application_name', `'alpha-app'`, 'alpha-app'],
        ['client_encoding', `'LATIN1'`, 'LATIN1'],
      ];
      for (const [name, setTo, expect] of cases) {
        const a = await pgClient(t, proxy);
        const b = await pgClient(t, proxy);
        await a.query(`SET ${name} = ${setTo}`);
        for (let i = 0; i < 3; i++) {
          t.equal(await show(a, name), expect, `${name}: A sees ${expect} (round ${i})`);
          t.equal(await show(b, name), defaults[name], `${name}: B sees the default ${defaults[name]} (round ${i})`);
        }
        await a.end();
        await b.end();
      }
      // Behaviour, not only SHOW: interval output and backslash handling.
      const a = await pgClient(t, proxy);
      const b = await pgClient(t, proxy);
      await a.query(`SET IntervalStyle = 'iso_8601'`);
      await a.query('SET standard_conforming_strings = off');
      t.equal((await b.query(`SELECT (interval '1 day 2 hours')::text AS i`)).rows[0].i, '1 day 02:00:00', 'B: postgres interval style');
      t.equal((await a.query(`SELECT (interval '1 day 2 hours')::text AS i`)).rows[0].i, 'P1DT2H', 'A: iso_8601 interval style');
      t.equal((await b.query(`SELECT length('a\\b') AS n`)).rows[0].n, 3, 'B: standard_conforming_strings on (backslash is literal)');
      t.equal((await a.query(`SELECT length(E'a\\\\b') AS n`)).rows[0].n, 3, 'A: still answers');
    });

    t.test(`parameters from the startup packet follow each client ${B}`, async (t) => {
      const a = await withTimeout(login(proxy.port, { user: 'app', password: 'app-pw', params: { TimeZone: 'Asia/Tokyo', DateStyle: 'SQL, DMY', application_name: 'alpha', IntervalStyle: 'iso_8601' } }), 10000, 'login A');
      const b = await withTimeout(login(proxy.port, { user: 'app', password: 'app-pw', params: { TimeZone: 'America/New_York', application_name: 'beta' } }), 10000, 'login B');
      t.teardown(() => {
        a.conn.destroy();
        b.conn.destroy();
      });
      t.equal(a.params.get('TimeZone'), 'Asia/Tokyo', 'A: ParameterStatus TimeZone at login');
      t.equal(a.params.get('application_name'), 'alpha', 'A: ParameterStatus application_name at login');
      t.equal(b.params.get('TimeZone'), 'America/New_York', 'B: ParameterStatus TimeZone at login');
      for (let i = 0; i < 3; i++) {
        const at = await rawShow(a, 'TimeZone');
        t.equal(at.value, 'Asia/Tokyo', `A TimeZone (round ${i})`);
        t.equal((await rawShow(a, 'DateStyle')).value, 'SQL, DMY', `A DateStyle (round ${i})`);
        t.equal((await rawShow(a, 'IntervalStyle')).value, 'iso_8601', `A IntervalStyle (round ${i})`);
        t.equal((await rawShow(a, 'application_name')).value, 'alpha', `A application_name (round ${i})`);
        const bt = await rawShow(b, 'TimeZone');
        t.equal(bt.value, 'America/New_York', `B TimeZone (round ${i})`);
        t.equal((await rawShow(b, 'DateStyle')).value, defaults.DateStyle, `B DateStyle default (round ${i})`);
        t.equal((await rawShow(b, 'IntervalStyle')).value, defaults.IntervalStyle, `B IntervalStyle default (round ${i})`);
        t.equal((await rawShow(b, 'application_name')).value, 'beta', `B application_name (round ${i})`);
        // Any ParameterStatus a client receives carries its own values, never the other's.
        for (const [k, v] of at.reported) if (k === 'TimeZone') t.equal(v, 'Asia/Tokyo', 'A is never told another TimeZone');
        for (const [k, v] of bt.reported) if (k === 'TimeZone') t.equal(v, 'America/New_York', 'B is never told another TimeZone');
      }
      // psql/libpq sends PGTZ-like settings through PGOPTIONS; pg sends application_name.
      const p = await pgClient(t, proxy, { application_name: 'gamma' } as any);
      t.equal(await show(p, 'application_name'), 'gamma', 'pg client application_name from startup');
      t.equal((await rawShow(a, 'application_name')).value, 'alpha', 'A keeps alpha');
    });

    t.test(`ParameterStatus after SET is the client's own, never another client's ${B}`, async (t) => {
      const a = await login(proxy.port, { user: 'app', password: 'app-pw' });
      t.teardown(() => a.conn.destroy());
      const r = await simpleQuery(a.conn, `SET TimeZone = 'Europe/Paris'`);
      const ps = r.messages.filter((m) => m.type === 'S').map((m) => parseParameterStatus(m.body));
      t.same(ps.filter(([k]) => k === 'TimeZone'), [['TimeZone', 'Europe/Paris']], 'A is told its new TimeZone');
      const b = await pgClient(t, proxy);
      await b.query(`SET TimeZone = 'Australia/Sydney'`);
      await b.query('SELECT 1');
      const seen: [string, string][] = [];
      for (let i = 0; i < 3; i++) {
        const x = await simpleQuery(a.conn, 'SELECT 1');
        seen.push(...x.messages.filter((m) => m.type === 'S').map((m) => parseParameterStatus(m.body)));
      }
      t.notOk(seen.some(([k, v]) => k === 'TimeZone' && v !== 'Europe/Paris'), `A never receives B's TimeZone (got ${JSON.stringify(seen)})`);
      t.equal((await rawShow(a, 'TimeZone')).value, 'Europe/Paris');
    });

    t.test(`RESET, RESET ALL and SET LOCAL ${B}`, async (t) => {
      const a = await pgClient(t, proxy);
      const b = await pgClient(t, proxy);
      await a.query(`SET TimeZone = 'Asia/Kolkata'`);
      await b.query(`SET TimeZone = 'Europe/Berlin'`);
      await a.query('RESET TimeZone');
      t.equal(await show(a, 'TimeZone'), defaults.TimeZone, 'A after RESET sees the default');
      t.equal(await show(b, 'TimeZone'), 'Europe/Berlin', 'B unchanged');
      t.equal(await show(a, 'TimeZone'), defaults.TimeZone, 'A still the default after B ran');
      await a.query(`SET DateStyle = 'German'`);
      await a.query(`SET TimeZone = 'Asia/Kolkata'`);
      await b.query('SELECT 1');
      await a.query('RESET ALL');
      t.equal(await show(a, 'DateStyle'), defaults.DateStyle, 'A after RESET ALL: DateStyle default');
      t.equal(await show(a, 'TimeZone'), defaults.TimeZone, 'A after RESET ALL: TimeZone default');
      t.equal(await show(b, 'TimeZone'), 'Europe/Berlin', 'B unchanged by A');
      await a.query('BEGIN');
      await a.query(`SET LOCAL TimeZone = 'Pacific/Auckland'`);
      t.equal(await show(a, 'TimeZone'), 'Pacific/Auckland', 'SET LOCAL inside the transaction');
      await a.query('COMMIT');
      t.equal(await show(a, 'TimeZone'), defaults.TimeZone, 'SET LOCAL ends with the transaction');
      t.equal(await show(b, 'TimeZone'), 'Europe/Berlin', 'B never sees Auckland');
      // A SET inside a rolled-back transaction is undone.
      await a.query('BEGIN');
      await a.query(`SET TimeZone = 'Asia/Seoul'`);
      await a.query('ROLLBACK');
      t.equal(await show(b, 'TimeZone'), 'Europe/Berlin', 'B unaffected');
      t.equal(await show(a, 'TimeZone'), defaults.TimeZone, 'rolled-back SET is undone for A');
    });

    t.test(`session mode: the next client gets a reset server ${B}`, async (t) => {
      const a = await pgClient(t, proxy, { database: 'app_session' });
      await a.query(`SET TimeZone = 'Asia/Tokyo'`);
      await a.query('CREATE TEMP TABLE session_tmp (x int)');
      await a.query('PREPARE session_stmt AS SELECT 1');
      await a.query('LISTEN session_channel');
      await a.query(`SELECT pg_advisory_lock(4242)`);
      const pidA = (await a.query('SELECT pg_backend_pid() AS p')).rows[0].p;
      await a.end();
      const b = await pgClient(t, proxy, { database: 'app_session' });
      const pidB = (await b.query('SELECT pg_backend_pid() AS p')).rows[0].p;
      t.equal(await show(b, 'TimeZone'), defaults.TimeZone, 'TimeZone reset');
      t.same((await b.query(`SELECT count(*)::int AS n FROM pg_class WHERE relname = 'session_tmp' AND relpersistence = 't'`)).rows, [{ n: 0 }], 'temp table gone');
      t.same((await b.query(`SELECT count(*)::int AS n FROM pg_prepared_statements`)).rows, [{ n: 0 }], 'prepared statement gone');
      t.same((await b.query(`SELECT count(*)::int AS n FROM pg_listening_channels()`)).rows, [{ n: 0 }], 'no LISTEN left');
      t.same((await b.query(`SELECT pg_try_advisory_lock(4242) AS got`)).rows, [{ got: true }], 'advisory lock released');
      t.comment(`server of A ${pidA}, of B ${pidB}`);
    });
  }
});

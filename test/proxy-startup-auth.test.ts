// Client authentication and startup through the real proxy against a real PostgreSQL:
// scram-sha-256 / md5 / plain / trust, stored SCRAM verifiers and md5 hashes, wrong
// passwords, unknown databases and users, SSLRequest/GSSENCRequest, the parameters
// reported after login, and a unix-socket listener.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, pgConnectError, psqlVia, run, libpqEnv, freePort } from './helpers/cluster';
import { login, md5Hash, scramVerifier, PgError, simpleQuery, RawConn, sslRequest, gssencRequest, startupMessage, parseFields } from './helpers/pgwire';

t.jobs = 1;

t.test('startup and authentication', async (t) => {
  const c = await startCluster(t);
  // A second role for stored-hash tests; the proxy logs in to PostgreSQL as "app"
  // through a database entry with a fixed user (the stored hash cannot log in upstream).
  for (const bypass of BYPASS_MODES) {
    // The subtests that need nothing but the default config (scram-sha-256) share one proxy
    // per mode, started by the first of them (a start with bypass: on costs ~2 s of CPU).
    let shared: Promise<ProxyHandle> | undefined;
    const defaultProxy = async () => (shared ??= proxyConfig(c, { bypass }).then((cfg) => startProxy(t, cfg)));
    for (const auth of ['scram-sha-256', 'md5', 'plain', 'trust'] as const) {
      t.test(`auth_type ${auth}: psql, pg and raw clients log in [bypass=${bypass}]`, async (t) => {
        const proxy = auth === 'scram-sha-256' ? await defaultProxy() : await startProxy(t, await proxyConfig(c, { auth_type: auth, bypass }));
        const pg = await pgClient(t, proxy);
        const r = await pg.query('SELECT current_user AS u, current_database() AS d, 1 + 1 AS two');
        t.same(r.rows, [{ u: 'app', d: 'app', two: 2 }], 'pg client runs a query as app on app');
        t.equal(await psqlVia(proxy, 'SELECT current_user'), 'app', 'psql logs in and runs a query');
        const s = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app' });
        const expected = { 'scram-sha-256': 10, md5: 5, plain: 3, trust: 0 }[auth];
        t.equal(s.authCodes[0], expected, `first authentication request is ${expected}`);
        t.equal(s.authCodes[s.authCodes.length - 1], 0, 'ends with AuthenticationOk');
        if (auth === 'scram-sha-256') t.ok(s.saslMechanisms.includes('SCRAM-SHA-256'), 'offers SCRAM-SHA-256');
        const q = await simpleQuery(s.conn, 'SELECT 42');
        t.same(q.rows, [['42']], 'raw client gets its row');
        s.conn.destroy();
        if (auth === 'trust') {
          const pg2 = await pgClient(t, proxy, { password: 'anything-at-all' });
          t.same((await pg2.query('SELECT 1 AS x')).rows, [{ x: 1 }], 'trust: any password is accepted');
        } else {
          const e = await pgConnectError(proxy, { password: 'wrong-pw' });
          t.equal(e.code, '28P01', `wrong password -> 28P01 (${e.message})`);
          const psql = await run('psql', ['-X', '-c', 'SELECT 1'], { env: libpqEnv(proxy, 'app', 'app', 'wrong-pw'), timeoutMs: 15000 });
          t.not(psql.code, 0, 'psql with a wrong password fails');
          t.match(psql.stderr, /password authentication failed|authentication failed/i, 'psql says authentication failed');
        }
      });
    }

    t.test(`stored SCRAM verifier and md5 hash [bypass=${bypass}]`, async (t) => {
      const cfg = await proxyConfig(c, {
        bypass,
        databases: {
          app: { host: '127.0.0.1', port: c.pg.port, dbname: 'app' },
          appfixed: { host: '127.0.0.1', port: c.pg.port, dbname: 'app', user: 'app', password: 'app-pw' },
        },
        users: {
          app: { password: 'app-pw' },
          verifier_user: { password: scramVerifier('v-secret') },
        },
      });
      // A stored md5 hash cannot answer SCRAM and a verifier cannot answer md5: one proxy each.
      const proxy = await startProxy(t, { ...cfg, auth_type: 'scram-sha-256' });
      const pg = await pgClient(t, proxy, { user: 'verifier_user', password: 'v-secret', database: 'appfixed' });
      t.same((await pg.query('SELECT current_user AS u')).rows, [{ u: 'app' }], 'verifier user logs in, served by the fixed server user');
      const bad = await pgConnectError(proxy, { user: 'verifier_user', password: 'not-it', database: 'appfixed' });
      t.equal(bad.code, '28P01', 'wrong password against a verifier -> 28P01');
      await proxy.stop('SIGINT');

      const md5Users = { app: { password: 'app-pw' }, md5_user: { password: md5Hash('md5_user', 'm-secret') } };
      const proxyMd5 = await startProxy(t, { ...cfg, users: md5Users, listen: { host: '127.0.0.1', port: await freePort() }, auth_type: 'md5' });
      const pgm = await pgClient(t, proxyMd5, { user: 'md5_user', password: 'm-secret', database: 'appfixed' });
      t.same((await pgm.query('SELECT 7 AS n')).rows, [{ n: 7 }], 'md5-hash user logs in with md5');
      const badm = await pgConnectError(proxyMd5, { user: 'md5_user', password: 'nope', database: 'appfixed' });
      t.equal(badm.code, '28P01', 'wrong md5 password -> 28P01');
    });

    t.test(`unknown database and unknown user [bypass=${bypass}]`, async (t) => {
      const proxy = await defaultProxy();
      const e1 = await pgConnectError(proxy, { database: 'no_such_db' });
      t.equal(e1.code, '3D000', `unknown database -> 3D000 (${e1.message})`);
      t.match(e1.message, /no_such_db/, 'the message names the database');
      const e2 = await pgConnectError(proxy, { user: 'no_such_user', password: 'x' });
      t.equal(e2.code, '28P01', `unknown user -> 28P01 (${e2.message})`);
      // Raw: the ErrorResponse arrives and then the connection is closed.
      const conn = await RawConn.connect(proxy.port);
      conn.write(startupMessage({ user: 'app', database: 'no_such_db' }));
      const { msgs, closed } = await conn.readAllUntilClose(5000);
      const err = msgs.find((m) => m.type === 'E');
      t.ok(err, 'an ErrorResponse is sent');
      if (err) t.equal(parseFields(err.body).C, '3D000', 'raw: 3D000');
      t.ok(closed, 'then the connection is closed');
      conn.destroy();
      const pg = await pgClient(t, proxy);
      t.same((await pg.query('SELECT 1 AS ok')).rows, [{ ok: 1 }], 'the proxy keeps serving');
    });

    t.test(`SSLRequest and GSSENCRequest answered N, then plain login [bypass=${bypass}]`, async (t) => {
      const proxy = await defaultProxy();
      const s1 = await login(proxy.port, { user: 'app', password: 'app-pw', sslFirst: true });
      t.same((await simpleQuery(s1.conn, 'SELECT 1')).rows, [['1']], 'login after SSLRequest works');
      s1.conn.destroy();
      const s2 = await login(proxy.port, { user: 'app', password: 'app-pw', gssFirst: true });
      t.same((await simpleQuery(s2.conn, 'SELECT 2')).rows, [['2']], 'login after GSSENCRequest works');
      s2.conn.destroy();
      const s3 = await login(proxy.port, { user: 'app', password: 'app-pw', gssFirst: true, sslFirst: true });
      t.same((await simpleQuery(s3.conn, 'SELECT 3')).rows, [['3']], 'login after GSSENCRequest then SSLRequest works');
      s3.conn.destroy();
      // The 'N' is exactly one byte, nothing else before the client speaks again.
      const conn = await RawConn.connect(proxy.port);
      conn.write(sslRequest());
      t.equal((await conn.readBytes(1)).toString('latin1'), 'N', 'SSLRequest -> N');
      await new Promise((r) => setTimeout(r, 200));
      t.equal(conn.pending, 0, 'nothing follows the N');
      conn.destroy();
      const conn2 = await RawConn.connect(proxy.port);
      conn2.write(gssencRequest());
      t.equal((await conn2.readBytes(1)).toString('latin1'), 'N', 'GSSENCRequest -> N');
      conn2.destroy();
      // psql with sslmode=prefer falls back to plain text.
      const r = await run('psql', ['-X', '-A', '-t', '-c', 'SELECT 5'], { env: { ...libpqEnv(proxy), PGSSLMODE: 'prefer', PGGSSENCMODE: 'prefer' }, timeoutMs: 15000 });
      t.equal(r.code, 0, `psql sslmode=prefer connects (${r.stderr})`);
      t.equal(r.stdout.trim(), '5', 'and gets its answer');
      const r2 = await run('psql', ['-X', '-c', 'SELECT 5'], { env: { ...libpqEnv(proxy), PGSSLMODE: 'require' }, timeoutMs: 15000 });
      t.not(r2.code, 0, 'psql sslmode=require is refused (no TLS yet)');
    });

    t.test(`parameters reported after login [bypass=${bypass}]`, async (t) => {
      const proxy = await defaultProxy();
      const s = await login(proxy.port, { user: 'app', password: 'app-pw', params: { application_name: 'param-check' } });
      for (const k of ['server_version', 'client_encoding', 'DateStyle', 'TimeZone', 'integer_datetimes', 'standard_conforming_strings', 'application_name', 'server_encoding', 'IntervalStyle', 'is_superuser', 'session_authorization']) {
        t.ok(s.params.has(k), `ParameterStatus ${k} = ${s.params.get(k)}`);
      }
      t.match(s.params.get('server_version') ?? '', /^1[5-9]/, 'server_version is the real server version');
      t.equal(s.params.get('integer_datetimes'), 'on');
      t.equal(s.params.get('standard_conforming_strings'), 'on');
      t.equal(s.params.get('application_name'), 'param-check', 'application_name from the startup packet');
      t.equal(s.params.get('session_authorization') ?? 'app', 'app');
      t.ok(s.pid !== 0 || s.secret !== 0, 'BackendKeyData was sent');
      const types = s.loginMessages.map((m) => m.type);
      const firstS = types.indexOf('S');
      const lastR = types.lastIndexOf('R');
      t.ok(lastR < firstS, 'AuthenticationOk comes before the ParameterStatus messages');
      t.ok(types.indexOf('K') > lastR, 'BackendKeyData after authentication');
      t.equal(types[types.length - 1], 'Z', 'ReadyForQuery last');
      t.equal(s.loginMessages[s.loginMessages.length - 1].body.toString('latin1'), 'I', "ReadyForQuery 'I'");
      const q = await simpleQuery(s.conn, 'SHOW application_name');
      t.same(q.rows, [['param-check']], 'the server sees the application_name too');
      // The key is the proxy's, not a PostgreSQL backend pid.
      const pids = c.sql(`SELECT string_agg(pid::text, ',') FROM pg_stat_activity`).split(',');
      t.notOk(pids.includes(String(s.pid)), 'BackendKeyData pid is not a real backend pid');
      s.conn.destroy();
      // Two clients get different keys.
      const a = await login(proxy.port, { user: 'app', password: 'app-pw' });
      const b = await login(proxy.port, { user: 'app', password: 'app-pw' });
      t.not(`${a.pid}/${a.secret}`, `${b.pid}/${b.secret}`, 'each client gets its own key');
      a.conn.destroy();
      b.conn.destroy();
    });

    t.test(`unix socket listener [bypass=${bypass}]`, async (t) => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-sock-'));
      t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
      const cfg = await proxyConfig(c, { bypass });
      cfg.listen = { ...cfg.listen, unix_socket_dir: dir };
      const proxy = await startProxy(t, cfg);
      await proxy.waitForLog(new RegExp(`listening on .*${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`), 5000).catch(() => undefined);
      t.ok(fs.existsSync(path.join(dir, `.s.PGSQL.${proxy.port}`)), 'socket file exists');
      t.equal(await psqlVia({ host: dir, port: proxy.port }, 'SELECT current_user'), 'app', 'psql over the unix socket');
      const pg = await pgClient(t, { host: dir, port: proxy.port });
      t.same((await pg.query('SELECT 3 AS x')).rows, [{ x: 3 }], 'pg over the unix socket');
    });
  }
});

// Make sure an unhandled PgError would show its fields.
void PgError;

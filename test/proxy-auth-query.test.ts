// auth_query through the real proxy: users that exist only in PostgreSQL (not in the
// config) log in, their secret looked up as auth_user; the proxy logs in to PostgreSQL as
// them with SCRAM pass-through (SCRAM verifiers) or the md5 hash; a wrong password and a
// nonexistent user get the same 28P01; a changed password works once the cache TTL has
// passed; an unreachable auth_user gives 08006, not a hang.
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import {
  startCluster, proxyConfig, pgClient, pgConnectError, psqlVia, run, libpqEnv, freePort, waitUntil, withTimeout, backendCount,
} from './helpers/cluster';
import { login, message, PgError, RawConn, startupMessage } from './helpers/pgwire';

// The salt the proxy's SCRAM server-first-message gives a user (the exchange is then dropped).
async function scramSalt(port: number, user: string): Promise<string> {
  const conn = await RawConn.connect(port);
  try {
    conn.write(startupMessage({ user, database: 'app' }));
    const sasl = await conn.readMessage(10000);
    if (sasl.type !== 'R' || sasl.body.readInt32BE(0) !== 10) throw new Error(`expected AuthenticationSASL, got ${sasl.type}`);
    const first = Buffer.from('n,,n=,r=abcdefghijklmnop');
    const len = Buffer.alloc(4);
    len.writeInt32BE(first.length);
    conn.write(message('p', Buffer.concat([Buffer.from('SCRAM-SHA-256\0'), len, first])));
    const cont = await conn.readMessage(10000);
    const attrs = Object.fromEntries(cont.body.toString('utf8', 4).split(',').map((kv) => [kv[0], kv.slice(2)]));
    return `${attrs.s} ${attrs.i}`;
  } finally {
    conn.destroy();
  }
}

t.jobs = 1;

t.test('auth_query with SCRAM verifiers (SCRAM pass-through to PostgreSQL)', async (t) => {
  const c = await startCluster(t);
  // The PgBouncer-documented setup: a SECURITY DEFINER function that only auth_user may call.
  c.sql(`CREATE ROLE pgsplice_auth LOGIN PASSWORD 'auth-pw'`);
  c.sql(`CREATE FUNCTION public.user_lookup(i_username text, OUT uname name, OUT phash text) RETURNS record AS $$
           SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname = i_username AND rolcanlogin
         $$ LANGUAGE sql SECURITY DEFINER`);
  c.sql(`REVOKE ALL ON FUNCTION public.user_lookup(text) FROM public; GRANT EXECUTE ON FUNCTION public.user_lookup(text) TO pgsplice_auth`);
  c.pg.psql(`CREATE ROLE aq_scram LOGIN PASSWORD 'scram-pw'; GRANT ALL ON DATABASE app TO aq_scram`);
  c.pg.psql(`CREATE ROLE aq_nologin NOLOGIN PASSWORD 'nologin-pw'`);
  t.match(c.pg.psql(`SELECT rolpassword FROM pg_authid WHERE rolname = 'aq_scram'`), /^SCRAM-SHA-256\$/, 'stored as a SCRAM verifier');

  for (const bypass of BYPASS_MODES) {
    t.test(`users not in the config log in [bypass=${bypass}]`, async (t) => {
      c.pg.psql(`ALTER ROLE aq_scram PASSWORD 'scram-pw'`);
      const ttl = 1;
      const cfg = await proxyConfig(c, {
        bypass,
        auth_type: 'scram-sha-256',
        auth_user: 'pgsplice_auth',
        auth_query: 'SELECT uname, phash FROM public.user_lookup($1)',
        auth_query_cache_ttl: ttl,
        users: { app: { password: 'app-pw' }, pgsplice_auth: { password: 'auth-pw' } },
      });
      const proxy = await startProxy(t, cfg);

      const pg = await pgClient(t, proxy, { user: 'aq_scram', password: 'scram-pw' });
      t.same((await pg.query('SELECT current_user AS u, session_user AS s')).rows, [{ u: 'aq_scram', s: 'aq_scram' }],
        'pg: queries run as the looked-up user (the proxy logged in to PostgreSQL as it)');
      t.ok(backendCount(c, 'aq_scram') >= 1, 'PostgreSQL has a server connection of aq_scram');
      t.equal(await psqlVia(proxy, 'SELECT current_user', { user: 'aq_scram', password: 'scram-pw' }), 'aq_scram', 'psql too');
      const pg2 = await pgClient(t, proxy, { user: 'aq_scram', password: 'scram-pw' });
      t.same((await pg2.query('SELECT 6 * 7 AS n')).rows, [{ n: 42 }], 'a second client (cached secret)');
      t.same((await pg.query('SELECT $1::int + 1 AS n', [41])).rows, [{ n: 42 }], 'extended protocol through the pass-through server');
      const app = await pgClient(t, proxy);
      t.same((await app.query('SELECT current_user AS u')).rows, [{ u: 'app' }], 'config users are unaffected');

      // Wrong password and unknown user: the same exchange and the same error.
      const wrong = await login(proxy.port, { user: 'aq_scram', password: 'wrong', database: 'app' }).catch((e) => e);
      const ghost = await login(proxy.port, { user: 'aq_ghost', password: 'wrong', database: 'app' }).catch((e) => e);
      const nologin = await login(proxy.port, { user: 'aq_nologin', password: 'nologin-pw', database: 'app' }).catch((e) => e);
      for (const [what, e, user] of [['wrong password', wrong, 'aq_scram'], ['nonexistent user', ghost, 'aq_ghost'], ['NOLOGIN role', nologin, 'aq_nologin']] as const) {
        t.ok(e instanceof PgError, `${what}: refused`);
        t.equal(e.code, '28P01', `${what} -> 28P01`);
        t.equal(e.fields.M, `password authentication failed for user "${user}"`, `${what}: PostgreSQL's message`);
        t.equal(e.fields.S, 'FATAL');
      }
      const realSalt = await scramSalt(proxy.port, 'aq_scram');
      const ghostSalt = await scramSalt(proxy.port, 'aq_ghost');
      t.equal(await scramSalt(proxy.port, 'aq_scram'), realSalt, 'a real user: the same salt every time');
      t.equal(await scramSalt(proxy.port, 'aq_ghost'), ghostSalt, 'a nonexistent user: also the same salt every time (mock verifier)');
      t.equal(ghostSalt.split(' ')[1], realSalt.split(' ')[1], 'and the same iteration count');
      const psqlGhost = await run('psql', ['-X', '-c', 'SELECT 1'], { env: libpqEnv(proxy, 'app', 'aq_ghost', 'x'), timeoutMs: 15000 });
      const psqlWrong = await run('psql', ['-X', '-c', 'SELECT 1'], { env: libpqEnv(proxy, 'app', 'aq_scram', 'x'), timeoutMs: 15000 });
      t.not(psqlGhost.code, 0);
      t.equal(psqlGhost.stderr.replace('aq_ghost', 'USER'), psqlWrong.stderr.replace('aq_scram', 'USER'), 'psql cannot tell a nonexistent user from a wrong password');
      const pgGhost = await pgConnectError(proxy, { user: 'aq_ghost', password: 'x' });
      t.equal(pgGhost.code, '28P01', 'pg: nonexistent user -> 28P01');

      // A new password works once the cache TTL has passed; the old one stops working.
      c.pg.psql(`ALTER ROLE aq_scram PASSWORD 'scram-pw-2'`);
      const fresh = await waitUntil(async () => {
        try {
          const s = await login(proxy.port, { user: 'aq_scram', password: 'scram-pw-2', database: 'app' });
          s.conn.destroy();
          return true;
        } catch {
          return false;
        }
      }, 15000, 'the new password accepted', 250);
      t.ok(fresh, 'new password accepted after the TTL');
      const pg3 = await pgClient(t, proxy, { user: 'aq_scram', password: 'scram-pw-2' });
      t.same((await pg3.query('SELECT current_user AS u')).rows, [{ u: 'aq_scram' }], 'and the session runs as aq_scram');
      const old = await pgConnectError(proxy, { user: 'aq_scram', password: 'scram-pw' });
      t.equal(old.code, '28P01', 'the old password is refused');

      // A role created after the proxy started is found (a "no such user" answer is not kept long).
      const late = `aq_late_${bypass}`;
      t.equal((await pgConnectError(proxy, { user: late, password: 'late-pw' })).code, '28P01', 'the role does not exist yet');
      c.pg.psql(`CREATE ROLE ${late} LOGIN PASSWORD 'late-pw'; GRANT ALL ON DATABASE app TO ${late}`);
      const who = await waitUntil(async () => {
        const cl = await pgClient(t, proxy, { user: late, password: 'late-pw' }).catch(() => null);
        return cl ? (await cl.query('SELECT current_user AS u')).rows[0].u : null;
      }, 15000, 'the new role logs in', 250);
      t.equal(who, late, 'a role created later logs in');
    });
  }

  t.test('a config user whose password is the server\'s SCRAM verifier: pass-through without auth_query', async (t) => {
    c.pg.psql(`CREATE ROLE aq_cfg LOGIN PASSWORD 'cfg-pw'; GRANT ALL ON DATABASE app TO aq_cfg`);
    const verifier = c.pg.psql(`SELECT rolpassword FROM pg_authid WHERE rolname = 'aq_cfg'`);
    const proxy = await startProxy(t, await proxyConfig(c, { users: { app: { password: 'app-pw' }, aq_cfg: { password: verifier } } }));
    const pg = await pgClient(t, proxy, { user: 'aq_cfg', password: 'cfg-pw' });
    t.same((await pg.query('SELECT current_user AS u')).rows, [{ u: 'aq_cfg' }], 'runs as aq_cfg: the proxy logged in with the client\'s ClientKey');
  });

  t.test('auth_user unreachable, auth_query failing or hanging: 08006, no hang', async (t) => {
    const deadPort = await freePort();
    const proxy = await startProxy(t, await proxyConfig(c, {
      auth_user: 'pgsplice_auth',
      auth_query: 'SELECT uname, phash FROM public.user_lookup($1)',
      databases: {
        app: { host: '127.0.0.1', port: c.pg.port, dbname: 'app' },
        gone: { host: '127.0.0.1', port: deadPort, dbname: 'app' },
      },
      users: { app: { password: 'app-pw' }, pgsplice_auth: { password: 'auth-pw' } },
    }));
    const e = await withTimeout(pgConnectError(proxy, { user: 'aq_scram', password: 'x', database: 'gone' }), 20000, 'login with auth_user unreachable');
    t.equal(e.code, '08006', `08006 (${e.message})`);
    t.match(e.message, /auth_user "pgsplice_auth" cannot reach 127\.0\.0\.1:\d+\/app/, 'the message says the lookup could not reach the server');
    // auth_query fails (the default reads pg_authid, which auth_user may not) or hangs.
    for (const [what, query, re] of [
      ['auth_query error', undefined, /auth_query failed: permission denied for table pg_authid/],
      ['auth_query with no answer', 'SELECT uname, phash FROM public.user_lookup($1), pg_sleep(30)', /auth_query failed: .*no answer within server_connect_timeout/],
    ] as const) {
      const p2 = await startProxy(t, await proxyConfig(c, {
        auth_user: 'pgsplice_auth',
        ...(query ? { auth_query: query } : {}),
        server_connect_timeout: 1,
        users: { app: { password: 'app-pw' }, pgsplice_auth: { password: 'auth-pw' } },
      }));
      const started = Date.now();
      const e2 = await withTimeout(pgConnectError(p2, { user: 'aq_scram', password: 'x' }), 20000, what);
      t.equal(e2.code, '08006', `${what}: 08006 (${e2.message})`);
      t.match(e2.message, re, `${what}: says why`);
      t.ok(Date.now() - started < 15000, `${what}: answered in ${Date.now() - started} ms`);
    }
    const ok = await pgClient(t, proxy, { user: 'aq_scram', password: 'scram-pw-2' }).catch(() => pgClient(t, proxy, { user: 'aq_scram', password: 'scram-pw' }));
    t.equal((await ok.query('SELECT current_user AS u')).rows[0].u, 'aq_scram', 'lookups on a reachable server still work');
  });
});

t.test('auth_query with md5 hashes, default auth_query', async (t) => {
  // md5 in pg_hba.conf: md5-stored roles log in with md5, SCRAM-stored ones with SCRAM.
  const c = await startCluster(t, { hbaMethod: 'md5' });
  c.pg.psql(`SET password_encryption = 'md5'; CREATE ROLE aq_md5 LOGIN PASSWORD 'md5-pw'; GRANT ALL ON DATABASE app TO aq_md5`);
  c.pg.psql(`CREATE ROLE aq_scram LOGIN PASSWORD 'scram-pw'; GRANT ALL ON DATABASE app TO aq_scram`);
  t.match(c.pg.psql(`SELECT rolpassword FROM pg_authid WHERE rolname = 'aq_md5'`), /^md5[0-9a-f]{32}$/, 'aq_md5 is stored as an md5 hash');
  for (const bypass of BYPASS_MODES) {
    t.test(`md5 and SCRAM users not in the config [bypass=${bypass}]`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, {
        bypass,
        auth_type: 'md5',
        auth_user: 'postgres', // the default auth_query reads pg_authid: a superuser
        users: { app: { password: 'app-pw' }, postgres: { password: c.pg.password } },
      }));
      const s = await login(proxy.port, { user: 'aq_md5', password: 'md5-pw', database: 'app' });
      t.equal(s.authCodes[0], 5, 'aq_md5 is asked for md5');
      s.conn.destroy();
      const pg = await pgClient(t, proxy, { user: 'aq_md5', password: 'md5-pw' });
      t.same((await pg.query('SELECT current_user AS u')).rows, [{ u: 'aq_md5' }], 'pg: runs as aq_md5 (server login with the md5 hash)');
      t.equal(await psqlVia(proxy, 'SELECT current_user', { user: 'aq_md5', password: 'md5-pw' }), 'aq_md5', 'psql too');
      const sc = await login(proxy.port, { user: 'aq_scram', password: 'scram-pw', database: 'app' });
      t.equal(sc.authCodes[0], 10, 'a SCRAM-stored user is asked for SCRAM, as PostgreSQL does');
      sc.conn.destroy();
      const pgs = await pgClient(t, proxy, { user: 'aq_scram', password: 'scram-pw' });
      t.same((await pgs.query('SELECT current_user AS u')).rows, [{ u: 'aq_scram' }], 'and runs as aq_scram');
      const wrong = await pgConnectError(proxy, { user: 'aq_md5', password: 'nope' });
      const ghost = await pgConnectError(proxy, { user: 'aq_ghost', password: 'nope' });
      t.equal(wrong.code, '28P01', 'wrong md5 password -> 28P01');
      t.equal(ghost.code, '28P01', 'nonexistent user -> 28P01');
      t.equal(ghost.message.replace('aq_ghost', 'U'), wrong.message.replace('aq_md5', 'U'), 'the same message');
    });
  }
});

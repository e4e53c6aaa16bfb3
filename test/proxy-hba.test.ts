// auth_type hba through the real proxy: which clients get in, with which method, decided
// by user, database, address and connection type (TCP over IPv4 and IPv6, the unix
// socket); refusals as PostgreSQL words them (28000); RELOAD re-reads the HBA file; the
// inline hba: list. Server logins go through a fixed user, so the client users need not
// exist in PostgreSQL.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, pgConnectError, psqlVia, run, libpqEnv, freePort } from './helpers/cluster';
import { login, PgError, simpleQuery } from './helpers/pgwire';

t.jobs = 1;

const USERS = {
  app: { password: 'app-pw' },
  blocked: { password: 'blocked-pw' },
  plainuser: { password: 'plain-pw' },
  v6user: { password: 'v6-pw' },
};

const HBA = `# test rules
local   all       all                       trust
host    app       blocked    127.0.0.1/32   reject
host    app       app        127.0.0.1/32   md5
host    app       plainuser  127.0.0.0/8    password
host    app,other v6user     ::1/128        scram-sha-256
host    all       v6user     10.0.0.0/8     trust
`;

async function loginError(port: number, o: Parameters<typeof login>[1]): Promise<PgError> {
  try {
    const s = await login(port, o);
    s.conn.destroy();
  } catch (e) {
    if (e instanceof PgError) return e;
    throw e;
  }
  throw new Error(`login as ${o.user} unexpectedly succeeded`);
}

t.test('auth_type hba', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    t.test(`rules from auth_hba_file [bypass=${bypass}]`, async (t) => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-hba-'));
      fs.chmodSync(dir, 0o755);
      t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
      const hbaFile = path.join(dir, 'hba.conf');
      fs.writeFileSync(hbaFile, HBA);
      const port = await freePort();
      const cfg = await proxyConfig(c, {
        bypass,
        listen: { host: '127.0.0.1,::1', port, unix_socket_dir: dir },
        auth_type: 'hba',
        auth_hba_file: hbaFile,
        databases: {
          app: { host: '127.0.0.1', port: c.pg.port, dbname: 'app', user: 'app', password: 'app-pw' },
          other: { host: '127.0.0.1', port: c.pg.port, dbname: 'app', user: 'app', password: 'app-pw' },
        },
        users: USERS,
      });
      const proxy = await startProxy(t, cfg);
      const ep = { host: '127.0.0.1', port }; // the proxy listens on two addresses

      // Accepted, each with the method of its rule.
      const md5 = await login(port, { user: 'app', password: 'app-pw', database: 'app' });
      t.equal(md5.authCodes[0], 5, 'app from 127.0.0.1 -> md5 (rule 3)');
      t.same((await simpleQuery(md5.conn, 'SELECT 1')).rows, [['1']], 'and runs a query');
      md5.conn.destroy();
      const plain = await login(port, { user: 'plainuser', password: 'plain-pw', database: 'app' });
      t.equal(plain.authCodes[0], 3, 'plainuser -> password (cleartext, rule 4)');
      plain.conn.destroy();
      const v6 = await login(port, { user: 'v6user', password: 'v6-pw', database: 'other', host: '::1' });
      t.equal(v6.authCodes[0], 10, 'v6user over IPv6 ::1 -> scram-sha-256 (rule 5)');
      v6.conn.destroy();
      const pg = await pgClient(t, ep);
      t.same((await pg.query('SELECT current_user AS u')).rows, [{ u: 'app' }], 'pg client logs in through the md5 rule');
      t.equal(await psqlVia(ep, 'SELECT 2', { user: 'plainuser', password: 'plain-pw' }), '2', 'psql logs in through the password rule');

      // Wrong password under the rule's method.
      t.equal((await loginError(port, { user: 'app', password: 'nope', database: 'app' })).code, '28P01', 'wrong password -> 28P01');

      // Refused: reject rule, no rule for the database, no rule for the address.
      const rej = await loginError(port, { user: 'blocked', password: 'blocked-pw', database: 'app' });
      t.equal(rej.code, '28000', 'reject rule -> 28000');
      t.equal(rej.fields.M, 'pg_hba.conf rejects connection for host "127.0.0.1", user "blocked", database "app", no encryption');
      t.equal(rej.fields.S, 'FATAL');
      const noDb = await loginError(port, { user: 'app', password: 'app-pw', database: 'other' });
      t.equal(noDb.code, '28000', 'no rule for app on database other -> 28000');
      t.equal(noDb.fields.M, 'no pg_hba.conf entry for host "127.0.0.1", user "app", database "other", no encryption');
      const noAddr = await loginError(port, { user: 'v6user', password: 'v6-pw', database: 'app' });
      t.equal(noAddr.fields.M, 'no pg_hba.conf entry for host "127.0.0.1", user "v6user", database "app", no encryption', 'v6user over IPv4: no address matches');
      const noAddr6 = await loginError(port, { user: 'app', password: 'app-pw', database: 'app', host: '::1' });
      t.equal(noAddr6.fields.M, 'no pg_hba.conf entry for host "::1", user "app", database "app", no encryption', 'app over IPv6: no rule');
      const e = await pgConnectError(ep, { user: 'blocked', password: 'blocked-pw' });
      t.equal(e.code, '28000', 'pg client sees 28000 too');
      const psqlRej = await run('psql', ['-X', '-c', 'SELECT 1'], { env: libpqEnv(ep, 'app', 'blocked', 'blocked-pw'), timeoutMs: 15000 });
      t.not(psqlRej.code, 0, 'psql is refused');
      t.match(psqlRej.stderr, /pg_hba\.conf rejects connection for host "127\.0\.0\.1", user "blocked"/, 'psql shows the refusal');

      // The unix socket matches "local": trust, whatever the password.
      t.equal(await psqlVia({ host: dir, port }, 'SELECT current_user', { user: 'blocked', password: 'whatever' }), 'app', 'blocked over the unix socket: local trust');

      // RELOAD re-reads the file: blocked is let in with scram-sha-256 first.
      fs.writeFileSync(hbaFile, `host app blocked 127.0.0.1/32 scram-sha-256\n${HBA}`);
      await proxy.reload(cfg);
      const now = await login(port, { user: 'blocked', password: 'blocked-pw', database: 'app' });
      t.equal(now.authCodes[0], 10, 'after reload: blocked gets scram-sha-256');
      now.conn.destroy();
      // A broken file on reload: refused, the running rules stay.
      const from = proxy.logs().length;
      fs.writeFileSync(hbaFile, `host app blocked 127.0.0.1/32 scram-sha-256\nhost all all 10.0.0.0/99 md5\n`);
      await proxy.reload(cfg);
      t.match(proxy.logs().slice(from), new RegExp(`${hbaFile.replace(/[.]/g, '\\.')}:2: auth_hba_file: invalid CIDR mask`), 'reload names the file and line');
      const still = await login(port, { user: 'app', password: 'app-pw', database: 'app' });
      t.equal(still.authCodes[0], 5, 'the old rules stay in force');
      still.conn.destroy();
    });

    t.test(`inline hba: list [bypass=${bypass}]`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, {
        bypass,
        auth_type: 'hba',
        hba: [
          { type: 'host', database: 'app', user: ['app', 'plainuser'], address: '127.0.0.1/32', method: 'scram-sha-256' },
          { type: 'host', database: 'all', user: 'all', address: 'all', method: 'reject' },
        ],
        databases: { app: { host: '127.0.0.1', port: c.pg.port, dbname: 'app', user: 'app', password: 'app-pw' } },
        users: USERS,
      }));
      const pg = await pgClient(t, proxy, { user: 'plainuser', password: 'plain-pw' });
      t.same((await pg.query('SELECT 5 AS n')).rows, [{ n: 5 }], 'plainuser accepted by the first rule');
      const rej = await pgConnectError(proxy, { user: 'blocked', password: 'blocked-pw' });
      t.equal(rej.code, '28000', 'blocked hits the reject rule');
      t.match(rej.message, /pg_hba\.conf rejects connection for host "127\.0\.0\.1", user "blocked", database "app", no encryption/);
    });
  }
});

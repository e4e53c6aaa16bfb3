// `pgsplice import pgbouncer.ini userlist.txt`: a production-style PgBouncer config becomes
// YAML that loads and serves clients against a real cluster, in both data paths; what it
// could not translate is listed (stderr and the YAML's header), each with its reason.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import YAML from 'yaml';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, runCli } from './helpers/proxy';
import { startCluster, freePort, psqlVia, FIXTURES } from './helpers/cluster';

t.test('pgsplice import', async (t) => {
  const c = await startCluster(t);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-import-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const listenPort = await freePort();
  const ini = fs.readFileSync(path.join(FIXTURES, 'pgbouncer', 'pgbouncer.ini'), 'utf8').replace(/port=5432/g, `port=${c.pg.port}`).replace('listen_port = 6432', `listen_port = ${listenPort}`);
  fs.writeFileSync(path.join(dir, 'pgbouncer.ini'), ini);
  fs.copyFileSync(path.join(FIXTURES, 'pgbouncer', 'userlist.txt'), path.join(dir, 'userlist.txt'));
  const out = path.join(dir, 'pgsplice.yaml');

  const r = runCli(['import', path.join(dir, 'pgbouncer.ini'), path.join(dir, 'userlist.txt'), '-o', out], 30000);
  t.equal(r.code, 0, `import exits 0: ${r.stderr.split('\n').slice(-2).join(' ')}`);
  t.match(r.stderr, /the YAML is a valid pgsplice config/, 'it says the result loads');
  const text = fs.readFileSync(out, 'utf8');
  t.equal(fs.statSync(out).mode & 0o077, 0, 'the output (passwords) is not readable by others');
  const y = YAML.parse(text);
  t.same(y.listen, { host: '127.0.0.1', port: listenPort }, 'listen_addr / listen_port -> listen');
  t.same(y.databases.app, { host: '127.0.0.1', port: c.pg.port, dbname: 'app', pool_size: 6, reserve_pool_size: 2 }, 'a [databases] line -> a mapping (reserve_pool -> reserve_pool_size)');
  t.equal(y.databases.app_ro.application_name, 'reporting tool', 'quoted values');
  t.equal(y.databases['*'].host, '127.0.0.1', 'the * fallback');
  t.same(y.users.app, { password: 'app-pw', pool_mode: 'transaction', max_user_connections: 20 }, '[users] settings and the userlist password together');
  t.notOk(y.users.stats, 'an md5 secret, which cannot answer SCRAM (auth_type scram-sha-256), is left out');
  t.same(y.stats_users, ['stats', 'monitor'], 'lists');
  t.equal(y.max_client_conn, 500, 'numbers stay numbers');
  t.equal(y.tcp_keepalive, true, 'booleans from 0/1');
  t.equal(y.tcp_keepidle, 30, 'tcp_keepidle');
  t.same([y.tcp_keepcnt, y.tcp_keepintvl], [5, 10], 'tcp_keepcnt, tcp_keepintvl');
  t.equal(y.so_reuseport, true, 'so_reuseport');
  t.equal(y.transaction_timeout, 600, 'transaction_timeout');
  t.equal(y.logfile, path.join(dir, 'pgbouncer.log'), 'file names relative to the ini, made absolute');
  t.notOk('auth_file' in y, 'with a userlist given, its users are inline: no auth_file');
  const notTranslated = r.stderr.split('\n').filter((l) => l.startsWith('not translated: '));
  for (const [what, re] of [
    ['%include', /%include/],
    ['several hosts', /legacy\.host = db1\.example\.com,db2\.example\.com .*several hosts/],
    ['connect_query', /legacy\.connect_query/],
    ['[peers]', /\[peers\] 1 = .*not supported/],
    ['stats_period', /stats_period = 60/],
    ['ignore_startup_parameters', /ignore_startup_parameters .*tracks every startup parameter/],
    ['an md5 user under SCRAM', /userlist stats \(line 3\): an md5 secret cannot authenticate/],
  ] as const) {
    t.ok(notTranslated.some((l) => re.test(l)), `listed as not translated: ${what}`);
    t.match(text, re, `and in the YAML header: ${what}`);
  }
  t.notOk(notTranslated.some((l) => /\] (listen_port|default_pool_size|auth_type|syslog|tcp_keepcnt|tcp_keepintvl|tcp_keepidle|auth_file|so_reuseport|transaction_timeout) = /.test(l)), 'translated keys are not listed');
  t.equal(notTranslated.length, 9, `9 items not translated:\n${notTranslated.join('\n')}`);

  for (const bypass of BYPASS_MODES) {
    t.test(`the imported YAML serves clients (bypass: ${bypass})`, async (t) => {
      const cfg = text.replace(/^logfile: .*$/m, '').replace(/^pidfile: .*$/m, `pidfile: ${path.join(dir, `pgsplice-${bypass}.pid`)}`) + `bypass: ${bypass}\n`;
      const proxy = await startProxy(t, cfg, { logLevel: 'info', startTimeoutMs: 30000 });
      t.equal(await psqlVia(proxy, 'SELECT current_user', { user: 'app', password: 'app-pw' }), 'app', 'a userlist user logs in through the imported config');
      t.equal(await psqlVia(proxy, 'SELECT current_database()', { user: 'app', password: 'app-pw', db: 'app_ro' }), 'app', 'an aliased database');
      const admin = await psqlVia(proxy, 'SHOW POOLS', { user: 'pgbadmin', password: 'admin-pw', db: 'pgbouncer' });
      t.match(admin, /\bapp\b/, 'the admin user of the ini (pgbadmin, a userlist user) uses the console');
      const cfgRows = await psqlVia(proxy, 'SHOW CONFIG', { user: 'pgbadmin', password: 'admin-pw', db: 'pgbouncer' });
      t.match(cfgRows, /default_pool_size\|4/, 'default_pool_size from the ini is in force');
      t.equal(fs.readFileSync(path.join(dir, `pgsplice-${bypass}.pid`), 'utf8').trim(), String(proxy.proc.pid), 'the pidfile of the ini is written');
      await proxy.stop('SIGINT');
    });
  }
});

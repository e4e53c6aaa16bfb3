import t from 'tap';
import { mkdtempSync, writeFileSync } from 'fs';
import { tmpdir } from 'os';
import { join } from 'path';
import {
  changesNeedingRestart,
  describeConfig,
  loadConfigFile,
  parseConfig,
  parseDuration,
  resolveDatabase,
} from '../src/config/load';
import { ConfigError, type Config } from '../src/config/types';
import { MINIMAL_CONFIG } from './helpers/proxy';

const MINIMAL = MINIMAL_CONFIG;

t.test('the minimal generated file parses with the right values', async (t) => {
  const c = parseConfig(MINIMAL, 'min.yaml');
  t.same(c.listen, { host: '127.0.0.1', port: 6432 });
  t.equal(c.pool_mode, 'transaction');
  t.equal(c.default_pool_size, 8);
  t.equal(c.bypass, 'off');
  t.same(c.databases.get('bench'), { name: 'bench', host: '127.0.0.1', port: 55432, dbname: 'bench' });
  t.same(c.users.get('bench'), { name: 'bench', password: 'bench' });
  // PgBouncer defaults for everything else.
  t.equal(c.min_pool_size, 0);
  t.equal(c.max_client_conn, 100);
  t.equal(c.server_reset_query, 'DISCARD ALL');
  t.equal(c.server_reset_query_always, false);
  t.equal(c.server_check_query, 'select 1');
  t.equal(c.query_wait_timeout, 120);
  t.equal(c.server_idle_timeout, 600);
  t.equal(c.server_lifetime, 3600);
  t.equal(c.client_login_timeout, 60);
  t.equal(c.shutdown_timeout, 30);
  t.equal(c.auth_type, 'scram-sha-256');
  t.equal(c.log_level, 'info');
  t.same(c.admin_users, []);
  t.equal(c.source.file, 'min.yaml');
  t.equal(c.source.lines.get('bypass'), 4);
  t.equal(c.source.lines.get('databases.bench.port'), 6);
  t.equal(c.source.lines.get('users.bench.password'), 8);
});

t.test('defaults: a file with only databases', async (t) => {
  const c = parseConfig('databases:\n  app:\n', 'd.yaml');
  t.equal(c.pool_mode, 'session', 'PgBouncer default pool_mode');
  t.equal(c.default_pool_size, 20);
  t.equal(c.bypass, 'auto');
  t.same(c.listen, { host: '127.0.0.1', port: 6432 });
  t.same(c.databases.get('app'), { name: 'app', host: '127.0.0.1', port: 5432, dbname: 'app' });
});

t.test('bypass on/off as YAML 1.1 booleans, durations, lists, the * fallback', async (t) => {
  t.equal(parseConfig('%YAML 1.1\n---\nbypass: off\ndatabases: {a: }\n', 'x').bypass, 'off');
  t.equal(parseConfig('bypass: true\ndatabases: {a: }\n', 'x').bypass, 'on');
  t.equal(parseConfig('bypass: on\ndatabases: {a: }\n', 'x').bypass, 'on');
  const c = parseConfig(
    'databases:\n  "*": {host: db1}\n  x: {}\nquery_timeout: 500ms\nserver_lifetime: 5m\nclient_idle_timeout: 1.5\nadmin_users: "a, b"\nstats_users: [c]\nserver_reset_query_always: yes\n',
    'x',
  );
  t.equal(c.query_timeout, 0.5);
  t.equal(c.server_lifetime, 300);
  t.equal(c.client_idle_timeout, 1.5);
  t.same(c.admin_users, ['a', 'b']);
  t.same(c.stats_users, ['c']);
  t.equal(c.server_reset_query_always, true);
  t.same(resolveDatabase(c, 'other'), { name: 'other', host: 'db1', port: 5432, dbname: 'other' });
  t.equal(resolveDatabase(c, 'x')?.dbname, 'x');
  t.equal(resolveDatabase(parseConfig(MINIMAL, 'm'), 'nope'), undefined);
  t.equal(parseDuration('30s'), 30);
  t.equal(parseDuration('2h'), 7200);
  t.equal(parseDuration('-1'), undefined);
  t.equal(parseDuration(-1), undefined);
});

t.test('examples/pgsplice.yaml loads and sets every key', async (t) => {
  const c = loadConfigFile(join(__dirname, '..', 'examples', 'pgsplice.yaml'));
  t.ok(c.databases.has('app') && c.databases.has('*'));
  t.ok(c.users.has('app'));
  t.equal(c.shutdown_timeout, 30);
  t.same(c.admin_users, ['admin']);
  // Every top-level setting appears in the example (describeConfig lists them all).
  for (const [k] of describeConfig(c)) {
    t.ok(c.source.lines.has(k), `example sets ${k}`);
  }
  // Every per-database and per-user key appears too.
  for (const k of ['host', 'port', 'dbname', 'pool_size', 'min_pool_size', 'reserve_pool_size', 'pool_mode',
    'max_db_connections', 'client_encoding', 'datestyle', 'timezone', 'application_name']) {
    t.ok(c.source.lines.has(`databases.app.${k}`), `example sets databases.app.${k}`);
  }
  t.ok(c.source.lines.has('databases.reports.user') && c.source.lines.has('databases.reports.password'));
  for (const k of ['password', 'pool_mode', 'pool_size', 'max_user_connections']) {
    t.ok(c.source.lines.has(`users.app.${k}`), `example sets users.app.${k}`);
  }
});

t.test('loadConfigFile reads from disk and reports a missing file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pgsplice-cfg-'));
  const f = join(dir, 'p.yaml');
  writeFileSync(f, MINIMAL);
  t.equal(loadConfigFile(f).default_pool_size, 8);
  t.throws(() => loadConfigFile(join(dir, 'missing.yaml')), ConfigError);
});

// [name, text, key, line, message pattern]
const ERRORS: Array<[string, string, string | undefined, number, RegExp]> = [
  ['unknown top-level key', 'databases: {a: }\npool_mod: session\n', 'pool_mod', 2, /unknown key.*did you mean "pool_mode"/],
  ['unknown nested key', MINIMAL.replace('{ host: 127.0.0.1, port: 55432', '{ hots: 127.0.0.1, port: 55432'), 'databases.bench.hots', 6, /did you mean "host"/],
  ['unknown key in a block mapping', 'databases:\n  a:\n    host: x\n    pool_sise: 3\n', 'databases.a.pool_sise', 4, /did you mean "pool_size"/],
  ['unknown user key', 'databases: {a: }\nusers:\n  bob:\n    passwd: x\n', 'users.bob.passwd', 4, /did you mean "password"/],
  ['unknown listen key', 'listen:\n  addr: 0.0.0.0\ndatabases: {a: }\n', 'listen.addr', 2, /unknown key/],
  ['pgbouncer.ini name', 'databases: {a: }\nlisten_port: 6432\n', 'listen_port', 2, /listen\.port/],
  ['far-off unknown key lists the known ones', 'databases: {a: }\nzzzzzzzz: 1\n', 'zzzzzzzz', 2, /known keys here: listen, databases/],
  ['bad enum', 'databases: {a: }\n\npool_mode: sessions\n', 'pool_mode', 3, /allowed: session, transaction, statement/],
  ['bad nested enum', 'databases:\n  a: {pool_mode: txn}\n', 'databases.a.pool_mode', 2, /allowed: session, transaction, statement/],
  ['bad bypass', 'bypass: maybe\ndatabases: {a: }\n', 'bypass', 1, /allowed: auto, on, off/],
  ['bad auth_type', 'databases: {a: }\nauth_type: scram\n', 'auth_type', 2, /allowed: scram-sha-256, md5, plain, trust/],
  ['port too big', 'databases:\n  a:\n    port: 70000\n', 'databases.a.port', 3, /1\.\.65535/],
  ['port zero', 'listen: {port: 0}\ndatabases: {a: }\n', 'listen.port', 1, /1\.\.65535/],
  ['negative size', 'databases: {a: }\nreserve_pool_size: -1\n', 'reserve_pool_size', 2, />= 0/],
  ['negative nested size', 'databases:\n  a:\n    max_db_connections: -5\n', 'databases.a.max_db_connections', 3, />= 0/],
  ['zero pool size', 'databases: {a: }\ndefault_pool_size: 0\n', 'default_pool_size', 2, />= 1/],
  ['negative duration', 'databases: {a: }\nquery_timeout: -1\n', 'query_timeout', 2, /negative/],
  ['bad duration string', 'databases: {a: }\nserver_lifetime: 1 fortnight\n', 'server_lifetime', 2, /duration/],
  ['wrong type: string for int', 'databases: {a: }\ndefault_pool_size: lots\n', 'default_pool_size', 2, /whole number/],
  ['wrong type: fraction for int', 'databases: {a: }\nmax_client_conn: 1.5\n', 'max_client_conn', 2, /whole number/],
  ['wrong type: number for string', 'databases: {a: }\nusers:\n  u: {password: 1234}\n', 'users.u.password', 3, /expected a string.*quote/],
  ['wrong type: list for scalar', 'databases: {a: }\nlog_level: [info]\n', 'log_level', 2, /single value/],
  ['wrong type: scalar for section', 'databases: app\n', 'databases', 1, /expected a mapping/],
  ['wrong type: bool', 'databases: {a: }\nserver_reset_query_always: sometimes\n', 'server_reset_query_always', 2, /true or false/],
  ['empty database name', 'databases:\n  "": {host: x}\n', 'databases.', 2, /must not be empty/],
  ['empty user name', 'databases: {a: }\nusers:\n  "": {password: x}\n', 'users.', 3, /must not be empty/],
  ['empty host', 'databases:\n  a: {host: ""}\n', 'databases.a.host', 2, /must not be empty/],
  ['reserved database name', 'databases:\n  pgbouncer: {}\n', 'databases.pgbouncer', 2, /admin console/],
  ['pool_size < min_pool_size (db)', 'databases:\n  a:\n    pool_size: 2\n    min_pool_size: 3\n', 'databases.a.min_pool_size', 4, /pool_size \(2\) must be >= min_pool_size \(3\)/],
  ['pool_size < min_pool_size (top)', 'databases: {a: }\ndefault_pool_size: 2\nmin_pool_size: 5\n', 'min_pool_size', 3, /must be >= min_pool_size/],
  ['md5 hash with scram auth', 'databases: {a: }\nusers:\n  u:\n    password: md5' + '0'.repeat(32) + '\n', 'users.u.password', 4, /md5 hash/],
  ['broken SCRAM verifier', 'databases: {a: }\nusers:\n  u:\n    password: "SCRAM-SHA-256$4096:abc$x:y"\n', 'users.u.password', 4, /verifier/],
  ['password without user', 'databases:\n  a: {password: x}\n', 'databases.a.password', 2, /needs a user/],
  ['nothing to listen on', 'listen: {host: ""}\ndatabases: {a: }\n', 'listen', 1, /nothing to listen on/],
  ['no databases', 'pool_mode: session\n', 'databases', 0, /required/],
  ['merge keys rejected', 'x: &x {port: 5}\ndatabases:\n  a:\n    <<: *x\n', 'x', 1, /unknown key/],
  ['YAML syntax error', 'databases:\n  a: {host: x}\npool_mode: session: transaction\n', 'pool_mode', 3, /YAML syntax error/],
  ['YAML syntax error nested', 'databases:\n  a:\n    host: x\n    port: 1: 2\n', 'databases.a.port', 4, /YAML syntax error/],
  ['duplicate key', 'databases:\n  a: {}\n  a: {}\n', 'databases.a', 3, /unique/],
  ['tab indentation', 'databases:\n\ta: {}\n', undefined, 2, /YAML syntax error/],
];

for (const [name, text, key, line, re] of ERRORS) {
  t.test(`error: ${name}`, async (t) => {
    let err: unknown;
    try {
      parseConfig(text, 'bad.yaml');
    } catch (e) {
      err = e;
    }
    t.type(err, ConfigError);
    const e = err as ConfigError;
    t.match(e.message, re);
    if (key !== undefined) {
      t.equal(e.key, key, 'names the key');
      t.match(e.message, key);
    }
    if (line > 0) {
      t.equal(e.line, line, 'names the line');
      t.match(e.message, `bad.yaml:${line}:`);
    }
  });
}

t.test('describeConfig lists settings without secrets', async (t) => {
  const c = parseConfig(MINIMAL, 'm');
  const d = new Map(describeConfig(c));
  t.equal(d.get('pool_mode'), 'transaction');
  t.equal(d.get('default_pool_size'), '8');
  t.equal(d.get('listen.port'), '6432');
  t.equal(d.get('bypass'), 'off');
  for (const [, v] of describeConfig(c)) t.notMatch(v, /bench$/, 'no passwords');
});

t.test('changesNeedingRestart', async (t) => {
  const a = parseConfig(MINIMAL, 'm');
  const b: Config = parseConfig(MINIMAL.replace('port: 6432', 'port: 6433').replace('default_pool_size: 8', 'default_pool_size: 9'), 'm');
  t.same(changesNeedingRestart(a, b), ['listen.port']);
  t.same(changesNeedingRestart(a, a), []);
});

t.test('databases.<name>.mirrors: defaults, and errors naming the key and its line', async (t) => {
  const base = 'databases:\n  app:\n    mirrors:\n';
  const c = parseConfig(`${base}      - { host: m, dbname: d, user: u, compare: rows, sample: 0.5 }\n`, 'm.yaml');
  t.same(c.databases.get('app')!.mirrors, [{ host: 'm', port: 5432, dbname: 'd', user: 'u', pool_size: 20, sample: 0.5, queue_bytes: 16777216, compare: 'rows' }]);
  const bad: Array<[string, RegExp]> = [
    [`${base}      - host: m\n        dbname: d\n        user: u\n        sample: 1.5\n`, /^m\.yaml:7: databases\.app\.mirrors\[0\]\.sample: expected a fraction/],
    [`${base}      - host: m\n        dbname: d\n`, /^m\.yaml:4: databases\.app\.mirrors\[0\]: missing "user"/],
    [`${base}      - host: m\n        dbname: d\n        user: u\n        queue_byte: 9000\n`, /^m\.yaml:7: databases\.app\.mirrors\[0\]\.queue_byte: unknown key \(did you mean "queue_bytes"\?\)/],
    [`${base}      - host: m\n        dbname: d\n        user: u\n        queue_bytes: 10\n`, /queue_bytes: 10 is too small; must be >= 4096/],
    [`${base}      - host: m\n        dbname: d\n        user: u\n        compare: everything\n`, /compare: bad value "everything"; allowed: tags, rows/],
    [`${base}      - { host: m, dbname: d, user: u }\n      - { host: m, dbname: d, user: v }\n`, /mirrors\[1\]: mirror m:5432\/d is listed twice/],
    ['databases:\n  app:\n    mirrors: m\n', /^m\.yaml:3: databases\.app\.mirrors: expected a list of mirrors/],
  ];
  for (const [text, re] of bad) t.throws(() => parseConfig(text, 'm.yaml'), re, re.source);
});

t.test('mirror_ring_bytes: a power of two of at least a page, needs a restart; errors name the key and its line', async (t) => {
  t.equal(parseConfig('bypass: off\ndatabases: { app: {} }\n', 'm.yaml').mirror_ring_bytes, 4 << 20, 'default 4 MiB');
  const c = parseConfig('bypass: off\ndatabases: { app: {} }\nmirror_ring_bytes: 65536\n', 'm.yaml');
  t.equal(c.mirror_ring_bytes, 65536);
  t.same(changesNeedingRestart(parseConfig('bypass: off\ndatabases: { app: {} }\n', 'm.yaml'), c), ['mirror_ring_bytes'], 'a change needs a restart');
  const bad: Array<[string, RegExp]> = [
    ['bypass: off\ndatabases: { app: {} }\nmirror_ring_bytes: 100000\n', /^m\.yaml:3: mirror_ring_bytes: 100000 is not a power of two/],
    ['bypass: off\ndatabases: { app: {} }\nmirror_ring_bytes: 2048\n', /^m\.yaml:3: mirror_ring_bytes: 2048 is out of range; must be 4096\.\.1073741824/],
    ['bypass: off\ndatabases: { app: {} }\nmirror_ring_bytes: 2147483648\n', /^m\.yaml:3: mirror_ring_bytes: 2147483648 is out of range/],
    ['bypass: off\ndatabases: { app: {} }\nmirror_ring_bytes: 4 MiB\n', /^m\.yaml:3: mirror_ring_bytes: expected a whole number/],
  ];
  for (const [text, re] of bad) t.throws(() => parseConfig(text, 'm.yaml'), re, re.source);
});

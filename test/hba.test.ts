// HBA rules: parsing pg_hba.conf text and YAML entries, and which rule (and so which
// method, or which refusal) a client gets. Table-driven; the proxy tests run the same
// rules through psql (proxy-hba.test.ts).
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'fs';
import { tmpdir } from 'os';
import { join } from 'path';
import { HbaClient, HbaError, hbaDecision, ipBytes, matchHba, parseHbaText, readHbaFile, ruleFromEntry, tokenizeLine } from '../src/auth/hba';
import { parseConfig } from '../src/config/load';
import { clientAuthType } from '../src/auth/verifier';

const client = (o: Partial<HbaClient>): HbaClient => ({ local: false, ssl: false, address: '127.0.0.1', database: 'app', user: 'app', ...o });

t.test('tokenizer', async (t) => {
  const cases: Array<[string, Array<Array<[string, boolean]>>]> = [
    ['host all all 127.0.0.1/32 md5', [[['host', false]], [['all', false]], [['all', false]], [['127.0.0.1/32', false]], [['md5', false]]]],
    ['  local   db1,db2 "all"  trust # comment', [[['local', false]], [['db1', false], ['db2', false]], [['all', true]], [['trust', false]]]],
    ['host a, b u 0.0.0.0/0 trust', [[['host', false]], [['a', false], ['b', false]], [['u', false]], [['0.0.0.0/0', false]], [['trust', false]]]],
    ['host "my db" "we""ird" all md5', [[['host', false]], [['my db', true]], [['we"ird', true]], [['all', false]], [['md5', false]]]],
    ['# only a comment', []],
    ['', []],
  ];
  for (const [line, want] of cases) {
    const got = tokenizeLine(line).map((f) => f.map((x) => [x.text, x.quoted]));
    t.same(got, want, JSON.stringify(line));
  }
  t.throws(() => tokenizeLine('host "unterminated all'), /unterminated/);
  t.throws(() => tokenizeLine('host db, '), /ends with a comma/);
});

t.test('IP addresses', async (t) => {
  t.same([...ipBytes('10.1.2.3')!], [10, 1, 2, 3]);
  t.same([...ipBytes('::ffff:10.1.2.3')!], [10, 1, 2, 3], 'IPv4-mapped IPv6 is IPv4');
  t.same([...ipBytes('::ffff:a01:203')!], [10, 1, 2, 3], 'IPv4-mapped in hex form too');
  t.equal(ipBytes('::1')!.length, 16);
  t.equal(ipBytes('::1')![15], 1);
  t.equal(ipBytes('fe80::1%eth0')![0], 0xfe, 'zone id ignored');
  t.equal(ipBytes('2001:db8::8:800:200c:417a')!.toString('hex'), '20010db8000000000008080020 0c417a'.replace(' ', ''));
  t.equal(ipBytes('db.example.com'), undefined);
});

t.test('matching: first matching line wins', async (t) => {
  const rules = parseHbaText(
    [
      '# type  database      user        address          method',
      'local   all           all                          trust',
      'host    app           blocked     all              reject',
      'host    app           alice,bob   10.0.0.0/8       password',
      'host    sameuser      all         127.0.0.1/32     scram-sha-256',
      'host    reports       "Mixed Case" 127.0.0.1 255.255.255.255 md5',
      'hostssl all           all         0.0.0.0/0        scram-sha-256',
      'hostnossl app         carol       0.0.0.0/0        md5',
      'host    all           all         ::1/128          md5',
      'host    all           all         192.168.1.0/24   trust',
    ].join('\n'),
    '/etc/pgsplice/hba.conf',
  );
  t.equal(rules.length, 9);
  const cases: Array<[string, Partial<HbaClient>, number | undefined]> = [
    ['unix socket -> local', { local: true, user: 'anyone', database: 'x' }, 2],
    ['reject by user', { user: 'blocked' }, 3],
    ['reject applies to its database only', { user: 'blocked', database: 'blocked' }, 5],
    ['user list and CIDR', { user: 'bob', address: '10.20.30.40' }, 4],
    ['user list, address outside CIDR', { user: 'bob', address: '11.0.0.1', database: 'other' }, undefined],
    ['sameuser', { user: 'dave', database: 'dave' }, 5],
    ['sameuser needs equal names', { user: 'dave', database: 'app' }, undefined],
    ['quoted name is case-sensitive, netmask column', { user: 'Mixed Case', database: 'reports' }, 6],
    ['quoted name does not match other case', { user: 'mixed case', database: 'reports' }, undefined],
    ['hostssl needs TLS', { user: 'eve', database: 'x', address: '8.8.8.8', ssl: true }, 7],
    ['hostnossl without TLS', { user: 'carol', address: '8.8.8.8' }, 8],
    ['hostnossl not with TLS', { user: 'carol', address: '8.8.8.8', ssl: true }, 7],
    ['IPv6 loopback', { user: 'x', database: 'y', address: '::1' }, 9],
    ['IPv4-mapped IPv6 client matches IPv4 rules', { user: 'x', database: 'y', address: '::ffff:192.168.1.77' }, 10],
    ['no line matches', { user: 'x', database: 'y', address: '172.16.0.1' }, undefined],
  ];
  for (const [what, c, line] of cases) t.equal(matchHba(rules, client(c))?.line, line, what);
});

t.test('keywords only unquoted; all; replication never matches a normal connection', async (t) => {
  const rules = parseHbaText('host "all" all all md5\nhost replication all all reject\nhost all "all" all trust\n', 'x.conf');
  t.equal(matchHba(rules, client({ database: 'all' }))?.line, 1, 'quoted "all" matches a database named all');
  t.equal(matchHba(rules, client({ database: 'app', user: 'all' }))?.line, 3, 'quoted "all" user matches only a user named all');
  t.equal(matchHba(rules, client({ database: 'app', user: 'bob' })), undefined);
});

t.test('refusal messages as PostgreSQL words them', async (t) => {
  const rules = parseHbaText('host app blocked all reject\nlocal all all reject\nhost app app all scram-sha-256\n', 'x.conf');
  t.same(hbaDecision(rules, client({ user: 'blocked' })), {
    refusal: 'pg_hba.conf rejects connection for host "127.0.0.1", user "blocked", database "app", no encryption',
  });
  t.same(hbaDecision(rules, client({ user: 'nobody', address: '::ffff:10.0.0.9' })), {
    refusal: 'no pg_hba.conf entry for host "10.0.0.9", user "nobody", database "app", no encryption',
  });
  t.same(hbaDecision(rules, client({ local: true, address: undefined })), {
    refusal: 'pg_hba.conf rejects connection for host "[local]", user "app", database "app", no encryption',
  });
  t.same(hbaDecision(rules, client({ user: 'nobody', ssl: true })), {
    refusal: 'no pg_hba.conf entry for host "127.0.0.1", user "nobody", database "app", SSL encryption',
  });
  const ok = hbaDecision(rules, client({}));
  t.equal('method' in ok && ok.method, 'scram-sha-256');
});

t.test('samehost and samenet use the machine\'s own addresses', async (t) => {
  const rules = parseHbaText('host all all samehost trust\nhost all all samenet md5\n', 'x.conf');
  t.equal(matchHba(rules, client({ address: '127.0.0.1' }))?.line, 1, '127.0.0.1 is this host');
  t.equal(matchHba(rules, client({ address: '127.0.0.2' }))?.line, 2, '127.0.0.2 is on the loopback net');
  t.equal(matchHba(rules, client({ address: '203.0.113.50' })), undefined, 'a documentation address is neither');
});

t.test('bad lines name the file and line', async (t) => {
  const bad: Array<[string, RegExp]> = [
    ['hots all all 0.0.0.0/0 md5', /invalid connection type "hots"/],
    ['host all all 0.0.0.0/0 peer', /method "peer" is not supported/],
    ['host all all 0.0.0.0/0 cert', /method "cert" is not supported/],
    ['host all all db.example.com md5', /host names are not supported/],
    ['host all all 10.0.0.0/33 md5', /invalid CIDR mask/],
    ['host all all 10.0.0.0 md5', /needs a CIDR mask|invalid netmask/],
    ['host all all 10.0.0.0 255.0.255.0 md5', /invalid netmask/],
    ['host all +admins 0.0.0.0/0 md5', /group membership \("\+admins"\) is not supported/],
    ['host samerole all 0.0.0.0/0 md5', /"samerole" is not supported/],
    ['host all all 0.0.0.0/0 md5 clientcert=verify-full', /options after the method are not supported/],
    ['host all all', /missing address/],
    ['local all all', /missing authentication method/],
    ['host all all @nonexistent-file md5', /invalid IP address/],
    ['host @nonexistent-file all all md5', /cannot read @nonexistent-file/],
    ['hostgssenc all all all md5', /GSSAPI encryption is not supported/],
  ];
  for (const [line, re] of bad) {
    try {
      parseHbaText(`# header\nlocal all all trust\n${line}\n`, '/etc/hba.conf');
      t.fail(`accepted: ${line}`);
    } catch (e) {
      t.ok(e instanceof HbaError, line);
      t.equal((e as HbaError).line, 3, `line number for: ${line}`);
      t.equal((e as HbaError).file, '/etc/hba.conf');
      t.match((e as Error).message, re, line);
    }
  }
});

t.test('@file lists names relative to the HBA file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pgsplice-hba-'));
  writeFileSync(join(dir, 'admins.txt'), 'alice bob\n# comment\ncarol, "Dan D"\n');
  writeFileSync(join(dir, 'hba.conf'), 'host all @admins.txt all trust\nhost all all all reject\n');
  const rules = readHbaFile(join(dir, 'hba.conf'));
  for (const u of ['alice', 'bob', 'carol', 'Dan D']) t.equal(matchHba(rules, client({ user: u }))?.method, 'trust', u);
  t.equal(matchHba(rules, client({ user: 'eve' }))?.method, 'reject', 'eve');
  t.throws(() => readHbaFile(join(dir, 'missing.conf')), /cannot read the HBA file/);
});

t.test('YAML entries', async (t) => {
  const r = ruleFromEntry({ type: 'host', database: ['app', 'reports'], user: 'alice, bob', address: '10.0.0.0/8', method: 'md5' }, '/', 'c.yaml', 7);
  t.equal(matchHba([r], client({ user: 'bob', database: 'reports', address: '10.9.9.9' }))?.line, 7);
  t.equal(matchHba([r], client({ user: 'carol', database: 'reports', address: '10.9.9.9' })), undefined);
  const local = ruleFromEntry({ type: 'local', database: 'all', user: 'all', method: 'trust' }, '/', 'c.yaml', 1);
  t.equal(matchHba([local], client({ local: true }))?.method, 'trust');
  t.throws(() => ruleFromEntry({ type: 'host', database: 'all', user: 'all', method: 'md5' }, '/', 'c.yaml', 3), /needs an address/);
  t.throws(() => ruleFromEntry({ type: 'local', database: 'all', user: 'all', address: 'all', method: 'md5' }, '/', 'c.yaml', 3), /has no address/);
  t.throws(() => ruleFromEntry({ type: 'host', database: 'a b', user: 'all', address: 'all', method: 'md5' }, '/', 'c.yaml', 3), /more than one value/);
});

const BASE = `listen: { host: 127.0.0.1, port: 6432 }
databases:
  app: { host: 127.0.0.1, port: 5432 }
users:
  app: { password: pw }
`;

t.test('config: auth_type hba with inline rules or a file', async (t) => {
  const c = parseConfig(`${BASE}auth_type: hba\nhba:\n  - { type: local, database: all, user: all, method: trust }\n  - { type: host, database: app, user: [app], address: 127.0.0.1/32, method: password }\n`, 'c.yaml');
  t.equal(c.hbaRules.length, 2);
  t.same(clientAuthType(c, client({})), { authType: 'plain' }, 'password -> cleartext');
  t.same(clientAuthType(c, client({ local: true })), { authType: 'trust' });
  t.match(clientAuthType(c, client({ user: 'x' })), { refusal: /^no pg_hba.conf entry/ });
  const plain = parseConfig(`${BASE}auth_type: md5\n`, 'c.yaml');
  t.same(clientAuthType(plain, client({ user: 'x' })), { authType: 'md5' }, 'without hba the configured auth_type applies to all');

  const dir = mkdtempSync(join(tmpdir(), 'pgsplice-hba-'));
  writeFileSync(join(dir, 'hba.conf'), 'host all all 127.0.0.1/32 md5\n');
  writeFileSync(join(dir, 'c.yaml'), `${BASE}auth_type: hba\nauth_hba_file: hba.conf\n`);
  const { loadConfigFile } = await import('../src/config/load');
  const f = loadConfigFile(join(dir, 'c.yaml'));
  t.same(clientAuthType(f, client({})), { authType: 'md5' }, 'auth_hba_file relative to the config file');

  const errs: Array<[string, RegExp]> = [
    [`${BASE}auth_type: hba\n`, /^c\.yaml:\d+: auth_type: auth_type hba needs auth_hba_file/],
    [`${BASE}hba:\n  - { type: local, database: all, user: all, method: trust }\n`, /^c\.yaml:6: hba: HBA rules apply only with auth_type: hba/],
    [`${BASE}auth_type: hba\nhba:\n  - { type: host, database: all, user: all, address: 10.0.0.0/40, method: md5 }\n`, /^c\.yaml:8: hba\[0\]: invalid CIDR mask/],
    [`${BASE}auth_type: hba\nhba:\n  - { type: host, databse: all, user: all, method: md5 }\n`, /^c\.yaml:8: hba\[0\]\.databse: unknown key \(did you mean "database"\?\)/],
    [`${BASE}auth_type: hba\nhba:\n  - { type: host, user: all, address: all, method: md5 }\n`, /hba\[0\]: missing "database"/],
    [`${BASE}auth_type: hba\nauth_hba_file: /nonexistent/hba.conf\n`, /auth_hba_file: cannot read the HBA file/],
  ];
  for (const [text, re] of errs) t.throws(() => parseConfig(text, 'c.yaml'), re, re.source);
  writeFileSync(join(dir, 'bad.conf'), '# ok\nhost all all 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 ident\n');
  t.throws(() => parseConfig(`${BASE}auth_type: hba\nauth_hba_file: ${join(dir, 'bad.conf')}\n`, 'c.yaml'),
    new RegExp(`^${join(dir, 'bad.conf')}:3: auth_hba_file: authentication method "ident" is not supported`));
});

t.test('config: auth_query keys', async (t) => {
  const c = parseConfig(`${BASE}auth_user: app\nauth_query_cache_ttl: 5s\n`, 'c.yaml');
  t.equal(c.auth_user, 'app');
  t.match(c.auth_query, /pg_authid WHERE rolname = \$1/);
  t.equal(c.auth_query_cache_ttl, 5);
  t.throws(() => parseConfig(`${BASE}auth_user: ghost\n`, 'c.yaml'), /^c\.yaml:6: auth_user: "ghost" must be listed under users:/);
  t.throws(() => parseConfig(`${BASE}auth_user: app\nauth_query: SELECT 1\n`, 'c.yaml'), /auth_query: must take the user name as the parameter \$1/);
  t.throws(
    () => parseConfig(BASE.replace('password: pw', 'password: "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="') + 'auth_user: app\n', 'c.yaml'),
    /auth_user: users\.app\.password is a SCRAM verifier/,
  );
  const perDb = parseConfig(BASE.replace('port: 5432 }', 'port: 5432, auth_user: app, auth_dbname: postgres }'), 'c.yaml');
  t.equal(perDb.databases.get('app')!.auth_user, 'app');
  t.equal(perDb.databases.get('app')!.auth_dbname, 'postgres');
});

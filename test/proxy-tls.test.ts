// TLS on both sides, with a CA and certificates made here by openssl: psql and
// node-postgres with verify-full against the proxy, a wrong CA, require / prefer /
// verify-ca, RELOAD serving a new certificate, server_tls_sslmode verify-full against a
// PostgreSQL with ssl=on (seen in pg_stat_ssl), and with bypass on: TLS connections stay
// in user space while a plain client still goes through the kernel.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { startProxy, runCli, writeConfig, ProxyHandle } from './helpers/proxy';
import { Cluster, Endpoint, enableServerSsl, libpqEnv, pgClient, pgConnectError, run, startCluster, waitUntil } from './helpers/cluster';
import { BYPASS_MODES } from './helpers/modes';
import { ADMIN, adminRows, kernelConfig, num, showBypass } from './helpers/kernel';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-tls-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
const file = (name: string) => path.join(dir, name);
const read = (name: string) => fs.readFileSync(file(name), 'utf8');

function openssl(args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
}

// A self-signed CA: <name>.crt, <name>.key.
function makeCa(name: string): void {
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`,
    '-out', `${name}.crt`, '-days', '2', '-subj', `/CN=${name}`]);
}

// A certificate signed by ca: <name>.crt, <name>.key (mode 0600, as libpq wants for keys).
function makeCert(ca: string, name: string, cn: string, san?: string): void {
  openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`,
    '-out', `${name}.csr`, '-subj', `/CN=${cn}`]);
  const ext = file(`${name}.ext`);
  fs.writeFileSync(ext, san ? `subjectAltName=${san}\n` : 'basicConstraints=CA:FALSE\n');
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial',
    '-out', `${name}.crt`, '-days', '2', '-extfile', ext]);
  fs.chmodSync(file(`${name}.key`), 0o600);
}

makeCa('ca1');
makeCa('ca2');
const LOCALHOST = 'DNS:localhost,IP:127.0.0.1';
makeCert('ca1', 'proxy', 'localhost', LOCALHOST); // what the proxy shows clients
makeCert('ca1', 'proxy-new', 'localhost', LOCALHOST); // the same name, another key: for RELOAD
makeCert('ca1', 'pgserver', 'localhost', LOCALHOST); // what PostgreSQL shows the proxy
makeCert('ca1', 'client', 'app'); // a client certificate signed by the CA the proxy trusts
makeCert('ca2', 'stranger', 'app'); // one signed by a CA nobody trusts
const fingerprint = (name: string) => new crypto.X509Certificate(read(`${name}.crt`)).fingerprint256;

const clientTls = (mode: string, extra: Record<string, unknown> = {}) => ({
  client_tls_sslmode: mode,
  client_tls_key_file: file('proxy.key'),
  client_tls_cert_file: file('proxy.crt'),
  ...extra,
});

// libpq through the proxy with TLS: the name checked is localhost, the address 127.0.0.1.
function tlsEnv(ep: Endpoint, sslmode: string, root: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return { ...libpqEnv(ep), PGHOST: 'localhost', PGHOSTADDR: '127.0.0.1', PGSSLMODE: sslmode, PGSSLROOTCERT: root, ...extra };
}

async function psqlRun(env: NodeJS.ProcessEnv, sql: string) {
  return run('psql', ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-c', sql], { env, timeoutMs: 30000 });
}

// The certificate the proxy shows now: SSLRequest, 'S', handshake (verified), fingerprint.
function peerFingerprint(ep: Endpoint, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const raw = net.connect(ep.port, ep.host);
    raw.on('error', reject);
    raw.on('connect', () => {
      const req = Buffer.alloc(8);
      req.writeInt32BE(8, 0);
      req.writeInt32BE(80877103, 4);
      raw.write(req);
    });
    raw.once('data', (d) => {
      if (d.toString() !== 'S') return reject(new Error(`SSLRequest answered ${JSON.stringify(d.toString())}`));
      const s = tls.connect({ socket: raw, ca, servername: 'localhost' });
      s.on('error', reject);
      s.on('secureConnect', () => {
        resolve(s.getPeerCertificate().fingerprint256);
        s.destroy();
      });
    });
  });
}

t.test('config checks name the TLS key and its line', async (t) => {
  const base = { databases: { app: { host: '127.0.0.1', port: 5432 } }, users: { app: { password: 'x' } } };
  const check = (cfg: object) => runCli(['check', '--config', writeConfig(cfg)]);
  let r = check({ ...base, client_tls_sslmode: 'require' });
  t.equal(r.code, 2, 'require without key/cert is refused');
  t.match(r.stderr, /pgsplice\.yaml:\d+: client_tls_sslmode: is require: client_tls_key_file and client_tls_cert_file must be set/);
  r = check({ ...base, ...clientTls('verify-ca') });
  t.equal(r.code, 2, 'verify-ca without a CA is refused');
  t.match(r.stderr, /client_tls_sslmode: is verify-ca: client_tls_ca_file must be set/);
  r = check({ ...base, ...clientTls('require', { client_tls_key_file: file('missing.key') }) });
  t.equal(r.code, 2, 'an unreadable key file is refused');
  t.match(r.stderr, /pgsplice\.yaml:\d+: client_tls_key_file: cannot read .*missing\.key: ENOENT/);
  r = check({ ...base, ...clientTls('require', { client_tls_key_file: file('client.key') }) });
  t.equal(r.code, 2, 'a key that does not match the certificate is refused');
  t.match(r.stderr, /client_tls_cert_file: cannot use client_tls_key_file and client_tls_cert_file/);
  r = check({ ...base, client_tls_protocols: 'tlsv1.2, tlsv1.9' });
  t.equal(r.code, 2, 'an unknown protocol is refused');
  t.match(r.stderr, /client_tls_protocols: unknown protocol "tlsv1.9"/);
  r = check({ ...base, server_tls_sslmode: 'verify-full', server_tls_ca_file: file('ca1.crt'), server_tls_ciphers: 'NOT-A-CIPHER' });
  t.equal(r.code, 2, 'a cipher list OpenSSL rejects is refused');
  t.match(r.stderr, /server_tls_ciphers: OpenSSL does not accept "NOT-A-CIPHER"/);
  r = check({ ...base, ...clientTls('verify-full', { client_tls_ca_file: file('ca1.crt') }), server_tls_sslmode: 'verify-full', server_tls_ca_file: file('ca1.crt') });
  t.equal(r.code, 0, `a complete TLS config passes (${r.stderr})`);
  // Relative file names are relative to the config file's directory.
  const relDir = fs.mkdtempSync(path.join(dir, 'rel-'));
  for (const f of ['proxy.key', 'proxy.crt', 'ca1.crt']) fs.copyFileSync(file(f), path.join(relDir, f));
  const rel = { ...base, client_tls_sslmode: 'verify-ca', client_tls_key_file: 'proxy.key', client_tls_cert_file: 'proxy.crt', client_tls_ca_file: 'ca1.crt' };
  r = runCli(['check', '--config', writeConfig(rel, relDir)]);
  t.equal(r.code, 0, `relative names are found beside the config file (${r.stderr})`);
  // The running proxy refuses to start on the same error, naming the key.
  const run1 = runCli(['--config', writeConfig({ ...base, listen: { port: 1 }, ...clientTls('require', { client_tls_cert_file: file('missing.crt') }) })]);
  t.not(run1.code, 0, 'the proxy does not start');
  t.match(run1.stdout + run1.stderr, /client_tls_cert_file: cannot read .*missing\.crt/);
});

t.test('TLS', async (t) => {
  const c: Cluster = await startCluster(t);

  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;

    t.test(`client_tls_sslmode prefer: verify-full clients, plain clients, a wrong CA, RELOAD ${B}`, async (t) => {
      const certDir = fs.mkdtempSync(path.join(dir, 'reload-'));
      fs.copyFileSync(file('proxy.key'), path.join(certDir, 'p.key'));
      fs.copyFileSync(file('proxy.crt'), path.join(certDir, 'p.crt'));
      const cfg = await kernelConfig(c, bypass, clientTls('prefer', { client_tls_key_file: path.join(certDir, 'p.key'), client_tls_cert_file: path.join(certDir, 'p.crt') }));
      const proxy: ProxyHandle = await startProxy(t, cfg, { logLevel: 'info' });

      // psql, verify-full: works, and SHOW CLIENTS shows its TLS while it is connected.
      const held = psqlRun(tlsEnv(proxy, 'verify-full', file('ca1.crt'), { PGAPPNAME: 'tls-psql' }), 'SELECT pg_sleep(1.5)');
      const row = await waitUntil(async () => (await adminRows(proxy, 'SHOW CLIENTS')).find((r) => r.application_name === 'tls-psql'), 15000, 'psql in SHOW CLIENTS');
      t.match(row.tls, /^TLSv1\.[23]\/\S+$/, `SHOW CLIENTS tls column for psql: ${row.tls}`);
      t.equal(row.path, 'user', 'a TLS client is carried in user space');
      const pr = await held;
      t.equal(pr.code, 0, `psql sslmode=verify-full through the proxy (${pr.stderr.trim()})`);

      // node-postgres with the CA and the name: the verify-full equivalent.
      const pg = await pgClient(t, proxy, { ssl: { ca: read('ca1.crt'), servername: 'localhost' }, application_name: 'tls-node' });
      const got: number[] = [];
      for (let i = 0; i < 20; i++) got.push((await pg.query('SELECT $1::int * 2 AS v', [i])).rows[0].v);
      t.same(got, Array.from({ length: 20 }, (_, i) => i * 2), 'node-postgres verify-full: 20 queries answered in order');
      const nodeRow = (await adminRows(proxy, 'SHOW CLIENTS')).find((r) => r.application_name === 'tls-node');
      t.match(nodeRow?.tls, /^TLSv1\.[23]\//, 'SHOW CLIENTS shows TLS for node-postgres');

      // prefer also takes plain clients.
      const plain = await pgClient(t, proxy, { application_name: 'plain-node' });
      t.equal((await plain.query('SELECT 41 + 1 AS v')).rows[0].v, 42, 'a plain client works under prefer');
      const plainRow = (await adminRows(proxy, 'SHOW CLIENTS')).find((r) => r.application_name === 'plain-node');
      t.equal(plainRow?.tls, '', 'SHOW CLIENTS tls is empty for a plain client');
      const pp = await psqlRun(libpqEnv(proxy), 'SELECT 1');
      t.equal(pp.stdout.trim(), '1', 'plain psql works under prefer');

      if (bypass === 'on') {
        // TLS transactions stay in user space; a plain client's go through the kernel.
        const by0 = await showBypass(proxy);
        for (let i = 0; i < 30; i++) await pg.query('SELECT 1');
        const by1 = await showBypass(proxy);
        t.equal(num(by1.kernel_transactions) - num(by0.kernel_transactions), 0, 'no TLS transaction was carried by the kernel');
        t.ok(num(by1.fallback_tls_client) >= 2, `SHOW BYPASS counts TLS clients kept in user space (${by1.fallback_tls_client})`);
        for (let i = 0; i < 30; i++) await plain.query('SELECT 1');
        const by2 = await showBypass(proxy);
        const kx = num(by2.kernel_transactions) - num(by1.kernel_transactions);
        t.ok(kx >= 25, `a plain client's transactions go through the kernel (${kx} of 30)`);
        t.equal((await adminRows(proxy, 'SHOW CLIENTS')).find((r) => r.application_name === 'tls-node')?.path, 'user', 'the TLS client is still in user space');
      }

      // SET in the admin console changes the mode live, checked as the file is.
      await adminRows(proxy, "SET client_tls_sslmode = 'require'");
      const refused = await pgConnectError(proxy);
      t.equal(refused.code, '28000', 'after SET client_tls_sslmode = require a plain client is refused');
      // The admin console is refused without TLS too now: set it back over TLS.
      const back = await psqlRun({ ...libpqEnv(proxy, 'pgsplice', ADMIN.user, ADMIN.password), PGSSLMODE: 'require' }, "SET client_tls_sslmode = 'prefer'");
      t.equal(back.code, 0, `SET back to prefer over a TLS admin connection (${back.stderr.trim()})`);
      const again = await pgClient(t, proxy);
      t.equal((await again.query('SELECT 1 AS v')).rows[0].v, 1, 'after SET back to prefer it is served');
      await t.rejects(adminRows(proxy, "SET client_tls_ca_file = ''; SET client_tls_sslmode = 'verify-ca'"), /client_tls_ca_file must be set/,
        'SET to verify-ca without a CA file is refused');

      // A client that trusts another CA refuses the proxy's certificate.
      const bad = await psqlRun(tlsEnv(proxy, 'verify-full', file('ca2.crt')), 'SELECT 1');
      t.not(bad.code, 0, 'psql with the wrong CA fails');
      t.match(bad.stderr, /certificate verify failed/, 'because the certificate does not verify');
      const badNode = await pgConnectError(proxy, { ssl: { ca: read('ca2.crt'), servername: 'localhost' } });
      t.match(badNode.message, /certificate/, `node-postgres with the wrong CA fails (${badNode.message})`);
      t.equal((await plain.query('SELECT 1 AS v')).rows[0].v, 1, 'the proxy still serves others');

      // RELOAD re-reads the files: new connections see the new certificate.
      t.equal(await peerFingerprint(proxy, read('ca1.crt')), fingerprint('proxy'), 'the proxy shows its first certificate');
      fs.copyFileSync(file('proxy-new.key'), path.join(certDir, 'p.key'));
      fs.copyFileSync(file('proxy-new.crt'), path.join(certDir, 'p.crt'));
      const rl = await adminRows(proxy, 'RELOAD');
      t.ok(Array.isArray(rl), 'RELOAD accepted');
      t.equal(await peerFingerprint(proxy, read('ca1.crt')), fingerprint('proxy-new'), 'after RELOAD it shows the new certificate');
      t.equal((await pg.query('SELECT 7 AS v')).rows[0].v, 7, 'a connection made before the reload keeps working');
      // A broken file on reload keeps the running contexts.
      fs.writeFileSync(path.join(certDir, 'p.crt'), 'not a certificate\n');
      const from = proxy.logs().length;
      proxy.proc.kill('SIGHUP');
      await proxy.waitForLog(/reload failed, keeping the running configuration: .*client_tls_cert_file/, 10000, from);
      t.equal(await peerFingerprint(proxy, read('ca1.crt')), fingerprint('proxy-new'), 'a failed reload keeps serving the last good certificate');
    });

    t.test(`client_tls_sslmode require refuses plain clients with 28000 ${B}`, async (t) => {
      const proxy = await startProxy(t, await kernelConfig(c, bypass, clientTls('require')), { logLevel: 'info' });
      const e = await pgConnectError(proxy);
      t.equal(e.code, '28000', 'node-postgres without TLS: 28000');
      t.match(e.message, /SSL required/, e.message);
      const r = await psqlRun(libpqEnv(proxy), 'SELECT 1');
      t.not(r.code, 0, 'psql sslmode=disable is refused');
      t.match(r.stderr, /SSL required/);
      const ok = await psqlRun(tlsEnv(proxy, 'require', ''), 'SELECT 2');
      t.equal(ok.stdout.trim(), '2', `psql sslmode=require works (${ok.stderr.trim()})`);
      const pg = await pgClient(t, proxy, { ssl: { ca: read('ca1.crt'), servername: 'localhost' } });
      t.equal((await pg.query('SELECT 3 AS v')).rows[0].v, 3, 'node-postgres with TLS works');

      // A client that gets 'S' and then speaks plain protocol fails its handshake and is closed.
      const closed = await new Promise<string>((resolve) => {
        const raw = net.connect(proxy.port, proxy.host);
        const timer = setTimeout(() => resolve('hang'), 10000);
        raw.on('error', () => undefined);
        raw.on('connect', () => raw.write(Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])));
        raw.once('data', (d) => {
          if (d.toString() !== 'S') return resolve(`answered ${d.toString()}`);
          const body = Buffer.from('\0\0\0\0user\0app\0database\0app\0\0');
          body.writeInt32BE(body.length, 0);
          body.writeInt32BE(196608, 4);
          raw.write(body);
        });
        raw.on('close', () => {
          clearTimeout(timer);
          resolve('closed');
        });
      });
      t.equal(closed, 'closed', 'plain bytes after S: the connection is closed, no hang');
      await proxy.waitForLog(/TLS handshake with client .* failed/, 5000);
      t.equal((await pg.query('SELECT 4 AS v')).rows[0].v, 4, 'the proxy still serves its TLS client');
    });

    t.test(`client_tls_sslmode verify-ca requires a client certificate from the CA ${B}`, async (t) => {
      const proxy = await startProxy(t, await kernelConfig(c, bypass, clientTls('verify-ca', { client_tls_ca_file: file('ca1.crt') })), { logLevel: 'info' });
      const ca = read('ca1.crt');
      const none = await pgConnectError(proxy, { ssl: { ca, servername: 'localhost' } });
      t.equal(none.code, '28000', 'without a client certificate: 28000');
      t.match(none.message, /client certificate required/, none.message);
      const stranger = await pgConnectError(proxy, { ssl: { ca, servername: 'localhost', cert: read('stranger.crt'), key: read('stranger.key') } });
      t.equal(stranger.code, '28000', 'a certificate from another CA: 28000');
      t.match(stranger.message, /client certificate verification failed/, stranger.message);
      const plain = await pgConnectError(proxy);
      t.equal(plain.code, '28000', 'a plain client: 28000');
      const pg = await pgClient(t, proxy, { ssl: { ca, servername: 'localhost', cert: read('client.crt'), key: read('client.key') } });
      t.equal((await pg.query('SELECT 5 AS v')).rows[0].v, 5, 'node-postgres with a client certificate works');
      const r = await psqlRun(tlsEnv(proxy, 'verify-full', file('ca1.crt'), { PGSSLCERT: file('client.crt'), PGSSLKEY: file('client.key') }), 'SELECT 6');
      t.equal(r.stdout.trim(), '6', `psql verify-full with a client certificate works (${r.stderr.trim()})`);
    });
  }
});

t.test('server TLS', async (t) => {
  const plainPg: Cluster = await startCluster(t);
  const sslPg: Cluster = await startCluster(t);
  enableServerSsl(sslPg, { cert: read('pgserver.crt'), key: read('pgserver.key'), ca: read('ca1.crt') });
  await waitUntil(() => sslPg.pg.psql('SHOW ssl') === 'on', 10000, 'ssl = on after reload');
  const SSL_SQL = 'SELECT ssl, coalesce(client_dn, \'\') AS dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()';

  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;

    t.test(`server_tls_sslmode verify-full with a client certificate ${B}`, async (t) => {
      const cfg = await kernelConfig(sslPg, bypass, {
        server_tls_sslmode: 'verify-full', server_tls_ca_file: file('ca1.crt'),
        server_tls_cert_file: file('client.crt'), server_tls_key_file: file('client.key'),
      });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const pg = await pgClient(t, proxy);
      const r = await pg.query(SSL_SQL);
      t.equal(r.rows[0].ssl, true, 'the server connection uses TLS (pg_stat_ssl)');
      t.equal(r.rows[0].dn, '/CN=app', 'and shows the proxy\'s client certificate');
      const got: number[] = [];
      for (let i = 0; i < 30; i++) got.push((await pg.query('SELECT $1::int AS v', [i])).rows[0].v);
      t.same(got, Array.from({ length: 30 }, (_, i) => i), '30 queries over the TLS server connection');
      const servers = await adminRows(proxy, 'SHOW SERVERS');
      t.ok(servers.length > 0 && servers.every((s) => /^TLSv1\.[23]\//.test(s.tls)), `SHOW SERVERS tls column: ${servers.map((s) => s.tls).join(', ')}`);
      // A client that leaves mid-query: its TLS server connection is reset (RST under the TLS
      // socket), the proxy goes on, and the backend ends when its sleep is over.
      const leaver = await pgClient(t, proxy, { application_name: 'leaver' });
      const q = leaver.query('SELECT pg_sleep(2)').catch((e: Error) => e);
      await waitUntil(() => sslPg.sql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2)' AND state = 'active'") === '1', 10000, 'the sleep runs');
      (leaver as unknown as { connection: { stream: net.Socket } }).connection.stream.destroy();
      await q;
      await waitUntil(() => sslPg.sql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2)'") === '0', 15000, 'the abandoned backend is gone');
      t.match(await proxy.waitForLog(/closed: client left while a request was in progress/, 5000), /S-\d+/, 'the proxy closed the server connection of the client that left');
      t.equal((await pg.query('SELECT 8 AS v')).rows[0].v, 8, 'the proxy still serves the other client');

      if (bypass === 'on') {
        const by = await showBypass(proxy);
        t.equal(num(by.kernel_transactions), 0, 'no transaction went through the kernel');
        t.equal(num(by.servers_in_kernel), 0, 'no TLS server is in the kernel');
        t.ok(num(by.fallback_tls_server) >= 1, `SHOW BYPASS counts TLS servers kept in user space (${by.fallback_tls_server})`);
        t.ok(servers.every((s) => s.path === 'user'), 'SHOW SERVERS: path user');
      }
    });

    t.test(`server_tls_sslmode verify-full refuses a server the CA did not sign ${B}`, async (t) => {
      const cfg = await kernelConfig(sslPg, bypass, { server_tls_sslmode: 'verify-full', server_tls_ca_file: file('ca2.crt'), query_wait_timeout: 5 });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const e = await pgConnectError(proxy);
      t.match(e.message, /certificate verification failed/, `the client is told why (${e.code} ${e.message})`);
    });

    t.test(`server_tls_sslmode require against a server without SSL, prefer falls back ${B}`, async (t) => {
      const proxy = await startProxy(t, await kernelConfig(plainPg, bypass, { server_tls_sslmode: 'require', query_wait_timeout: 5 }), { logLevel: 'info' });
      const e = await pgConnectError(proxy);
      t.match(e.message, /server does not support SSL, but server_tls_sslmode is require/, `${e.code} ${e.message}`);
      const prefer = await startProxy(t, await kernelConfig(plainPg, bypass, { server_tls_sslmode: 'prefer' }), { logLevel: 'info' });
      const pg = await pgClient(t, prefer);
      t.equal((await pg.query(SSL_SQL)).rows[0].ssl, false, 'prefer: plain when the server has no SSL');
      const onSsl = await startProxy(t, await kernelConfig(sslPg, bypass, {}), { logLevel: 'info' });
      const pg2 = await pgClient(t, onSsl);
      t.equal((await pg2.query(SSL_SQL)).rows[0].ssl, true, 'the default (prefer) uses TLS when the server has it');
      const off = await startProxy(t, await kernelConfig(sslPg, bypass, { server_tls_sslmode: 'disable' }), { logLevel: 'info' });
      const pg3 = await pgClient(t, off);
      t.equal((await pg3.query(SSL_SQL)).rows[0].ssl, false, 'disable: plain even when the server has SSL');
    });
  }
});

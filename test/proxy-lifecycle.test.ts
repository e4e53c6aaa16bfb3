// Lifecycle of the proxy process: --version/--help, `check` on good and bad configs
// (key and line named), start-up refusing a bad config, the minimal config as
// written, SIGHUP reload without dropping clients, and PgBouncer's shutdowns: SIGINT lets
// transactions finish, SIGTERM waits for clients to leave, SIGQUIT and a second signal stop at once.
import t from 'tap';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { Client } from 'pg';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, runCli, runCliAsync, writeConfig, cliCommand, REPO_ROOT, MINIMAL_CONFIG } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, psqlVia, withTimeout, sleep, waitUntil, backendCount, freePort } from './helpers/cluster';
import { spawn } from 'node:child_process';

const pkg = JSON.parse(fs.readFileSync(`${REPO_ROOT}/package.json`, 'utf8'));

function tryConnect(port: number): Promise<'refused' | 'error' | 'ok'> {
  return new Promise((resolve) => {
    const c = new Client({ host: '127.0.0.1', port, user: 'app', password: 'app-pw', database: 'app', connectionTimeoutMillis: 3000 });
    c.on('error', () => undefined);
    c.connect().then(
      async () => {
        try {
          await c.query('SELECT 1');
          resolve('ok');
        } catch {
          resolve('error');
        } finally {
          c.end().catch(() => undefined);
        }
      },
      (e) => resolve(e?.code === 'ECONNREFUSED' ? 'refused' : 'error'),
    );
  });
}

t.test('command line', async (t) => {
  const v = runCli(['--version']);
  t.equal(v.code, 0, '--version exits 0');
  t.match(v.stdout.trim(), pkg.version, `prints the package version ${pkg.version}`);
  const h = runCli(['--help']);
  t.equal(h.code, 0, '--help exits 0');
  t.match(h.stdout + h.stderr, /--config/, '--help mentions --config');
  t.match(h.stdout + h.stderr, /check/, '--help mentions the check command');
});

t.test('check command', async (t) => {
  const minimal = MINIMAL_CONFIG;
  const good = runCli(['check', '--config', writeConfig(minimal)]);
  t.equal(good.code, 0, `the minimal config is valid (${good.stderr})`);
  t.match(good.stdout + good.stderr, /config ok/, 'prints config ok');
  if (fs.existsSync(`${REPO_ROOT}/examples/pgsplice.yaml`)) {
    const ex = runCli(['check', '--config', `${REPO_ROOT}/examples/pgsplice.yaml`]);
    t.equal(ex.code, 0, `examples/pgsplice.yaml is valid (${ex.stderr})`);
  }
  const bad: [string, string, string, number][] = [
    ['unknown top-level key', minimal.replace('default_pool_size: 8', 'default_pool_sise: 8'), 'default_pool_sise', 3],
    ['unknown key in a database', minimal.replace('dbname: bench }', 'dbname: bench, colour: red }'), 'colour', 6],
    ['unknown key in a user', minimal.replace('{ password: bench }', '{ password: bench, role: x }'), 'role', 8],
    ['bad pool_mode', minimal.replace('pool_mode: transaction', 'pool_mode: banana'), 'pool_mode', 2],
    ['negative pool size', minimal.replace('default_pool_size: 8', 'default_pool_size: -3'), 'default_pool_size', 3],
    ['non-numeric pool size', minimal.replace('default_pool_size: 8', 'default_pool_size: lots'), 'default_pool_size', 3],
    ['bad port', minimal.replace('port: 55432', 'port: 99999999'), 'port', 6],
    ['bad bypass', minimal.replace('bypass: off', 'bypass: maybe'), 'bypass', 4],
    ['bad auth_type', minimal + 'auth_type: kerberos\n', 'auth_type', 9],
    ['bad duration', minimal + 'query_wait_timeout: soon\n', 'query_wait_timeout', 9],
  ];
  // Three at a time, with room to spare: ten node start-ups at once on a loaded 2-core
  // machine outran a 20 s limit and were killed before printing anything.
  const results: Awaited<ReturnType<typeof runCliAsync>>[] = [];
  for (let i = 0; i < bad.length; i += 3) {
    results.push(...(await Promise.all(bad.slice(i, i + 3).map(([, text]) => runCliAsync(['check', '--config', writeConfig(text)], 60000)))));
  }
  for (const [i, [label, , key, line]] of bad.entries()) {
    const r = results[i];
    const out = r.stdout + r.stderr;
    t.not(r.code, 0, `${label}: non-zero exit`);
    t.match(out, key, `${label}: names the key ${key} (${out.trim()})`);
    t.match(out, new RegExp(`(:|line )${line}\\b`), `${label}: names line ${line}`);
  }
  const syntax = runCli(['check', '--config', writeConfig('listen: { host: 127.0.0.1, port: 6432\npool_mode: [\n')]);
  t.not(syntax.code, 0, 'YAML syntax error: non-zero exit');
  t.match(syntax.stdout + syntax.stderr, /line|:\d+/, 'YAML syntax error: says where');
  const missing = runCli(['check', '--config', '/nonexistent/pgsplice.yaml']);
  t.not(missing.code, 0, 'missing file: non-zero exit');
  t.match(missing.stdout + missing.stderr, /nonexistent/, 'missing file: names it');
});

t.test('running the proxy', async (t) => {
  const c = await startCluster(t);

  t.test('start-up refuses a bad config and says why', async (t) => {
    const file = writeConfig({ ...(await proxyConfig(c)), pool_modee: 'transaction' });
    const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const p = spawn(...cliCommand(['--config', file]), { cwd: REPO_ROOT });
      let out = '';
      p.stdout.on('data', (d) => (out += d));
      p.stderr.on('data', (d) => (out += d));
      const timer = setTimeout(() => p.kill('SIGKILL'), 10000);
      p.on('exit', (code) => {
        clearTimeout(timer);
        resolve({ code, out });
      });
    });
    t.not(r.code, 0, 'exits non-zero');
    t.notOk(r.code === null, 'exits by itself (not killed)');
    t.match(r.out, /pool_modee/, 'names the key');
  });

  t.test('the minimal config from the issue serves clients as written', async (t) => {
    c.pg.createUserAndDb('bench', 'bench', 'bench');
    const port = await freePort();
    const text = `listen: { host: 127.0.0.1, port: ${port} }
pool_mode: transaction
default_pool_size: 8
bypass: off
databases:
  bench: { host: 127.0.0.1, port: ${c.pg.port}, dbname: bench }
users:
  bench: { password: bench }
`;
    const proxy = await startProxy(t, text);
    t.equal(await psqlVia(proxy, 'SELECT current_user || 1', { db: 'bench', user: 'bench', password: 'bench' }), 'bench1', 'psql through the minimal config');
  });

  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;
    t.test(`SIGHUP reload: pool size and users change, connected clients stay ${B}`, async (t) => {
      c.pg.psql(`CREATE ROLE newbie LOGIN PASSWORD 'newbie-pw'`);
      t.teardown(() => {
        try {
          c.pg.psql(`DROP ROLE IF EXISTS newbie`);
        } catch {
          /* connections may linger */
        }
      });
      c.pg.psql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'`);
      const cfg = await proxyConfig(c, { bypass, default_pool_size: 1, query_wait_timeout: 30, server_idle_timeout: 600 });
      const proxy = await startProxy(t, cfg);
      const idle = await pgClient(t, proxy);
      await idle.query('SELECT 1');
      const inTx = await pgClient(t, proxy);
      // a plain table: a temporary one would pin the client to the only server (session_state)
      c.sql(`DROP TABLE IF EXISTS reload_probe; CREATE TABLE reload_probe (x int); ALTER TABLE reload_probe OWNER TO app`);
      await inTx.query('BEGIN');
      await inTx.query('INSERT INTO reload_probe VALUES (1)');
      await inTx.query('COMMIT');
      const e = await (async () => {
        const x = new Client({ host: proxy.host, port: proxy.port, user: 'newbie', password: 'newbie-pw', database: 'app' });
        x.on('error', () => undefined);
        try {
          await x.connect();
          return undefined;
        } catch (err: any) {
          return err;
        } finally {
          await x.end().catch(() => undefined);
        }
      })();
      t.equal(e?.code, '28P01', 'before reload: newbie is unknown');
      // Samples pg_stat_activity from a direct connection without blocking the event loop
      // (a psql per sample stalled the clients it was meant to watch on a loaded machine).
      const concurrency = async () => {
        const probe = await pgClient(t, { host: '127.0.0.1', port: c.pg.port });
        let max = 0;
        let running = true;
        const sampling = (async () => {
          while (running) {
            const r = await probe.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = 'app' AND state = 'active' AND pid <> pg_backend_pid()`);
            max = Math.max(max, r.rows[0].n);
            await sleep(20);
          }
        })();
        const cls = await Promise.all([0, 1, 2].map(() => pgClient(t, proxy)));
        await Promise.all(cls.map((x) => x.query('SELECT pg_sleep(0.6)')));
        running = false;
        await sampling;
        await Promise.all([...cls, probe].map((x) => x.end()));
        return max;
      };
      t.equal(await concurrency(), 1, 'before reload: one server at a time');

      // A client in the middle of a transaction while the reload happens.
      await inTx.query('BEGIN');
      await inTx.query('INSERT INTO reload_probe VALUES (2)');
      await proxy.reload({ ...cfg, default_pool_size: 3, users: { ...cfg.users, newbie: { password: 'newbie-pw' } } });
      t.equal(proxy.exited(), undefined, 'proxy still running after SIGHUP');
      await inTx.query('INSERT INTO reload_probe VALUES (3)');
      await inTx.query('COMMIT');
      t.same((await inTx.query('SELECT count(*)::int AS n FROM reload_probe')).rows, [{ n: 3 }], 'the transaction open across the reload committed');
      t.same((await idle.query('SELECT 2 AS x')).rows, [{ x: 2 }], 'the idle client is still connected and served');
      t.same(idle.errors, [], 'no client was dropped');
      t.same(inTx.errors, [], 'no client was dropped');
      const nb = await pgClient(t, proxy, { user: 'newbie', password: 'newbie-pw' });
      t.same((await nb.query('SELECT current_user AS u')).rows, [{ u: 'newbie' }], 'after reload: the new user logs in');
      await nb.end();
      const after = await concurrency();
      t.ok(after >= 2 && after <= 3, `after reload: up to 3 servers at a time (saw ${after})`);

      // A broken config on SIGHUP: the proxy says so and keeps the old config.
      await proxy.reload('listen: [this is not valid\n');
      t.equal(proxy.exited(), undefined, 'a bad config on SIGHUP does not stop the proxy');
      t.same((await idle.query('SELECT 3 AS x')).rows, [{ x: 3 }], 'clients still served');
      const nb2 = await pgClient(t, proxy, { user: 'newbie', password: 'newbie-pw' });
      t.same((await nb2.query('SELECT 1 AS x')).rows, [{ x: 1 }], 'the last good config still applies');
      t.match(proxy.logs(), /reload|config/i, 'the log mentions the reload');
    });

    t.test(`SIGINT (safe shutdown) drains: a transaction can finish, then exit 0 ${B}`, async (t) => {
      c.pg.psql(`CREATE TABLE IF NOT EXISTS drain (v text); ALTER TABLE drain OWNER TO app; DELETE FROM drain;`, 'app');
      const proxy = await startProxy(t, await proxyConfig(c, { bypass, shutdown_timeout: 20 }));
      const idle = await pgClient(t, proxy);
      await idle.query('SELECT 1');
      const a = await pgClient(t, proxy);
      await a.query('BEGIN');
      await a.query(`INSERT INTO drain VALUES ('drain-1')`);
      const sigAt = Date.now();
      proxy.proc.kill('SIGINT');
      await sleep(500);
      t.equal(proxy.exited(), undefined, 'the proxy waits for the open transaction');
      const attempt = await tryConnect(proxy.port);
      t.not(attempt, 'ok', `new clients are not served any more (${attempt})`);
      await a.query(`INSERT INTO drain VALUES ('drain-2')`);
      await a.query('COMMIT');
      t.equal(c.pg.psql(`SELECT string_agg(v, ',' ORDER BY v) FROM drain`, 'app'), 'drain-1,drain-2', 'the transaction committed');
      const st = await proxy.waitExit(8000);
      t.ok(st, `the proxy exits once the transaction is done, the idle client does not hold it (${Date.now() - sigAt} ms after SIGINT)`);
      t.equal(st?.code, 0, 'exit code 0');
      await waitUntil(() => backendCount(c, 'app') === 0, 5000, 'server connections closed');
      t.pass('no server connection left behind');
    });

    t.test(`SIGINT with a transaction that never ends: exit after shutdown_timeout, rolled back ${B}`, async (t) => {
      c.pg.psql(`CREATE TABLE IF NOT EXISTS drain (v text); ALTER TABLE drain OWNER TO app;`, 'app');
      const proxy = await startProxy(t, await proxyConfig(c, { bypass, shutdown_timeout: 1 }));
      const a = await pgClient(t, proxy);
      await a.query('BEGIN');
      await a.query(`INSERT INTO drain VALUES ('stuck')`);
      const sigAt = Date.now();
      proxy.proc.kill('SIGINT');
      const st = await proxy.waitExit(10000);
      const took = Date.now() - sigAt;
      t.ok(st, `exits (${took} ms)`);
      t.equal(st?.code, 0, 'exit code 0');
      t.ok(took >= 800, 'not before shutdown_timeout');
      await waitUntil(() => backendCount(c, 'app') === 0, 5000, 'server connections closed');
      t.equal(c.pg.psql(`SELECT count(*) FROM drain WHERE v = 'stuck'`, 'app'), '0', 'the unfinished transaction was rolled back');
    });

    t.test(`SIGQUIT: immediate exit with clients connected ${B}`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, { bypass, shutdown_timeout: 30 }));
      const a = await pgClient(t, proxy);
      await a.query('BEGIN');
      const started = Date.now();
      proxy.proc.kill('SIGQUIT');
      const st = await proxy.waitExit(5000);
      t.ok(st, `exits at once (${Date.now() - started} ms) despite an open transaction and shutdown_timeout 30`);
      t.equal(st?.code, 0, 'exit code 0');
      t.ok(Date.now() - started < 3000, 'within 3 s');
      const attempt = await tryConnect(proxy.port);
      t.equal(attempt, 'refused', 'the port is closed');
    });

    t.test(`a second SIGINT during a safe shutdown stops at once ${B}`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, { bypass, shutdown_timeout: 30 }));
      const a = await pgClient(t, proxy);
      await a.query('BEGIN');
      const from = proxy.logs().length;
      proxy.proc.kill('SIGINT');
      await proxy.waitForLog(/shutdown WAIT_FOR_SERVERS: new connections refused/, 5000, from);
      t.equal(proxy.exited(), undefined, 'the first SIGINT waits for the open transaction');
      const started = Date.now();
      proxy.proc.kill('SIGINT');
      const st = await proxy.waitExit(5000);
      t.ok(st && Date.now() - started < 3000, `the second SIGINT exits at once (${Date.now() - started} ms)`);
      t.equal(st?.code, 0, 'exit code 0');
    });

    t.test(`SIGTERM (super safe shutdown) waits for clients to disconnect, serving them meanwhile ${B}`, async (t) => {
      const proxy = await startProxy(t, await proxyConfig(c, { bypass, shutdown_timeout: 30 }));
      const a = await pgClient(t, proxy);
      t.same((await a.query('SELECT 1 AS x')).rows, [{ x: 1 }], 'a connected client');
      const from = proxy.logs().length;
      const sigAt = Date.now();
      proxy.proc.kill('SIGTERM');
      await proxy.waitForLog(/shutdown WAIT_FOR_CLIENTS: new connections refused/, 5000, from);
      await sleep(700);
      t.equal(proxy.exited(), undefined, 'the proxy waits while a client is connected, though it is idle');
      t.not(await tryConnect(proxy.port), 'ok', 'new clients are not served');
      t.same((await a.query('SELECT 2 AS x')).rows, [{ x: 2 }], 'the connected client is still served (transactions too)');
      await a.query('BEGIN');
      await a.query('COMMIT');
      await a.end();
      const st = await proxy.waitExit(8000);
      t.ok(st, `exits once the client left (${Date.now() - sigAt} ms after SIGTERM)`);
      t.equal(st?.code, 0, 'exit code 0');
      await waitUntil(() => backendCount(c, 'app') === 0, 5000, 'server connections closed');
    });
  }
});
void net;

// The admin console through a real proxy and a real PostgreSQL, driven by psql:
// each SHOW parsed and checked against the state the test created, PAUSE/RESUME,
// KILL_CLIENT, KILL, RECONNECT, RELOAD, SET, access control, the extended protocol
// refused, SHUTDOWN.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client } from 'pg';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, configText, ProxyHandle } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, pgConnectError, run, libpqEnv, waitUntil, sleep, Cluster } from './helpers/cluster';
import { adminRows as consoleRows, Row } from './helpers/kernel';
import { readDoc, section, tableRows, backticked } from './helpers/docs';
import { login, extendedQuery, simpleQuery, summarize, RawConn, startupMessage, query } from './helpers/pgwire';

const ADMIN = { user: 'admin', password: 'admin-pw' };
const STATS = { user: 'watcher', password: 'watcher-pw' };

// psql against the console as this file's admin (or another user): rows keyed by column name.
const adminRows = (proxy: ProxyHandle, sql: string, who = ADMIN): Promise<Row[]> => consoleRows(proxy, sql, 30000, who);

// psql -At against the console; resolves with {code, stdout, stderr}.
function adminRun(proxy: ProxyHandle, sql: string, who = ADMIN) {
  return run('psql', ['-X', '-q', '-At', '-F', '|', '-c', sql], { env: libpqEnv(proxy, 'pgsplice', who.user, who.password), timeoutMs: 30000 });
}

function baseConfig(c: Cluster, port: number, bypass: string, extra: Record<string, unknown> = {}) {
  return {
    listen: { host: '127.0.0.1', port },
    pool_mode: 'transaction',
    default_pool_size: 4,
    max_client_conn: 100,
    auth_type: 'scram-sha-256',
    bypass,
    admin_users: [ADMIN.user],
    stats_users: [STATS.user],
    query_wait_timeout: 60,
    databases: {
      app: { host: '127.0.0.1', port: c.pg.port, dbname: 'app' },
      other: { host: '127.0.0.1', port: c.pg.port, dbname: 'app', pool_size: 2 },
    },
    users: {
      app: { password: c.password },
      [ADMIN.user]: { password: ADMIN.password },
      [STATS.user]: { password: STATS.password },
    },
    ...extra,
  };
}

const num = (s: string | undefined) => Number(s ?? 'NaN');

// docs/admin.md's column lists: [SHOW command, its columns], from each section's table of
// columns (first cells, `a`, `b` splitting into a and b) or its first backticked list.
function documentedShowColumns(): Array<[string, string[]]> {
  const shows = section(readDoc('docs/admin.md'), 'SHOW commands');
  const fromTable = (title: string) => tableRows(section(shows, title)).flatMap((r) => backticked(r[0]!));
  // The section's first backticked list (`a, b, c` or `a | b`), else its first backticked word.
  const fromList = (title: string) => {
    const words = backticked(section(shows, title));
    return (words.find((w) => /[,|]/.test(w)) ?? words[0]!).split(/[\s,|]+/).filter((w) => w !== '');
  };
  const clients = fromTable('SHOW CLIENTS and SHOW SERVERS');
  // "`SHOW X` returns ... `a | b`" in the section that describes several commands.
  const fromSentence = (cmd: string) => {
    const m = new RegExp(`\`${cmd}\` returns[^\`]*\`([^\`]+)\``).exec(section(shows, 'SHOW VERSION, LISTS, STATE, HELP'));
    return m ? m[1]!.split(/[\s,|]+/) : [];
  };
  return [
    ['SHOW POOLS', fromTable('SHOW POOLS')],
    ['SHOW STATS', fromTable('SHOW STATS')],
    ['SHOW CLIENTS', clients],
    ['SHOW SERVERS', clients],
    ['SHOW STATS_TOTALS', fromList('SHOW STATS_TOTALS, SHOW STATS_AVERAGES')],
    ['SHOW STATS_AVERAGES', fromList('SHOW STATS_TOTALS, SHOW STATS_AVERAGES')],
    ['SHOW TOTALS', fromList('SHOW TOTALS')],
    ['SHOW DATABASES', fromList('SHOW DATABASES')],
    ['SHOW USERS', fromList('SHOW USERS')],
    ['SHOW CONFIG', fromList('SHOW CONFIG')],
    ['SHOW LISTS', fromSentence('SHOW LISTS')],
    ['SHOW STATE', fromSentence('SHOW STATE')],
    ['SHOW BYPASS', fromList('SHOW BYPASS')],
    ['SHOW SUMMARY', fromList('SHOW SUMMARY')],
    ['SHOW VERSION', fromSentence('SHOW VERSION')],
  ];
}

t.test('admin console', async (t) => {
  const c = await startCluster(t);

  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;
    const port = (await proxyConfig(c)).listen.port as number;
    const cfg = baseConfig(c, port, bypass);
    const proxy = await startProxy(t, cfg, { logLevel: 'info' });
    t.afterEach(async (t) => {
      const st = proxy.exited();
      if (st && t.name.includes(B) && !/SHUTDOWN/.test(t.name)) t.comment(`proxy exited ${JSON.stringify(st)}; log tail:\n${proxy.logs().slice(-3000)}`);
    });

    t.test(`SHOW VERSION, HELP, CONFIG, LISTS, USERS, BYPASS ${B}`, async (t) => {
      const v = await adminRows(proxy, 'show version');
      t.match(v[0].version, /^pgsplice \d+\.\d+\.\d+/);
      const help = await adminRun(proxy, 'SHOW HELP;');
      t.equal(help.code, 0);
      t.match(help.stderr, /SHOW HELP\|CONFIG/);
      const conf = Object.fromEntries((await adminRows(proxy, 'SHOW CONFIG')).map((r) => [r.key, r]));
      t.equal(conf.default_pool_size.value, '4');
      t.equal(conf.default_pool_size.default, '20');
      t.equal(conf.default_pool_size.changeable, 'yes');
      t.equal(conf['listen.port'].changeable, 'no');
      t.equal(conf.admin_users.value, 'admin');
      const users = (await adminRows(proxy, 'SHOW USERS')).map((r) => r.name).sort();
      t.same(users, ['admin', 'app', 'watcher']);
      const lists = Object.fromEntries((await adminRows(proxy, 'SHOW LISTS')).map((r) => [r.list, num(r.items)]));
      t.equal(lists.databases, 2);
      t.equal(lists.users, 3);
      const by = Object.fromEntries((await adminRows(proxy, 'SHOW BYPASS')).map((r) => [r.key, r.value]));
      t.ok('loaded' in by, 'SHOW BYPASS has loaded');
      for (const k of ['clients_user', 'clients_kernel', 'servers_user', 'servers_kernel', 'transactions_total']) t.match(by[k], /^\d+$/, `SHOW BYPASS ${k}`);
      if (bypass === 'off') {
        t.equal(by.loaded, 'no');
        t.match(by.reason, /bypass: off/);
      }
      // Two statements in one query, case-insensitive, trailing ';'.
      const two = await adminRun(proxy, 'show version; SHOW LISTS;');
      t.equal(two.code, 0);
      t.match(two.stdout, /pgsplice/);
      t.match(two.stdout, /used_clients\|/);
      const bad = await adminRun(proxy, 'SHOW NOTHING');
      t.not(bad.code, 0);
      t.match(bad.stderr, /invalid command/);
    });

    t.test(`SHOW CLIENTS / POOLS / SERVERS / DATABASES reflect 3 clients, one in a transaction ${B}`, async (t) => {
      const clients: Client[] = [];
      for (let i = 0; i < 3; i++) clients.push(await pgClient(t, proxy, { application_name: `adm-${i}` }));
      for (const cl of clients) await cl.query('SELECT 1');
      await clients[0].query('BEGIN');
      await clients[0].query('SELECT 2');

      const rows = (await adminRows(proxy, 'SHOW CLIENTS')).filter((r) => r.database === 'app');
      t.equal(rows.length, 3, 'three app clients');
      t.same(rows.map((r) => r.application_name).sort(), ['adm-0', 'adm-1', 'adm-2']);
      for (const r of rows) {
        t.equal(r.type, 'C');
        t.equal(r.user, 'app');
        t.equal(r.addr, '127.0.0.1');
        t.ok(num(r.port) > 0);
        t.equal(num(r.local_port), proxy.port);
        t.match(r.connect_time, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/);
        t.ok(num(r.id) > 0);
        t.match(r.path, /^(user|kernel)$/);
      }
      const inTx = rows.find((r) => r.application_name === 'adm-0')!;
      // In the kernel path a client's server binding is the kernel's: no user-space link.
      const kernel = inTx.path === 'kernel';
      if (!kernel) {
        t.equal(inTx.state, 'active', 'the client in a transaction is active');
        t.match(inTx.link, /^S-\d+$/);
      }
      const me = (await adminRows(proxy, 'SHOW CLIENTS')).filter((r) => r.database === 'pgsplice');
      t.equal(me.length, 1, 'the console client itself is listed');

      const pools = await adminRows(proxy, 'SHOW POOLS');
      const p = pools.find((r) => r.database === 'app' && r.user === 'app')!;
      t.ok(p, 'pool app/app listed');
      t.equal(num(p.cl_active), 3);
      t.equal(num(p.cl_waiting), 0);
      t.ok(num(p.sv_active) + (kernel ? num(p.sv_idle) : 0) >= 1, 'a server is active');
      t.equal(p.pool_mode, 'transaction');
      for (const col of ['cl_active_cancel_req', 'cl_waiting_cancel_req', 'sv_active_cancel', 'sv_being_canceled', 'sv_idle', 'sv_used', 'sv_tested', 'sv_login', 'maxwait', 'maxwait_us']) {
        t.ok(col in p, `SHOW POOLS has ${col}`);
      }

      const servers = (await adminRows(proxy, 'SHOW SERVERS')).filter((r) => r.database === 'app');
      const backend = Number(c.sql(`SELECT pid FROM pg_stat_activity WHERE application_name = 'adm-0'`));
      const active = kernel ? servers.find((r) => num(r.remote_pid) === backend) : servers.find((r) => r.state === 'active' && r.link === inTx.ptr);
      t.ok(active, 'the server of the client in a transaction is listed');
      t.equal(num(active?.remote_pid), backend, 'its remote_pid is the backend pid PostgreSQL reports');
      t.equal(active?.type, 'S');

      const dbs = Object.fromEntries((await adminRows(proxy, 'SHOW DATABASES')).map((r) => [r.name, r]));
      t.equal(num(dbs.app.pool_size), 4);
      t.equal(num(dbs.other.pool_size), 2);
      t.equal(dbs.app.database, 'app');
      t.equal(num(dbs.app.port), c.pg.port);
      t.equal(num(dbs.app.current_connections), servers.length);
      t.equal(num(dbs.app.paused), 0);

      await clients[0].query('COMMIT');
      for (const cl of clients) await cl.end();
      await waitUntil(async () => (await adminRows(proxy, 'SHOW CLIENTS')).filter((r) => r.database === 'app').length === 0, 5000, 'clients gone');
    });

    t.test(`SHOW STATS and TOTALS count queries, transactions, bytes and time ${B}`, async (t) => {
      const before = (await adminRows(proxy, 'SHOW STATS')).find((r) => r.database === 'app');
      const cl = await pgClient(t, proxy);
      for (let i = 0; i < 10; i++) await cl.query('SELECT pg_sleep(0.001)');
      await cl.query('BEGIN');
      await cl.query('SELECT 1');
      await cl.query('COMMIT');
      await cl.end();
      const after = (await adminRows(proxy, 'SHOW STATS')).find((r) => r.database === 'app')!;
      const b = (k: string) => num(before?.[k] ?? '0');
      // Exactly once each, whichever path carried it: user space counts what it forwards,
      // the kernel what it carries (its per-pool counters are read when SHOW STATS runs).
      t.equal(num(after.total_query_count) - b('total_query_count'), 13, 'queries counted');
      t.equal(num(after.total_xact_count) - b('total_xact_count'), 11, 'transactions counted');
      t.ok(num(after.total_received) > b('total_received'), 'bytes received');
      t.ok(num(after.total_sent) > b('total_sent'), 'bytes sent');
      t.ok(num(after.total_query_time) - b('total_query_time') >= 10 * 1000, `query time >= 10 ms (${after.total_query_time} us)`);
      t.ok(num(after.total_xact_time) >= num(after.total_query_time) * 0.5, 'transaction time measured');
      for (const k of ['avg_xact_count', 'avg_query_count', 'avg_recv', 'avg_sent', 'avg_xact_time', 'avg_query_time', 'avg_wait_time', 'total_wait_time']) {
        t.ok(k in after && /^\d+$/.test(after[k]), `${k} is a number`);
      }
      const totals = Object.fromEntries((await adminRows(proxy, 'SHOW TOTALS')).map((r) => [r.name, num(r.value)]));
      t.ok(totals.total_query_count >= num(after.total_query_count), 'TOTALS sums the databases');
      // What prometheus-community/pgbouncer_exporter reads.
      const st = (await adminRows(proxy, 'SHOW STATS_TOTALS;')).find((r) => r.database === 'app')!;
      t.same(Object.keys(st), ['database', 'xact_count', 'query_count', 'bytes_received', 'bytes_sent', 'xact_time', 'query_time', 'wait_time']);
      t.ok(num(st.query_count) >= num(after.total_query_count));
      const sa = (await adminRows(proxy, 'SHOW STATS_AVERAGES;')).find((r) => r.database === 'app')!;
      t.ok(/^\d+$/.test(sa.xact_count), 'STATS_AVERAGES has numbers');
    });

    t.test(`SHOW STATS counts pgbench's transactions exactly, in whichever path they ran ${B}`, async (t) => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-stats-'));
      t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
      const script = path.join(dir, 'sleep.sql');
      fs.writeFileSync(script, 'SELECT pg_sleep(0.002);\n'); // a custom script: pgbench sends nothing else
      const N = 50;
      const bypassRows = async () => Object.fromEntries((await adminRows(proxy, 'SHOW BYPASS')).map((r) => [r.key, num(r.value)]));
      // 4 clients on the pool's 4 servers, then 8: with bypass on, waiting requests go through
      // user space and are bound in the kernel from there (both paths count parts of them).
      for (const [protocol, C] of [['simple', 4], ['extended', 8]] as const) {
        const before = (await adminRows(proxy, 'SHOW STATS')).find((r) => r.database === 'app');
        const kBefore = await bypassRows();
        const t0 = Date.now();
        const r = await run('pgbench', ['-n', '-f', script, '-M', protocol, '-c', String(C), '-j', '2', '-t', String(N), 'app'], {
          env: libpqEnv(proxy, 'app', 'app', c.password),
          timeoutMs: 60000,
        });
        const wallUs = (Date.now() - t0) * 1000;
        t.equal(r.code, 0, `pgbench -M ${protocol} (${r.stderr.slice(-500)})`);
        t.match(r.stdout, new RegExp(`number of transactions actually processed: ${C * N}/${C * N}`));
        const after = (await adminRows(proxy, 'SHOW STATS')).find((r) => r.database === 'app')!;
        const d = (k: string) => num(after[k]) - num(before?.[k] ?? '0');
        // One Query (simple) or one Sync (extended) per transaction, each its own transaction.
        t.equal(d('total_xact_count'), C * N, `-M ${protocol}: transactions`);
        t.equal(d('total_query_count'), C * N, `-M ${protocol}: queries`);
        // Bytes: at least the request ('Q'/'P' + length + the SQL) and ReadyForQuery + CommandComplete 'SELECT 1' per transaction.
        t.ok(d('total_received') >= C * N * (5 + 'SELECT pg_sleep(0.002)'.length), `-M ${protocol}: bytes received (${d('total_received')})`);
        t.ok(d('total_sent') >= C * N * (6 + 14), `-M ${protocol}: bytes sent (${d('total_sent')})`);
        // Each query sleeps 2 ms on the server; C clients can't spend more than C x the run's wall time.
        t.ok(d('total_query_time') >= C * N * 2000, `-M ${protocol}: query time >= ${C * N * 2} ms (${d('total_query_time')} us)`);
        t.ok(d('total_query_time') <= C * wallUs, `-M ${protocol}: query time <= ${C} x wall time (${d('total_query_time')} <= ${C * wallUs} us)`);
        t.ok(d('total_xact_time') >= d('total_query_time') * 0.99, `-M ${protocol}: transaction time covers query time (${d('total_xact_time')} us)`);
        t.ok(d('total_xact_time') <= C * wallUs, `-M ${protocol}: transaction time <= ${C} x wall time`);
        t.ok(d('total_wait_time') <= C * wallUs, `-M ${protocol}: wait time <= ${C} x wall time (${d('total_wait_time')} us)`);
        if (bypass === 'on') {
          const kAfter = await bypassRows();
          const kx = kAfter.kernel_transactions - kBefore.kernel_transactions;
          t.ok(kx > 0, `-M ${protocol}: the kernel carried ${kx} of the ${C * N} transactions`);
          t.comment(`-M ${protocol} -c ${C}: ${kAfter.user_bindsFromUser - kBefore.user_bindsFromUser} requests waited in user space and were bound in the kernel`);
        }
      }
    });

    t.test(`PAUSE waits for the running transaction, holds new ones until RESUME ${B}`, async (t) => {
      const a = await pgClient(t, proxy);
      const b = await pgClient(t, proxy);
      await a.query('BEGIN');
      await a.query('SELECT 1');
      let paused = false;
      const from = proxy.logs().length;
      const pause = adminRun(proxy, 'PAUSE app').then((r) => {
        paused = true;
        return r;
      });
      await proxy.waitForLog(/PAUSE app: waiting/, 10000, from); // the command reached the proxy
      await sleep(400);
      t.notOk(paused, 'PAUSE does not return while a transaction runs');
      await a.query('COMMIT');
      const pr = await pause;
      t.equal(pr.code, 0, `PAUSE returned (${pr.stderr})`);
      const dbs = Object.fromEntries((await adminRows(proxy, 'SHOW DATABASES')).map((r) => [r.name, r]));
      t.equal(num(dbs.app.paused), 1, 'SHOW DATABASES says paused');
      t.equal(num(dbs.other.paused), 0);

      let done = false;
      const q = b.query('SELECT 42 AS x').then((r) => {
        done = true;
        return r;
      });
      await sleep(600);
      t.notOk(done, 'a new transaction is held while paused');
      const pools = await adminRows(proxy, 'SHOW POOLS');
      const p = pools.find((r) => r.database === 'app' && r.user === 'app')!;
      t.equal(num(p.cl_waiting), 1, 'SHOW POOLS: one client waiting');
      t.ok(num(p.maxwait) * 1e6 + num(p.maxwait_us) >= 400000, `maxwait counts (${p.maxwait}s ${p.maxwait_us}us)`);
      const cl = (await adminRows(proxy, 'SHOW CLIENTS')).filter((r) => r.state === 'waiting');
      t.equal(cl.length, 1, 'SHOW CLIENTS: one waiting');

      const rr = await adminRun(proxy, 'RESUME app');
      t.equal(rr.code, 0);
      const res = await q;
      t.equal(res.rows[0].x, 42, 'the held transaction ran after RESUME');
      // PAUSE/RESUME without a database.
      t.equal((await adminRun(proxy, 'PAUSE')).code, 0);
      t.equal((await adminRun(proxy, 'RESUME')).code, 0);
      t.equal((await b.query('SELECT 1 AS y')).rows[0].y, 1);
    });

    t.test(`KILL_CLIENT drops that client only ${B}`, async (t) => {
      const victim = await pgClient(t, proxy, { application_name: 'victim' });
      const bystander = await pgClient(t, proxy, { application_name: 'bystander' });
      await victim.query('SELECT 1');
      const row = (await adminRows(proxy, 'SHOW CLIENTS')).find((r) => r.application_name === 'victim')!;
      const closed = new Promise<void>((resolve) => victim.once('end', () => resolve()));
      const r = await adminRun(proxy, `KILL_CLIENT ${row.id}`);
      t.equal(r.code, 0, r.stderr);
      await closed;
      t.ok(victim.errors.some((e) => /KILL_CLIENT|administrator/.test(e.message)), 'the victim was told why');
      const left = (await adminRows(proxy, 'SHOW CLIENTS')).map((x) => x.application_name);
      t.notOk(left.includes('victim'));
      t.ok(left.includes('bystander'));
      t.equal((await bystander.query('SELECT 7 AS z')).rows[0].z, 7);
      const bad = await adminRun(proxy, 'KILL_CLIENT 999999');
      t.not(bad.code, 0);
      t.match(bad.stderr, /no such client/);
    });

    t.test(`RECONNECT replaces the servers; KILL drops a database's clients ${B}`, async (t) => {
      const cl = await pgClient(t, proxy, { database: 'other' });
      await cl.query('SELECT 1');
      const pidsBefore = (await adminRows(proxy, 'SHOW SERVERS')).filter((r) => r.database === 'other').map((r) => r.remote_pid);
      t.ok(pidsBefore.length >= 1);
      t.equal((await adminRun(proxy, 'RECONNECT other')).code, 0);
      await cl.query('SELECT 1');
      const pidsAfter = (await adminRows(proxy, 'SHOW SERVERS')).filter((r) => r.database === 'other').map((r) => r.remote_pid);
      t.ok(pidsAfter.length >= 1);
      t.notOk(pidsAfter.some((p) => pidsBefore.includes(p)), 'no server of before RECONNECT is left');

      const closed = new Promise<void>((resolve) => cl.once('end', () => resolve()));
      t.equal((await adminRun(proxy, 'KILL other')).code, 0);
      await closed;
      const dbs = Object.fromEntries((await adminRows(proxy, 'SHOW DATABASES')).map((r) => [r.name, r]));
      t.equal(num(dbs.other.paused), 1, 'KILL leaves the database paused');
      t.equal(num(dbs.other.current_connections), 0, 'and without servers');
      t.equal((await adminRun(proxy, 'RESUME other')).code, 0);
      const again = await pgClient(t, proxy, { database: 'other' });
      t.equal((await again.query('SELECT 3 AS n')).rows[0].n, 3);
      await again.end();
    });

    t.test(`RELOAD picks up a changed config; SET changes a setting live ${B}`, async (t) => {
      const next = baseConfig(c, port, bypass, { default_pool_size: 6 });
      (next.databases.other as Record<string, unknown>).pool_size = 3;
      fs.writeFileSync(proxy.configFile, configText(next));
      const r = await adminRun(proxy, 'RELOAD');
      t.equal(r.code, 0, r.stderr);
      t.match(r.stderr, /reloaded/);
      const conf = Object.fromEntries((await adminRows(proxy, 'SHOW CONFIG')).map((x) => [x.key, x.value]));
      t.equal(conf.default_pool_size, '6');
      const dbs = Object.fromEntries((await adminRows(proxy, 'SHOW DATABASES')).map((x) => [x.name, x]));
      t.equal(num(dbs.app.pool_size), 6);
      t.equal(num(dbs.other.pool_size), 3);

      const s = await adminRun(proxy, 'SET default_pool_size = 9');
      t.equal(s.code, 0, s.stderr);
      const s2 = await adminRun(proxy, "SET server_reset_query = 'DISCARD ALL'");
      t.equal(s2.code, 0, s2.stderr);
      const conf2 = Object.fromEntries((await adminRows(proxy, 'SHOW CONFIG')).map((x) => [x.key, x.value]));
      t.equal(conf2.default_pool_size, '9');
      t.equal(num((await adminRows(proxy, 'SHOW DATABASES')).find((x) => x.name === 'app')!.pool_size), 9);
      const bad = await adminRun(proxy, 'SET default_pool_size = 0');
      t.not(bad.code, 0);
      t.match(bad.stderr, /too small/);
      const unknown = await adminRun(proxy, 'SET pool_mod = session');
      t.match(unknown.stderr, /did you mean "pool_mode"/);
      const restart = await adminRun(proxy, 'SET bypass = off');
      t.match(restart.stderr, /restart/);

      // A broken file: RELOAD fails and the running config stays.
      fs.writeFileSync(proxy.configFile, 'databases: [');
      const broken = await adminRun(proxy, 'RELOAD');
      t.not(broken.code, 0);
      t.match(broken.stderr, /YAML/);
      const conf3 = Object.fromEntries((await adminRows(proxy, 'SHOW CONFIG')).map((x) => [x.key, x.value]));
      t.equal(conf3.default_pool_size, '9');
      fs.writeFileSync(proxy.configFile, configText(cfg));
    });

    t.test(`access: stats_users SHOW only; others refused with 28000 ${B}`, async (t) => {
      const pools = await adminRows(proxy, 'SHOW POOLS', STATS);
      t.ok(Array.isArray(pools));
      const p = await adminRun(proxy, 'PAUSE', STATS);
      t.not(p.code, 0);
      t.match(p.stderr, /admin access needed/);
      const s = await adminRun(proxy, 'SET default_pool_size = 5', STATS);
      t.match(s.stderr, /admin access needed/);
      const e = await pgConnectError(proxy, { database: 'pgsplice' }); // user app: not admin, not stats
      t.equal(e.code, '28000');
      t.match(e.message, /not allowed/);
      const alias = await adminRows(proxy, 'SHOW VERSION').catch(() => []);
      t.equal(alias.length, 1);
      // The "pgbouncer" alias answers too.
      const r = await run('psql', ['-X', '-At', '-c', 'SHOW VERSION'], { env: libpqEnv(proxy, 'pgbouncer', ADMIN.user, ADMIN.password) });
      t.match(r.stdout, /pgsplice/);
      // Wrong password to the console: 28P01 as anywhere else.
      const wrong = await pgConnectError(proxy, { database: 'pgsplice', user: ADMIN.user, password: 'nope' });
      t.equal(wrong.code, '28P01');
    });

    t.test(`every SHOW answers with the columns docs/admin.md lists ${B}`, async (t) => {
      const pg = await pgClient(t, proxy, { database: 'pgsplice', user: ADMIN.user, password: ADMIN.password });
      for (const [cmd, documented] of documentedShowColumns()) {
        const r = await pg.query(cmd);
        t.same(r.fields.map((f) => f.name).sort(), [...documented].sort(), `${cmd}: ${documented.join(', ')}`);
      }
      // The commands: SHOW HELP's list against the section headings and the commands table.
      const help = (await adminRun(proxy, 'SHOW HELP')).stderr;
      const helpShows = (help.match(/SHOW ([A-Z_|]+)/g) ?? []).flatMap((m) => m.slice(5).split('|'));
      const helpVerbs = help.split('\n').filter((l) => !/NOTICE:/.test(l)).map((l) => l.replace(/^\s*(DETAIL:)?\s*/, '').split(' ')[0]!)
        .filter((v) => /^[A-Z_]+$/.test(v) && v !== 'SHOW');
      const adminMd = readDoc('docs/admin.md');
      const docShows = [...adminMd.matchAll(/^### (SHOW .*)$/gm)].flatMap((m) => m[1]!.replace(/SHOW /g, '').split(/,\s*|\s+and\s+/));
      t.same([...new Set(helpShows)].sort(), [...new Set(docShows)].sort(), 'SHOW HELP lists the SHOW commands the docs have a section for');
      const docVerbs = tableRows(section(adminMd, 'Commands (admin_users only)')).map((r) => backticked(r[0]!)[0]!.split(' ')[0]!);
      t.same([...new Set(helpVerbs)].sort(), [...new Set(docVerbs)].sort(), 'and the commands the docs list');
      // SHOW BYPASS: each row is named in its section (fallback_<reason> and pool <user>@<db> by pattern).
      const bypassDoc = backticked(section(section(adminMd, 'SHOW commands'), 'SHOW BYPASS'));
      for (const row of (await pg.query('SHOW BYPASS')).rows) {
        const key = row.key as string;
        const named = bypassDoc.includes(key) || (key.startsWith('fallback_') && bypassDoc.includes('fallback_<reason>'))
          || (key.startsWith('pool ') && bypassDoc.includes('pool <user>@<db>'));
        t.ok(named, `SHOW BYPASS row ${key} documented`);
      }
      // SHOW MIRRORS is prose: each column it returns is named there.
      const mirrors = section(section(readDoc('docs/admin.md'), 'SHOW commands'), 'SHOW MIRRORS');
      const named = backticked(mirrors);
      for (const f of (await pg.query('SHOW MIRRORS')).fields) t.ok(named.includes(f.name), `SHOW MIRRORS: ${f.name} documented`);
      // SHOW CONFIG: a row per key docs/config.md documents, with the loader's default.
      const conf = new Map((await pg.query('SHOW CONFIG')).rows.map((r) => [r.key as string, r]));
      t.equal(conf.get('listen.unix_socket_mode')?.default, '0777', 'listen.unix_socket_mode default');
      t.equal(conf.get('session_state.listen')?.default, 'pin', 'session_state.* defaults');
      t.equal(conf.get('session_state.parameters')?.default, 'track');
      t.ok(conf.has('metrics.host') && conf.has('metrics.port'), 'metrics.*');
    });

    t.test(`extended protocol refused with 0A000, session stays usable ${B}`, async (t) => {
      const s = await login(proxy.port, { user: ADMIN.user, password: ADMIN.password, database: 'pgsplice' });
      t.teardown(() => s.conn.destroy());
      s.conn.write(extendedQuery('SHOW POOLS'));
      const r = summarize(await s.conn.readUntil('Z', 5000));
      t.equal(r.errors.length, 1);
      t.equal(r.errors[0].C, '0A000');
      t.match(r.errors[0].M, /simple query protocol/);
      const ok = await simpleQuery(s.conn, 'SHOW VERSION');
      t.equal(ok.errors.length, 0);
      t.match(String(ok.rows[0][0]), /pgsplice/);
      const empty = await simpleQuery(s.conn, '');
      t.equal(empty.errors.length, 0);
      const fake = await simpleQuery(s.conn, "SET client_encoding = 'UTF8'");
      t.same(fake.tags, ['SET']);
    });

    t.test(`SHUTDOWN stops the proxy ${B}`, async (t) => {
      const r = await adminRun(proxy, 'SHUTDOWN');
      t.equal(r.code, 0, r.stderr);
      const st = await proxy.waitExit(5000);
      t.ok(st, 'the proxy exited');
      t.equal(st?.code, 0);
    });
  }

  t.test('a query sent together with the startup packet is answered (auth trust)', async (t) => {
    const port = (await proxyConfig(c)).listen.port as number;
    const proxy = await startProxy(t, baseConfig(c, port, 'off', { auth_type: 'trust' }), { logLevel: 'info' });
    const conn = await RawConn.connect(proxy.port);
    t.teardown(() => conn.destroy());
    conn.write(Buffer.concat([startupMessage({ user: ADMIN.user, database: 'pgsplice' }), query('SHOW VERSION')]));
    const loginMsgs = await conn.readUntil('Z', 5000);
    t.ok(loginMsgs.some((m) => m.type === 'R'), 'AuthenticationOk');
    const r = summarize(await conn.readUntil('Z', 5000));
    t.same(r.errors, []);
    t.match(String(r.rows[0]?.[0]), /^pgsplice /);
  });

  t.test('SHUTDOWN WAIT_FOR_CLIENTS waits for the last client', async (t) => {
    const port = (await proxyConfig(c)).listen.port as number;
    const proxy = await startProxy(t, baseConfig(c, port, 'off'), { logLevel: 'info' });
    const cl = await pgClient(t, proxy);
    await cl.query('SELECT 1');
    const r = await adminRun(proxy, 'SHUTDOWN WAIT_FOR_CLIENTS');
    t.equal(r.code, 0, r.stderr);
    await sleep(500);
    t.notOk(proxy.exited(), 'still running while a client is connected');
    // The listener is closed (PgBouncer 1.23+), so that another process on the port takes them.
    const refused = await pgConnectError(proxy);
    t.equal(refused.code, 'ECONNREFUSED', `new clients refused: the listener is closed (${refused.message})`);
    t.equal((await cl.query('SELECT 5 AS v')).rows[0].v, 5, 'the connected client is still served');
    await cl.end();
    const st = await proxy.waitExit(5000);
    t.equal(st?.code, 0, 'exited after the last client left');
  });
});

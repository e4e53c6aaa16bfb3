// Resilience: PostgreSQL restarted under load (clean errors, no hang, the pool recovers),
// PostgreSQL down (a clean error, never a hang), pooled servers killed with
// pg_terminate_backend (replaced), and an unreachable server.
import t from 'tap';
import * as net from 'node:net';
import { Client } from 'pg';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, withTimeout, sleep, waitUntil, freePort, run, Endpoint } from './helpers/cluster';
import { Session, copyData, login, query, simpleQuery } from './helpers/pgwire';

const CLEAN_CODE = /^(08|57P0[1-3]|53300)/;
const DISCONNECT = /terminat|ECONNRESET|EPIPE|closed|ended|not queryable|Connection terminated/i;

interface ErrInfo {
  code?: string;
  message: string;
}

function describeErr(e: any): ErrInfo {
  return { code: e?.code, message: String(e?.message ?? e) };
}

// A client that keeps running numbered queries, reconnecting when its connection dies.
async function worker(ep: Endpoint, id: number, until: () => boolean, log: { ok: number[]; errors: ErrInfo[]; wrong: string[]; hangs: number }) {
  let c: Client | undefined;
  let n = 0;
  while (!until()) {
    try {
      if (!c) {
        c = new Client({ host: ep.host, port: ep.port, user: 'app', password: 'app-pw', database: 'app', connectionTimeoutMillis: 10000 });
        c.on('error', () => undefined);
        await withTimeout(c.connect(), 12000, `worker ${id} connect`);
      }
      const v = id * 100000 + n++;
      const r = await withTimeout(c.query('SELECT $1::int AS v, pg_sleep(0.005)', [v]), 15000, `worker ${id} query`);
      if (r.rows[0].v !== v) log.wrong.push(`worker ${id}: sent ${v} got ${r.rows[0].v}`);
      log.ok.push(Date.now());
    } catch (e: any) {
      if (/hang/.test(String(e?.message))) log.hangs++;
      log.errors.push(describeErr(e));
      try {
        await c?.end();
      } catch {
        /* dead already */
      }
      c = undefined;
      await sleep(100);
    }
  }
  await c?.end().catch(() => undefined);
}

t.test('resilience', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;
    let proxy: ProxyHandle;
    t.before(async () => {
      proxy = await startProxy(t, await proxyConfig(c, { bypass, default_pool_size: 4, query_wait_timeout: 10, server_connect_timeout: 3, server_login_retry: 1 } as any));
    });

    t.test(`PostgreSQL restarted under load ${B}`, async (t) => {
      const idle = await pgClient(t, proxy);
      t.same((await idle.query('SELECT 1 AS x')).rows, [{ x: 1 }], 'idle client connected before the restart');
      const log = { ok: [] as number[], errors: [] as ErrInfo[], wrong: [] as string[], hangs: 0 };
      let stop = false;
      const workers = Array.from({ length: 12 }, (_, i) => worker(proxy, i, () => stop, log));
      await sleep(1500);
      const okBefore = log.ok.length;
      const restartAt = Date.now();
      await c.pg.restart('fast');
      const restartedAt = Date.now();
      t.comment(`PostgreSQL restarted in ${restartedAt - restartAt} ms`);
      await sleep(4000);
      stop = true;
      await withTimeout(Promise.all(workers), 40000, 'workers');
      t.ok(okBefore > 0, `queries ran before the restart (${okBefore})`);
      t.equal(log.hangs, 0, 'no query or connect hung');
      t.same(log.wrong, [], 'every answer was the asker\'s own');
      const unclean = log.errors.filter((e) => !(e.code && CLEAN_CODE.test(e.code)) && !DISCONNECT.test(e.message));
      t.same(unclean, [], `every error is a clean ErrorResponse (class 08/57P0x) or a closed connection (${log.errors.length} errors)`);
      const withCode = log.errors.filter((e) => e.code);
      t.comment(`errors: ${log.errors.length}, with SQLSTATE: ${withCode.length}: ${JSON.stringify([...new Set(log.errors.map((e) => `${e.code ?? '-'} ${e.message}`))].slice(0, 8))}`);
      const okAfter = log.ok.filter((ts) => ts > restartedAt).length;
      t.ok(okAfter > 50, `the pool recovered: ${okAfter} queries succeeded after the restart`);
      // In transaction mode a client that was idle through the restart never notices it.
      const r = await withTimeout(idle.query('SELECT 2 AS x'), 10000, 'idle client after restart').catch((e) => e);
      t.same(r?.rows, [{ x: 2 }], `the idle client's next query works (${r?.message ?? 'ok'})`);
      const fresh = await pgClient(t, proxy);
      t.same((await fresh.query('SELECT 3 AS x')).rows, [{ x: 3 }], 'a new client works');
      t.equal(proxy.exited(), undefined, 'proxy still running');
    });

    t.test(`PostgreSQL down: clean errors, never a hang, then recovery ${B}`, async (t) => {
      const idle = await pgClient(t, proxy);
      await idle.query('SELECT 1');
      await c.pg.stop('fast');
      let started = false;
      t.teardown(async () => {
        if (!started) await c.pg.start();
      });
      const e1 = await withTimeout(idle.query('SELECT 1').then(() => undefined, (e) => e), 15000, 'query with PostgreSQL down');
      t.ok(e1, 'a connected client gets an error');
      t.ok(e1?.code ? CLEAN_CODE.test(e1.code) : DISCONNECT.test(String(e1?.message)), `clean error (${e1?.code} ${e1?.message})`);
      t.ok(e1?.code, `with a SQLSTATE (${e1?.code})`);
      const c2 = new Client({ host: proxy.host, port: proxy.port, user: 'app', password: 'app-pw', database: 'app' });
      c2.on('error', () => undefined);
      const e2 = await withTimeout(c2.connect().then(() => c2.query('SELECT 1')).then(() => undefined, (e) => e), 15000, 'new client with PostgreSQL down');
      await c2.end().catch(() => undefined);
      t.ok(e2, 'a new client gets an error');
      t.ok(e2?.code && CLEAN_CODE.test(e2.code), `clean ErrorResponse (${e2?.code} ${e2?.message})`);
      await c.pg.start();
      started = true;
      const back = await waitUntil(async () => {
        const x = new Client({ host: proxy.host, port: proxy.port, user: 'app', password: 'app-pw', database: 'app' });
        x.on('error', () => undefined);
        try {
          await x.connect();
          return (await x.query('SELECT 42 AS x')).rows[0].x;
        } finally {
          await x.end().catch(() => undefined);
        }
      }, 15000, 'queries work again');
      t.equal(back, 42, 'the pool recovers by itself once PostgreSQL is back');
    });

    t.test(`pg_terminate_backend on an idle pooled server: replaced ${B}`, async (t) => {
      const pg = await pgClient(t, proxy);
      const pids1 = new Set<number>();
      // Touch all pooled servers so several are idle in the pool.
      const others = await Promise.all([0, 1, 2].map(() => pgClient(t, proxy)));
      await Promise.all([pg, ...others].map((x) => x.query('SELECT pg_sleep(0.1)')));
      for (const row of c.pg.psql(`SELECT pid FROM pg_stat_activity WHERE usename = 'app'`).split('\n').filter(Boolean)) pids1.add(Number(row));
      t.ok(pids1.size >= 1, `${pids1.size} pooled servers`);
      c.pg.psql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'`);
      await sleep(500);
      for (let i = 0; i < 8; i++) {
        const r = await withTimeout(pg.query('SELECT pg_backend_pid() AS p').then((x) => x, (e) => e), 10000, 'query after terminate');
        t.ok(r?.rows, `query ${i} after the servers were terminated succeeds (${r?.message ?? 'ok'})`);
        if (r?.rows) t.notOk(pids1.has(r.rows[0].p), `served by a new server (${r.rows[0].p})`);
      }
      t.same(pg.errors, [], 'the client connection was never dropped');
    });

    t.test(`pg_terminate_backend during a query: clean error, then service goes on ${B}`, async (t) => {
      const pg = await pgClient(t, proxy);
      const q = pg.query('SELECT pg_sleep(10)').then(() => undefined, (e) => e);
      await waitUntil(() => c.pg.psql(`SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND query = 'SELECT pg_sleep(10)' AND state = 'active'`) === '1', 5000, 'sleep running');
      c.pg.psql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app' AND query = 'SELECT pg_sleep(10)'`);
      const e = await withTimeout(q, 5000, 'terminated query');
      t.ok(e, 'the query fails');
      t.ok(e?.code ? CLEAN_CODE.test(e.code) : DISCONNECT.test(String(e?.message)), `clean error (${e?.code} ${e?.message})`);
      const next = await pgClient(t, proxy);
      t.same((await withTimeout(next.query('SELECT 7 AS x'), 10000, 'next client')).rows, [{ x: 7 }], 'other clients are served');
    });

    t.test(`a server lost while a client's settings are applied to it: the client gets another server ${B}`, async (t) => {
      // One server, left by a client with other settings, so the next client's request
      // first has its settings SET there. The backend is stopped, so the SET waits in its
      // socket; then it is terminated: the SET fails because the server is gone, not
      // because PostgreSQL refused it, and nothing of the client's ran there.
      const p1 = await startProxy(t, await proxyConfig(c, { bypass, default_pool_size: 1 } as any));
      const a = await pgClient(t, p1, { application_name: 'first' });
      const pid = Number((await a.query('SELECT pg_backend_pid() AS p')).rows[0].p);
      process.kill(pid, 'SIGSTOP');
      t.teardown(() => {
        try {
          process.kill(pid, 'SIGCONT');
        } catch {
          /* gone */
        }
      });
      const b = await pgClient(t, p1, { application_name: 'second' });
      const q = b.query(`SELECT current_setting('application_name') AS n, pg_backend_pid() AS p`).then((r) => r, (e) => e);
      // The SET has reached the stopped backend once its socket holds unread bytes.
      const unread = () => run('ss', ['-Htn', 'state', 'established', `( sport = :${c.pg.port} )`]).then((r) => r.stdout.split('\n').some((l) => Number(l.trim().split(/\s+/)[0]) > 0));
      let arrived = false;
      await waitUntil(async () => (arrived = await unread()), 10000, 'the SET waits in the stopped backend').catch(() => undefined);
      c.pg.psql(`SELECT pg_terminate_backend(${pid})`);
      process.kill(pid, 'SIGCONT');
      const r = await withTimeout(q, 20000, 'the request after its server was lost');
      t.ok(arrived, 'the SET reached the stopped server before it was terminated');
      t.same(r?.rows?.[0]?.n, 'second', `the request is answered with its own settings (${r?.message ?? 'ok'})`);
      t.not(r?.rows?.[0]?.p, pid, 'by another server');
      t.same(b.errors, [], 'the client connection was never dropped');
    });

    t.test(`a client that leaves inside a message: its server is closed, not cleaned ${B}`, async (t) => {
      // The proxy's own clean-up query would be read as the rest of the message and the
      // server would wait for more bytes forever, holding a pool slot. With one server in
      // the pool the next client is served within seconds only if it was closed (and a
      // new one opened), well before the clean-up deadline (10 s) would close it.
      c.sql('CREATE TABLE IF NOT EXISTS copy_t (v int)');
      c.sql('GRANT ALL ON copy_t TO app');
      const p1 = await startProxy(t, await proxyConfig(c, { bypass, default_pool_size: 1, query_wait_timeout: 30 } as any));
      const partial = (type: string, declared: number, body: string) => {
        const b = Buffer.alloc(5);
        b.write(type, 0, 'latin1');
        b.writeInt32BE(declared, 1);
        return Buffer.concat([b, Buffer.from(body, 'latin1')]);
      };
      const cases: { name: string; before: (s: Session) => Promise<void>; cut: Buffer }[] = [
        {
          // A COPY the server refused while the client still sends: the tracker does
          // not count the CopyData that follows (its COPY was already answered).
          name: 'a CopyData after its COPY failed',
          before: async (s) => {
            s.conn.write(query('COPY copy_t FROM STDIN'));
            await s.conn.readUntil('G', 10000);
            s.conn.write(copyData('not a number\n'));
            await s.conn.readUntil('Z', 10000);
          },
          cut: partial('d', 4 + 100, 'abc'),
        },
        { name: 'a Parse inside a transaction', before: async (s) => void (await simpleQuery(s.conn, 'BEGIN')), cut: partial('P', 4 + 60, '\0SELECT ') },
        { name: 'a Parse between transactions', before: async () => undefined, cut: partial('P', 4 + 60, '\0SELECT ') },
      ];
      for (const k of cases) {
        const s = await login(p1.port, { user: 'app', password: 'app-pw', database: 'app' }, 30000);
        await k.before(s);
        s.conn.write(k.cut);
        await sleep(200); // forwarded (or the kernel's to forward) before the client goes
        s.conn.destroy();
        const next = await pgClient(t, p1);
        const started = Date.now();
        const r = await withTimeout(next.query('SELECT 41 + 1 AS x').then((x) => x, (e) => e), 30000, `${k.name}: the next client`);
        t.same(r?.rows, [{ x: 42 }], `${k.name}: the next client is served (${r?.message ?? 'ok'})`);
        t.ok(Date.now() - started < 8000, `${k.name}: within ${Date.now() - started} ms, not after the clean-up deadline`);
        await next.end();
      }
      const stuck = c.sql(`SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND (state = 'active' OR state LIKE 'idle in transaction%')`);
      t.equal(stuck, '0', 'no server is left waiting inside a message');
    });

    t.test(`unreachable, silent or garbage-speaking server: clean error, no hang, no crash ${B}`, async (t) => {
      const closedPort = await freePort();
      // A "server" that accepts and never answers, and one that answers HTTP.
      const silent = net.createServer(() => undefined);
      const garbage = net.createServer((s) => s.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n'));
      await Promise.all([silent, garbage].map((srv) => new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()))));
      t.teardown(() => {
        silent.close();
        garbage.close();
      });
      const portOf = (srv: net.Server) => (srv.address() as net.AddressInfo).port;
      const cfg = await proxyConfig(c, {
        bypass,
        server_connect_timeout: 1,
        query_wait_timeout: 5,
        databases: {
          app: { host: '127.0.0.1', port: c.pg.port, dbname: 'app' },
          refused: { host: '127.0.0.1', port: closedPort, dbname: 'app' },
          silent: { host: '127.0.0.1', port: portOf(silent), dbname: 'app' },
          garbage: { host: '127.0.0.1', port: portOf(garbage), dbname: 'app' },
        },
      });
      const p2 = await startProxy(t, cfg);
      for (const db of ['refused', 'silent', 'garbage']) {
        const x = new Client({ host: p2.host, port: p2.port, user: 'app', password: 'app-pw', database: db });
        x.on('error', () => undefined);
        const started = Date.now();
        const e = await withTimeout(x.connect().then(() => x.query('SELECT 1')).then(() => undefined, (err) => err), 15000, `${db} server`);
        await x.end().catch(() => undefined);
        t.ok(e, `${db}: the client gets an error`);
        t.ok(e?.code && CLEAN_CODE.test(e.code), `${db}: clean ErrorResponse (${e?.code} ${e?.message})`);
        t.ok(Date.now() - started < 12000, `${db}: within ${Date.now() - started} ms`);
        t.equal(p2.exited(), undefined, `${db}: the proxy is still running`);
      }
      const ok = await pgClient(t, p2);
      t.same((await ok.query('SELECT 1 AS x')).rows, [{ x: 1 }], 'the reachable database is still served');
    });
  }
});

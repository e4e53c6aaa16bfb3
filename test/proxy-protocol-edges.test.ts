// Protocol edge cases a pooler must get right in transaction mode, on a single server
// so that a mistake shows up as another client's bytes or a stolen server:
// Flush without Sync, portal suspension (Execute with a row limit), FunctionCall,
// Terminate inside a transaction, huge queries and parameters, a slow reader.
import t from 'tap';
import * as fs from 'node:fs';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, withTimeout, sleep, waitUntil, backendCount } from './helpers/cluster';
import { login, parse, bind, execute, sync, flush, query, message, summarize, simpleQuery, describePortal, extendedQuery, terminate, parseDataRow } from './helpers/pgwire';

function functionCall(oid: number): Buffer {
  const b = Buffer.alloc(10);
  b.writeInt32BE(oid, 0);
  b.writeInt16BE(0, 4); // argument format codes
  b.writeInt16BE(0, 6); // arguments
  b.writeInt16BE(0, 8); // result format: text
  return message('F', b);
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

t.test('protocol edge cases', async (t) => {
  const c = await startCluster(t);
  c.sql(`CREATE TABLE edge (v text); ALTER TABLE edge OWNER TO app;`);
  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;
    let proxy: ProxyHandle;
    t.before(async () => {
      proxy = await startProxy(t, await proxyConfig(c, { bypass, default_pool_size: 1, query_wait_timeout: 30 }));
    });

    t.test(`Flush without Sync keeps the server; another client waits for the Sync ${B}`, async (t) => {
      const a = await login(proxy.port, { user: 'app', password: 'app-pw' });
      t.teardown(() => a.conn.destroy());
      a.conn.write(Buffer.concat([parse('', 'SELECT $1::text, pg_backend_pid()'), bind('', '', ['flushed']), execute(), flush()]));
      const got = [await a.conn.readMessage(), await a.conn.readMessage(), await a.conn.readMessage(), await a.conn.readMessage()];
      t.same(got.map((m) => m.type), ['1', '2', 'D', 'C'], 'ParseComplete, BindComplete, DataRow, CommandComplete after Flush, no ReadyForQuery');
      const pidA = parseDataRow(got[2].body)[1];
      const b = await pgClient(t, proxy);
      let bDone = false;
      const bq = b.query('SELECT pg_backend_pid() AS p').then((r) => {
        bDone = true;
        return r.rows[0].p;
      });
      await sleep(500);
      t.notOk(bDone, 'without a Sync the server still belongs to A: B waits');
      a.conn.write(Buffer.concat([bind('', '', ['again']), execute(), sync()]));
      const rest = summarize(await a.conn.readUntil('Z'));
      t.same(rest.rows.map((r) => r[0]), ['again'], 'A continues on the same statement');
      t.equal(rest.status, 'I');
      const pidB = await withTimeout(bq, 5000, 'B after A synced');
      t.equal(String(pidB), pidA, 'B then runs on the same single server');
    });

    t.test(`portal suspension: Execute with a row limit ${B}`, async (t) => {
      const a = await login(proxy.port, { user: 'app', password: 'app-pw' });
      t.teardown(() => a.conn.destroy());
      a.conn.write(Buffer.concat([parse('', 'SELECT g FROM generate_series(1, 5) g'), bind('p1', '', []), describePortal('p1'), execute('p1', 2), flush()]));
      const first: string[] = [];
      for (;;) {
        const m = await a.conn.readMessage();
        if (m.type === 'D') first.push(String(parseDataRow(m.body)[0]));
        if (m.type === 's') break;
      }
      t.same(first, ['1', '2'], 'first two rows, then PortalSuspended');
      const b = await pgClient(t, proxy);
      let bDone = false;
      const bq = b.query('SELECT 1 AS x').then(() => (bDone = true));
      await sleep(300);
      t.notOk(bDone, 'the suspended portal keeps the server: B waits');
      a.conn.write(Buffer.concat([execute('p1', 0), sync()]));
      const r = summarize(await a.conn.readUntil('Z'));
      t.same(r.rows.map((x) => x[0]), ['3', '4', '5'], 'the rest of the rows');
      await withTimeout(bq, 5000, 'B');
      t.ok(bDone, 'B ran after the Sync');
    });

    t.test(`FunctionCall ${B}`, async (t) => {
      const a = await login(proxy.port, { user: 'app', password: 'app-pw' });
      t.teardown(() => a.conn.destroy());
      a.conn.write(functionCall(2026)); // pg_backend_pid()
      const msgs = await a.conn.readUntil('Z');
      const v = msgs.find((m) => m.type === 'V');
      t.ok(v, 'FunctionCallResponse');
      if (v) {
        const len = v.body.readInt32BE(0);
        const pid = Number(v.body.toString('utf8', 4, 4 + len));
        t.ok(pid > 0, `pg_backend_pid() via FunctionCall = ${pid}`);
        t.equal(c.sql(`SELECT count(*) FROM pg_stat_activity WHERE pid = ${pid} AND usename = 'app'`), '1', 'a real server of the pool');
      }
      t.same((await simpleQuery(a.conn, 'SELECT 1')).rows, [['1']], 'the session goes on');
      const b = await pgClient(t, proxy);
      t.same((await withTimeout(b.query('SELECT 2 AS x'), 5000, 'B')).rows, [{ x: 2 }], 'the server was released after the FunctionCall');
    });

    t.test(`Terminate inside a transaction rolls back ${B}`, async (t) => {
      const a = await login(proxy.port, { user: 'app', password: 'app-pw' });
      await simpleQuery(a.conn, `BEGIN; INSERT INTO edge VALUES ('terminated')`);
      a.conn.write(terminate());
      t.ok(await a.conn.waitClosed(2000), 'the proxy closes the connection after Terminate, as PostgreSQL does');
      a.conn.destroy();
      const b = await pgClient(t, proxy);
      const r = await withTimeout(b.query(`SELECT count(*)::int AS n, txid_current_if_assigned() AS x FROM edge WHERE v = 'terminated'`), 10000, 'next client');
      t.same(r.rows, [{ n: 0, x: null }], 'no row, no open transaction');
    });

    // Found by the protocol fuzzer (seed 1, case 345): the proxy waited for ReadyForQuery
    // messages PostgreSQL never sends, so the Terminate was never acted on.
    t.test(`Terminate closes the connection when no ReadyForQuery will come ${B}`, async (t) => {
      const cases: [string, Buffer][] = [
        // no Sync: PostgreSQL answers Parse/Bind/Execute but sends no ReadyForQuery
        ['Execute without Sync', Buffer.concat([parse('', `INSERT INTO edge VALUES ('no-sync')`), bind('', '', []), execute()])],
        // after an extended-protocol error PostgreSQL skips the Query (no ReadyForQuery for it)
        ['a Query skipped after an extended-protocol error', Buffer.concat([query('BEGIN'), message('E'), query('COMMIT'), sync(), query('ROLLBACK')])],
      ];
      for (const [label, bytes] of cases) {
        const a = await login(proxy.port, { user: 'app', password: 'app-pw' });
        a.conn.write(bytes);
        await a.conn.readUntil('Z', 5000).catch(() => undefined); // what answers there are
        await sleep(200);
        a.conn.write(terminate());
        t.ok(await a.conn.waitClosed(5000), `${label}: the proxy closes the connection after Terminate`);
        a.conn.destroy();
        const b = await pgClient(t, proxy);
        const r = await withTimeout(b.query(`SELECT count(*)::int AS n FROM edge WHERE v = 'no-sync'`), 10000, `next client after ${label}`);
        t.same(r.rows, [{ n: 0 }], `${label}: the pool's one server serves the next client (the unsynced INSERT never committed, as on PostgreSQL)`);
        await b.end();
      }
      c.sql(`DELETE FROM edge WHERE v = 'no-sync'`);
    });

    t.test(`huge query text and parameters ${B}`, async (t) => {
      const pg = await pgClient(t, proxy);
      const big = 'x'.repeat(8 * 1024 * 1024);
      const r = await pg.query('SELECT length($1::text) AS n, md5($1::text) AS h', [big]);
      t.equal(r.rows[0].n, big.length, '8 MB bind parameter');
      const longSql = `SELECT (SELECT sum(x) FROM unnest(ARRAY[${Array.from({ length: 100000 }, (_, i) => `${i}`).join(',')}]) x) AS s`;
      t.equal(Number((await pg.query(longSql)).rows[0].s), (99999 * 100000) / 2, `a ${longSql.length}-byte query text`);
      const a = await login(proxy.port, { user: 'app', password: 'app-pw' });
      t.teardown(() => a.conn.destroy());
      // Many small messages in one write, then one huge message split across many writes.
      a.conn.write(Buffer.concat(Array.from({ length: 500 }, (_, i) => extendedQuery('SELECT $1::int', [String(i)]))));
      const rounds = [];
      for (let i = 0; i < 500; i++) rounds.push(summarize(await a.conn.readUntil('Z')));
      t.same(rounds.map((x) => Number(x.rows[0][0])), Array.from({ length: 500 }, (_, i) => i), '500 pipelined rounds in one write, in order');
      const q = query(`SELECT length('${'y'.repeat(1024 * 1024)}')`);
      for (let off = 0; off < q.length; off += 1000) {
        a.conn.write(q.subarray(off, Math.min(q.length, off + 1000)));
        if (off % 100000 === 0) await sleep(1);
      }
      const res = summarize(await a.conn.readUntil('Z', 15000));
      t.same(res.rows, [[String(1024 * 1024)]], 'a 1 MB Query written in 1000-byte pieces');
    });

    t.test(`a slow reader does not make the proxy buffer the whole result ${B}`, async (t) => {
      const pid = proxy.proc.pid!;
      const before = rssKiB(pid);
      const a = await login(proxy.port, { user: 'app', password: 'app-pw' });
      t.teardown(() => a.conn.destroy());
      a.conn.sock.pause();
      // About 400 MB of rows the client does not read.
      a.conn.write(query(`SELECT repeat('z', 4000) FROM generate_series(1, 100000)`));
      await sleep(3000);
      const during = rssKiB(pid);
      t.ok(during - before < 150 * 1024, `proxy RSS grew by ${Math.round((during - before) / 1024)} MB while the client did not read (before ${Math.round(before / 1024)} MB)`);
      t.ok(backendCount(c, 'app', `state = 'active'`) === 1, 'the server is still sending (held back by TCP)');
      a.conn.destroy();
      const b = await pgClient(t, proxy);
      t.same((await withTimeout(b.query('SELECT 1 AS x'), 15000, 'next client after the slow reader left')).rows, [{ x: 1 }], 'the server is usable again after the slow reader left');
      await waitUntil(() => backendCount(c, 'app', `state = 'active'`) === 0, 10000, 'no query left running');
    });
  }
});

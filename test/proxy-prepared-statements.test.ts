// Named prepared statements in transaction mode, on a pool of 1-2 servers shared by many
// clients: pgbench -M prepared, JDBC past its prepareThreshold, node-postgres named
// queries, names reused with other SQL, the LRU bound, and each error as PostgreSQL sends it.
import t from 'tap';
import { Client } from 'pg';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, proxyConfig, pgbenchInit, poolingDatabases, run, libpqEnv } from './helpers/cluster';
import { checkJdbcRun, haveJdbc, runJdbcClient } from './helpers/jdbc';
import { pgbenchCounts } from './helpers/kernel';
import { login, parse, bind, execute, sync, message, describePortal, summarize, simpleQuery, query, Session } from './helpers/pgwire';



const cstr = (s: string): Buffer => Buffer.from(`${s}\0`);
const describeStatement = (name: string): Buffer => message('D', Buffer.concat([Buffer.from('S'), cstr(name)]));
const closeStatement = (name: string): Buffer => message('C', Buffer.concat([Buffer.from('S'), cstr(name)]));

async function round(s: Session, ...msgs: Buffer[]) {
  s.conn.write(Buffer.concat([...msgs, sync()]));
  return summarize(await s.conn.readUntil('Z', 15000));
}
const types = (r: { messages: { type: string }[] }): string => r.messages.map((m) => m.type).join('');

t.test('prepared statements in transaction mode', async (t) => {
  const c = await startCluster(t);
  c.sql(`CREATE TABLE ps_items (id int PRIMARY KEY, v text); ALTER TABLE ps_items OWNER TO app;
         INSERT INTO ps_items SELECT g, 'v' || g FROM generate_series(1, 100) g;
         CREATE TABLE jdbc_items (v text); ALTER TABLE jdbc_items OWNER TO app;`);
  await pgbenchInit(t, c);

  for (const bypass of BYPASS_MODES) {
    const cfg = await proxyConfig(c, { bypass, default_pool_size: 2, max_client_conn: 200, max_prepared_statements: 200, databases: poolingDatabases(c, ['app', 'app_one']) });
    const cfgSmall = await proxyConfig(c, { bypass, default_pool_size: 1, max_prepared_statements: 3 });
    const B = `[bypass=${bypass}]`;
    let proxy: ProxyHandle;
    t.before(async () => {
      proxy = await startProxy(t, cfg, { logLevel: 'info' });
    });

    t.test(`pgbench -M prepared, 16 clients on 2 servers ${B}`, async (t) => {
      // A thread per client: pgbench prepares with a blocking PQprepare, so a thread that
      // prepares for one client while another of its clients holds a server in an open
      // transaction waits on itself (docs/transaction-mode.md says more).
      const r = await run('pgbench', ['-n', '-M', 'prepared', '-c', '16', '-j', '16', '-t', '100', 'app'], { env: libpqEnv(proxy, 'app', 'app', 'app-pw'), timeoutMs: 60000 });
      const counts = pgbenchCounts(r.stdout);
      t.equal(r.code, 0, `pgbench exits 0 (${r.stderr.slice(-1500)})`);
      t.equal(counts.processed, 1600, 'every transaction done');
      t.equal(counts.failed, 0, 'zero failed transactions');
      const s = await run('pgbench', ['-n', '-M', 'prepared', '-S', '-c', '24', '-j', '2', '-t', '200', 'app_one'], { env: libpqEnv(proxy, 'app_one', 'app', 'app-pw'), timeoutMs: 60000 });
      t.equal(s.code, 0, `select-only on one server exits 0 (${s.stderr.slice(-1500)})`);
      t.equal(pgbenchCounts(s.stdout).processed, 4800, 'select-only: every transaction done');
    });

    t.test(`JDBC with the default prepareThreshold, 4 clients at once on 2 servers ${B}`, { skip: haveJdbc() ? false : 'no JDBC driver' }, async (t) => {
      const runs = await Promise.all([0, 1, 2, 3].map((i) => runJdbcClient(proxy, { db: 'app', table: 'jdbc_items', prepareThreshold: '5', rowPrefix: `p${i}-` })));
      for (const [i, r] of runs.entries()) checkJdbcRun(t, r, `client ${i}: `);
      c.sql('TRUNCATE jdbc_items');
    });

    t.test(`node-postgres named queries: one name, different SQL per client ${B}`, async (t) => {
      const clients = await Promise.all(Array.from({ length: 6 }, async () => {
        const cl = new Client({ host: proxy.host, port: proxy.port, user: 'app', password: 'app-pw', database: 'app_one' });
        await cl.connect();
        return cl;
      }));
      try {
        for (let r = 0; r < 20; r++) {
          await Promise.all(clients.map(async (cl, i) => {
            // every client calls its statement "q"; the SQL differs by client
            const res = await cl.query({ name: 'q', text: `SELECT $1::int + ${i} AS n, '${'c' + i}' AS who`, values: [r] });
            if (res.rows[0].n !== r + i || res.rows[0].who !== `c${i}`) throw new Error(`client ${i} round ${r} got ${JSON.stringify(res.rows)}`);
          }));
        }
        t.pass('120 named executions, each client got its own statement');
        const res = await clients[0].query({ name: 'items', text: 'SELECT v FROM ps_items WHERE id = $1', values: [7] });
        t.same(res.rows, [{ v: 'v7' }], 'a named query over a table');
      } finally {
        await Promise.all(clients.map((cl) => cl.end()));
      }
    });

    t.test(`protocol details: ParseComplete/CloseComplete, errors, DEALLOCATE ${B}`, async (t) => {
      const a = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app_one' });
      const b = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app_one' });
      try {
        let r = await round(a, parse('s1', 'SELECT $1::int * 10', [23]), bind('', 's1', ['4']), execute());
        t.equal(types(r), '12DCZ', 'Parse, Bind, Execute: one reply of each');
        t.same(r.rows, [['40']], 'result');
        // b prepares the same SQL under another name, then the name a uses, for other SQL
        r = await round(b, parse('other', 'SELECT $1::int * 10', [23]), parse('s1', "SELECT 'b-s1'"), bind('', 's1', []), execute(), bind('', 'other', ['5']), execute());
        t.equal(types(r), '112DC2DCZ', 'each Parse answered once, even when the server already had the statement');
        t.same(r.rows, [['b-s1'], ['50']], 'b sees its own s1');
        r = await round(a, bind('', 's1', ['6']), execute());
        t.same(r.rows, [['60']], 'a still sees its own s1');
        r = await round(a, parse('s1', 'SELECT 1'));
        t.equal(r.errors[0]?.C, '42P05', 'a duplicate name: 42P05');
        t.equal(r.errors[0]?.M, 'prepared statement "s1" already exists', 'worded as PostgreSQL words it');
        r = await round(a, bind('', 'nope', []), execute());
        t.equal(r.errors[0]?.C, '26000', 'an unknown name: 26000');
        t.equal(types(r), 'EZ', 'the rest up to Sync skipped');
        r = await round(a, describeStatement('s1'));
        t.equal(types(r), 'tTZ', 'Describe of a statement: ParameterDescription, RowDescription');
        r = await round(a, closeStatement('s1'), closeStatement('never-existed'));
        t.equal(types(r), '33Z', 'Close answered once each, also for an unknown name');
        r = await round(a, bind('', 's1', ['1']), execute());
        t.equal(r.errors[0]?.C, '26000', 'closed: gone for a');
        r = await round(b, bind('', 'other', ['7']), execute());
        t.same(r.rows, [['70']], 'but not for b, which shares the server statement');
        // an error in a transaction block aborts it, as in PostgreSQL
        r = summarize([...(await simpleQuery(a.conn, 'BEGIN')).messages]);
        r = await round(a, bind('', 'nope', []), execute());
        t.equal(r.status, 'E', 'the transaction is aborted by the error');
        r = await simpleQuery(a.conn, 'ROLLBACK');
        t.equal(r.status, 'I', 'rolled back');
        // DEALLOCATE as SQL removes the client's own name only
        await round(a, parse('d1', 'SELECT 1'));
        r = await simpleQuery(a.conn, 'DEALLOCATE d1');
        t.same(r.tags, ['DEALLOCATE'], 'DEALLOCATE d1');
        r = await round(a, bind('', 'd1', []), execute());
        t.equal(r.errors[0]?.C, '26000', 'd1 is gone');
        await round(a, parse('d2', 'SELECT 2'), parse('d3', 'SELECT 3'));
        r = await simpleQuery(a.conn, 'DEALLOCATE ALL');
        t.same(r.tags, ['DEALLOCATE ALL'], 'DEALLOCATE ALL');
        r = await round(a, bind('', 'd2', []), execute(), sync(), bind('', 'd3', []), execute());
        t.equal(r.errors[0]?.C, '26000', 'all of them gone');
        await a.conn.readUntil('Z');
        r = await round(b, bind('', 'other', ['8']), execute());
        t.same(r.rows, [['80']], 'b is not affected: its statement is prepared again on demand');
        // a cached plan invalidated by DDL: the error PostgreSQL sends
        await round(a, parse('star', 'SELECT * FROM ps_items WHERE id = 1'));
        r = await round(a, bind('', 'star', []), describePortal(), execute());
        t.same(r.rows, [['1', 'v1']], 'before the DDL');
        c.sql('ALTER TABLE ps_items ADD COLUMN extra int');
        r = await round(a, bind('', 'star', []), describePortal(), execute());
        t.equal(r.errors[0]?.C, '0A000', `after ALTER TABLE: ${r.errors[0]?.M}`);
        c.sql('ALTER TABLE ps_items DROP COLUMN extra');
        // a statement that fails to prepare
        r = await round(a, parse('bad', 'SELECT FROM nowhere_table'));
        t.equal(r.errors[0]?.C, '42P01', 'preparing a bad statement: the server error');
        r = await round(a, parse('bad', 'SELECT 5'), bind('', 'bad', []), execute());
        t.same(r.rows, [['5']], 'the failed name is free again');
      } finally {
        a.conn.destroy();
        b.conn.destroy();
      }
    });

    // DISCARD ALL / DEALLOCATE ALL drop what was prepared before them, not a statement the
    // client parsed behind them before their reply came: the client keeps it, and the
    // proxy still knows the server has it (else another client's Parse of the same SQL was
    // sent again and failed with 42P05, an error that client never caused).
    t.test(`a statement parsed behind DISCARD ALL / DEALLOCATE ALL in one request stays ${B}`, async (t) => {
      for (const reset of ['DISCARD ALL', 'DEALLOCATE ALL']) {
        const a = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app_one' });
        const b = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app_one' });
        try {
          await round(a, parse('old', 'SELECT 1'));
          const sql = reset === 'DISCARD ALL' ? 'SELECT $1::int + 100' : 'SELECT $1::int + 200';
          a.conn.write(Buffer.concat([query(reset), parse('k1', sql, [23]), bind('', 'k1', ['1']), execute(), sync()]));
          const first = summarize([...(await a.conn.readUntil('Z', 15000)), ...(await a.conn.readUntil('Z', 15000))]);
          t.same(first.errors, [], `${reset} then Parse/Bind/Execute: no error`);
          let r = await round(a, bind('', 'k1', ['2']), execute());
          t.same(r.errors, [], `${reset}: a's statement parsed behind it still exists for a`);
          t.same(r.rows, [[reset === 'DISCARD ALL' ? '102' : '202']], `${reset}: its result`);
          r = await round(a, bind('', 'old', []), execute());
          t.equal(r.errors[0]?.C, '26000', `${reset}: the statement prepared before it is gone`);
          r = await round(b, parse('k2', sql, [23]), bind('', 'k2', ['3']), execute());
          t.same(r.errors, [], `${reset}: b prepares the same SQL on the same server without an error`);
          t.same(r.rows, [[reset === 'DISCARD ALL' ? '103' : '203']], `${reset}: b's result`);
        } finally {
          a.conn.destroy();
          b.conn.destroy();
        }
      }
    });

    t.test(`named statements split at every byte and in random chunks ${B}`, async (t) => {
      const a = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app_one' });
      const b = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app_one' });
      try {
        await round(b, parse('split', 'SELECT $1::text AS b_side', [25])); // the server has another "split"
        const batch = Buffer.concat([parse('split', 'SELECT $1::int + 1', [23]), bind('', 'split', ['41']), describePortal(), execute(),
          describeStatement('split'), closeStatement('split'), parse('split', 'SELECT $1::int + 2', [23]), bind('', 'split', ['40']), execute(), sync()]);
        for (const [label, sizes] of [['one byte at a time', () => 1], ['random chunks', () => 1 + Math.floor(Math.random() * 9)]] as const) {
          for (let i = 0; i < batch.length;) {
            const n = Math.min(sizes(), batch.length - i);
            a.conn.write(batch.subarray(i, i + n));
            i += n;
            await new Promise((r) => setImmediate(r));
          }
          const r = summarize(await a.conn.readUntil('Z', 15000));
          t.equal(types(r), '12TDCtT31DCZ'.replace('1DCZ', '12DCZ'), `${label}: one reply per message`);
          t.same(r.rows, [['42'], ['42']], `${label}: results of a's own statements`);
          await round(a, closeStatement('split'));
        }
        const r = await round(b, bind('', 'split', ['b']), execute());
        t.same(r.rows, [['b']], 'b\'s statement of the same name untouched');
      } finally {
        a.conn.destroy();
        b.conn.destroy();
      }
    });

    t.test(`max_prepared_statements bounds each server, least recently used out ${B}`, async (t) => {
      const small = await startProxy(t, cfgSmall, { logLevel: 'info' });
      const a = await login(small.port, { user: 'app', password: 'app-pw', database: 'app' });
      try {
        for (let i = 0; i < 6; i++) await round(a, parse(`n${i}`, `SELECT ${i} AS v`));
        for (let k = 0; k < 3; k++) {
          for (let i = 5; i >= 0; i--) {
            const r = await round(a, bind('', `n${i}`, []), execute());
            if (r.rows[0]?.[0] !== String(i)) t.fail(`n${i} returned ${JSON.stringify(r.rows)} ${JSON.stringify(r.errors)}`);
          }
        }
        t.pass('6 statements used in turn on a server that keeps 3');
        const r = await simpleQuery(a.conn, "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgsplice_%'");
        t.ok(Number(r.rows[0][0]) <= 3, `the server holds ${r.rows[0][0]} statements (<= 3)`);
      } finally {
        a.conn.destroy();
        await small.stop();
      }
    });
  }
});

// Transaction (and session) pooling with real clients: psql, node-postgres, psycopg2,
// JDBC, pipelined clients on a single server, COPY,
// errors in transactions, empty queries, NOTICE/NOTIFY, and a client killed mid-transaction.
// pgbench runs are in proxy-pgbench.test.ts.
import t from 'tap';
import * as path from 'node:path';
import { Client } from 'pg';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, ProxyHandle } from './helpers/proxy';
import {
  startCluster, pgClient, psqlVia, run, libpqEnv, pythonWithPsycopg2, FIXTURES,
  waitUntil, withTimeout, sleep, Cluster, backendCount, poolingConfig,
} from './helpers/cluster';
import { checkJdbcRun, haveJdbc, runJdbcClient } from './helpers/jdbc';
import { login, extendedQuery, query, summarize, Msg, simpleQuery, parse, bind, execute, sync, copyData, copyFail, copyDone, parseFields } from './helpers/pgwire';

async function readRounds(conn: import('./helpers/pgwire').RawConn, n: number, timeoutMs = 20000): Promise<Msg[][]> {
  const rounds: Msg[][] = [];
  for (let i = 0; i < n; i++) rounds.push(await conn.readUntil('Z', timeoutMs));
  return rounds;
}

t.test('transaction pooling with real clients', async (t) => {
  const c = await startCluster(t);
  c.sql(`CREATE TABLE items (id bigserial PRIMARY KEY, v text NOT NULL); ALTER TABLE items OWNER TO app;
         CREATE TABLE py_items (v text); ALTER TABLE py_items OWNER TO app;
         CREATE TABLE jdbc_items (v text); ALTER TABLE jdbc_items OWNER TO app;`);

  for (const bypass of BYPASS_MODES) {
    const cfg = await poolingConfig(c, bypass);
    const B = `[bypass=${bypass}]`;
    let proxy: ProxyHandle;
    t.before(async () => {
      proxy = await startProxy(t, cfg, { logLevel: 'info' });
    });
    t.test(`psql: statements, a transaction, a script ${B}`, async (t) => {
      t.equal(await psqlVia(proxy, 'SELECT 6 * 7'), '42');
      const r = await run('psql', ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1'], {
        env: libpqEnv(proxy),
        input: `BEGIN;
INSERT INTO items(v) VALUES ('psql-1-${bypass}');
SELECT count(*) FROM items WHERE v = 'psql-1-${bypass}';
SELECT txid_current() = txid_current();
COMMIT;
SELECT 'done';
`,
        timeoutMs: 20000,
      });
      t.equal(r.code, 0, `psql script (${r.stderr})`);
      t.same(r.stdout.trim().split('\n'), ['1', 't', 'done'], 'script output');
      t.equal(c.sql(`SELECT count(*) FROM items WHERE v = 'psql-1-${bypass}'`), '1', 'the row is committed');
    });

    t.test(`node-postgres: simple and extended queries, transactions ${B}`, async (t) => {
      const pg = await pgClient(t, proxy);
      t.same((await pg.query('SELECT $1::int + $2::int AS s, $3::text AS t', [40, 2, 'ünïcode'])).rows, [{ s: 42, t: 'ünïcode' }], 'extended query with parameters');
      t.same((await pg.query("SELECT 'a' AS x UNION ALL SELECT 'b'")).rows, [{ x: 'a' }, { x: 'b' }], 'simple query, two rows');
      await pg.query('BEGIN');
      await pg.query(`INSERT INTO items(v) VALUES ('pg-1-${bypass}')`);
      const pid1 = (await pg.query('SELECT pg_backend_pid() AS p')).rows[0].p;
      const pid2 = (await pg.query('SELECT pg_backend_pid() AS p')).rows[0].p;
      t.equal(pid1, pid2, 'one server for the whole transaction');
      await pg.query('COMMIT');
      t.equal(c.sql(`SELECT count(*) FROM items WHERE v = 'pg-1-${bypass}'`), '1', 'committed');
      await pg.query('BEGIN');
      await pg.query("INSERT INTO items(v) VALUES ('pg-rolled-back')");
      await pg.query('ROLLBACK');
      t.equal(c.sql(`SELECT count(*) FROM items WHERE v = 'pg-rolled-back'`), '0', 'rolled back');
      const big = await pg.query('SELECT g, md5(g::text) AS h FROM generate_series(1, 50000) g');
      t.equal(big.rowCount, 50000, 'a 50000-row result');
      t.equal(big.rows[49999].h, (await pg.query("SELECT md5('50000') AS h")).rows[0].h, 'last row intact');
      const wide = await pg.query("SELECT repeat('x', 4 * 1024 * 1024) AS w");
      t.equal(wide.rows[0].w.length, 4 * 1024 * 1024, 'a 4 MB value');
      // Session mode: named prepared statements live on the session's server.
      const ps = await pgClient(t, proxy, { database: 'app_session' });
      for (let i = 0; i < 5; i++) {
        const r = await ps.query({ name: 'double', text: 'SELECT $1::int * 2 AS d', values: [i] });
        t.equal(r.rows[0].d, i * 2, `named prepared statement in session mode, run ${i}`);
      }
    });

    t.test(`psycopg2 ${B}`, async (t) => {
      const py = pythonWithPsycopg2();
      const r = await run(py, [path.join(FIXTURES, 'psycopg2_client.py'), proxy.host, String(proxy.port), 'app', 'app-pw', 'app', 'py_items'], { timeoutMs: 30000 });
      t.equal(r.code, 0, `psycopg2 client exits 0 (${r.stderr.slice(-1000)})`);
      const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}');
      t.same(out.select, [42, 'héllo wörld'], 'query with parameters');
      t.equal(out.rows, 'a,b', 'commit kept, rollback dropped');
      t.equal(out.error, '22012', 'division by zero');
      t.equal(out.aborted, '25P02', 'then in a failed transaction');
      t.equal(out.after_rollback, 'after-rollback', 'works after rollback');
      t.equal(out.copy_out_count, 1000, 'COPY out returns what COPY in stored');
      t.equal(out.copy_out_sorted_ok, true, 'COPY data intact');
      t.match(out.notices?.join('|') ?? '', /psycopg2 notice 7/, 'NOTICE delivered');
      t.same(out.big, [100000, 5000050000], 'aggregate over 100000 rows');
      t.equal(out.wide_len, 1000000, '1 MB value');
      c.sql('TRUNCATE py_items');
    });

    for (const [db, threshold, mode] of [['app', '0', 'transaction'], ['app_session', '5', 'session']] as const) {
      t.test(`JDBC in ${mode} mode (prepareThreshold=${threshold}) ${B}`, { skip: haveJdbc() ? false : 'no JDBC driver' }, async (t) => {
        const r = await runJdbcClient(proxy, { db, table: 'jdbc_items', prepareThreshold: threshold, timeoutMs: 20000 });
        checkJdbcRun(t, r, '');
        const kv = r.kv;
        t.match(kv.notice, /jdbc notice/, 'NOTICE delivered as a warning');
        t.equal(kv.application_name, 'jdbc-e2e', 'application_name from the startup packet');
        c.sql('TRUNCATE jdbc_items');
      });
    }

    t.test(`pipelined raw clients on a single server: each gets its own answers ${B}`, async (t) => {
      const CLIENTS = 16;
      const ROUNDS = 3;
      const PER_ROUND = 8;
      const failures: string[] = [];
      await Promise.all(
        Array.from({ length: CLIENTS }, async (_, ci) => {
          const s = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app_one' });
          try {
            for (let r = 0; r < ROUNDS; r++) {
              // Several Syncs (and a simple Query) in one write before reading anything.
              const tokens = Array.from({ length: PER_ROUND }, (_, k) => `client${ci}-round${r}-q${k}`);
              const bufs = tokens.map((tok, k) => (k % 3 === 2 ? query(`SELECT '${tok}'::text`) : extendedQuery('SELECT $1::text', [tok])));
              s.conn.write(Buffer.concat(bufs));
              const rounds = await readRounds(s.conn, PER_ROUND);
              rounds.forEach((msgs, k) => {
                const sum = summarize(msgs);
                const got = sum.rows.map((row) => row[0]).join(',');
                if (got !== tokens[k]) failures.push(`client ${ci} round ${r} answer ${k}: got ${got}, want ${tokens[k]}`);
                if (sum.status !== 'I') failures.push(`client ${ci}: status ${sum.status}`);
                if (sum.errors.length) failures.push(`client ${ci}: ${JSON.stringify(sum.errors[0])}`);
              });
              // A transaction spanning several Syncs, pipelined: the server must stay with this client.
              s.conn.write(Buffer.concat([
                extendedQuery('BEGIN'),
                extendedQuery('SELECT $1::text', [`tx-${ci}-${r}`]),
                query(`SELECT 'tx2-${ci}-${r}'`),
                extendedQuery('SELECT pg_backend_pid()::text'),
                extendedQuery('COMMIT'),
              ]));
              const tx = (await readRounds(s.conn, 5)).map(summarize);
              const statuses = tx.map((x) => x.status).join('');
              if (statuses !== 'TTTTI') failures.push(`client ${ci}: transaction statuses ${statuses}`);
              if (tx[1].rows[0]?.[0] !== `tx-${ci}-${r}` || tx[2].rows[0]?.[0] !== `tx2-${ci}-${r}`) failures.push(`client ${ci}: wrong answers inside its transaction`);
            }
          } finally {
            s.conn.destroy();
          }
        }),
      );
      t.same(failures, [], `${CLIENTS} pipelining clients x ${ROUNDS} rounds: every answer is the client's own`);
      t.ok(backendCount(c, 'app', `datname = 'app' AND state = 'idle in transaction'`) === 0, 'no server left in a transaction');
    });

    t.test(`node-postgres pipeline mode on a single server ${B}`, async (t) => {
      const failures: string[] = [];
      await Promise.all(
        Array.from({ length: 12 }, async (_, ci) => {
          const pg = new Client({ host: proxy.host, port: proxy.port, user: 'app', password: 'app-pw', database: 'app_one', pipeline: true } as any);
          pg.on('error', (e) => failures.push(`client ${ci} error event ${e.message}`));
          await pg.connect();
          try {
            const rs = await Promise.all(Array.from({ length: 25 }, (_, k) => pg.query('SELECT $1::text AS v, $2::int AS k', [`pg${ci}-${k}`, k])));
            rs.forEach((r, k) => {
              if (r.rows[0]?.v !== `pg${ci}-${k}` || r.rows[0]?.k !== k) failures.push(`client ${ci} query ${k}: got ${JSON.stringify(r.rows)}`);
            });
          } finally {
            await pg.end();
          }
        }),
      );
      t.same(failures, [], '12 pipelining pg clients x 25 queries: each answer is its own');
    });

    t.test(`errors in a pipeline ${B}`, async (t) => {
      const s = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app_one' });
      t.teardown(() => s.conn.destroy());
      // Error in its own Sync: the next Sync runs normally.
      s.conn.write(Buffer.concat([extendedQuery('SELECT 1/0'), extendedQuery('SELECT $1::text', ['after-error'])]));
      const [a, b] = (await readRounds(s.conn, 2)).map(summarize);
      t.equal(a.errors[0]?.C, '22012', 'first Sync: division by zero');
      t.equal(a.status, 'I', 'idle after the failed implicit transaction');
      t.same(b.rows, [['after-error']], 'second Sync answered');
      // Error before the Sync: the rest up to Sync is skipped, one ErrorResponse, one ReadyForQuery.
      s.conn.write(Buffer.concat([parse('', 'SELECT 1/0'), bind('', '', []), execute(), parse('', 'SELECT 2'), bind('', '', []), execute(), sync()]));
      const one = summarize(await s.conn.readUntil('Z'));
      t.equal(one.errors.length, 1, 'one error');
      t.same(one.rows, [], 'the skipped statement produced nothing');
      t.equal(one.status, 'I');
      t.same((await simpleQuery(s.conn, 'SELECT 3')).rows, [['3']], 'the connection goes on');
    });

    t.test(`COPY in and out ${B}`, async (t) => {
      const lines = Array.from({ length: 5000 }, (_, i) => `psql-copy-${bypass}-${i}`);
      const r = await run('psql', ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1'], {
        env: libpqEnv(proxy),
        input: `COPY items(v) FROM STDIN;\n${lines.join('\n')}\n\\.\nSELECT count(*) FROM items WHERE v LIKE 'psql-copy-${bypass}-%';\n`,
        timeoutMs: 30000,
      });
      t.equal(r.code, 0, `COPY FROM STDIN through psql (${r.stderr})`);
      t.equal(r.stdout.trim(), '5000', 'all rows arrived');
      const out = await psqlVia(proxy, `COPY (SELECT v FROM items WHERE v LIKE 'psql-copy-${bypass}-%' ORDER BY id) TO STDOUT`);
      t.same(out.split('\n'), lines, 'COPY TO STDOUT returns them in order');
      const big = await psqlVia(proxy, 'COPY (SELECT g FROM generate_series(1, 200000) g) TO STDOUT');
      t.equal(big.split('\n').length, 200000, '200000-row COPY out');
      // CopyFail on a single server: the error comes back, the server is clean for the next client.
      const s = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app_one' });
      s.conn.write(query('COPY items(v) FROM STDIN'));
      const g = await s.conn.readMessage();
      t.equal(g.type, 'G', 'CopyInResponse');
      s.conn.write(Buffer.concat([copyData(`raw-copy-${bypass}-1\n`), copyFail('client gave up')]));
      const res = summarize(await s.conn.readUntil('Z'));
      t.equal(res.errors[0]?.C, '57014', `CopyFail -> 57014 (${res.errors[0]?.M})`);
      t.equal(res.status, 'I');
      s.conn.write(query('COPY items(v) FROM STDIN'));
      await s.conn.readMessage();
      s.conn.write(Buffer.concat([copyData(`raw-copy-${bypass}-2\n`), copyData(`raw-copy-${bypass}-3\n`), copyDone()]));
      const ok = summarize(await s.conn.readUntil('Z'));
      t.same(ok.tags, ['COPY 2'], 'raw COPY of two rows');
      s.conn.destroy();
      const pg = await pgClient(t, proxy, { database: 'app_one' });
      t.same((await pg.query(`SELECT count(*)::int AS n FROM items WHERE v LIKE 'raw-copy-${bypass}-%'`)).rows, [{ n: 2 }], 'only the finished COPY stored rows');
    });

    t.test(`errors inside transactions keep the server pinned until ROLLBACK ${B}`, async (t) => {
      const a = await pgClient(t, proxy, { database: 'app_one' });
      const b = await pgClient(t, proxy, { database: 'app_one' });
      await a.query('BEGIN');
      await t.rejects(a.query('SELECT 1/0'), { code: '22012' }, 'error inside the transaction');
      let bDone = false;
      const bq = b.query('SELECT 1 AS one').then((r) => {
        bDone = true;
        return r;
      });
      await sleep(500);
      t.notOk(bDone, 'another client waits: the server is still in the failed transaction');
      await t.rejects(a.query('SELECT 2'), { code: '25P02' }, 'aborted transaction');
      await a.query('ROLLBACK');
      t.same((await withTimeout(bq, 5000, 'second client')).rows, [{ one: 1 }], 'the other client runs after ROLLBACK');
      t.same((await a.query('SELECT 3 AS x')).rows, [{ x: 3 }], 'first client goes on');
      // An error outside an explicit transaction does not pin anything.
      await t.rejects(a.query('SELECT * FROM no_such_table'), { code: '42P01' });
      t.same((await b.query('SELECT 4 AS x')).rows, [{ x: 4 }], 'no pin after an implicit-transaction error');
    });

    t.test(`empty queries ${B}`, async (t) => {
      const s = await login(proxy.port, { user: 'app', password: 'app-pw' });
      t.teardown(() => s.conn.destroy());
      const r = await simpleQuery(s.conn, '');
      t.same(r.messages.map((m) => m.type), ['I', 'Z'], "simple empty query -> EmptyQueryResponse 'I', ReadyForQuery");
      const r2 = await simpleQuery(s.conn, '  ;  ');
      t.ok(r2.messages.some((m) => m.type === 'I'), 'whitespace and semicolon: EmptyQueryResponse');
      s.conn.write(extendedQuery(''));
      const r3 = summarize(await s.conn.readUntil('Z'));
      t.ok(r3.messages.some((m) => m.type === 'I'), 'extended empty query: EmptyQueryResponse');
      t.equal(r3.status, 'I');
      t.same((await simpleQuery(s.conn, 'SELECT 1')).rows, [['1']], 'next query fine');
      const pg = await pgClient(t, proxy);
      const er = await pg.query('');
      t.equal(er.rows.length, 0, 'pg: empty query gives an empty result');
    });

    t.test(`NOTICE and NOTIFY delivered ${B}`, async (t) => {
      const pg = await pgClient(t, proxy);
      const notices: string[] = [];
      pg.on('notice', (n) => notices.push(n.message ?? ''));
      await pg.query(`DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$`);
      t.same(notices, ['hello 42', 'careful'], 'NOTICE and WARNING reach the client, in order');
      // LISTEN needs a session: a session-mode client listens, a transaction-mode client notifies.
      const listener = await pgClient(t, proxy, { database: 'app_session' });
      const got: { channel: string; payload?: string }[] = [];
      listener.on('notification', (n) => got.push({ channel: n.channel, payload: n.payload }));
      await listener.query('LISTEN e2e_channel');
      await pg.query(`NOTIFY e2e_channel, 'from-transaction-pool'`);
      const notifier2 = await pgClient(t, proxy, { database: 'app_session' });
      await notifier2.query(`SELECT pg_notify('e2e_channel', 'from-session-pool')`);
      await waitUntil(() => got.length >= 2, 5000, 'two notifications');
      t.same(got, [{ channel: 'e2e_channel', payload: 'from-transaction-pool' }, { channel: 'e2e_channel', payload: 'from-session-pool' }], 'both notifications delivered');
      // Asynchronous delivery to an idle listener (no query running) works too.
      await pg.query(`NOTIFY e2e_channel, 'while-idle'`);
      await waitUntil(() => got.length >= 3, 5000, 'idle notification');
      t.equal(got[2].payload, 'while-idle', 'notification delivered to an idle session client');
    });

    t.test(`a client killed mid-transaction leaves nothing behind ${B}`, async (t) => {
      const a = await pgClient(t, proxy, { database: 'app_one' });
      await a.query('BEGIN');
      await a.query("INSERT INTO items(v) VALUES ('killed-row')");
      const pidA = (await a.query('SELECT pg_backend_pid() AS p')).rows[0].p;
      (a as any).connection.stream.destroy();
      const b = await pgClient(t, proxy, { database: 'app_one' });
      const r = await withTimeout(b.query(`SELECT count(*)::int AS n, txid_current_if_assigned() AS x, now() = statement_timestamp() AS fresh FROM items WHERE v = 'killed-row'`), 10000, 'next client');
      t.same(r.rows, [{ n: 0, x: null, fresh: true }], 'the other client sees no row and no open transaction');
      await waitUntil(() => backendCount(c, 'app', `state = 'idle in transaction'`) === 0, 5000, 'no idle-in-transaction backend');
      t.equal(c.sql(`SELECT count(*) FROM items WHERE v = 'killed-row'`), '0', 'the row was rolled back');
      const pidB = (await b.query('SELECT pg_backend_pid() AS p')).rows[0].p;
      t.comment(`server of the killed client ${pidA}, server now ${pidB} (reset and reused, or replaced)`);

      // Killed while a statement runs inside the transaction.
      const s = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app_one' });
      await simpleQuery(s.conn, "BEGIN; INSERT INTO items(v) VALUES ('killed-row-2')");
      s.conn.write(query('SELECT pg_sleep(1)'));
      await sleep(200);
      s.conn.destroy();
      const r2 = await withTimeout(b.query(`SELECT count(*)::int AS n, txid_current_if_assigned() AS x FROM items WHERE v = 'killed-row-2'`), 10000, 'after kill during a statement');
      t.same(r2.rows, [{ n: 0, x: null }], 'killed during a statement: rolled back');

      // Killed in the middle of COPY FROM STDIN.
      const s2 = await login(proxy.port, { user: 'app', password: 'app-pw', database: 'app_one' });
      s2.conn.write(query('BEGIN'));
      await s2.conn.readUntil('Z');
      s2.conn.write(query('COPY items(v) FROM STDIN'));
      await s2.conn.readMessage();
      s2.conn.write(copyData('killed-copy\n'));
      await sleep(100);
      s2.conn.destroy();
      const r3 = await withTimeout(b.query(`SELECT count(*)::int AS n, txid_current_if_assigned() AS x FROM items WHERE v = 'killed-copy'`), 10000, 'after kill during COPY');
      t.same(r3.rows, [{ n: 0, x: null }], 'killed during COPY: rolled back');
      await waitUntil(() => backendCount(c, 'app', `state = 'idle in transaction' OR state = 'idle in transaction (aborted)'`) === 0, 5000, 'no idle-in-transaction backend');
      t.pass('pg_stat_activity shows no idle in transaction');
    });

    t.test(`the proxy is still healthy, then stops cleanly ${B}`, async (t) => {
      t.equal(proxy.exited(), undefined, 'still running');
      t.notMatch(proxy.logs(), /uncaught|unhandled|TypeError|RangeError/i, 'no crash traces in the log');
      // Stop it so that the next mode starts from a PostgreSQL with no pooled servers.
      const st = await proxy.stop('SIGINT', 15000);
      t.equal(st.code, 0, 'SIGINT (safe shutdown) with only idle clients: exit 0');
      await waitUntil(() => backendCount(c, 'app') === 0, 5000, 'server connections closed');
    });
  }
});
void parseFields;

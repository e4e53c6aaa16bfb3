// Session state in transaction mode (docs/transaction-mode.md): SET is tracked and never
// seen by another client, LISTEN/temp tables/advisory locks/PREPARE/WITH HOLD cursors pin
// the client to its server until the state is gone, `reject` refuses with 0A000, and a
// server a client leaves is clean for the next one. Pools of 1-2 servers, both data paths.
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, proxyConfig, run, pythonWithPsycopg2 } from './helpers/cluster';
import { login, simpleQuery, Session, query, summarize, parse, bind, execute, sync } from './helpers/pgwire';

const q = async (s: Session, sql: string) => simpleQuery(s.conn, sql, 15000);
const one = async (s: Session, sql: string): Promise<string | null> => {
  const r = await q(s, sql);
  if (r.errors.length) throw new Error(`${sql}: ${r.errors[0].C} ${r.errors[0].M}`);
  return r.rows[0]?.[0] ?? null;
};

t.test('session state in transaction mode', async (t) => {
  const c = await startCluster(t);
  c.sql(`CREATE SCHEMA other AUTHORIZATION app; CREATE TABLE other.marker (v text); INSERT INTO other.marker VALUES ('other-schema'); ALTER TABLE other.marker OWNER TO app;
         CREATE TABLE public.marker (v text); INSERT INTO public.marker VALUES ('public-schema'); GRANT ALL ON public.marker TO app;`);

  for (const bypass of BYPASS_MODES) {
    const base = { bypass, pool_mode: 'transaction', max_client_conn: 100, users: { app: { password: 'app-pw' } } };
    const cfg = await proxyConfig(c, {
      ...base,
      default_pool_size: 2,
      track_extra_parameters: ['default_transaction_read_only'],
      databases: {
        app: { host: '127.0.0.1', port: c.pg.port, dbname: 'app' },
        app_one: { host: '127.0.0.1', port: c.pg.port, dbname: 'app', pool_size: 1 },
      },
    });
    const strict = await proxyConfig(c, {
      ...base,
      default_pool_size: 1,
      session_state: { parameters: 'reject', listen: 'reject', temp_tables: 'reject', advisory_locks: 'reject', prepared_sql: 'reject', hold_cursors: 'reject' },
      databases: { app: { host: '127.0.0.1', port: c.pg.port, dbname: 'app' } },
    });
    const pinParams = await proxyConfig(c, {
      ...base,
      default_pool_size: 1,
      session_state: { parameters: 'pin' },
      databases: { app: { host: '127.0.0.1', port: c.pg.port, dbname: 'app' } },
    });
    const B = `[bypass=${bypass}]`;
    let proxy: ProxyHandle;
    t.before(async () => {
      proxy = await startProxy(t, cfg, { logLevel: 'info' });
    });
    const connect = (db = 'app_one') => login(proxy.port, { user: 'app', password: 'app-pw', database: db });

    t.test(`SET search_path and statement_timeout follow their client only ${B}`, async (t) => {
      const a = await connect('app');
      const b = await connect('app');
      try {
        await q(a, 'SET search_path = other, public');
        await q(a, "SET statement_timeout = '1234ms'");
        const ro = await q(a, 'SET default_transaction_read_only = on');
        t.ok(ro.messages.some((m) => m.type === 'S' && m.body.toString().startsWith('default_transaction_read_only\0on')),
          'a parameter of track_extra_parameters is reported to the client');
        for (let i = 0; i < 6; i++) {
          t.equal(await one(b, 'SHOW default_transaction_read_only'), 'off', `b: not read-only (${i})`);
          t.equal(await one(a, 'SHOW default_transaction_read_only'), 'on', `a: read-only (${i})`);
          // b runs in between, on whichever server is free
          t.equal(await one(b, 'SELECT v FROM marker'), 'public-schema', `b sees the default search_path (${i})`);
          t.equal(await one(b, 'SHOW statement_timeout'), '0', `b sees the default statement_timeout (${i})`);
          t.equal(await one(a, 'SELECT v FROM marker'), 'other-schema', `a keeps its search_path (${i})`);
          t.equal(await one(a, 'SHOW statement_timeout'), '1234ms', `a keeps its statement_timeout (${i})`);
        }
        await q(a, 'BEGIN');
        await q(a, 'SET search_path = public');
        await q(a, 'ROLLBACK');
        t.equal(await one(a, 'SELECT v FROM marker'), 'other-schema', 'a SET rolled back is undone');
        await q(a, 'BEGIN; SET LOCAL search_path = public; COMMIT');
        t.equal(await one(a, 'SHOW search_path'), 'other, public', 'SET LOCAL ends with its transaction');
        await q(a, 'RESET search_path');
        await q(a, 'RESET default_transaction_read_only');
        t.equal(await one(a, 'SELECT v FROM marker'), 'public-schema', 'RESET goes back to the default');
        t.equal(await one(b, 'SHOW statement_timeout'), '0', 'b still has the default');
      } finally {
        a.conn.destroy();
        b.conn.destroy();
      }
    });

    t.test(`psycopg2: SET search_path, another client must not see it ${B}`, async (t) => {
      const py = `
import psycopg2, json, sys
dsn = "host=${proxy.host} port=${proxy.port} user=app password=app-pw dbname=app_one sslmode=disable"
a = psycopg2.connect(dsn); a.autocommit = True
b = psycopg2.connect(dsn); b.autocommit = True
ca, cb = a.cursor(), b.cursor()
ca.execute("SET search_path TO other, public")
out = []
for i in range(5):
    ca.execute("SELECT v FROM marker"); out.append(ca.fetchone()[0])
    cb.execute("SELECT v FROM marker"); out.append(cb.fetchone()[0])
print(json.dumps(out))
`;
      const r = await run(pythonWithPsycopg2(), ['-c', py], { timeoutMs: 30000 });
      t.equal(r.code, 0, `psycopg2 exits 0 (${r.stderr.slice(-800)})`);
      const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '[]');
      t.same(out, Array.from({ length: 5 }, () => ['other-schema', 'public-schema']).flat(), 'a sees its schema, b the default, on one server');
    });

    t.test(`LISTEN pins its client; NOTIFY from another is delivered ${B}`, async (t) => {
      const a = await connect();
      const b = await connect('app');
      try {
        await q(a, 'LISTEN chan1');
        const pid = await one(a, 'SELECT pg_backend_pid()');
        await q(b, "NOTIFY chan1, 'hello'");
        const m = await a.conn.readMessage(10000);
        t.equal(m.type, 'A', 'a NotificationResponse arrives with no request pending');
        t.match(m.body.toString('latin1'), /chan1\0hello\0/, 'channel and payload');
        t.equal(await one(a, 'SELECT pg_backend_pid()'), pid, 'a keeps its server while it listens');
        await q(a, 'UNLISTEN *');
        // unpinned: the single server of app_one can serve another client now
        const d = await connect();
        t.ok(await one(d, 'SELECT 1'), 'another client of the one-server pool gets the server');
        d.conn.destroy();
      } finally {
        a.conn.destroy();
        b.conn.destroy();
      }
    });

    t.test(`temporary tables stay with the pinned client; the server is clean after it ${B}`, async (t) => {
      const a = await connect('app');
      const b = await connect('app');
      try {
        await q(a, 'CREATE TEMP TABLE tt (x int)');
        await q(a, 'INSERT INTO tt VALUES (1), (2)');
        for (let i = 0; i < 3; i++) t.equal(await one(a, 'SELECT count(*) FROM tt'), '2', `a sees its temp table (${i})`);
        const r = await q(b, 'SELECT count(*) FROM tt');
        t.equal(r.errors[0]?.C, '42P01', 'b does not see it');
      } finally {
        a.conn.destroy();
        b.conn.destroy();
      }
      const d = await connect('app');
      try {
        let left = '1';
        for (let i = 0; i < 50 && left !== '0'; i++) {
          left = (await one(d, "SELECT count(*) FROM pg_class WHERE relname = 'tt' AND relpersistence = 't'")) ?? '';
          if (left !== '0') await new Promise((r) => setTimeout(r, 100));
        }
        t.equal(left, '0', 'once a is gone, no server keeps its temp table');
      } finally {
        d.conn.destroy();
      }
    });

    t.test(`advisory locks, PREPARE and WITH HOLD cursors pin until released ${B}`, async (t) => {
      const a = await connect('app');
      const b = await connect('app');
      try {
        await q(a, 'SELECT pg_advisory_lock(4242)');
        const pid = await one(a, 'SELECT pg_backend_pid()');
        t.equal(await one(b, 'SELECT pg_try_advisory_lock(4242)'), 'f', 'b cannot take a\'s lock');
        t.equal(await one(a, 'SELECT pg_backend_pid()'), pid, 'a keeps its server while it holds the lock');
        await q(a, 'SELECT pg_advisory_unlock_all()');
        t.equal(await one(b, 'SELECT pg_try_advisory_lock(4242)'), 't', 'released: b gets it');
        await q(b, 'SELECT pg_advisory_unlock(4242)');

        await q(a, "PREPARE sqlp(int) AS SELECT $1 * 3");
        t.equal(await one(a, 'EXECUTE sqlp(5)'), '15', 'EXECUTE in the next transaction');
        t.equal(await one(a, 'EXECUTE sqlp(6)'), '18', 'and the one after');
        t.equal((await q(b, 'EXECUTE sqlp(1)')).errors[0]?.C, '26000', 'b does not have it');
        await q(a, 'DEALLOCATE sqlp');

        await q(a, 'BEGIN; DECLARE cur CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 5) g; COMMIT');
        t.equal(await one(a, 'FETCH 1 FROM cur'), '1', 'FETCH after the transaction');
        t.equal(await one(a, 'FETCH 1 FROM cur'), '2', 'and again');
        await q(a, 'CLOSE cur');
      } finally {
        a.conn.destroy();
        b.conn.destroy();
      }
    });

    // A removal (DISCARD TEMP, UNLISTEN, DEALLOCATE, CLOSE, unlock_all, DISCARD ALL) takes away
    // only what was made before it: the same state made again behind it in one request (one
    // Query, or Queries sent before the first reply) still pins. Found by the protocol fuzzer:
    // such a client was unpinned and its server, temp table and all, went to another client.
    t.test(`state made again behind its removal in one request keeps the client pinned ${B}`, async (t) => {
      const LEFT = `SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) + (SELECT count(*) FROM pg_listening_channels())
        + (SELECT count(*) FROM pg_prepared_statements WHERE from_sql) + (SELECT count(*) FROM pg_cursors WHERE is_holdable)
        + (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())`;
      const requests: string[][] = [
        ['CREATE TEMP TABLE tp (x int)', 'DISCARD TEMP', 'CREATE TEMP TABLE tp (x int)'],
        ['DISCARD ALL', 'CREATE TEMP TABLE tq (x int)'],
        ['LISTEN c1; UNLISTEN c1; LISTEN c1'],
        ['LISTEN c2', 'UNLISTEN *', 'LISTEN c2'],
        ['PREPARE p1 AS SELECT 1', 'DEALLOCATE p1', 'PREPARE p1 AS SELECT 2'],
        ['SELECT pg_advisory_lock(77)', 'SELECT pg_advisory_unlock_all(); SELECT pg_advisory_lock(77)'],
        // an unlock releases its own key only: one of a key not held (false, a WARNING) or of
        // a shared lock the client does not have releases nothing
        ['SELECT pg_advisory_lock(91)', 'SELECT pg_advisory_unlock(92)'],
        ['SELECT pg_advisory_lock(93)', 'SELECT pg_advisory_unlock_shared(93)'],
        ['SELECT pg_advisory_lock(94); SELECT 1; SELECT 2', 'SELECT pg_advisory_lock(95); SELECT pg_advisory_unlock(94); SELECT 3'],
        ['BEGIN; DECLARE k CURSOR WITH HOLD FOR SELECT 1; CLOSE k; DECLARE k CURSOR WITH HOLD FOR SELECT 2; COMMIT'],
        // UNLISTEN and DISCARD TEMP are undone when their transaction rolls back
        ['CREATE TEMP TABLE tr (x int)', 'BEGIN', 'DISCARD TEMP', 'ROLLBACK'],
        ['LISTEN c3', 'BEGIN', 'UNLISTEN c3', 'ROLLBACK'],
        ['LISTEN c4', 'UNLISTEN c4; SELECT 1/0'],
      ];
      for (const request of requests) {
        const a = await connect();
        const b = await connect();
        try {
          a.conn.write(Buffer.concat(request.map((sql) => query(sql))));
          for (const sql of request) {
            const r = summarize(await a.conn.readUntil('Z', 15000));
            if (sql.includes('1/0')) t.equal(r.errors[0]?.C, '22012', `${sql}: division by zero`);
            else t.same(r.errors, [], `${sql}: no error`);
          }
          t.not(await one(a, LEFT), '0', `${request.join(' / ')}: the state is there`);
          const waited = one(b, LEFT);
          const early = await Promise.race([waited.then(() => 'answered'), new Promise((r) => setTimeout(() => r('waiting'), 700))]);
          t.equal(early, 'waiting', `${request.join(' / ')}: a keeps the one server, b waits`);
          a.conn.destroy();
          t.equal(await waited, '0', `${request.join(' / ')}: once a is gone, b's server has none of a's state`);
        } finally {
          a.conn.destroy();
          b.conn.destroy();
        }
      }
    });

    // Known gap: through the extended protocol these removals still count at their
    // CommandComplete, so one rolled back afterwards unpins its client with the state left.
    t.test(`UNLISTEN through the extended protocol, rolled back, keeps the client pinned ${B}`, async (t) => {
      const a = await connect();
      const b = await connect();
      try {
        await q(a, 'LISTEN c6');
        await q(a, 'BEGIN');
        a.conn.write(Buffer.concat([parse('', 'UNLISTEN c6'), bind('', '', []), execute(), sync()]));
        await a.conn.readUntil('Z', 15000);
        await q(a, 'ROLLBACK');
        const waited = one(b, 'SELECT count(*) FROM pg_listening_channels()');
        const early = await Promise.race([waited.then(() => 'answered'), new Promise((r) => setTimeout(() => r('waiting'), 700))]);
        const todo = { todo: 'extended-protocol UNLISTEN / DISCARD TEMP still count at their CommandComplete' };
        t.equal(early, 'waiting', 'a keeps the one server, b waits', todo);
        a.conn.destroy();
        t.equal(await waited, '0', 'once a is gone, b\'s server listens to nothing', todo);
      } finally {
        a.conn.destroy();
        b.conn.destroy();
      }
    });

    t.test(`reject refuses with 0A000 and a clear message ${B}`, async (t) => {
      const p = await startProxy(t, strict, { logLevel: 'info' });
      const a = await login(p.port, { user: 'app', password: 'app-pw', database: 'app' });
      try {
        for (const sql of ['SET search_path = other', 'LISTEN x', 'CREATE TEMP TABLE t1 (x int)', 'SELECT pg_advisory_lock(1)', 'PREPARE p1 AS SELECT 1',
          'DECLARE c1 CURSOR WITH HOLD FOR SELECT 1']) {
          const r = await q(a, sql);
          t.equal(r.errors[0]?.C, '0A000', `${sql}: 0A000`);
          t.match(r.errors[0]?.M ?? '', /not allowed in transaction pooling mode \(session_state\.\w+ is reject\)/, `${sql}: ${r.errors[0]?.M}`);
        }
        await q(a, 'BEGIN');
        const r = await q(a, 'SET search_path = other');
        t.equal(r.status, 'E', 'inside a transaction block the refusal aborts it, as an error would');
        await q(a, 'ROLLBACK');
        t.equal(await one(a, 'SHOW search_path'), '"$user", public', 'nothing was set');
        t.equal(await one(a, 'SELECT 7'), '7', 'the client goes on');
      } finally {
        a.conn.destroy();
        await p.stop();
      }
    });

    t.test(`parameters: pin keeps the server instead of tracking ${B}`, async (t) => {
      const p = await startProxy(t, pinParams, { logLevel: 'info' });
      const a = await login(p.port, { user: 'app', password: 'app-pw', database: 'app' });
      const b = await login(p.port, { user: 'app', password: 'app-pw', database: 'app' });
      try {
        await q(a, 'SET work_mem = 7777');
        t.equal(await one(a, 'SHOW work_mem'), '7777kB', 'a sees its setting');
        const waited = q(b, 'SELECT 1'); // the one server stays with a
        const early = await Promise.race([waited.then(() => 'answered'), new Promise((r) => setTimeout(() => r('waiting'), 700))]);
        t.equal(early, 'waiting', 'b waits: a pinned the only server');
        a.conn.destroy();
        const r = await waited;
        t.same(r.rows, [['1']], 'b is served once a leaves');
        t.equal(await one(b, 'SHOW work_mem'), '4MB', 'and sees the default: the server was reset');
      } finally {
        b.conn.destroy();
        await p.stop();
      }
    });
  }
});

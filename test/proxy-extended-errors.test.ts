// PostgreSQL's extended-protocol error rule through the proxy, both data paths, on a
// single server so that a miscounted transaction end shows as a stolen or stuck server:
// after an ErrorResponse to Parse/Bind/Execute the server discards everything up to the
// next Sync (a simple Query included) and sends one ReadyForQuery. A client that sends
// Parse(bad SQL)/Bind/Execute, Query, Sync must see what PostgreSQL itself answers, leave
// its server idle outside a transaction (another client gets it at once), and
// idle_transaction_timeout must close a client that left Parse/Bind/Execute without Sync
// inside BEGIN, its transaction rolled back and the pool serving on. With bypass: on the kernel hands such a
// client to user space (fallback mixed_protocol).
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import { startCluster, withTimeout } from './helpers/cluster';
import { login, parse, bind, execute, sync, query, simpleQuery, parseFields, Msg, RawConn } from './helpers/pgwire';
import { kernelConfig, showBypass, num } from './helpers/kernel';

const BAD = Buffer.concat([parse('', 'SELEC oops'), bind('', '', []), execute('', 0)]);
const MIXED = Buffer.concat([BAD, query('SELECT 1'), sync()]);

// Message types, with the SQLSTATE of errors and the status of ReadyForQuery.
function shape(msgs: Msg[]): string[] {
  return msgs.map((m) => (m.type === 'E' ? `E:${parseFields(m.body).C}` : m.type === 'Z' ? `Z:${m.body.toString('latin1', 0, 1)}` : m.type));
}

// The mixed batch in one write, then a plain Query: the replies of both rounds (a
// ReadyForQuery too many or too few shows in the second, or as a timeout).
async function oneWrite(conn: RawConn): Promise<string[]> {
  conn.write(MIXED);
  const first = await conn.readUntil('Z', 15000);
  conn.write(query('SELECT 2'));
  const second = await conn.readUntil('Z', 15000);
  return [...shape(first), '|', ...shape(second)];
}

// Parse/Bind/Execute first and its ErrorResponse read (PostgreSQL flushes errors at
// once), then Query + Sync in a second write: the server is already skipping.
async function splitWrite(conn: RawConn): Promise<string[]> {
  conn.write(BAD);
  const err = await conn.readUntil('E', 15000);
  conn.write(Buffer.concat([query('SELECT 1'), sync()]));
  const rest = await conn.readUntil('Z', 15000);
  const after = await simpleQuery(conn, 'SELECT 2', 15000);
  return [...shape(err), '|', ...shape(rest), '|', ...shape(after.messages)];
}

t.test('extended-protocol errors before Sync', async (t) => {
  const c = await startCluster(t);
  c.sql(`CREATE TABLE ext_err (v int); ALTER TABLE ext_err OWNER TO app;`);
  const who = { user: c.user, password: c.password, database: c.db };

  // What PostgreSQL itself answers to the same bytes.
  const direct = await login(c.pg.port, who);
  const wantOne = await oneWrite(direct.conn);
  const wantSplit = await splitWrite(direct.conn);
  direct.conn.destroy();
  t.same(wantOne.slice(0, wantOne.indexOf('|')), ['E:42601', 'Z:I'], 'PostgreSQL: one error, one ReadyForQuery for the batch');

  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;
    t.test(`mixed batch with an error ${B}`, async (t) => {
      const cfg = await kernelConfig(c, bypass, { default_pool_size: 1, pool_mode: 'transaction', query_wait_timeout: 60, idle_transaction_timeout: 2 });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const before = bypass === 'on' ? await showBypass(proxy) : null;

      const a = await login(proxy.port, who, 15000);
      t.same(await oneWrite(a.conn), wantOne, 'one write: the replies PostgreSQL sends');
      t.same(await splitWrite(a.conn), wantSplit, 'error read before Query + Sync: the replies PostgreSQL sends');

      // A stays connected, idle outside a transaction: B gets the only server at once.
      const b = await login(proxy.port, who, 15000);
      const rb = await withTimeout(simpleQuery(b.conn, 'SELECT 42', 10000), 10000, 'client B query while A is idle');
      t.same(rb.rows, [['42']], 'client B is served while A is idle');
      t.equal(rb.status, 'I');
      const ra = await simpleQuery(a.conn, 'SELECT 7', 10000);
      t.same(ra.rows, [['7']], 'A is still served afterwards');
      a.conn.destroy();

      // Parse/Bind/Execute without Sync inside BEGIN: idle_transaction_timeout applies.
      const cl = await login(proxy.port, who, 15000);
      const begin = await simpleQuery(cl.conn, 'BEGIN; INSERT INTO ext_err VALUES (1); SELECT pg_backend_pid()', 10000);
      t.equal(begin.status, 'T', 'inside a transaction block');
      const pid = begin.rows[0][0];
      cl.conn.write(Buffer.concat([parse('', 'SELECT 1'), bind('', '', []), execute('', 0)]));
      const started = Date.now();
      const end = await cl.conn.readAllUntilClose(20000);
      const waited = Date.now() - started;
      t.ok(end.closed, `idle_transaction_timeout closed the client (after ${waited} ms)`);
      t.ok(waited >= 1500, 'not before the timeout');
      const fatal = end.msgs.filter((m) => m.type === 'E').map((m) => parseFields(m.body));
      t.ok(fatal.length > 0, `it was told why: ${fatal.map((f) => `${f.C} ${f.M}`).join('; ')}`);

      // b still holds its connection; its next query reuses the same single server.
      const rd = await withTimeout(simpleQuery(b.conn, 'SELECT pg_backend_pid(), (SELECT count(*) FROM ext_err), now() = statement_timestamp()', 15000), 15000, 'query after the timeout');
      t.equal(rd.errors.length, 0, 'no error');
      // A server left mid-batch (extended messages without Sync) is closed, not reset
      // (invariant 3 allows either): the insert is rolled back, the pool serves on.
      t.same(rd.rows[0].slice(1), ['0', 't'], 'rolled back; B runs outside any transaction');
      if (rd.rows[0][0] !== pid) t.equal(c.sql(`SELECT count(*) FROM pg_stat_activity WHERE pid = ${Number(pid)}`).trim(), '0', 'the old server was closed');
      t.equal(rd.status, 'I');
      b.conn.destroy();

      if (before) {
        const after = await showBypass(proxy);
        const moved = num(after.fallback_mixed_protocol) - num(before.fallback_mixed_protocol);
        t.ok(moved >= 1, `fallback_mixed_protocol moved (+${moved})`);
      }
    });
  }
});

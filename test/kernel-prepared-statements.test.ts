// Named prepared statements on the kernel path (ebpf/statements.h, docs/kernel-path.md
// "Named statements in the kernel"): a Bind or Describe of a statement the bound server
// has is renamed in place by the verdict and carried by the kernel; a named Parse, a
// Close, or a statement the server lacks goes to user space once, which prepares it and
// records it. Real clients in both modes (pgbench -M prepared, node-postgres named
// queries, JDBC with prepareThreshold=1), the naming schemes of JDBC, pgbench, psycopg 3,
// asyncpg and node-postgres, two clients with one name for different SQL, DEALLOCATE and
// DISCARD ALL mid-stream, DDL that invalidates a plan, max_prepared_statements eviction,
// and names the kernel can't rewrite. Protocol-level transcripts are compared with
// direct PostgreSQL message by message; with bypass on, the kernel's own counters say
// how much it carried.
import t from 'tap';
import { Client } from 'pg';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, run, libpqEnv, withTimeout, Cluster } from './helpers/cluster';
import { checkJdbcRun, haveJdbc, runJdbcClient } from './helpers/jdbc';
import { KERNEL_TEST_MODES, kernelConfig, statsLine, num, pgbenchCounts, recordFailure, logExcerpt } from './helpers/kernel';
import { login, parse, bind, execute, sync, message, describePortal, summarize, simpleQuery, Session } from './helpers/pgwire';

const cstr = (s: string): Buffer => Buffer.from(`${s}\0`);
const describeStatement = (name: string): Buffer => message('D', Buffer.concat([Buffer.from('S'), cstr(name)]));
const closeStatement = (name: string): Buffer => message('C', Buffer.concat([Buffer.from('S'), cstr(name)]));

// What a client sees of one round: message types, rows, errors (code and text), tags.
type Seen = { types: string; rows: (string | null)[][]; errors: string[]; tags: string[]; status: string };
async function round(s: Session, ...msgs: Buffer[]): Promise<Seen> {
  s.conn.write(Buffer.concat(msgs));
  // one ReadyForQuery per Sync written (pipelined rounds have several)
  const syncs = msgs.reduce((n, m) => n + countSyncs(m), 0);
  const all = [];
  for (let i = 0; i < Math.max(1, syncs); i++) all.push(...(await s.conn.readUntil('Z', 15000)));
  const r = summarize(all);
  return { types: r.messages.map((m) => m.type).join(''), rows: r.rows, errors: r.errors.map((e) => `${e.C} ${e.M}`), tags: r.tags, status: r.status };
}
async function query(s: Session, sql: string): Promise<Seen> {
  const r = await simpleQuery(s.conn, sql, 15000);
  return { types: r.messages.map((m) => m.type).join(''), rows: r.rows, errors: r.errors.map((e) => `${e.C} ${e.M}`), tags: r.tags, status: r.status };
}
// Sync messages in a buffer of whole client messages.
function countSyncs(b: Buffer): number {
  let n = 0;
  for (let at = 0; at + 5 <= b.length; at += 1 + b.readUInt32BE(at + 1)) if (b[at] === 0x53) n++;
  return n;
}
const exec = (name: string, params: (string | null)[] = []): Buffer => Buffer.concat([bind('', name, params), execute(), sync()]);

// Client names of the drivers the kernel path must serve, and two it can't rewrite.
const NAMES = {
  jdbc: 'S_1', pgbench: 'P_0', psycopg3: '_pg3_0', asyncpg: '__asyncpg_stmt_1__', nodePg: 'fetch-item', one: 'x',
  long: 'n'.repeat(70),
};

// The protocol scenario, run once against PostgreSQL and once through the proxy (pool of
// one server, so both sessions share it): one transcript each, compared entry by entry.
async function scenario(port: number, c: Cluster, table: string): Promise<Array<[string, Seen]>> {
  const out: Array<[string, Seen]> = [];
  const opts = { user: 'app', password: 'app-pw', database: 'app' };
  const a = await login(port, opts);
  const b = await login(port, opts);
  const note = async (label: string, p: Promise<Seen>) => out.push([label, await p]);
  try {
    // every naming scheme, prepared then executed several times (kernel after the first)
    for (const [driver, name] of Object.entries(NAMES)) {
      await note(`${driver}: Parse`, round(a, parse(name, `SELECT $1::int * 10 + ${name.length} AS v`, [23]), sync()));
      for (let i = 0; i < 4; i++) await note(`${driver}: exec ${i}`, round(a, exec(name, [String(i)])));
      await note(`${driver}: Describe(S) + Bind + Describe(P)`, round(a, describeStatement(name), bind('', name, ['7']), describePortal(), execute(), sync()));
    }
    // one name, different SQL, two clients on one server
    await note('b: Parse P_0 other SQL', round(b, parse('P_0', "SELECT 'b:' || $1::text AS w", [25]), sync()));
    for (let i = 0; i < 3; i++) {
      await note(`a: P_0 ${i}`, round(a, exec('P_0', [String(i)])));
      await note(`b: P_0 ${i}`, round(b, exec('P_0', [`x${i}`])));
    }
    // several names in one skb (pipelined), and in a transaction block
    await note('pipelined batch', round(a, exec('P_0', ['1']), exec('S_1', ['2']), exec('_pg3_0', ['3']), exec('__asyncpg_stmt_1__', ['4'])));
    await note('BEGIN', query(a, 'BEGIN'));
    await note('in block S_1', round(a, exec('S_1', ['5'])));
    await note('in block P_0', round(a, exec('P_0', ['6'])));
    await note('COMMIT', query(a, 'COMMIT'));
    // DEALLOCATE mid-stream: a's P_0 goes, b's stays
    await note('a: DEALLOCATE P_0', query(a, 'DEALLOCATE P_0'));
    await note('a: P_0 after DEALLOCATE', round(a, exec('P_0', ['1'])));
    await note('b: P_0 after a DEALLOCATE', round(b, exec('P_0', ['still'])));
    await note('a: P_0 again, new SQL', round(a, parse('P_0', 'SELECT $1::int - 1 AS v', [23]), sync()));
    for (let i = 0; i < 3; i++) await note(`a: new P_0 ${i}`, round(a, exec('P_0', [String(10 + i)])));
    // Close of a named statement (user space), then the name is free
    await note('a: Close S_1', round(a, closeStatement('S_1'), sync()));
    await note('a: S_1 after Close', round(a, exec('S_1', ['1'])));
    await note('a: S_1 reused', round(a, parse('S_1', "SELECT 'reused' AS r"), sync()));
    await note('a: S_1 reused exec', round(a, exec('S_1')));
    // DDL that invalidates a cached plan
    await note('a: Parse star', round(a, parse('S_2', `SELECT * FROM ${table} WHERE id = 1`), sync()));
    for (let i = 0; i < 3; i++) await note(`a: star ${i}`, round(a, bind('', 'S_2', []), describePortal(), execute(), sync()));
    c.sql(`ALTER TABLE ${table} ADD COLUMN extra int`);
    try {
      await note('a: star after ALTER', round(a, bind('', 'S_2', []), describePortal(), execute(), sync()));
      await note('a: star again after ALTER', round(a, bind('', 'S_2', []), describePortal(), execute(), sync()));
    } finally {
      c.sql(`ALTER TABLE ${table} DROP COLUMN extra`);
    }
    // a named statement that changes session state runs in user space, which tracks it:
    // b, on the same server, never sees a's work_mem
    await note('a: Parse S_9 SET', round(a, parse('S_9', "SET work_mem = '7MB'"), sync()));
    for (let i = 0; i < 3; i++) {
      await note(`a: S_9 ${i}`, round(a, exec('S_9')));
      await note(`b: SHOW work_mem ${i}`, query(b, 'SHOW work_mem'));
    }
    await note('a: SHOW work_mem', query(a, 'SHOW work_mem'));
    // DISCARD ALL mid-stream: every statement of a goes, b keeps its own
    await note('a: DISCARD ALL', query(a, 'DISCARD ALL'));
    await note('a: _pg3_0 after DISCARD ALL', round(a, exec('_pg3_0', ['1'])));
    await note('b: P_0 after a DISCARD ALL', round(b, exec('P_0', ['after'])));
    await note('a: Parse after DISCARD ALL', round(a, parse('_pg3_0', 'SELECT $1::int + 100 AS v', [23]), sync()));
    for (let i = 0; i < 3; i++) await note(`a: _pg3_0 ${i}`, round(a, exec('_pg3_0', [String(i)])));
  } finally {
    a.conn.destroy();
    b.conn.destroy();
  }
  return out;
}

t.test('named prepared statements on the kernel path', async (t) => {
  const c: Cluster = await startCluster(t);
  c.sql(`CREATE TABLE kps_t (id int PRIMARY KEY, v text); ALTER TABLE kps_t OWNER TO app;
         INSERT INTO kps_t SELECT g, 'v' || g FROM generate_series(1, 100) g;
         CREATE TABLE kps_jdbc (v text); ALTER TABLE kps_jdbc OWNER TO app;`);
  const init = await run('pgbench', ['-i', '-q', '-s', '1', '-h', c.pg.socketDir, '-p', String(c.pg.port), '-U', 'app', 'app'], { timeoutMs: 120000 });
  t.equal(init.code, 0, `pgbench -i (${init.stderr.slice(-300)})`);
  const direct = await scenario(c.pg.port, c, 'kps_t');

  for (const bypass of KERNEL_TEST_MODES) {
    const B = `[bypass=${bypass}]`;
    const counters = async (proxy: ProxyHandle) => (bypass === 'on' ? statsLine(proxy) : {});

    t.test(`pgbench -M prepared, 8 clients on 3 servers ${B}`, async (t) => {
      const POOL = 3;
      const CLIENTS = 8;
      const PER = 150;
      const cfg = await kernelConfig(c, bypass, { default_pool_size: POOL, min_pool_size: POOL, query_wait_timeout: 60 });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const pgbench = (n: number) => withTimeout(run('pgbench', ['-n', '-M', 'prepared', '-c', String(CLIENTS), '-j', String(CLIENTS), '-t', String(n), 'app'],
        { env: libpqEnv(proxy), timeoutMs: 150000 }), 160000, 'pgbench -M prepared');
      // warm-up: each server gets each statement prepared once (from user space)
      const warm = await pgbench(20);
      t.equal(warm.code, 0, `warm-up (${warm.stderr.slice(-300)})`);
      const before = await counters(proxy);
      const r = await pgbench(PER);
      const after = await counters(proxy);
      const got = pgbenchCounts(r.stdout);
      t.equal(r.code, 0, `pgbench exit (${r.stderr.slice(-500)})`);
      t.equal(got.processed, CLIENTS * PER, 'every transaction processed');
      t.equal(got.failed, 0, 'no failed transaction');
      if (bypass !== 'on') return;
      const d = (k: string) => num(after[k]) - num(before[k]);
      const share = d('kernel_transactions') / got.processed;
      t.comment(`${B} kernel_transactions +${d('kernel_transactions')} of ${got.processed} (${(100 * share).toFixed(1)}%), statement_rewrites +${d('kernel_statement_rewrites')}, ` +
        `binds_from_user +${d('user_bindsFromUser')}, named_statement +${d('fallback_named_statement')}, statement_missing +${d('fallback_statement_missing')}, ` +
        `no_idle_server +${d('fallback_no_idle_server')}, handoffs +${d('user_handoffs')}, reclaims +${d('user_reclaims')}`);
      if (!t.ok(share >= 0.9, `the kernel carried >= 90% of the transactions (${(100 * share).toFixed(1)}%)`)) {
        recordFailure('kernel-prepared-statements pgbench', `kernel_transactions +${d('kernel_transactions')} for ${got.processed}`, logExcerpt(proxy));
      }
      t.ok(d('kernel_statement_rewrites') >= got.processed, 'the verdict renamed statements');
    });

    t.test(`protocol scenario compared with PostgreSQL ${B}`, async (t) => {
      const cfg = await kernelConfig(c, bypass, { default_pool_size: 1, min_pool_size: 1, max_prepared_statements: 200, query_wait_timeout: 30 });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const before = await counters(proxy);
      const got = await scenario(proxy.port, c, 'kps_t');
      t.equal(got.length, direct.length, 'same rounds');
      for (let i = 0; i < direct.length; i++) t.same(got[i], direct[i], `${direct[i][0]}: as PostgreSQL answers`);
      if (bypass !== 'on') return;
      const after = await counters(proxy);
      const d = (k: string) => num(after[k]) - num(before[k]);
      t.comment(`${B} statement_rewrites +${d('kernel_statement_rewrites')} kernel_transactions +${d('kernel_transactions')} name_too_long +${d('fallback_name_too_long')} ` +
        `statement_missing +${d('fallback_statement_missing')} statement_close +${d('fallback_statement_close')} named_statement +${d('fallback_named_statement')}`);
      t.ok(d('kernel_statement_rewrites') >= 20, 'the verdict renamed the statements of every driver naming scheme');
      t.ok(d('fallback_name_too_long') >= 1, 'a 70-byte name is counted name_too_long');
      t.ok(d('fallback_named_statement') >= 1, 'named Parses went to user space');
    });

    t.test(`max_prepared_statements eviction ${B}`, async (t) => {
      const cfg = await kernelConfig(c, bypass, { default_pool_size: 1, min_pool_size: 1, max_prepared_statements: 2, query_wait_timeout: 30 });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const run1 = async (port: number) => {
        const s = await login(port, { user: 'app', password: 'app-pw', database: 'app' });
        const seen: Seen[] = [];
        try {
          for (let q = 0; q < 4; q++) seen.push(await round(s, parse(`Q_${q}`, `SELECT $1::int + ${q * 1000} AS v`, [23]), sync()));
          for (let r = 0; r < 4; r++) for (let q = 0; q < 4; q++) seen.push(await round(s, exec(`Q_${q}`, [String(r)])));
        } finally {
          s.conn.destroy();
        }
        return seen;
      };
      const want = await run1(c.pg.port);
      const got = await run1(proxy.port);
      t.same(got, want, 'four statements round-robin through a server that keeps two: results as PostgreSQL gives them');
      t.equal(Number(c.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'")) >= 1, true);
    });

    t.test(`node-postgres named queries, one name with different SQL per client ${B}`, async (t) => {
      const cfg = await kernelConfig(c, bypass, { default_pool_size: 2, min_pool_size: 2, query_wait_timeout: 30 });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const clients = await Promise.all(Array.from({ length: 4 }, async () => {
        const cl = new Client({ host: proxy.host, port: proxy.port, user: 'app', password: 'app-pw', database: 'app' });
        await cl.connect();
        return cl;
      }));
      const before = await counters(proxy);
      try {
        for (let r = 0; r < 40; r++) {
          await Promise.all(clients.map(async (cl, i) => {
            const res = await cl.query({ name: 'q', text: `SELECT $1::int + ${i} AS n, '${'c' + i}' AS who`, values: [r] });
            if (res.rows[0].n !== r + i || res.rows[0].who !== `c${i}`) throw new Error(`client ${i} round ${r} got ${JSON.stringify(res.rows)}`);
            const item = await cl.query({ name: 'fetch-item', text: 'SELECT v FROM kps_t WHERE id = $1', values: [1 + ((r + i) % 100)] });
            if (item.rows[0].v !== `v${1 + ((r + i) % 100)}`) throw new Error(`client ${i} round ${r} item ${JSON.stringify(item.rows)}`);
          }));
        }
        t.pass('320 named executions, each client got its own statement');
      } finally {
        await Promise.all(clients.map((cl) => cl.end()));
      }
      if (bypass !== 'on') return;
      const after = await counters(proxy);
      const d = (k: string) => num(after[k]) - num(before[k]);
      t.comment(`${B} statement_rewrites +${d('kernel_statement_rewrites')} kernel_transactions +${d('kernel_transactions')} statement_missing +${d('fallback_statement_missing')}`);
      t.ok(d('kernel_statement_rewrites') >= 160, 'most named executions renamed by the verdict');
    });

    t.test(`JDBC with prepareThreshold=1 ${B}`, { skip: haveJdbc() ? false : 'no JDBC driver' }, async (t) => {
      const cfg = await kernelConfig(c, bypass, { default_pool_size: 2, min_pool_size: 2, query_wait_timeout: 30 });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });
      const before = await counters(proxy);
      const runs = await Promise.all([0, 1, 2].map((i) => runJdbcClient(proxy, { db: 'app', table: 'kps_jdbc', prepareThreshold: '1', rowPrefix: `k${i}-`, timeoutMs: 90000 })));
      for (const [i, r] of runs.entries()) checkJdbcRun(t, r, `client ${i}: `);
      c.sql('TRUNCATE kps_jdbc');
      if (bypass !== 'on') return;
      const after = await counters(proxy);
      const d = (k: string) => num(after[k]) - num(before[k]);
      t.comment(`${B} statement_rewrites +${d('kernel_statement_rewrites')} kernel_transactions +${d('kernel_transactions')}`);
      t.ok(d('kernel_statement_rewrites') >= 1, 'JDBC S_n names renamed by the verdict');
    });
  }
});

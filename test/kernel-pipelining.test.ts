// Pool exhaustion with pipelining clients: a pool of 1 server, then of 2, and 50 clients
// that each pipeline their own numbered queries (several Parse/Bind/Execute/Sync or simple
// Query messages, and BEGIN/SELECT/COMMIT as three pipelined Query messages, sent before
// any answer is read; then a sliding window that never lets the client go quiet). Every
// answer carries the client's id and the query's sequence number: each client checks that
// every answer is its own and in order. Both modes; with bypass: on, no framing error and
// the kernel carried part of it; afterwards no server is left bound or dirty.
import t from 'tap';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, withTimeout, sleep, Cluster, backendCount } from './helpers/cluster';
import { login, query, parse, bind, describePortal, execute, sync, summarize, Msg, RawConn } from './helpers/pgwire';
import { KERNEL_TEST_MODES, kernelConfig, statsLine, num, adminRows, recordFailure, logExcerpt, prng, probePool } from './helpers/kernel';

const CLIENTS = 50;

interface Item {
  bytes: Buffer;
  zs: number; // ReadyForQuery messages it produces
  seq: number;
  shape: string;
}

// The query with sequence number seq of client id, in one of four shapes.
function item(id: number, seq: number, shape: number): Item {
  switch (shape % 4) {
    case 0:
      return { bytes: query(`SELECT ${id} AS c, ${seq} AS s`), zs: 1, seq, shape: 'simple' };
    case 1:
      return {
        bytes: Buffer.concat([parse('', 'SELECT $1::int AS c, $2::int AS s'), bind('', '', [String(id), String(seq)]), describePortal(''), execute('', 0), sync()]),
        zs: 1,
        seq,
        shape: 'extended',
      };
    case 2:
      // A transaction block as three pipelined Query messages: ReadyForQuery 'T' in between
      // must not release the server (invariant 4).
      return { bytes: Buffer.concat([query('BEGIN'), query(`SELECT ${id} AS c, ${seq} AS s, txid_current() > 0 AS x`), query('COMMIT')]), zs: 3, seq, shape: 'BEGIN/SELECT/COMMIT' };
    default:
      // Two extended rounds where only the last has a Sync: one transaction.
      return {
        bytes: Buffer.concat([
          parse('', 'SELECT $1::int AS c, $2::int AS s'), bind('', '', [String(id), String(seq)]), execute('', 0),
          parse('', 'SELECT 0'), bind('', '', []), execute('', 0), sync(),
        ]),
        zs: 1,
        seq,
        shape: 'two executes, one sync',
      };
  }
}

// Reads one item's answer and checks it: one row (id, seq), no error, last status 'I'.
async function readItem(conn: RawConn, id: number, it: Item): Promise<string | null> {
  const msgs: Msg[] = [];
  for (let z = 0; z < it.zs; z++) msgs.push(...(await conn.readUntil('Z', 60000)));
  const r = summarize(msgs);
  const row = r.rows[0];
  const ok = r.errors.length === 0 && r.status === 'I' && row && row[0] === String(id) && row[1] === String(it.seq);
  if (ok) return null;
  return `client ${id} seq ${it.seq} (${it.shape}): got rows ${JSON.stringify(r.rows)} errors ${JSON.stringify(r.errors.map((e) => e.M))} status ${r.status}`;
}

// Batches: DEPTH items written at once, then DEPTH answers read. Then a sliding window of
// WINDOW items in flight for WINDOWED items.
async function runClient(port: number, id: number, rounds: number, depth: number, windowed: number, window: number): Promise<string[]> {
  const rnd = prng(id * 7919);
  const s = await login(port, { user: 'app', password: 'app-pw', database: 'app' }, 60000);
  const conn = s.conn;
  const bad: string[] = [];
  let seq = 0;
  try {
    for (let r = 0; r < rounds && bad.length === 0; r++) {
      const items: Item[] = [];
      for (let i = 0; i < depth; i++) items.push(item(id, seq++, Math.floor(rnd() * 4)));
      conn.write(Buffer.concat(items.map((x) => x.bytes)));
      for (const it of items) {
        const e = await readItem(conn, id, it);
        if (e) {
          bad.push(e);
          break;
        }
      }
      if (rnd() < 0.3) await sleep(Math.floor(rnd() * 3));
    }
    // Sliding window: a new query goes out as each answer comes back.
    const inflight: Item[] = [];
    let sent = 0;
    while (bad.length === 0 && (sent < windowed || inflight.length)) {
      while (sent < windowed && inflight.length < window) {
        const it = item(id, seq++, Math.floor(rnd() * 4));
        conn.write(it.bytes);
        inflight.push(it);
        sent++;
      }
      const e = await readItem(conn, id, inflight.shift()!);
      if (e) bad.push(e);
    }
    conn.write(Buffer.from([0x58, 0, 0, 0, 4]));
  } catch (e) {
    bad.push(`client ${id} at seq ${seq}: ${(e as Error).message}`);
  } finally {
    conn.destroy();
  }
  return bad;
}

t.test('kernel path: pipelining clients on an exhausted pool', async (t) => {
  const c: Cluster = await startCluster(t);

  for (const bypass of KERNEL_TEST_MODES) {
    for (const poolSize of [1, 2]) {
      const B = `[bypass=${bypass}, pool ${poolSize}]`;
      t.test(`${CLIENTS} pipelining clients ${B}`, async (t) => {
        const cfg = await kernelConfig(c, bypass, { default_pool_size: poolSize, query_wait_timeout: 120, max_client_conn: 200 });
        const proxy: ProxyHandle = await startProxy(t, cfg, { logLevel: 'info' });
        const before = bypass === 'on' ? await statsLine(proxy) : {};
        const ROUNDS = 8;
        const DEPTH = 5;
        const WINDOWED = 20;
        const WINDOW = 4;
        let bad: string[];
        try {
          const all = await withTimeout(
            Promise.all(Array.from({ length: CLIENTS }, (_, i) => runClient(proxy.port, i + 1, ROUNDS, DEPTH, WINDOWED, WINDOW))),
            150000,
            `${CLIENTS} pipelining clients`,
          );
          bad = all.flat();
        } catch (e) {
          bad = [(e as Error).message];
        }
        t.same(bad.slice(0, 10), [], `every client got all its ${ROUNDS * DEPTH + WINDOWED} answers, its own and in order`);
        if (bad.length) recordFailure(`kernel-pipelining ${B}`, `${bad.length} bad answers/errors; first: ${bad.slice(0, 2).join(' ; ')}`, logExcerpt(proxy));

        // Nothing left bound or dirty: the pool's servers idle in PostgreSQL and in the proxy.
        const quiet = await waitQuiet(proxy, c, poolSize);
        t.ok(quiet.ok, `servers back idle afterwards (${quiet.detail})`);
        if (!quiet.ok) recordFailure(`kernel-pipelining ${B}`, `after the run: ${quiet.detail}`, logExcerpt(proxy));
        const probe = await probePool(proxy, poolSize);
        if (!t.equal(probe.pids, poolSize, `all ${poolSize} servers usable at once afterwards (${probe.ms} ms, errors ${JSON.stringify(probe.errors)})`)) {
          recordFailure(`kernel-pipelining ${B}`, `after the run only ${probe.pids} of ${poolSize} servers could be had at once (${probe.ms} ms, ${probe.errors.join('; ')})`, logExcerpt(proxy));
        }
        if (bypass !== 'on') return;
        const after = await statsLine(proxy);
        const d = (k: string) => num(after[k]) - num(before[k]);
        t.comment(`${B} kernel_transactions +${d('kernel_transactions')} user_xacts +${d('user_xacts')} passed_skbs +${d('kernel_passed_skbs')} no_idle_server +${d('fallback_no_idle_server')} frame_error +${d('fallback_frame_error')} unhandled +${d('fallback_unhandled')} clientsToKernel +${d('user_clientsToKernel')}`);
        t.equal(d('fallback_frame_error'), 0, 'no framing error in the kernel');
        t.ok(d('kernel_transactions') > 0, 'the kernel carried some of the transactions');
      });
    }
  }
});

// Polls until PostgreSQL shows the app's servers all idle (not in a transaction, not active)
// and the proxy shows no active server and no waiting client.
async function waitQuiet(proxy: ProxyHandle, c: Cluster, poolSize: number): Promise<{ ok: boolean; detail: string }> {
  let detail = '';
  for (let i = 0; i < 50; i++) {
    const busy = backendCount(c, 'app', "state <> 'idle'");
    const total = backendCount(c, 'app');
    const pool = (await adminRows(proxy, 'SHOW POOLS')).find((r) => r.database === 'app') ?? {};
    detail = `pg: ${total} backends, ${busy} not idle; SHOW POOLS sv_active=${pool.sv_active} sv_idle=${pool.sv_idle} cl_waiting=${pool.cl_waiting} cl_active=${pool.cl_active}`;
    if (busy === 0 && total <= poolSize && num(pool.sv_active) === 0 && num(pool.cl_waiting) === 0) return { ok: true, detail };
    await sleep(200);
  }
  return { ok: false, detail };
}

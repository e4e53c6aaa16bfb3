// A split-everything stream: a raw client writes its messages one byte per TCP segment
// (TCP_NODELAY, one write per byte with a tiny delay) and in random chunk sizes (seeded),
// simple and extended protocol, long and short messages, several queries cut as one stream
// (a chunk carries the end of one message and the start of the next). The kernel path
// frames per skb, so every header and body cut point is exercised; every answer must be
// exactly the one expected. Both modes; with bypass: on, no framing error in the kernel.
// A Parse, Bind, Describe, Close or Query that the kernel can't see whole in one skb goes
// to user space (docs/kernel-path.md, named prepared statements and session state), and
// so does a named statement: split this finely, nearly every transaction runs in user
// space, handed over at its first skb or mid-way (both counted).
import t, { Test } from 'tap';
import * as crypto from 'node:crypto';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, withTimeout, sleep, Cluster } from './helpers/cluster';
import { login, query, parse, bind, describePortal, execute, sync, summarize, RawConn, RoundResult } from './helpers/pgwire';
import { KERNEL_TEST_MODES, kernelConfig, statsLine, num, prng, recordFailure, logExcerpt } from './helpers/kernel';

const md5 = (s: string) => crypto.createHash('md5').update(s).digest('hex');

interface Q {
  bytes: Buffer; // what the client sends
  rounds: number; // ReadyForQuery messages it produces
  expect: (string | null)[][]; // every DataRow of all its rounds, in order
  what: string;
}

// Query i of a client: four shapes, each with an answer computed here.
function makeQuery(client: number, i: number, rnd: () => number, maxLong: number): Q {
  const tag = `c${client}-q${i}-${Math.floor(rnd() * 1e9)}`;
  switch (i % 4) {
    case 0:
      return { bytes: query(`SELECT ${i}::int * 3 AS v, md5('${tag}') AS h`), rounds: 1, expect: [[String(i * 3), md5(tag)]], what: 'simple' };
    case 1:
      return {
        bytes: Buffer.concat([parse('', 'SELECT $1::int * 3 AS v, md5($2::text) AS h'), bind('', '', [String(i), tag]), describePortal(''), execute('', 0), sync()]),
        rounds: 1,
        expect: [[String(i * 3), md5(tag)]],
        what: 'extended unnamed',
      };
    case 2: {
      // A named statement, parsed in the same round as its first use (Parse/Bind/Execute/Sync).
      const name = `s_${client}_${i}`;
      return {
        bytes: Buffer.concat([parse(name, 'SELECT $1::text || $2::text AS x, length($2::text) AS n', [25, 25]), bind('p1', name, [tag, tag.repeat(3)]), describePortal('p1'), execute('p1', 0), sync()]),
        rounds: 1,
        expect: [[tag + tag.repeat(3), String(tag.length * 3)]],
        what: 'extended named',
      };
    }
    default: {
      // Two statements in one Query, one of them long (spans many segments and chunks).
      const long = 'L'.repeat(100 + Math.floor(rnd() * maxLong)) + tag;
      return { bytes: query(`SELECT ${i} AS a; SELECT '${long}' AS b, ${long.length} AS n`), rounds: 1, expect: [[String(i)], [long, String(long.length)]], what: 'simple, 2 statements, long' };
    }
  }
}

// Writes buf one byte per write (each its own segment with TCP_NODELAY) or in random chunks.
async function writeSplit(sock: RawConn['sock'], buf: Buffer, how: 'byte' | 'random', rnd: () => number, maxChunk = 64): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const n = how === 'byte' ? 1 : 1 + Math.floor(rnd() * Math.min(maxChunk, buf.length - off));
    const ok = sock.write(buf.subarray(off, off + n));
    off += n;
    if (!ok) await new Promise<void>((r) => sock.once('drain', () => r()));
    // A pause after each write so the proxy (or its verdict) sees the piece on its own:
    // 1 ms after every byte; after random chunks, sometimes none (so pieces may also merge).
    if (how === 'byte') await sleep(1);
    else if (rnd() < 0.7) await sleep(rnd() < 0.5 ? 0 : 1);
  }
}

async function readRounds(conn: RawConn, n: number, timeoutMs = 20000): Promise<RoundResult> {
  const msgs = [];
  for (let i = 0; i < n; i++) msgs.push(...(await conn.readUntil('Z', timeoutMs)));
  return summarize(msgs);
}

// Runs `count` queries on one connection; batch > 1 concatenates that many queries into one
// stream cut as a whole. Returns a list of mismatches (empty when all answers are right).
async function runClient(
  port: number,
  client: number,
  opts: { count: number; how: 'byte' | 'random'; seed: number; batch?: number; maxChunk?: number },
): Promise<string[]> {
  const rnd = prng(opts.seed);
  const s = await login(port, { user: 'app', password: 'app-pw', database: 'app' });
  const conn = s.conn;
  const bad: string[] = [];
  try {
    const batch = opts.batch ?? 1;
    for (let i = 0; i < opts.count; i += batch) {
      const qs: Q[] = [];
      for (let j = i; j < Math.min(opts.count, i + batch); j++) qs.push(makeQuery(client, j, rnd, opts.how === 'byte' ? 200 : 3000));
      await writeSplit(conn.sock, Buffer.concat(qs.map((q) => q.bytes)), opts.how, rnd, opts.maxChunk);
      for (const q of qs) {
        const r = await readRounds(conn, q.rounds);
        const ok = r.errors.length === 0 && r.status === 'I' && JSON.stringify(r.rows) === JSON.stringify(q.expect);
        if (!ok) {
          bad.push(`client ${client} query ${qs.indexOf(q) + i} (${q.what}, seed ${opts.seed}): rows ${JSON.stringify(r.rows).slice(0, 200)} errors ${JSON.stringify(r.errors.map((e) => e.M))} status ${r.status}; want ${JSON.stringify(q.expect).slice(0, 200)}`);
          if (bad.length > 5) return bad;
        }
      }
    }
    conn.end(Buffer.from([0x58, 0, 0, 0, 4]));
  } finally {
    conn.destroy();
  }
  return bad;
}

t.test('kernel path: split-everything client streams', async (t) => {
  const c: Cluster = await startCluster(t);

  for (const bypass of KERNEL_TEST_MODES) {
    const B = `[bypass=${bypass}]`;
    let proxy: ProxyHandle;
    t.before(async () => {
      const cfg = await kernelConfig(c, bypass, { default_pool_size: 2, query_wait_timeout: 30 });
      proxy = await startProxy(t, cfg, { logLevel: 'info' });
    });

    // minKernelTx: kernel releases expected (a pipelined batch is one release: the server
    // returns to the pool only when nothing is outstanding). minPunts: transactions that
    // must have gone to user space as named_statement / session_state. Only a query whose
    // first byte reaches the kernel can be punted; one that starts while user space still
    // has the client (it hands it back after the previous answer) never gets there.
    const check = async (t: Test, name: string, body: () => Promise<string[]>, queries: number, minKernelTx: number, minPunts = 0) => {
      const before = bypass === 'on' ? await statsLine(proxy) : {};
      let bad: string[];
      try {
        bad = await withTimeout(body(), 120000, name);
      } catch (e) {
        bad = [`${(e as Error).message}`];
      }
      t.same(bad, [], `${name}: every answer is the expected one`);
      if (bad.length) recordFailure(`kernel-split-stream ${name} ${B}`, bad.slice(0, 2).join(' ; '), logExcerpt(proxy));
      if (bypass !== 'on') return;
      const after = await statsLine(proxy);
      const d = (k: string) => num(after[k]) - num(before[k]);
      t.comment(`${B} ${name}: kernel_transactions +${d('kernel_transactions')} passed_skbs +${d('kernel_passed_skbs')} frame_error +${d('fallback_frame_error')} unhandled +${d('fallback_unhandled')} no_idle_server +${d('fallback_no_idle_server')}`);
      t.equal(d('fallback_frame_error'), 0, 'no framing error in the kernel');
      const punts = d('fallback_named_statement') + d('fallback_session_state') + d('fallback_statement_missing') + d('fallback_statement_close');
      t.ok(punts >= minPunts, `split or named statements went to user space (${punts} >= ${minPunts}; handoffs +${d('user_handoffs')})`);
      if (!t.ok(d('kernel_transactions') >= minKernelTx, `the kernel carried >= ${minKernelTx} of the ${queries} transactions (got ${d('kernel_transactions')})`)) {
        recordFailure(`kernel-split-stream ${name} ${B}`, `kernel_transactions +${d('kernel_transactions')} of ${queries} (frame_error +${d('fallback_frame_error')}, passed_skbs +${d('kernel_passed_skbs')})`, logExcerpt(proxy));
      }
    };

    t.test(`one byte per segment, 20 queries ${B}`, async (t) => {
      // ~1.1 ms per byte: 20 queries of ~60-350 bytes take a few seconds.
      // every first skb is one byte of a Query or Parse header: all in user space
      await check(t, 'byte by byte', () => runClient(proxy.port, 1, { count: 20, how: 'byte', seed: 11 }), 20, 0, 1);
    });

    t.test(`random chunks, 200 queries one at a time ${B}`, async (t) => {
      await check(t, 'random chunks', () => runClient(proxy.port, 2, { count: 200, how: 'random', seed: 22 }), 200, 0, 1);
    });

    t.test(`random chunks across messages: 5 queries per stream, 300 queries ${B}`, async (t) => {
      await check(t, 'random chunks, batched', () => runClient(proxy.port, 3, { count: 300, how: 'random', seed: 33, batch: 5, maxChunk: 200 }), 300, 0, 1);
    });

    t.test(`two random-chunk clients at once on the same 2 servers, plus a byte-by-byte one ${B}`, async (t) => {
      await check(
        t,
        'concurrent split clients',
        async () => {
          const all = await Promise.all([
            runClient(proxy.port, 4, { count: 120, how: 'random', seed: 44, batch: 3, maxChunk: 100 }),
            runClient(proxy.port, 5, { count: 120, how: 'random', seed: 55, maxChunk: 17 }),
            runClient(proxy.port, 6, { count: 6, how: 'byte', seed: 66 }),
          ]);
          return all.flat();
        },
        246,
        0,
      );
    });
  }
});

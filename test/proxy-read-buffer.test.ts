// The user-space path reads each server socket into a buffer it uses again for the next
// read while nothing references the last one. These cases keep references past the read
// (a client write the socket has not finished, a reply message gathered across reads,
// many small replies interleaved with a large one) and check every byte the clients get.
// Client sockets share one read buffer, copied out of at each read: requests in pieces
// from several clients at once must reach the server as each client sent them.
import t from 'tap';
import * as crypto from 'node:crypto';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, withTimeout, sleep } from './helpers/cluster';
import { login, query, summarize, simpleQuery, extendedQuery } from './helpers/pgwire';

const md5 = (s: string): string => crypto.createHash('md5').update(s).digest('hex');

t.test('server read buffers', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;
    let proxy: ProxyHandle;
    t.before(async () => {
      proxy = await startProxy(t, await proxyConfig(c, { bypass, default_pool_size: 2, query_wait_timeout: 60 }));
    });

    t.test(`a slow reader's queued result and other clients' replies stay intact ${B}`, async (t) => {
      const a = await login(proxy.port, { user: 'app', password: 'app-pw' });
      t.teardown(() => a.conn.destroy());
      a.conn.sock.pause(); // its replies queue in the proxy's socket while the server goes on sending
      const rows = 40000; // ~10 MB: more than the socket buffers hold
      a.conn.write(query(`SELECT i, md5(i::text) || repeat('r', 200) FROM generate_series(1, ${rows}) AS i`));
      const b = await pgClient(t, proxy);
      for (let i = 0; i < 300; i++) {
        const r = await b.query('SELECT $1::int AS n, md5($1::text) AS h, repeat($1::text, $2::int) AS pad', [i, (i % 50) * 40]);
        if (r.rows[0].n !== i || r.rows[0].h !== md5(String(i)) || r.rows[0].pad !== String(i).repeat((i % 50) * 40)) {
          t.fail(`client B's reply ${i} is wrong: ${JSON.stringify(r.rows[0]).slice(0, 200)}`);
          return;
        }
      }
      t.pass('300 replies to another client, all as sent');
      await sleep(200);
      a.conn.sock.resume();
      const got = summarize(await a.conn.readUntil('Z', 60000));
      t.equal(got.rows.length, rows, 'the slow reader gets every row');
      const bad = got.rows.findIndex((r, k) => r[0] !== String(k + 1) || r[1] !== md5(String(k + 1)) + 'r'.repeat(200));
      t.equal(bad, -1, bad < 0 ? 'every row as the server sent it' : `row ${bad + 1} differs: ${JSON.stringify(got.rows[bad]).slice(0, 200)}`);
      t.same(got.tags, [`SELECT ${rows}`]);
    });

    t.test(`short replies, one per read, to a client that does not read, then does ${B}`, async (t) => {
      // Each reply comes in a read of its own (the server pauses between them). Once the
      // socket buffers are full, a reply is only partly written and the rest waits in the
      // socket while the server is read on: those bytes must not change meanwhile.
      const a = await login(proxy.port, { user: 'app', password: 'app-pw' });
      t.teardown(() => a.conn.destroy());
      a.conn.sock.pause();
      const n = 2500; // ~20 MB of replies of ~8 KB
      const text = (i: number): string => `${md5(String(i))}${md5(String(-i))}`.repeat(120 + (i % 7));
      const sql = (i: number): string => `SELECT ${i}, repeat(md5('${i}') || md5('${-i}'), ${120 + (i % 7)}), pg_sleep(0.0005)`;
      a.conn.write(Buffer.concat(Array.from({ length: n }, (_, i) => query(sql(i)))));
      await sleep(3000);
      a.conn.sock.resume();
      let wrong = -1;
      for (let i = 0; i < n; i++) {
        const r = summarize(await a.conn.readUntil('Z', 30000));
        if (wrong < 0 && (r.rows.length !== 1 || r.rows[0][0] !== String(i) || r.rows[0][1] !== text(i))) wrong = i;
      }
      t.equal(wrong, -1, wrong < 0 ? `${n} pipelined replies, each as the server sent it` : `reply ${wrong} differs`);
    });

    t.test(`reply messages longer than a read, between short ones ${B}`, async (t) => {
      const a = await login(proxy.port, { user: 'app', password: 'app-pw' });
      t.teardown(() => a.conn.destroy());
      for (const len of [20000, 70000, 150000]) {
        // An ErrorResponse is a message the proxy reads whole (gathered across reads).
        const e = await simpleQuery(a.conn, `DO $$ BEGIN RAISE EXCEPTION '%', repeat('e', ${len}); END $$`, 20000);
        t.equal(e.errors.length, 1, `one error of ${len} bytes`);
        t.equal(e.errors[0]?.M, 'e'.repeat(len), 'its message is whole');
        const r = await simpleQuery(a.conn, `SELECT ${len} AS n, md5(repeat('x', ${len}))`, 20000);
        t.same(r.rows, [[String(len), md5('x'.repeat(len))]], 'the next reply is right');
        t.equal(r.status, 'I');
      }
      // Many replies in one stream: notices and rows of varying size, pipelined.
      const sqls: string[] = [];
      for (let i = 0; i < 200; i++) sqls.push(`SELECT ${i}, repeat('p', ${(i * 997) % 30000})`);
      a.conn.write(Buffer.concat(sqls.map((s) => query(s))));
      for (let i = 0; i < 200; i++) {
        const r = summarize(await a.conn.readUntil('Z', 20000));
        if (r.rows.length !== 1 || r.rows[0][0] !== String(i) || r.rows[0][1] !== 'p'.repeat((i * 997) % 30000)) {
          t.fail(`pipelined reply ${i} is wrong`);
          return;
        }
      }
      t.pass('200 pipelined replies of varying size, in order and whole');
    });

    t.test(`client requests in pieces, longer than a read, from several clients at once ${B}`, async (t) => {
      // Client sockets all read into one shared buffer and copy each read out of it: every
      // client's bytes must reach the server as sent, whatever the other clients' reads
      // put into that buffer between two pieces of one message.
      const sessions = await Promise.all(Array.from({ length: 6 }, () => login(proxy.port, { user: 'app', password: 'app-pw' })));
      t.teardown(() => sessions.forEach((s) => s.conn.destroy()));
      const payload = (k: number, i: number): string => crypto.createHash('sha512').update(`${k}/${i}`).digest('hex').repeat(1 + ((k * 7 + i * 13) % 12) * 120);
      const rounds = 6; // per client: payloads of 128 B to ~180 KB (the shared buffer is 64 KiB)
      const wrong: string[] = [];
      await withTimeout(Promise.all(sessions.map(async (s, k) => {
        const stream = Buffer.concat(Array.from({ length: rounds }, (_, i) => i % 2
          ? extendedQuery('SELECT md5($1::text), length($1::text)', [payload(k, i)])
          : query(`SELECT md5('${payload(k, i)}'), length('${payload(k, i)}')`)));
        // written in pieces of 1 B to ~40 KB with pauses: the proxy reads each client in
        // many reads, interleaved with the other clients' reads
        for (let at = 0, step = 0; at < stream.length; step++) {
          const len = step % 5 === 0 ? 1 + (step % 3) : 1 + ((k * 7919 + step * 104729) % 40000);
          s.conn.write(stream.subarray(at, at + len));
          at += len;
          if (step % 3 === 0) await sleep(1);
        }
        for (let i = 0; i < rounds; i++) {
          const r = summarize(await s.conn.readUntil('Z', 30000));
          const p = payload(k, i);
          if (r.errors.length || r.rows.length !== 1 || r.rows[0][0] !== md5(p) || r.rows[0][1] !== String(p.length)) {
            wrong.push(`client ${k} request ${i}: ${JSON.stringify(r.errors[0] ?? r.rows).slice(0, 200)}`);
          }
        }
      })), 120000, '6 clients writing in pieces');
      t.same(wrong, [], `${sessions.length} clients x ${rounds} requests, each answered for the bytes it sent`);
    });

    t.test(`many clients at once through a small pool ${B}`, async (t) => {
      const clients = await Promise.all(Array.from({ length: 12 }, () => pgClient(t, proxy)));
      const wrong: string[] = [];
      await withTimeout(Promise.all(clients.map(async (cl, k) => {
        for (let i = 0; i < 60; i++) {
          const v = `${k}-${i}`;
          const r = await cl.query('SELECT $1::text AS v, md5($1::text) AS h, repeat($1::text, $2::int) AS pad', [v, (i * 131) % 3000]);
          if (r.rows[0].v !== v || r.rows[0].h !== md5(v) || r.rows[0].pad !== v.repeat((i * 131) % 3000)) wrong.push(v);
        }
      })), 120000, '12 clients x 60 queries');
      t.same(wrong, [], 'every client got its own replies, whole');
    });
  }
});

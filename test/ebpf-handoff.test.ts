// Hand-offs under concurrency: 6 clients share 2 servers of one transaction pool. The
// kernel serves a client when an idle server is on the stack; otherwise the client falls
// back and this test's minimal user-space path serves that one transaction (popIdle, write,
// read up to Z, serverToIdle, clientToKernel) and hands both back. Every response echoes
// its query, so a byte delivered to the wrong client, lost or reordered fails the test.
// Needs root: a KernelPath that can't open fails the test with the reason.
import t, { Test } from 'tap';
import * as net from 'net';
import { openKernelPath, socketPair, fdOf } from './helpers/kernel';
import { Mode } from '../src/kernel/kernel-abi';
import { message } from './helpers/pgwire';

const msg = (type: string, body: Buffer | string = ''): Buffer =>
  message(type, Buffer.isBuffer(body) ? body : Buffer.from(body, 'latin1'));
const row = (text: string) => {
  const v = Buffer.from(text);
  const b = Buffer.alloc(6 + v.length);
  b.writeUInt16BE(1, 0);
  b.writeInt32BE(v.length, 2);
  v.copy(b, 6);
  return msg('D', b);
};

/** Split complete messages off a buffer. */
function frames(buf: Buffer): { msgs: Array<{ type: string; body: Buffer }>; rest: Buffer } {
  const msgs: Array<{ type: string; body: Buffer }> = [];
  let off = 0;
  while (buf.length - off >= 5) {
    const len = buf.readUInt32BE(off + 1);
    if (buf.length - off < 1 + len) break;
    msgs.push({ type: String.fromCharCode(buf[off]), body: buf.subarray(off + 5, off + 1 + len) });
    off += 1 + len;
  }
  return { msgs, rest: buf.subarray(off) };
}


const kp = openKernelPath(t);

if (kp) {
  const k = kp;

  const stress = (DEPTH: number, POOL: number) => async (t: Test) => {
    const CLIENTS = 6;
    const SERVERS = 2;
    const ROUNDS = 300;
    k.configurePool(POOL, { mode: 'transaction', maxIdle: 16 });
    const before = k.counters();
    const sockets: net.Socket[] = [];
    const ids: number[] = [];
    t.teardown(() => {
      ids.forEach((id) => k.unregister(id));
      sockets.forEach((s) => s.destroy());
    });

    // "PostgreSQL": answers each Query with a DataRow echoing it, then Z 'I'.
    interface Srv { id: number; px: net.Socket; read: bigint; user: null | ((b: Buffer) => void) }
    const servers = new Map<number, Srv>();
    const errors: string[] = [];
    for (let i = 0; i < SERVERS; i++) {
      const [pg, px] = await socketPair({ noDelay: true });
      sockets.push(pg, px);
      let acc = Buffer.alloc(0);
      pg.on('data', (d) => {
        const f = frames(Buffer.concat([acc, d]));
        acc = f.rest;
        for (const m of f.msgs) {
          if (m.type !== 'Q') continue;
          pg.write(Buffer.concat([row(m.body.subarray(0, -1).toString()), msg('C', 'SELECT 1\0'), msg('Z', 'I')]));
        }
      });
      const s: Srv = { id: POOL * 100 + i, px, read: 0n, user: null };
      px.on('data', (d) => {
        s.read += BigInt(d.length);
        if (s.user) s.user(d);
        else errors.push(`server ${s.id}: ${d.length} bytes while the kernel owned it`);
      });
      k.registerServer(s.id, fdOf(px), POOL);
      ids.push(s.id);
      t.ok(k.serverToIdle(s.id, 0n));
      servers.set(s.id, s);
    }

    // Minimal user-space path for a fallen-back client: one transaction, then hand back.
    interface Cli { id: number; app: net.Socket; px: net.Socket; read: bigint; pending: Buffer; busy: boolean }
    let userServed = 0;
    const serveInUser = (c: Cli) => {
      const f = frames(c.pending);
      if (c.busy || f.msgs.length === 0) return;
      const sid = k.popIdle(POOL);
      if (!sid) return void setTimeout(() => serveInUser(c), 1);
      const s = servers.get(sid)!;
      c.busy = true;
      const q = c.pending.subarray(0, c.pending.length - f.rest.length);
      c.pending = f.rest;
      const want = f.msgs.filter((m) => m.type === 'Q').length;
      let resp = Buffer.alloc(0);
      s.user = (d) => {
        resp = Buffer.concat([resp, d]);
        const r = frames(resp);
        if (r.rest.length || r.msgs.filter((m) => m.type === 'Z').length < want) return;
        s.user = null;
        if (!k.serverToIdle(s.id, s.read)) errors.push(`serverToIdle(${s.id}) refused`);
        userServed++;
        c.px.write(resp, () => {
          c.busy = false;
          if (c.pending.length) return serveInUser(c);
          // refused if the client's next query was already passed up: its data event serves it
          k.clientToKernel(c.id, c.read);
        });
      };
      s.px.write(q);
    };

    const clients: Cli[] = [];
    for (let i = 0; i < CLIENTS; i++) {
      const [app, px] = await socketPair({ noDelay: true });
      sockets.push(app, px);
      const c: Cli = { id: POOL * 100 + 50 + i, app, px, read: 0n, pending: Buffer.alloc(0), busy: false };
      px.on('data', (d) => {
        c.read += BigInt(d.length);
        c.pending = Buffer.concat([c.pending, d]);
        serveInUser(c);
      });
      k.registerClient(c.id, fdOf(px), POOL);
      ids.push(c.id);
      t.ok(k.clientToKernel(c.id, 0n));
      clients.push(c);
    }

    // Each client: ROUNDS rounds of DEPTH queries written back to back (separate writes),
    // each answer checked in order.
    const run = (c: Cli) =>
      new Promise<void>((resolve, reject) => {
        let n = 0; // answers received
        let acc = Buffer.alloc(0);
        const send = () => {
          for (let i = 0; i < DEPTH; i++) c.app.write(msg('Q', `c${c.id}-q${n + i}\0`));
        };
        c.app.on('data', (d) => {
          const f = frames(Buffer.concat([acc, d]));
          acc = f.rest;
          for (const m of f.msgs) {
            if (m.type === 'D') {
              const got = m.body.subarray(6).toString();
              if (got !== `c${c.id}-q${n}`) return reject(new Error(`client ${c.id} got "${got}" for q${n}`));
            } else if (m.type === 'Z') {
              if (++n === ROUNDS * DEPTH) return resolve();
              if (n % DEPTH === 0) send();
            }
          }
        });
        send();
      });
    await Promise.race([
      Promise.all(clients.map(run)),
      new Promise((_, rej) => setTimeout(() => rej(new Error('stress run timed out')), 60000).unref()),
    ]);
    t.same(errors, [], 'no server bytes arrived while the kernel owned the server');
    const after = k.counters();
    const kernelTx = Number(after.transactions - before.transactions);
    t.ok(kernelTx > 0, `some in the kernel (kernel releases ${kernelTx}, user-space batches ${userServed})`);
    if (DEPTH === 1) t.equal(kernelTx + userServed, CLIENTS * ROUNDS, 'every transaction served once');
    t.comment(`fallbacks: no_idle_server ${after.fallbacks.no_idle_server - before.fallbacks.no_idle_server}`);
    for (const s of servers.values()) t.not(k.read(s.id)!.mode, Mode.BOUND, `server ${s.id} not left bound`);
  };

  t.test('6 clients, 2 servers, kernel and user-space transactions interleaved', stress(1, 250));
  t.test('same, each client pipelining 3 queries per round', stress(3, 251));
}

// The kernel path over real loopback TCP sockets: a "client application" talks to the
// proxy's client socket, a "PostgreSQL" end talks to the proxy's server socket, and the
// two proxy-side sockets are registered in the sockhash through KernelPath. Bytes are
// PostgreSQL-shaped (this is socket plumbing, not a PostgreSQL test).
// Needs root: a KernelPath that can't open fails the test with the reason.
import t from 'tap';
import * as net from 'net';
import * as path from 'path';
import { KernelPath, loadAddon } from '../src/kernel/kernel-path';
import { openKernelPath, socketPair, fdOf } from './helpers/kernel';
import { Mode } from '../src/kernel/kernel-abi';
import { message } from './helpers/pgwire';

const msg = (type: string, body: Buffer | string = ''): Buffer =>
  message(type, Buffer.isBuffer(body) ? body : Buffer.from(body, 'latin1'));
const Q = (sql: string) => msg('Q', sql + '\0');
const Z = (st: string) => msg('Z', st);
const C = (tag: string) => msg('C', tag + '\0');
const S = () => msg('S');
const PS = (k: string, v: string) => msg('S', `${k}\0${v}\0`);

class Sink {
  chunks: Buffer[] = [];
  constructor(readonly sock: net.Socket) {
    sock.on('data', (d) => this.chunks.push(d));
    sock.on('error', () => undefined);
  }
  get bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
  get length(): number {
    return this.chunks.reduce((n, c) => n + c.length, 0);
  }
  take(): Buffer {
    const b = this.bytes;
    this.chunks = [];
    return b;
  }
}

async function until(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
const settle = (ms = 50) => new Promise((r) => setTimeout(r, ms));


const kp = openKernelPath(t);
const BPF_OBJ = path.join(__dirname, '..', 'ebpf', 'pgsplice.bpf.o');

let nextId = 1000;
interface Rig {
  app: Sink; // client application end
  cpx: Sink; // proxy-side client socket (registered)
  pg: Sink; // "PostgreSQL" end
  spx: Sink; // proxy-side server socket (registered)
  cid: number;
  sid: number;
  pool: number;
  close(): void;
}

async function rig(k: KernelPath, mode: 'transaction' | 'session' = 'transaction', inflightLimit = 0): Promise<Rig> {
  const pool = nextId % 200;
  k.configurePool(pool, { mode, maxIdle: 16, inflightLimit });
  const [app, cpx] = await socketPair();
  const [pg, spx] = await socketPair();
  for (const s of [app, cpx, pg, spx]) s.setNoDelay(true);
  const cid = nextId++;
  const sid = nextId++;
  k.registerClient(cid, fdOf(cpx), pool);
  k.registerServer(sid, fdOf(spx), pool);
  const r: Rig = {
    app: new Sink(app),
    cpx: new Sink(cpx),
    pg: new Sink(pg),
    spx: new Sink(spx),
    cid,
    sid,
    pool,
    close() {
      k.unregister(cid);
      k.unregister(sid);
      for (const s of [app, cpx, pg, spx]) s.destroy();
    },
  };
  return r;
}

if (kp) {
  const k = kp;

  t.test('transaction: bound at Query, kept at Z T, released at Z I', async (t) => {
    const r = await rig(k);
    t.teardown(() => r.close());
    const before = k.counters();
    t.ok(k.serverToIdle(r.sid, 0n), 'server USER -> IDLE');
    t.equal(k.read(r.sid)!.mode, Mode.IDLE);
    t.ok(k.clientToKernel(r.cid, 0n), 'client USER -> KERNEL');

    const q1 = Q('begin; select 1');
    r.app.sock.write(q1);
    await until(() => r.pg.length >= q1.length, 'query at the server');
    t.same(r.pg.take(), q1, 'query redirected to the server socket');
    t.same(k.read(r.cid)!.peer, r.sid, 'client bound');
    t.equal(k.read(r.sid)!.mode, Mode.BOUND);
    t.equal(k.read(r.cid)!.outstanding, 1);

    const resp1 = Buffer.concat([C('SELECT 1'), Z('T')]);
    r.pg.sock.write(resp1);
    await until(() => r.app.length >= resp1.length, 'response at the client');
    t.same(r.app.take(), resp1);
    t.equal(k.read(r.sid)!.mode, Mode.BOUND, 'not released at Z T');
    t.equal(k.read(r.cid)!.peer, r.sid);

    const q2 = Q('commit');
    r.app.sock.write(q2);
    await until(() => r.pg.length >= q2.length, 'commit at the server');
    t.same(r.pg.take(), q2);
    const resp2 = Buffer.concat([C('COMMIT'), Z('I')]);
    r.pg.sock.write(resp2);
    await until(() => r.app.length >= resp2.length, 'commit response');
    t.same(r.app.take(), resp2);
    t.equal(k.read(r.sid)!.mode, Mode.IDLE, 'released at Z I');
    t.equal(k.read(r.cid)!.peer, 0, 'client unbound');
    t.equal(k.read(r.cid)!.mode, Mode.KERNEL, 'client stays in the kernel');
    const after = k.counters();
    t.equal(after.transactions - before.transactions, 1n, 'one transaction counted');
    t.ok(after.clientBytes - before.clientBytes >= BigInt(q1.length + q2.length));
    t.equal(r.cpx.length + r.spx.length, 0, 'proxy-side sockets read nothing');
  });

  t.test('pipelining: two Queries, one Z I does not release', async (t) => {
    const r = await rig(k);
    t.teardown(() => r.close());
    t.ok(k.serverToIdle(r.sid, 0n));
    t.ok(k.clientToKernel(r.cid, 0n));
    const qq = Buffer.concat([Q('select 1'), Q('select 2')]);
    r.app.sock.write(qq);
    await until(() => r.pg.length >= qq.length, 'both queries');
    t.equal(k.read(r.cid)!.outstanding, 2);
    r.pg.sock.write(Buffer.concat([C('SELECT 1'), Z('I')]));
    await until(() => r.app.length >= 14, 'first response');
    await settle();
    t.equal(k.read(r.sid)!.mode, Mode.BOUND, 'still bound with one Query outstanding');
    t.equal(k.read(r.cid)!.outstanding, 1);
    r.pg.sock.write(Buffer.concat([C('SELECT 1'), Z('I')]));
    await until(() => k.read(r.sid)!.mode === Mode.IDLE, 'release after the second Z');
    t.equal(k.read(r.cid)!.peer, 0);
    t.equal(r.cpx.length + r.spx.length, 0, 'proxy-side sockets read nothing');
  });

  t.test('a Query sent without its Sync keeps the server (tail open)', async (t) => {
    const r = await rig(k);
    t.teardown(() => r.close());
    t.ok(k.serverToIdle(r.sid, 0n));
    t.ok(k.clientToKernel(r.cid, 0n));
    const batch = Buffer.concat([Q('select 1'), msg('P', '\0select 2\0\0\0')]); // Parse after the Query, no Sync yet
    r.app.sock.write(batch);
    await until(() => r.pg.length >= batch.length, 'batch');
    r.pg.sock.write(Buffer.concat([C('SELECT 1'), Z('I')]));
    await until(() => r.app.length >= 14, 'response');
    await settle();
    t.equal(k.read(r.sid)!.mode, Mode.BOUND, 'not released: the next message went to this server');
    r.app.sock.write(S());
    await until(() => r.pg.length >= batch.length + 5, 'sync to the same server');
    r.pg.sock.write(Z('I'));
    await until(() => k.read(r.sid)!.mode === Mode.IDLE, 'release after the Sync is answered');
  });

  t.test('no idle server: the client falls back to user space', async (t) => {
    const r = await rig(k);
    t.teardown(() => r.close());
    const before = k.counters();
    t.ok(k.clientToKernel(r.cid, 0n));
    const q = Q('select 1');
    r.app.sock.write(q);
    await until(() => r.cpx.length >= q.length, 'query at the proxy-side client socket');
    t.same(r.cpx.bytes, q, 'bytes reach user space in order');
    t.equal(r.pg.length, 0, 'nothing reached the server');
    const st = k.read(r.cid)!;
    t.equal(st.mode, Mode.USER);
    t.equal(st.passed, BigInt(q.length), 'passed bytes counted');
    const after = k.counters();
    t.equal(after.fallbacks.no_idle_server - before.fallbacks.no_idle_server, 1n, 'counted as no_idle_server');
    // CAS fails while Node has not accounted for the passed bytes
    t.notOk(k.clientToKernel(r.cid, 0n), 'clientToKernel refuses with unread passed bytes');
    t.ok(k.clientToKernel(r.cid, BigInt(r.cpx.length)), 'and succeeds once they are read');
    // a later skb in USER mode is counted too
    t.ok(k.clientToUser(r.cid), 'back to user (unbound)');
    r.app.sock.write(q);
    await until(() => r.cpx.length >= 2 * q.length, 'second query in user space');
    t.equal(k.read(r.cid)!.passed, BigInt(2 * q.length));
  });

  t.test('popIdle takes a server out of the kernel; stale entries are skipped', async (t) => {
    const r = await rig(k);
    t.teardown(() => r.close());
    t.ok(k.serverToIdle(r.sid, 0n));
    t.ok(k.idleCount(r.pool) >= 1);
    t.equal(k.popIdle(r.pool), r.sid);
    t.equal(k.read(r.sid)!.mode, Mode.USER);
    t.equal(k.popIdle(r.pool), 0, 'empty');
    t.notOk(k.serverToIdle(r.sid, 5n), 'wrong byte count refused');
    t.ok(k.serverToIdle(r.sid, 0n));
    // server sends unsolicited bytes while idle: user space takes it, stack entry goes stale
    const n = msg('A', Buffer.concat([Buffer.from([0, 0, 0, 1]), Buffer.from('ch\0hi\0')]));
    const events: unknown[] = [];
    k.onEvent((e) => events.push(e));
    r.pg.sock.write(n);
    await until(() => r.spx.length >= n.length, 'async bytes at the proxy-side server socket');
    t.equal(k.read(r.sid)!.mode, Mode.USER, 'server_async: server back in user space');
    t.equal(k.read(r.sid)!.passed, BigInt(n.length));
    await until(() => events.some((e) => (e as { type: string }).type === 'server_to_user'), 'server_to_user event');
    t.equal(k.popIdle(r.pool), 0, 'stale entry skipped');
  });

  t.test('ParameterStatus while bound hands both to user space at Z I', async (t) => {
    const r = await rig(k);
    t.teardown(() => r.close());
    const events: Array<{ type: string; client?: number; server?: number }> = [];
    k.onEvent((e) => events.push(e));
    t.ok(k.serverToIdle(r.sid, 0n));
    t.ok(k.clientToKernel(r.cid, 0n));
    // a function that SETs: a plain SET would not reach the server from the kernel (ebpf/inspect.h)
    r.app.sock.write(Q('select app.use_utc()'));
    await until(() => r.pg.length > 0, 'set at the server');
    const resp = Buffer.concat([C('SET'), PS('TimeZone', 'UTC'), Z('I')]);
    r.pg.sock.write(resp);
    await until(() => r.app.length >= resp.length, 'response');
    t.same(r.app.take(), resp, 'response still delivered to the client');
    await until(() => events.some((e) => e.type === 'params_changed'), 'params_changed event');
    t.same(
      events.find((e) => e.type === 'params_changed'),
      { type: 'params_changed', client: r.cid, server: r.sid },
    );
    t.equal(k.read(r.cid)!.mode, Mode.USER);
    t.equal(k.read(r.cid)!.peer, 0);
    t.ok(k.read(r.cid)!.flags & 1, 'PARAMS_CHANGED flag readable by user space');
    t.equal(k.read(r.sid)!.mode, Mode.USER);
    t.equal(k.read(r.sid)!.frame.remaining + k.read(r.sid)!.frame.hdrLen, 0, 'server handed over on a message boundary');
    t.ok(k.clientToKernel(r.cid, 0n), 'client can go back to the kernel (flag reset)');
    t.equal(k.read(r.cid)!.flags, 0);
  });

  t.test('Terminate while unbound goes to user space', async (t) => {
    const r = await rig(k);
    t.teardown(() => r.close());
    const before = k.counters();
    t.ok(k.clientToKernel(r.cid, 0n));
    r.app.sock.write(msg('X'));
    await until(() => r.cpx.length >= 5, 'terminate at the proxy');
    t.equal(k.counters().fallbacks.terminate - before.fallbacks.terminate, 1n);
    t.equal(k.read(r.cid)!.mode, Mode.USER);
  });

  t.test('takeBound hands a bound server to user space', async (t) => {
    const r = await rig(k);
    t.teardown(() => r.close());
    t.ok(k.serverToIdle(r.sid, 0n));
    t.ok(k.clientToKernel(r.cid, 0n));
    r.app.sock.write(Q('begin'));
    await until(() => r.pg.length > 0, 'begin at the server');
    r.pg.sock.write(msg('D', Buffer.alloc(20)).subarray(0, 9)); // half a DataRow
    await until(() => r.app.length >= 9, 'partial row at the client');
    t.equal(k.takeBound(r.cid), r.sid);
    const s = k.read(r.sid)!;
    t.equal(s.mode, Mode.USER);
    t.equal(s.peer, 0);
    t.equal(s.frame.curType, 'D'.charCodeAt(0), 'framing position tells user space where it is');
    t.equal(s.frame.remaining, 20 - 4, 'rest of the DataRow body still to come');
    t.equal(k.read(r.cid)!.mode, Mode.USER);
    t.equal(k.takeBound(r.cid), 0, 'idempotent');
    r.pg.sock.write(Buffer.alloc(16));
    await until(() => r.spx.length >= 16, 'the rest now arrives in user space');
  });

  t.test('many messages in big skbs are all framed', async (t) => {
    const r = await rig(k);
    t.teardown(() => r.close());
    t.ok(k.serverToIdle(r.sid, 0n));
    t.ok(k.clientToKernel(r.cid, 0n));
    const n = 13000;
    const syncs = Buffer.concat(Array.from({ length: n }, () => S()));
    r.app.sock.write(syncs);
    await until(() => r.pg.length >= syncs.length, 'all syncs at the server');
    t.equal(k.read(r.cid)!.outstanding, n, 'every Sync counted');
    // one write of many tiny messages from the server
    const rows = Buffer.concat(Array.from({ length: 20000 }, () => msg('D', Buffer.from([0, 0]))));
    r.pg.sock.write(rows);
    await until(() => r.app.length >= rows.length, 'rows at the client');
    const s = k.read(r.sid)!;
    t.equal(s.frame.remaining + s.frame.hdrLen, 0, 'server framing ends on a boundary');
    t.equal(k.counters().fallbacks.frame_error, 0n);
    t.equal(r.cpx.length + r.spx.length, 0);
  });

  t.test('in-flight bound: a client that does not read gets the pair handed to user space', async (t) => {
    const limit = 256 * 1024;
    const r = await rig(k, 'transaction', limit);
    t.teardown(() => r.close());
    const events: Array<{ type: string; client?: number; server?: number }> = [];
    k.onEvent((e) => events.push(e));
    t.ok(k.serverToIdle(r.sid, 0n));
    t.ok(k.clientToKernel(r.cid, 0n));
    r.app.sock.write(Q('select big'));
    await until(() => r.pg.length > 0, 'query at the server');
    r.app.sock.pause(); // the client application stops reading
    const row = msg('D', Buffer.alloc(8192 - 5, 0x61));
    const total = 2048; // 16 MiB of DataRows
    let written = 0;
    const writeMore = () => {
      while (written < total) {
        written++;
        if (!r.pg.sock.write(row)) return r.pg.sock.once('drain', writeMore);
      }
    };
    writeMore();
    await until(() => events.some((e) => e.type === 'inflight_limit'), 'inflight_limit event', 10000);
    const ev = events.find((e) => e.type === 'inflight_limit')!;
    t.same({ ...ev, inflight: undefined }, { type: 'inflight_limit', client: r.cid, server: r.sid, inflight: undefined });
    t.comment(`in flight at hand-over: ${(ev as { inflight?: number }).inflight}`);
    const c = k.read(r.cid)!;
    t.equal(c.mode, Mode.USER, 'client handed to user space');
    t.ok(c.flags & 4, 'SLOW flag set');
    t.equal(k.takeBound(r.cid), r.sid, 'takeBound returns the server');
    await until(() => r.spx.length > 0, 'server bytes now reach user space');
    const redirected = Number(c.redirected);
    t.ok(redirected < total * row.length, `kernel redirected ${redirected} of ${total * row.length} bytes`);
    // Everything the kernel redirected reaches the client, in order, once it reads again.
    r.app.sock.resume();
    await until(() => r.app.length >= redirected, 'kernel-queued bytes at the client', 10000);
    const got = r.app.take();
    t.equal(got.length, redirected, 'no more than what was redirected');
    const stream = Buffer.concat([r.pg.bytes.length ? Buffer.alloc(0) : Buffer.alloc(0), ...Array.from({ length: Math.ceil(redirected / row.length) }, () => row)]);
    t.ok(got.equals(stream.subarray(0, redirected)), 'the redirected bytes are the stream prefix');
    // user space got the rest, starting right after the redirected prefix
    await until(() => r.spx.length + redirected >= total * row.length, 'rest of the stream in user space', 10000);
    const rest = r.spx.bytes;
    const full = Buffer.concat(Array.from({ length: total }, () => row));
    t.ok(rest.equals(full.subarray(redirected)), 'user space gets exactly the suffix');
  });

  t.test('in-flight bound: acked bytes are subtracted (paced producer, reading client)', async (t) => {
    // A redirect never slows its producer: a server that writes faster than the kernel's
    // redirect worker sends piles bytes up even for a client that reads, and the bound
    // then hands over too (docs/kernel-path.md). Paced writes show the acks are counted.
    const limit = 256 * 1024;
    const r = await rig(k, 'transaction', limit);
    t.teardown(() => r.close());
    const before = k.counters();
    t.ok(k.serverToIdle(r.sid, 0n));
    t.ok(k.clientToKernel(r.cid, 0n));
    r.app.sock.write(Q('select big'));
    await until(() => r.pg.length > 0, 'query at the server');
    const row = msg('D', Buffer.alloc(8192 - 5, 0x62));
    const total = 256; // 2 MiB, 8 times the bound
    for (let i = 0; i < total; i++) {
      r.pg.sock.write(row);
      if (i % 4 === 3) await settle(2);
    }
    r.pg.sock.write(Buffer.concat([C('SELECT 256'), Z('I')]));
    await until(() => r.app.length >= total * row.length + 22 || r.spx.length > 0, 'whole response at the client', 20000);
    t.equal(k.counters().fallbacks.inflight_limit - before.fallbacks.inflight_limit, 0n, 'never limited');
    t.equal(r.spx.length, 0, 'all through the kernel');
    t.equal(r.app.length, total * row.length + 22);
    await until(() => k.read(r.sid)!.mode === Mode.IDLE, 'released at the end');
  });

  t.test('session pool: bound at the first Query, kept across Z I', async (t) => {
    const r = await rig(k, 'session');
    t.teardown(() => r.close());
    t.ok(k.serverToIdle(r.sid, 0n));
    t.ok(k.clientToKernel(r.cid, 0n));
    for (let i = 0; i < 3; i++) {
      r.app.sock.write(Q(`select ${i}`));
      await until(() => r.pg.length > 0, 'query');
      r.pg.take();
      r.pg.sock.write(Buffer.concat([C('SELECT 1'), Z('I')]));
      await until(() => r.app.length >= 20, 'response');
      r.app.take();
      t.equal(k.read(r.sid)!.mode, Mode.BOUND, `still bound after transaction ${i}`);
    }
    t.notOk(k.clientToUser(r.cid), 'clientToUser refuses while bound');
    t.equal(k.takeBound(r.cid), r.sid);
    t.ok(k.clientToUser(r.cid), 'unbound now');
  });

  t.test('bound server gone: the client falls back (target_missing)', async (t) => {
    const r = await rig(k);
    t.teardown(() => r.close());
    const before = k.counters();
    t.ok(k.serverToIdle(r.sid, 0n));
    t.ok(k.clientToKernel(r.cid, 0n));
    r.app.sock.write(Q('begin'));
    await until(() => r.pg.length > 0, 'begin');
    r.pg.sock.write(Buffer.concat([C('BEGIN'), Z('T')]));
    await until(() => r.app.length >= 16, 'response');
    k.unregister(r.sid);
    k.unregister(r.sid); // idempotent
    t.equal(k.read(r.sid), null);
    const q = Q('select 1');
    r.app.sock.write(q);
    await until(() => r.cpx.length >= q.length, 'query passed to user space');
    t.equal(k.counters().fallbacks.target_missing - before.fallbacks.target_missing, 1n);
    t.equal(k.read(r.cid)!.mode, Mode.USER);
    t.equal(k.read(r.cid)!.peer, r.sid, 'still names the dead server for user space');
  });

  // ---- named statements and session state (ebpf/inspect.h, test/ebpf-inspect.test.ts) ----
  const Pn = (name: string, sql: string) => msg('P', Buffer.from(`${name}\0${sql}\0\0\0`, 'latin1'));
  const Bu = () => msg('B', Buffer.from([0, 0, 0, 0, 0, 0, 0, 0]));
  const Ex = () => msg('E', Buffer.from([0, 0, 0, 0, 0]));

  t.test('a named statement at the start of a transaction goes to user space before binding', async (t) => {
    const r = await rig(k);
    t.teardown(() => r.close());
    const before = k.counters();
    t.ok(k.serverToIdle(r.sid, 0n));
    t.ok(k.clientToKernel(r.cid, 0n));
    const req = Buffer.concat([Pn('s1', 'select 1'), S()]);
    r.app.sock.write(req);
    await until(() => r.cpx.length >= req.length, 'request passed to user space');
    t.same(r.cpx.take(), req);
    t.equal(k.counters().fallbacks.named_statement - before.fallbacks.named_statement, 1n);
    t.equal(k.read(r.cid)!.mode, Mode.USER);
    t.equal(k.read(r.cid)!.peer, 0, 'no server bound');
    t.equal(k.read(r.sid)!.mode, Mode.IDLE, 'the server stays idle in the kernel');
    t.equal(r.pg.length, 0);
  });

  t.test('session pools: SET stays in the kernel (the client owns its server)', async (t) => {
    const r = await rig(k, 'session');
    t.teardown(() => r.close());
    const before = k.counters();
    t.ok(k.serverToIdle(r.sid, 0n));
    t.ok(k.clientToKernel(r.cid, 0n));
    const q = Q('SET search_path = x');
    r.app.sock.write(q);
    await until(() => r.pg.length >= q.length, 'SET at the server');
    t.same(r.pg.take(), q);
    t.equal(k.counters().fallbacks.session_state - before.fallbacks.session_state, 0n);
  });

  t.test('SET mid-transaction hands the pair over with what the kernel still owes', async (t) => {
    const r = await rig(k);
    t.teardown(() => r.close());
    const events: Array<Record<string, unknown>> = [];
    k.onEvent((e) => events.push(e));
    const before = k.counters();
    t.ok(k.serverToIdle(r.sid, 0n));
    t.ok(k.clientToKernel(r.cid, 0n));
    r.app.sock.write(Q('begin'));
    await until(() => r.pg.length > 0, 'begin');
    r.pg.take();
    const begun = Buffer.concat([C('BEGIN'), Z('T')]);
    r.pg.sock.write(begun);
    await until(() => r.app.length >= begun.length, 'begin answered');
    r.app.take();
    const ext = Buffer.concat([Pn('', 'select 1'), Bu(), Ex()]); // no Sync yet
    r.app.sock.write(ext);
    await until(() => r.pg.length >= ext.length, 'unsynced batch at the server');
    r.pg.take();
    const part = Buffer.concat([msg('1'), msg('2')]);
    r.pg.sock.write(part);
    await until(() => r.app.length >= part.length, 'ParseComplete, BindComplete');
    t.same(r.app.take(), part);
    t.equal(k.read(r.cid)!.tailMessages, 3, 'P B E forwarded after the last Query');
    t.equal(k.read(r.cid)!.tailAnswered, 2, '1 and 2 forwarded since the last Z');

    const set = Buffer.concat([Q('SET search_path = x')]);
    r.app.sock.write(set);
    await until(() => r.cpx.length >= set.length, 'SET passed to user space');
    t.same(r.cpx.take(), set);
    t.equal(r.pg.length, 0, 'the kernel did not forward it');
    await until(() => events.some((e) => e.type === 'handoff'), 'handoff event');
    t.same(events.find((e) => e.type === 'handoff'), { type: 'handoff', client: r.cid, server: r.sid, reason: 'session_state' });
    t.equal(k.counters().fallbacks.session_state - before.fallbacks.session_state, 1n);
    const c = k.read(r.cid)!;
    t.same({ mode: c.mode, peer: c.peer, handoff: (c.flags & 16) !== 0, outstanding: c.outstanding, tailOpen: c.tailOpen },
      { mode: Mode.USER, peer: r.sid, handoff: true, outstanding: 0, tailOpen: 1 });
    t.equal(k.read(r.sid)!.mode, Mode.USER, 'the server is user space\'s too');
    t.notOk(k.addOutstanding(r.cid, r.sid, 1, false), 'no ADD during a hand-over: user space adopts the server');
    t.notOk(k.clientToKernelBound(r.cid, BigInt(set.length)), 'nor a bound flip back');
    // the rest of the answer reaches user space, not the client
    const rest = Buffer.concat([C('SELECT 1')]);
    r.pg.sock.write(rest);
    await until(() => r.spx.length >= rest.length, 'rest of the answer at user space');
    t.same(r.spx.take(), rest);
    t.equal(r.app.length, 0);
    t.equal(k.read(r.sid)!.applying, false);
    t.equal(k.takeBound(r.cid), r.sid, 'user space takes the server');
    t.ok(k.serverRedirectsFlushed(r.sid, 0n), 'what the kernel queued to the server has been sent');
  });


  t.test('per-pool stats: transactions, requests, bytes both ways and their time', async (t) => {
    const r = await rig(k);
    t.teardown(() => r.close());
    const before = k.poolStats(r.pool);
    const t0 = process.hrtime.bigint();
    t.ok(k.serverToIdle(r.sid, 0n));
    t.ok(k.clientToKernel(r.cid, 0n));
    let toServer = 0;
    let toClient = 0;
    const ask = async (b: Buffer) => {
      toServer += b.length;
      const want = r.pg.length + b.length;
      r.app.sock.write(b);
      await until(() => r.pg.length >= want, 'request at the server');
    };
    const answer = async (b: Buffer) => {
      toClient += b.length;
      const want = r.app.length + b.length;
      r.pg.sock.write(b);
      await until(() => r.app.length >= want, 'answer at the client');
    };
    // 1: BEGIN; ...; COMMIT, two requests, the server taking ~30 ms and ~20 ms
    await ask(Q('begin; select 1'));
    await settle(30);
    await answer(Buffer.concat([C('SELECT 1'), Z('T')]));
    await ask(Q('commit'));
    await settle(20);
    await answer(Buffer.concat([C('COMMIT'), Z('I')]));
    t.same(k.clocks(r.cid), { xactNs: null, queryNs: null }, 'clocks stopped at Z I');
    // 2: two pipelined Queries: one transaction (nothing outstanding only at the second Z)
    await ask(Buffer.concat([Q('select 1'), Q('select 2')]));
    await answer(Buffer.concat([C('SELECT 1'), Z('I')]));
    t.ok(k.clocks(r.cid).queryNs !== null, 'the second request is still timed');
    await answer(Buffer.concat([C('SELECT 1'), Z('I')]));
    // 3: extended protocol: Parse, Bind, Execute, Sync is one request
    await ask(Buffer.concat([msg('P', '\0select 3\0\0\0'), msg('B', '\0\0\0\0\0\0\0\0'), msg('E', '\0\0\0\0\0'), S()]));
    await answer(Buffer.concat([msg('1'), msg('2'), C('SELECT 1'), Z('I')]));
    const wall = process.hrtime.bigint() - t0;
    const after = k.poolStats(r.pool);
    t.equal(after.xacts - before.xacts, 3n, 'transactions');
    t.equal(after.queries - before.queries, 5n, 'requests (Query, Sync)');
    t.equal(after.clientBytes - before.clientBytes, BigInt(toServer), 'bytes client -> server, exactly');
    t.equal(after.serverBytes - before.serverBytes, BigInt(toClient), 'bytes server -> client, exactly');
    const xns = after.xactNs - before.xactNs;
    const qns = after.queryNs - before.queryNs;
    t.ok(qns >= 50_000_000n, `request time covers the server's 50 ms (${qns} ns)`);
    t.ok(qns <= xns, `request time <= transaction time (${qns} <= ${xns} ns)`);
    t.ok(xns <= wall, `transaction time <= the test's wall time (${xns} <= ${wall} ns)`);
    t.equal(r.cpx.length + r.spx.length, 0, 'proxy-side sockets read nothing');
  });

  t.test('per-pool stats: a request bound from user space is timed from the bind', async (t) => {
    const r = await rig(k);
    t.teardown(() => r.close());
    const before = k.poolStats(r.pool);
    const q = Q('select pg_sleep(0.02)');
    t.ok(k.bind(r.cid, r.sid, 0n, 1, false), 'bind');
    r.spx.sock.write(q); // user space writes the request it read (and counted)
    await until(() => r.pg.length >= q.length, 'request at the server');
    await settle(20);
    const resp = Buffer.concat([C('SELECT 1'), Z('I')]);
    r.pg.sock.write(resp);
    await until(() => r.app.length >= resp.length, 'answer redirected to the client');
    await until(() => k.read(r.sid)!.mode === Mode.IDLE, 'released in the kernel');
    const after = k.poolStats(r.pool);
    t.equal(after.xacts - before.xacts, 1n, 'the kernel saw its end: one transaction');
    t.equal(after.queries - before.queries, 0n, 'its request went through user space, which counts it');
    t.equal(after.clientBytes - before.clientBytes, 0n);
    t.equal(after.serverBytes - before.serverBytes, BigInt(resp.length));
    t.ok(after.xactNs - before.xactNs >= 20_000_000n, `timed from the bind (${after.xactNs - before.xactNs} ns)`);
  });

  t.test('retire (RECONNECT): an idle server comes out now, a bound one at its release', async (t) => {
    const events: Array<{ type: string; pool?: number; server?: number }> = [];
    k.onEvent((e) => events.push(e));
    const idle = await rig(k);
    t.teardown(() => idle.close());
    t.ok(k.serverToIdle(idle.sid, 0n));
    t.equal(k.retire(idle.sid), 'taken', 'idle: taken out');
    t.equal(k.read(idle.sid)!.mode, Mode.USER);
    t.equal(k.popIdle(idle.pool), 0, 'its stack entry is stale');
    t.equal(k.retire(idle.sid), 'user', 'a USER server is user space\'s already');

    const r = await rig(k);
    t.teardown(() => r.close());
    const before = k.counters();
    t.ok(k.serverToIdle(r.sid, 0n));
    t.ok(k.clientToKernel(r.cid, 0n));
    const q = Q('select 1');
    r.app.sock.write(q);
    await until(() => r.pg.length >= q.length, 'bound: request at the server');
    t.equal(k.retire(r.sid), 'at_release', 'bound: marked');
    t.equal(k.read(r.sid)!.mode, Mode.BOUND, 'still serving its client');
    const resp = Buffer.concat([C('SELECT 1'), Z('I')]);
    r.pg.sock.write(resp);
    await until(() => r.app.length >= resp.length, 'answer at the client');
    t.same(r.app.bytes, resp, 'the client got its answer');
    await until(() => events.some((e) => e.type === 'server_retired' && e.server === r.sid), 'server_retired event');
    t.same(events.find((e) => e.type === 'server_retired'), { type: 'server_retired', pool: r.pool, server: r.sid });
    t.equal(k.read(r.sid)!.mode, Mode.USER, 'released to user space, not to the idle stack');
    t.equal(k.read(r.cid)!.peer, 0, 'client unbound');
    t.equal(k.read(r.cid)!.mode, Mode.KERNEL, 'client stays in the kernel');
    t.equal(k.popIdle(r.pool), 0, 'nothing to pop');
    t.equal(k.counters().transactions - before.transactions, 1n, 'the transaction counted');
  });

  // KernelPath runs every control operation on one reused context buffer (runSyscall):
  // each op must see only its own arguments and return only its own results.
  t.test('control operations on the reused context: no result carries over', async (t) => {
    const r = await rig(k);
    t.teardown(() => r.close());
    const c = k.read(r.cid)!;
    t.equal(c.role, 'client');
    t.equal(c.poolId, r.pool);
    t.equal(k.read(424242), null, 'an absent id reads as absent right after a present one');
    const s = k.read(r.sid)!;
    t.equal(s.role, 'server', 'not the last read\'s role');
    t.equal(s.peer, 0);
    t.ok(k.serverToIdle(r.sid, 0n));
    t.equal(k.takeBound(r.cid), 0, 'an unbound client has no server to take, whatever the last op returned');
    t.equal(k.popIdle(r.pool), r.sid);
    t.equal(k.popIdle(r.pool), 0, 'the last pop\'s id is not returned again');
    t.equal(k.read(r.sid)!.mode, Mode.USER);
    const addon = loadAddon();
    const obj = addon.load(BPF_OBJ, { programs: ['pgs_verdict', 'pgs_ctl'] });
    try {
      t.throws(() => obj.programFd('pgs_verdict'), /not a syscall program/, 'only syscall programs run in place');
      t.throws(() => obj.programFd('no_such_program'), /no program named/);
    } finally {
      obj.close();
    }
    t.throws(() => obj.runSyscall(0, Buffer.alloc(8)), /closed/, 'a closed object runs nothing');
  });

  // The count of lost mirror copies is read from libbpf's mapping of the .bss, in bounds only.
  t.test('globalU64: the mapped .bss, read in bounds, not after close', async (t) => {
    t.equal(k.mirrorLosses(), 0, 'no copy lost (no client mirrored)');
    const addon = loadAddon();
    const obj = addon.load(BPF_OBJ, { programs: ['pgs_ctl'] });
    try {
      t.equal(obj.globalU64(0), 0, 'pgs_mirror_losses starts at 0');
      t.throws(() => obj.globalU64(8), /outside the \.bss of 8 bytes/, 'past the end is refused');
      t.throws(() => obj.globalU64(4), /outside/, 'an unaligned read is refused');
    } finally {
      obj.close();
    }
    t.throws(() => obj.globalU64(0), /closed/, 'a closed object reads nothing');
  });

  // The proxy loads (and so has the kernel verify) only the programs it runs: not the tc
  // framing wrapper, which only the framing tests run.
  t.test("load's programs option: only the named programs are loaded", async (t) => {
    t.throws(() => k.frameChunks('client', [Buffer.from('Q')]), /frameTest: true/, 'a KernelPath opened as the proxy opens it has no framing wrapper');
    const addon = loadAddon();
    const obj = addon.load(BPF_OBJ, { programs: ['pgs_ctl'] });
    try {
      t.ok(obj.programFd('pgs_ctl') > 0, 'the named program is loaded');
      t.throws(() => obj.progTestRun('pgs_frame_test', Buffer.alloc(64), null), /pgs_frame_test was not loaded/, 'the others are not');
      t.throws(() => obj.attachSockmapVerdict('pgs_verdict', 'socks'), /pgs_verdict was not loaded/);
    } finally {
      obj.close();
    }
    t.throws(() => addon.load(BPF_OBJ, { programs: ['pgs_ctl', 'no_such_program'] }), /no program named no_such_program/, 'an unknown name is refused');
  });

  t.test('bad arguments', async (t) => {
    t.throws(() => k.registerClient(0, 1, 1), /1\.\.2\^32-1/);
    t.throws(() => k.configurePool(1000, { mode: 'session', maxIdle: 1 }), RangeError);
    t.equal(k.read(424242), null);
    t.notOk(k.clientToKernel(424242, 0n));
    t.equal(k.popIdle(249), 0, 'unconfigured pool: none');
  });
}

// The C/TypeScript ABI has one source, ebpf/pgsplice.h: src/kernel/kernel-abi.generated.ts
// is generated from the built object's BTF (scripts/gen-kernel-abi.mjs). This test
//  - regenerates it from ebpf/pgsplice.bpf.o in a temp dir and fails when the committed
//    file differs (someone changed the header and did not rebuild, or edited the output);
//  - decodes a patterned buffer with every decoder in kernel-abi.ts and compares each field
//    with a reading driven by the BTF offsets and widths (catches a 32-bit read of a 64-bit
//    field, or a decoder applied to the wrong struct);
//  - checks the maps hold the structs the decoders are used for;
//  - compiles a copy of the object with a field added and checks the generator sees it.
import t from 'tap';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { execFileSync } from 'child_process';
import * as abi from '../src/kernel/kernel-abi';
import { ENUMS, MAPS, STRUCTS } from '../src/kernel/kernel-abi.generated';

const root = path.join(__dirname, '..');
const generator = path.join(root, 'scripts', 'gen-kernel-abi.mjs');
const object = path.join(root, 'ebpf', 'pgsplice.bpf.o');
const committed = path.join(root, 'src', 'kernel', 'kernel-abi.generated.ts');

function generateFrom(obj: string, dir: string): string {
  const out = path.join(dir, 'kernel-abi.generated.ts');
  execFileSync(process.execPath, [generator, obj, out], { stdio: 'pipe' });
  return fs.readFileSync(out, 'utf8');
}

type Struct = { size: number; fields: Record<string, { offset: number; size: number; kind: string }> };

/** A field read the way BTF describes it: width and signedness from the object. */
function btfRead(b: Buffer, struct: Struct, field: string, base = 0): number | bigint {
  const f = struct.fields[field];
  if (!f) throw new Error(`no field ${field}`);
  const at = base + f.offset;
  if (f.kind === 'u' && f.size === 8) return b.readBigUInt64LE(at);
  if (f.kind === 's' && f.size === 8) return b.readBigInt64LE(at);
  if (f.kind === 'u' && f.size === 4) return b.readUInt32LE(at);
  if (f.kind === 's' && f.size === 4) return b.readInt32LE(at);
  if (f.kind === 'u' && f.size === 1) return b.readUInt8(at);
  throw new Error(`${field}: kind ${f.kind} size ${f.size}`);
}

function patterned(size: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 37 + 11) & 0xff;
  return b;
}

/** Decoded TS value vs the BTF reading of the C field it mirrors. */
function checkDecoded(
  t: Tap.Test,
  what: string,
  decoded: Record<string, unknown>,
  b: Buffer,
  struct: Struct,
  fields: Record<string, string>,
  base = 0,
): void {
  for (const [ts, c] of Object.entries(fields)) {
    const v = decoded[ts];
    const expect = btfRead(b, struct, c, base);
    t.equal(typeof v === 'boolean' ? (v ? 1 : 0) : v, typeof v === 'boolean' ? (expect !== 0 ? 1 : 0) : expect, `${what}.${ts} = ${c}`);
  }
}

function checkFrame(t: Tap.Test, what: string, f: abi.Frame, b: Buffer, base: number): void {
  const F = STRUCTS.pgs_frame as Struct;
  checkDecoded(t, what, f as unknown as Record<string, unknown>, b, F, { remaining: 'remaining', curType: 'cur_type', hdrLen: 'hdr_len' }, base);
  const at = base + F.fields.hdr.offset;
  t.same(f.hdr, b.subarray(at, at + Math.min(f.hdrLen, F.fields.hdr.size)), `${what}.hdr`);
}

t.test('the committed module is what the built object generates', async (t) => {
  t.ok(fs.existsSync(object), 'ebpf/pgsplice.bpf.o is built (make -C ebpf)');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-abi-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const fresh = generateFrom(object, dir);
  t.equal(fs.readFileSync(committed, 'utf8'), fresh, 'src/kernel/kernel-abi.generated.ts is up to date (run make -C ebpf)');
});

t.test('every decoder reads its fields at the BTF offsets and widths', async (t) => {
  const conn = patterned(abi.SIZEOF.conn);
  const C = STRUCTS.pgs_conn as Struct;
  const dc = abi.decodeConn(conn);
  checkDecoded(t, 'conn', dc as unknown as Record<string, unknown>, conn, C, {
    word: 'word', peer: 'peer', outstanding: 'outstanding', tailOpen: 'tail_open', flags: 'flags', poolId: 'pool_id',
    role: 'role', redirected: 'redirected', ackedBase: 'acked_base', xactStart: 'xact_start', queryStart: 'query_start',
    tailMessages: 'tail_msgs', tailAnswered: 'tail_answered', applying: 'applying',
  });
  checkFrame(t, 'conn.frame', dc.frame, conn, C.fields.frame.offset);

  const ctl = patterned(abi.SIZEOF.ctl);
  const X = STRUCTS.pgs_ctl as Struct;
  const dx = abi.decodeCtl(ctl);
  checkDecoded(t, 'ctl', dx as unknown as Record<string, unknown>, ctl, X, {
    ret: 'ret', word: 'word', peer: 'peer', outstanding: 'outstanding', tailOpen: 'tail_open', flags: 'flags', role: 'role',
    poolId: 'pool_id', redirected: 'redirected', tailMessages: 'tail_msgs', tailAnswered: 'tail_answered', applying: 'applying',
  });
  checkFrame(t, 'ctl.frame', dx.frame, ctl, X.fields.frame.offset);

  const pool = patterned(abi.SIZEOF.pool);
  checkDecoded(t, 'pool', abi.decodePool(pool), pool, STRUCTS.pgs_pool as Struct, {
    mode: 'mode', waiters: 'waiters', inflightLimit: 'inflight_limit', idleCount: 'idle_count',
  });

  const ps = patterned(abi.SIZEOF.poolStats);
  checkDecoded(t, 'pool_stats', abi.decodePoolStats(ps) as unknown as Record<string, unknown>, ps, STRUCTS.pgs_pool_stats as Struct, {
    xacts: 'xacts', queries: 'queries', clientBytes: 'client_bytes', serverBytes: 'server_bytes', xactNs: 'xact_ns', queryNs: 'query_ns',
  });

  const ev = patterned(abi.SIZEOF.event);
  checkDecoded(t, 'event', abi.decodeEvent(ev) as unknown as Record<string, unknown>, ev, STRUCTS.pgs_event as Struct, {
    type: 'type', a: 'a', b: 'b', c: 'c',
  });

  const ft = patterned(abi.SIZEOF.frameTest);
  const T = STRUCTS.pgs_frame_test as Struct;
  const dt = abi.decodeFrameTest(ft);
  checkDecoded(t, 'frame_test', dt as unknown as Record<string, unknown>, ft, T, {
    role: 'role', nSync: 'n_sync', nQuery: 'n_query', nFunc: 'n_func', nZ: 'n_z', nParam: 'n_param', nMsgs: 'n_msgs',
    nTerm: 'n_term', errors: 'errors', lastTail: 'last_tail', inspect: 'inspect', tailMessages: 'tail_msgs', tailAnswered: 'tail_answered',
  });
  checkFrame(t, 'frame_test.frame', dt.frame, ft, T.fields.frame.offset);
  const z = T.fields.z_status;
  t.equal(dt.zStatus, ft.subarray(z.offset, z.offset + Math.min(dt.nZ, z.size)).toString('latin1'), 'frame_test.zStatus');
});

t.test('every encoder writes its fields at the BTF offsets and widths', async (t) => {
  const C = STRUCTS.pgs_conn as Struct;
  const conn = abi.encodeConn({ role: 2, poolId: 0x01020304, word: 0x0002_0000_0000_1234n, ackedBase: 0x1122334455667788n });
  t.equal(conn.length, C.size);
  t.equal(btfRead(conn, C, 'role'), 2);
  t.equal(btfRead(conn, C, 'pool_id'), 0x01020304);
  t.equal(btfRead(conn, C, 'word'), 0x0002_0000_0000_1234n);
  t.equal(btfRead(conn, C, 'acked_base'), 0x1122334455667788n);

  const P = STRUCTS.pgs_pool as Struct;
  const pool = abi.encodePool({ mode: abi.PoolMode.TRANSACTION, waiters: true, inflightLimit: 8n << 20n, idleCount: -3n });
  t.equal(pool.length, P.size);
  t.equal(btfRead(pool, P, 'mode'), ENUMS.pgs_pool_mode.PGS_POOL_TRANSACTION);
  t.equal(btfRead(pool, P, 'waiters'), 1);
  t.equal(btfRead(pool, P, 'inflight_limit'), 8n << 20n);
  t.equal(btfRead(pool, P, 'idle_count'), -3n);

  const X = STRUCTS.pgs_ctl as Struct;
  const ctl = abi.encodeCtl({ op: abi.Op.BIND, id: 7, pool: 9, expected: 1n << 40n, written: 5n << 33n, sid: 0x80000001, outIn: 3, tailIn: 1 });
  t.equal(ctl.length, X.size);
  const expect: Record<string, number | bigint> = {
    op: ENUMS.pgs_op.PGS_OP_BIND, id: 7, pool: 9, expected: 1n << 40n, written: 5n << 33n, sid: 0x80000001, out_in: 3, tail_in: 1,
  };
  for (const [c, v] of Object.entries(expect)) t.equal(btfRead(ctl, X, c), v, `ctl.${c}`);
  // The reused context buffer (KernelPath.ctl): the last op's results are cleared, not
  // read back as this op's arguments; ctlRetOf reads ret where decodeCtl does.
  const reused = Buffer.alloc(X.size, 0xa5);
  t.same(abi.encodeCtlInto(reused, { op: abi.Op.BIND, id: 7, pool: 9, expected: 1n << 40n, written: 5n << 33n, sid: 0x80000001, outIn: 3, tailIn: 1 }), ctl, 'encodeCtlInto over a used buffer = encodeCtl');
  reused.writeInt32LE(-2, X.fields.ret.offset);
  t.equal(abi.ctlRetOf(reused), -2);
  t.equal(abi.ctlRetOf(reused), abi.decodeCtl(reused).ret, 'ctlRetOf agrees with decodeCtl');

  const T = STRUCTS.pgs_frame_test as Struct;
  const ft = abi.encodeFrameTest(abi.Role.SERVER);
  t.equal(ft.length, T.size);
  t.equal(btfRead(ft, T, 'role'), ENUMS.pgs_role.PGS_ROLE_SERVER);
});

t.test('the maps hold the structs the decoders are used for', async (t) => {
  t.equal(MAPS.conns.value, 'pgs_conn');
  t.equal(MAPS.pools.value, 'pgs_pool');
  t.equal(MAPS.pool_stats.value, 'pgs_pool_stats');
  t.equal(MAPS.frame_test.value, 'pgs_frame_test');
  t.equal(MAPS.stats.maxEntries, abi.STAT_COUNT, 'one stats slot per enum pgs_stat value');
  t.equal(MAPS.stats.valueSize, 8);
  t.equal(MAPS.pools.maxEntries, abi.MAX_POOLS);
  t.equal(MAPS.idle.maxEntries, abi.MAX_POOLS);
  t.equal(MAPS.conns.maxEntries, abi.MAX_CONNS);
  t.equal(MAPS.conns.key, 'u32');
  // every stat index but the counters has a fallback name, and no name is missing
  const fallbacks = Object.entries(abi.Stat).filter(([k]) => k.startsWith('FB_'));
  t.equal(Object.keys(abi.FALLBACK_NAMES).length, fallbacks.length, 'FALLBACK_NAMES names every PGS_ST_FB_* counter');
  for (const [k, v] of fallbacks) t.ok(abi.FALLBACK_NAMES[v], `fallback name for ${k}`);
  // named constants the controller compares with
  t.equal(abi.Mode.USER, 0);
  t.equal(abi.ConnFlags.HANDOFF, ENUMS.pgs_conn_flags.PGS_F_HANDOFF);
});

t.test('a changed header changes the generated module', async (t) => {
  // A copy of ebpf/ with a field added in front of pgs_conn.peer (a u32): the generator must move
  // every later offset, so the committed module no longer matches and the first test fails.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-abi-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const f of fs.readdirSync(path.join(root, 'ebpf'))) {
    if (/\.(c|h|json)$|^Makefile$/.test(f)) fs.copyFileSync(path.join(root, 'ebpf', f), path.join(dir, f));
  }
  const header = path.join(dir, 'pgsplice.h');
  const text = fs.readFileSync(header, 'utf8');
  const marker = 'struct bpf_spin_lock lock;';
  t.ok(text.includes(marker));
  fs.writeFileSync(header, text.replace(marker, `${marker}\n\t__u32 added_for_test;`));
  // -o: the copied word list is current; its generator lives in the tree, not in the copy
  execFileSync('make', ['-s', '-C', dir, '-o', 'session-words.h', 'pgsplice.bpf.o', 'GEN_ABI='], { stdio: 'pipe' });
  const changed = generateFrom(path.join(dir, 'pgsplice.bpf.o'), dir);
  t.not(changed, fs.readFileSync(committed, 'utf8'));
  const peer = /pgs_conn: \{ size: (\d+),[^\n]*?peer: \{ offset: (\d+)/.exec(changed);
  t.ok(peer, 'pgs_conn.peer in the generated text');
  t.equal(Number(peer![2]), STRUCTS.pgs_conn.fields.peer.offset + 4, 'peer moved by the added u32');
  t.ok(Number(peer![1]) > STRUCTS.pgs_conn.size, 'struct grew');
});

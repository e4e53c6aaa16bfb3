// What the kernel path's client verdict hands to user space instead of forwarding it
// (ebpf/inspect.h): named prepared statements and SQL that may change session state.
// Run through the SEC("tc") wrapper of the same code the sk_skb verdict uses.
//
// test/fixtures/session-state-cases.json is shared with user space's session-state
// classifier: { sql, state, kernel: "punt" | "stay" }. Each SQL goes to the kernel as a
// Query and as a Parse of the unnamed statement (alone, and inside an extended batch);
// its `kernel` says what must happen. Then named/unnamed Parse/Bind/Describe/Close, SQL
// split across skbs, and the tail counts user space gets at a hand-over.
// Needs root (CAP_BPF): a KernelPath that can't open fails the test with the reason.
import t from 'tap';
import * as fs from 'fs';
import * as path from 'path';
import { openKernelPath } from './helpers/kernel';

interface Case {
  sql: string;
  state: boolean;
  kernel: 'punt' | 'stay';
  note?: string;
}

const fixture = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'session-state-cases.json'), 'utf8')) as {
  cases: Case[];
};

// ---- frontend messages ----
const cstr = (s: string): Buffer => Buffer.concat([Buffer.from(s, 'utf8'), Buffer.from([0])]);
function msg(type: string, ...body: Buffer[]): Buffer {
  const b = Buffer.concat(body);
  const h = Buffer.alloc(5);
  h.write(type, 0, 'latin1');
  h.writeUInt32BE(b.length + 4, 1);
  return Buffer.concat([h, b]);
}
const i16 = (n: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeInt16BE(n);
  return b;
};
const i32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const Q = (sql: string) => msg('Q', cstr(sql));
const P = (name: string, sql: string) => msg('P', cstr(name), cstr(sql), i16(0));
// Bind with text parameters
const B = (portal: string, stmt: string, params: string[] = []) =>
  msg('B', cstr(portal), cstr(stmt), i16(0), i16(params.length),
    ...params.flatMap((p) => [i32(Buffer.byteLength(p)), Buffer.from(p)]), i16(0));
const D = (kind: 'S' | 'P', name: string) => msg('D', Buffer.from(kind), cstr(name));
const C = (kind: 'S' | 'P', name: string) => msg('C', Buffer.from(kind), cstr(name));
const E = (portal = '') => msg('E', cstr(portal), i32(0));
const S = () => msg('S');

// ---- backend messages ----
const be = (type: string, body = Buffer.alloc(0)) => msg(type, body);
const Z = (status: string) => be('Z', Buffer.from(status));

const kp = openKernelPath(t, { frameTest: true });

if (kp) {
  const k = kp;
  const verdict = (chunks: Buffer[]) => k.frameChunks('client', chunks);
  const want = (kernel: 'punt' | 'stay') => (kernel === 'stay' ? null : 'session_state');

  t.test('fixture: every keyword and every session-state case', async (t) => {
    t.ok(fixture.cases.length >= 60, `${fixture.cases.length} cases`);
    for (const c of fixture.cases) if (c.state) t.equal(c.kernel, 'punt', `state case must punt: ${c.sql}`);
    const all = fixture.cases.map((c) => c.sql.toLowerCase()).join('\n');
    for (const w of ['set ', 'reset', 'listen', 'unlisten', 'prepare', 'deallocate', 'declare', 'discard', 'load',
      'temp ', 'temporary', 'hold', 'set_config', 'pg_advisory_lock(', 'pg_advisory_lock_shared', 'pg_try_advisory_lock(',
      'pg_try_advisory_lock_shared', 'dblink_connect'])
      t.ok(all.includes(w), `a case with ${w.trim()}`);
  });

  t.test('fixture cases as Query, as unnamed Parse, and inside an extended batch', async (t) => {
    for (const c of fixture.cases) {
      const label = `${c.kernel}: ${c.sql.length > 70 ? c.sql.slice(0, 70) + '...' : c.sql}`;
      const q = verdict([Q(c.sql)]);
      t.same({ errors: q.errors, inspect: q.inspect }, { errors: 0, inspect: want(c.kernel) }, `Query ${label}`);
      const p = verdict([P('', c.sql)]);
      t.same({ errors: p.errors, inspect: p.inspect }, { errors: 0, inspect: want(c.kernel) }, `Parse ${label}`);
      // after a harmless statement, in the same skb
      const batch = verdict([Buffer.concat([P('', 'SELECT 1'), B('', ''), E(), P('', c.sql), B('', ''), D('P', ''), E(), S()])]);
      t.equal(batch.inspect, want(c.kernel), `batch ${label}`);
      // The text is lexed 8 bytes at a time where it can be: every alignment gives the same answer.
      const shifted = [1, 2, 3, 4, 5, 6, 7].map((n) => verdict([Q(' '.repeat(n) + c.sql)]).inspect);
      t.same(shifted, shifted.map(() => want(c.kernel)), `Query at every alignment ${label}`);
    }
  });

  t.test('named and unnamed statements and portals', async (t) => {
    // [case, chunks, inspect, statement names the verdict would rewrite in place, the
    // first one, found at the offset and length the verdict reports]: a named Parse and a Close of a named statement go
    // to user space; a Bind or Describe of one stays, its name found (ebpf/statements.h)
    const cases: Array<[string, Buffer[], string | null, number, string?]> = [
      ['Parse named', [P('s1', 'SELECT 1')], 'named_statement', 0],
      ['Parse named, harmless SQL, then Sync', [Buffer.concat([P('stmt_a', 'SELECT $1'), S()])], 'named_statement', 0],
      ['Parse unnamed', [P('', 'SELECT 1')], null, 0],
      ['Bind unnamed portal, named statement', [B('', 's1', ['1'])], null, 1, 's1'],
      ['Bind named portal, named statement', [B('C_1', 'S_1', ['x'])], null, 1, 'S_1'],
      ['Bind named portal, unnamed statement', [B('C_1', '')], null, 0],
      ['Bind unnamed both', [B('', '', ['42', 'abc'])], null, 0],
      ['Describe statement named', [D('S', 's1')], null, 1, 's1'],
      ['Describe statement unnamed', [D('S', '')], null, 0],
      ['Describe portal named', [D('P', 'p1')], null, 0],
      ['Close statement named', [C('S', 's1')], 'statement_close', 0],
      ['Close statement unnamed', [C('S', '')], null, 0],
      ['Close portal named', [C('P', 'p1')], null, 0],
      ['Execute named portal', [E('p1')], null, 0],
      ['pgbench -M extended transaction', [Buffer.concat([P('', 'BEGIN;'), B('', ''), D('P', ''), E(), S()])], null, 0],
      ['unnamed batch then a named Bind', [Buffer.concat([P('', 'SELECT 1'), B('', ''), E(), S(), B('', 'P0_1', ['5']), E(), S()])], null, 1, 'P0_1'],
      ['pgbench -M prepared: Bind, Describe portal, Execute, Sync', [Buffer.concat([B('', 'P_0', ['5']), D('P', ''), E(), S()])], null, 1, 'P_0'],
      ['asyncpg name', [Buffer.concat([B('', '__asyncpg_stmt_1__', []), E(), S()])], null, 1, '__asyncpg_stmt_1__'],
      ['a name of 63 bytes', [Buffer.concat([B('', 'n'.repeat(63), []), E(), S()])], null, 1, 'n'.repeat(63)],
      ['a name of 64 bytes: too long', [Buffer.concat([B('', 'n'.repeat(64), []), E(), S()])], 'name_too_long', 0],
      ['8 named Binds in one skb', [Buffer.concat(Array.from({ length: 8 }, (_, i) => Buffer.concat([B('', `S_${i}`, []), E(), S()])))], null, 8, 'S_0'],
      ['9 named Binds in one skb: more than the verdict rewrites', [Buffer.concat(Array.from({ length: 9 }, (_, i) => Buffer.concat([B('', `S_${i}`, []), E(), S()])))], 'names_per_skb', 8],
      ['Sync and Flush only', [Buffer.concat([msg('H'), S()])], null, 0],
      ['FunctionCall', [msg('F', i32(1234), i16(0), i16(0), i16(0))], null, 0],
    ];
    for (const [name, chunks, expect, names, first] of cases) {
      const r = verdict(chunks);
      t.same({ errors: r.errors, inspect: r.inspect, names: r.names.count }, { errors: 0, inspect: expect, names }, name);
      if (first !== undefined) {
        const whole = Buffer.concat(chunks);
        t.equal(whole.toString('latin1', r.names.offset, r.names.offset + r.names.length), first, `${name}: the first name's place`);
        t.equal(whole[r.names.offset + r.names.length], 0, `${name}: its NUL follows`);
      }
    }
  });

  t.test('whatever is not wholly inside one skb is punted', async (t) => {
    const q = Q('SELECT abalance FROM pgbench_accounts WHERE aid = 1');
    for (const cut of [1, 3, 5, 6, 20, q.length - 1])
      t.equal(verdict([q.subarray(0, cut), q.subarray(cut)]).inspect, 'session_state', `Query cut at ${cut}`);
    const p = P('', 'SELECT 1');
    t.equal(verdict([p.subarray(0, 5), p.subarray(5)]).inspect, 'session_state', 'Parse cut after its header');
    const pn = P('named', 'SELECT 1');
    t.equal(verdict([pn.subarray(0, 7), pn.subarray(7)]).inspect, 'named_statement', 'Parse cut inside its name: non-empty is enough');
    const bs = B('', 'stmt');
    t.equal(verdict([bs.subarray(0, 8), bs.subarray(8)]).inspect, 'session_state', 'Bind cut inside its statement name: not rewritable here');
    t.equal(verdict([pn.subarray(0, 5), pn.subarray(5)]).inspect, 'session_state', 'Parse cut before its name');
    const bn = B('', 'stmt');
    t.equal(verdict([bn.subarray(0, 6), bn.subarray(6)]).inspect, 'session_state', 'Bind cut before its statement name');
    const d = D('S', 'x');
    t.equal(verdict([d.subarray(0, 5), d.subarray(5)]).inspect, 'session_state', 'Describe cut after its header');
    // A split header of a message that is never inspected is fine; the next one is inspected.
    const batch = Buffer.concat([E(), S(), Q('SELECT 2')]);
    t.equal(verdict([batch.subarray(0, 3), batch.subarray(3)]).inspect, null, 'Execute header split, then Sync and Query');
    t.equal(verdict([batch.subarray(0, 12), batch.subarray(12)]).inspect, null, 'cut inside Sync');
    // The parameters of an unnamed Bind may run into the next skb: its names were seen.
    const big = Buffer.concat([B('', '', ['v'.repeat(3000)]), E(), S()]);
    t.equal(verdict([big.subarray(0, 100), big.subarray(100)]).inspect, null, 'unnamed Bind with big parameters over two skbs');
    const bigThenSet = Buffer.concat([B('', '', ['v'.repeat(3000)]), E(), S(), Q('SET work_mem = 1')]);
    t.equal(verdict([bigThenSet.subarray(0, 100), bigThenSet.subarray(100)]).inspect, 'session_state',
      'a SET in the skb after a carried body');
  });

  t.test('tail counts for a hand-over', async (t) => {
    let r = verdict([Buffer.concat([P('', 'SELECT 1'), B('', ''), D('P', ''), E()])]);
    t.equal(r.tailMessages, 4, 'P B D E after the last Sync');
    r = verdict([Buffer.concat([P('', 'SELECT 1'), B('', ''), E(), S(), B('', ''), E()])]);
    t.equal(r.tailMessages, 2, 'counted from the last Sync');
    r = verdict([Buffer.concat([P('', 'SELECT 1'), B('', '')]), Buffer.concat([E(), C('P', '')])]);
    t.equal(r.tailMessages, 4, 'across skbs');
    r = verdict([Buffer.concat([P('', 'SELECT 1'), S()])]);
    t.equal(r.tailMessages, 0, 'nothing after the Sync');
    const row = be('D', Buffer.concat([i16(1), i32(1), Buffer.from('1')]));
    const answers = Buffer.concat([be('1'), be('2'), be('T', i16(0)), row, be('C', cstr('SELECT 1'))]);
    r = k.frameChunks('server', [answers]);
    t.equal(r.tailAnswered, 4, "1 2 T C (not the DataRow)");
    r = k.frameChunks('server', [Buffer.concat([answers, Z('T'), be('n'), be('3')])]);
    t.equal(r.tailAnswered, 2, 'since the last ReadyForQuery');
    r = k.frameChunks('server', [Buffer.concat([be('I'), be('s')]), Buffer.concat([be('N', cstr('notice')), Z('I')])]);
    t.equal(r.tailAnswered, 0, 'ReadyForQuery in a later skb resets it');
  });
}

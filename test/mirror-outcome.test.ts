// OutcomeReader (src/mirror/divergence.ts), what the mirror compares of a server's answers:
// command tags with row counts, SQLSTATEs, and with compare: rows a hash of the rows. It
// returns the last unit's outcome again (the same array, the same tag string) when a unit
// answers alike, so that the transactions a slow mirror keeps waiting hold no copy of
// their own; the values stay what the bytes say, whatever the reader saw before.
import t from 'tap';
import { OutcomeReader } from '../src/mirror/divergence';
import { MessageWalker } from '../src/protocol/walker';
import { errorResponse, message, readyForQuery } from '../src/protocol/messages';
import type { MirrorCompare } from '../src/config/types';

const msg = (type: string, body: string | Buffer) => message(type.charCodeAt(0), typeof body === 'string' ? Buffer.from(body) : body);
const tag = (s: string) => msg('C', `${s}\0`);
const row = (...cols: string[]) => {
  const parts = [Buffer.from([cols.length >> 8, cols.length & 255])];
  for (const c of cols) {
    const len = Buffer.alloc(4);
    len.writeInt32BE(Buffer.byteLength(c));
    parts.push(len, Buffer.from(c));
  }
  return msg('D', Buffer.concat(parts));
};

// The outcomes of the units in a stream of server messages, as the mirror session reads them.
function outcomes(reader: OutcomeReader, ...answers: Buffer[]): { items: string[]; status: string }[] {
  const w = new MessageWalker(1 << 20);
  const out: { items: string[]; status: string }[] = [];
  w.push(Buffer.concat(answers), (type, buf, start, end) => {
    const o = reader.onMessage(type, buf, start, end);
    if (o) out.push(o);
  });
  return out;
}

const select1 = [msg('1', ''), msg('2', ''), row('a', 'b'), tag('SELECT 1'), readyForQuery('I')];

t.test('the same answer gives the same outcome object, a different one its own', async (t) => {
  const r = new OutcomeReader('tags');
  const [a, b] = outcomes(r, ...select1, ...select1);
  t.same(a.items, ['SELECT 1']);
  t.equal(a.status, 'I');
  t.equal(b.items, a.items, 'an answer like the last one: the same array again');
  const [c, d, e] = outcomes(r, tag('UPDATE 1'), readyForQuery('T'), tag('SELECT 10'), readyForQuery('I'), ...select1);
  t.same(c.items, ['UPDATE 1']);
  t.equal(c.status, 'T');
  t.same(d.items, ['SELECT 10'], 'a tag of the same length and other bytes is read, not the cached one');
  t.same(e.items, ['SELECT 1']);
  t.same(a.items, ['SELECT 1'], 'a returned outcome is never changed by later answers');
  t.not(c.items, a.items);
});

t.test('errors, empty queries and several statements per unit', async (t) => {
  const r = new OutcomeReader('tags');
  const [a, b, c] = outcomes(r,
    tag('INSERT 0 1'), errorResponse({ severity: 'ERROR', code: '23505', message: 'duplicate key' }), readyForQuery('E'),
    msg('I', ''), readyForQuery('I'),
    tag('BEGIN'), tag('INSERT 0 1'), tag('COMMIT'), readyForQuery('I'));
  t.same(a.items, ['INSERT 0 1', 'ERROR 23505']);
  t.equal(a.status, 'E');
  t.same(b.items, ['EMPTY']);
  t.same(c.items, ['BEGIN', 'INSERT 0 1', 'COMMIT']);
  const [d] = outcomes(r, tag('BEGIN'), tag('INSERT 0 1'), tag('COMMIT'), readyForQuery('I'));
  t.equal(d.items, c.items, 'the same three tags: the same array');
  const long = 'x'.repeat(100); // longer than the tag cache holds: read each time
  const [e, f] = outcomes(r, tag(long), readyForQuery('I'), tag(long), readyForQuery('I'));
  t.same(e.items, [long]);
  t.same(f.items, [long]);
});

t.test('compare: rows hashes the rows, in order; tags alone do not see them', async (t) => {
  const unit = (...rows: Buffer[]) => [...rows, tag(`SELECT ${rows.length}`), readyForQuery('I')];
  const read = (compare: MirrorCompare, ...rows: Buffer[]) => outcomes(new OutcomeReader(compare), ...unit(...rows))[0].items;
  const rows = read('rows', row('1', 'x'), row('2', 'y'));
  t.equal(rows.length, 2);
  t.match(rows[0], /^ROWS [0-9a-f]{16}$/);
  t.equal(rows[1], 'SELECT 2');
  t.same(read('rows', row('1', 'x'), row('2', 'y')), rows, 'the same rows: the same hash');
  t.not(read('rows', row('1', 'x'), row('2', 'z'))[0], rows[0], 'another value: another hash');
  t.not(read('rows', row('2', 'y'), row('1', 'x'))[0], rows[0], 'another order: another hash');
  t.same(read('tags', row('1', 'x'), row('2', 'z')), ['SELECT 2'], 'compare: tags sees the count only');
  // the same reader over both: the second unit's rows differ, its outcome is its own
  const r = new OutcomeReader('rows');
  const [a, b] = outcomes(r, ...unit(row('1', 'x')), ...unit(row('1', 'w')));
  t.not(a.items[0], b.items[0]);
  t.not(b.items, a.items);
});

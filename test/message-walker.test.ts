// MessageWalker (src/protocol/walker.ts), the mirror sessions' framer: whatever the chunks
// (every split point of a stream, one byte at a time, a big message over many chunks) it
// hands over the same messages as MessageFramer, each as its place in a buffer, keeps only
// what is not whole yet, rejects a bad length as soon as the header is in, and stops when
// told to.
import t from 'tap';
import { MessageFramer } from '../src/protocol/framer';
import { MessageWalker } from '../src/protocol/walker';
import { message } from '../src/protocol/messages';

const msg = (type: string, body: string | Buffer) => message(type.charCodeAt(0), typeof body === 'string' ? Buffer.from(body) : body);

const stream = Buffer.concat([
  msg('P', 'stmt\0SELECT 1\0\0\0'),
  msg('B', '\0stmt\0\0\0\0\0\0\0'),
  msg('E', '\0\0\0\0\0'),
  msg('S', ''),
  msg('Q', 'SELECT repeat(\'x\', 100)\0'),
  msg('d', Buffer.alloc(70_000, 7)), // over many chunks below
  msg('c', ''),
]);

function walk(chunks: Buffer[]): { out: string[]; buffered: number } {
  const w = new MessageWalker(1 << 20);
  const out: string[] = [];
  for (const c of chunks) w.push(c, (type, buf, start, end) => void out.push(`${String.fromCharCode(type)}:${buf.subarray(start, end).toString('hex')}`));
  return { out, buffered: w.buffered };
}

function reference(b: Buffer): string[] {
  const f = new MessageFramer(1 << 20);
  f.push(b);
  const out: string[] = [];
  for (let m = f.next(); m; m = f.next()) out.push(`${String.fromCharCode(m.type)}:${m.body.toString('hex')}`);
  return out;
}

t.test('same messages as MessageFramer however the stream is split', async (t) => {
  const want = reference(stream);
  t.equal(want.length, 7);
  t.same(walk([stream]).out, want, 'one chunk');
  let bad = 0;
  for (let cut = 1; cut < 200; cut++) {
    const r = walk([stream.subarray(0, cut), stream.subarray(cut)]);
    if (JSON.stringify(r.out) !== JSON.stringify(want) || r.buffered !== 0) bad++;
  }
  t.equal(bad, 0, 'two chunks, cut at each of the first 199 bytes');
  const small: Buffer[] = [];
  for (let at = 0; at < stream.length; at += 3) small.push(stream.subarray(at, at + 3));
  t.same(walk(small).out, want, '3-byte chunks (headers split too)');
  const big: Buffer[] = [];
  for (let at = 0; at < stream.length; at += 4096) big.push(stream.subarray(at, at + 4096));
  t.same(walk(big).out, want, '4 KiB chunks');
});

t.test('keeps what is not whole yet, and forgets it on reset', async (t) => {
  const w = new MessageWalker(1 << 20);
  const seen: string[] = [];
  const on = (type: number) => void seen.push(String.fromCharCode(type));
  w.push(stream.subarray(0, stream.length - 3), on);
  t.same(seen, ['P', 'B', 'E', 'S', 'Q', 'd'], 'the complete messages');
  t.equal(w.buffered, 2, 'the start of the last one is kept');
  w.reset();
  t.equal(w.buffered, 0);
  w.push(msg('Z', 'I'), on);
  t.same(seen.slice(-1), ['Z'], 'framing starts again at the next chunk');
});

t.test('a bad length is rejected when its header is in', async (t) => {
  const w = new MessageWalker(1000);
  const hdr = Buffer.from([0x44, 0, 0, 0x10, 0]); // 'D', length 4096 > 1000
  t.throws(() => w.push(hdr, () => undefined), /invalid message length 4096 for message type "D"/);
  const w2 = new MessageWalker(1000);
  w2.push(hdr.subarray(0, 2), () => undefined);
  t.throws(() => w2.push(hdr.subarray(2), () => undefined), /invalid message length/, 'split header');
  t.throws(() => new MessageWalker(1000).push(Buffer.from([0x51, 0, 0, 0, 2]), () => undefined), /invalid message length 2/);
});

t.test('returning false stops the walk', async (t) => {
  const w = new MessageWalker(1 << 20);
  const seen: number[] = [];
  w.push(stream, (type) => {
    seen.push(type);
    return type !== 'B'.charCodeAt(0);
  });
  t.same(seen.map((c) => String.fromCharCode(c)), ['P', 'B']);
});

// The TypeScript framer (StreamScanner) against the same table of framing cases the
// kernel's framing runs in test/ebpf-framing.test.ts: messages and headers split at every
// byte, thousands of messages per chunk, big messages over many chunks. Both framers must
// agree on every count, so a transaction ends at the same byte whichever path carries it.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { StreamScanner, captureSet } from '../src/protocol/stream-scanner';

interface Case {
  name: string;
  role: 'client' | 'server';
  chunks: string[];
  expect: {
    sync?: number;
    query?: number;
    function?: number;
    readyForQuery: number;
    zStatuses: string;
    parameterStatus: number;
    messages?: number;
    tailOpen?: boolean;
  };
}

const fixture = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'framing-cases.json'), 'utf8')) as { cases: Case[] };
const code = (s: string) => s.charCodeAt(0);

function frame(c: Case) {
  const scanner = new StreamScanner(captureSet(c.role === 'server' ? 'Z' : ''));
  const got = { sync: 0, query: 0, function: 0, readyForQuery: 0, zStatuses: '', parameterStatus: 0, messages: 0, tailOpen: false };
  for (const hex of c.chunks) {
    const chunk = Buffer.from(hex, 'hex');
    let lastSfqEnd = -1;
    scanner.scan(chunk, (m) => {
      got.messages++;
      if (c.role === 'client') {
        if (m.type === code('S')) got.sync++;
        else if (m.type === code('Q')) got.query++;
        else if (m.type === code('F')) got.function++;
        if (m.type === code('S') || m.type === code('Q') || m.type === code('F')) lastSfqEnd = m.end;
      } else if (m.type === code('Z')) {
        got.readyForQuery++;
        got.zStatuses += m.body && m.body.length ? String.fromCharCode(m.body[0]) : '?';
      } else if (m.type === code('S')) {
        got.parameterStatus++;
      }
    });
    // The kernel's rule: bytes follow the last completed Sync/Query/FunctionCall of the chunk.
    if (chunk.length) got.tailOpen = lastSfqEnd < 0 ? true : lastSfqEnd < chunk.length;
  }
  return got;
}

t.test('StreamScanner agrees with the shared framing cases', async (t) => {
  t.ok(fixture.cases.length >= 100, `${fixture.cases.length} cases`);
  for (const c of fixture.cases) {
    const got = frame(c);
    const want: Record<string, unknown> = {
      readyForQuery: c.expect.readyForQuery,
      zStatuses: c.expect.zStatuses,
      parameterStatus: c.expect.parameterStatus,
    };
    const have: Record<string, unknown> = {
      readyForQuery: got.readyForQuery,
      zStatuses: got.zStatuses,
      parameterStatus: c.role === 'server' ? got.parameterStatus : c.expect.parameterStatus,
    };
    if (c.role === 'client') {
      Object.assign(want, { sync: c.expect.sync, query: c.expect.query, function: c.expect.function });
      Object.assign(have, { sync: got.sync, query: got.query, function: got.function });
      if (c.expect.tailOpen !== undefined) {
        want.tailOpen = c.expect.tailOpen;
        have.tailOpen = got.tailOpen;
      }
    }
    if (c.expect.messages !== undefined) {
      want.messages = c.expect.messages;
      have.messages = got.messages;
    }
    t.same(have, want, c.name);
  }
});

t.test('a bad length is a protocol error, as in the kernel (frame_error)', async (t) => {
  const s = new StreamScanner(captureSet(''));
  t.throws(() => s.scan(Buffer.from([0x51, 0x40, 0, 0, 0]), () => {}), /invalid message length/, 'over 1 GB');
  const s2 = new StreamScanner(captureSet(''));
  t.throws(() => s2.scan(Buffer.from([0x51, 0, 0, 0, 3]), () => {}), /invalid message length/, 'below 4');
});

t.test('a large captured body comes whole and exact, however it is split', async (t) => {
  // Bodies past 1 MB are gathered into one buffer of their announced size as they arrive.
  for (const size of [100, (1 << 20) - 1, 1 << 20, 3 * (1 << 20) + 7]) {
    const body = Buffer.alloc(size);
    for (let i = 0; i < size; i++) body[i] = (i * 131 + 7) & 0xff;
    const msg = Buffer.concat([Buffer.from([0x51, 0, 0, 0, 0]), body, Buffer.from([0x53, 0, 0, 0, 4])]);
    msg.writeInt32BE(size + 4, 1);
    for (const step of [1000, 65536, 333333]) {
      const s = new StreamScanner(captureSet('Q'));
      const got: Array<{ type: number; body?: Buffer }> = [];
      for (let p = 0; p < msg.length; p += step) s.scan(msg.subarray(p, p + step), (m) => got.push({ type: m.type, body: m.body }));
      t.equal(got.length, 2, `${size} bytes in chunks of ${step}: two messages`);
      t.ok(got[0].body?.equals(body), `${size} bytes in chunks of ${step}: the body is exact`);
      t.equal(got[1].body, undefined, 'an uncaptured type has no body');
    }
  }
});

// Framing of the PostgreSQL wire protocol in the kernel path, run through the SEC("tc")
// wrapper of the same code the sk_skb verdict uses (BPF_PROG_TEST_RUN can't run sk_skb).
//
// test/fixtures/framing-cases.json (shared with the TypeScript framer's tests):
//   { "format": "...", "cases": [ { "name", "role": "client" | "server",
//       "chunks": ["<hex>", ...],           // fed in order; framing state carries over
//       "expect": { "sync", "query", "function",        // completed S / Q / F (client)
//                   "readyForQuery", "zStatuses",       // Z count, status bytes in order (server)
//                   "parameterStatus",                  // ParameterStatus 'S' (server)
//                   "messages",                         // all completed messages
//                   "tailOpen"?  } } ] }                // client: bytes after the last S/Q/F
// Cases cut messages at every byte of their headers and of the Z status byte, put
// thousands of messages in one chunk, and spread big messages over many chunks.
// No case has more than 8 'Z' in one chunk (the tc wrapper lists at most 8 per chunk).
// Needs root (CAP_BPF): a KernelPath that can't open fails the test with the reason.
import t from 'tap';
import * as fs from 'fs';
import * as path from 'path';
import { openKernelPath } from './helpers/kernel';
import { SIZEOF } from '../src/kernel/kernel-abi';

interface Case {
  name: string;
  role: 'client' | 'server';
  chunks: string[];
  expect: {
    sync: number;
    query: number;
    function: number;
    readyForQuery: number;
    zStatuses: string;
    parameterStatus: number;
    messages?: number;
    tailOpen?: boolean;
  };
}

const fixture = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'framing-cases.json'), 'utf8')) as {
  cases: Case[];
};

const kp = openKernelPath(t, { frameTest: true });

if (kp) {
  const k = kp;

  t.test('ABI sizes match the loaded object', async (t) => {
    t.equal(k.mapValueSize('conns'), SIZEOF.conn);
    t.equal(k.mapValueSize('pools'), SIZEOF.pool);
    t.equal(k.mapValueSize('frame_test'), SIZEOF.frameTest);
    t.equal(k.mapValueSize('pool_stats'), SIZEOF.poolStats);
  });

  t.test('fixture covers the hard cases', async (t) => {
    t.ok(fixture.cases.length > 100);
    t.ok(fixture.cases.some((c) => c.role === 'server' && c.chunks.length > 50), 'one byte per chunk, server');
    t.ok(fixture.cases.some((c) => c.chunks.some((h) => h.length / 2 >= 60000)), 'a chunk of >= 60000 bytes (fed in pages)');
  });

  t.test('framing cases', async (t) => {
    for (const c of fixture.cases) {
      const r = k.frameChunks(
        c.role,
        c.chunks.map((h) => Buffer.from(h, 'hex')),
      );
      const got: Record<string, unknown> = {
        errors: r.errors,
        readyForQuery: r.readyForQuery,
        zStatuses: r.zStatuses,
        parameterStatus: r.parameterStatus,
      };
      const want: Record<string, unknown> = {
        errors: 0,
        readyForQuery: c.expect.readyForQuery,
        zStatuses: c.expect.zStatuses,
        parameterStatus: c.expect.parameterStatus,
      };
      if (c.role === 'client') {
        Object.assign(got, { sync: r.syncs, query: r.queries, function: r.functionCalls });
        Object.assign(want, { sync: c.expect.sync, query: c.expect.query, function: c.expect.function });
        if (c.expect.tailOpen !== undefined) {
          got.tailOpen = r.tailOpen;
          want.tailOpen = c.expect.tailOpen;
        }
      }
      if (c.expect.messages !== undefined) {
        got.messages = r.messages;
        want.messages = c.expect.messages;
      }
      t.same(got, want, c.name);
    }
  });

  t.test('a split header is carried in the framing state', async (t) => {
    const q = Buffer.from('51000000097a7a7a7a00', 'hex'); // Query "zzzz"
    const r = k.frameChunks('client', [q.subarray(0, 3)]);
    t.equal(r.frame.hdrLen, 3);
    t.same([...r.frame.hdr], [...q.subarray(0, 3)]);
    const r2 = k.frameChunks('client', [q.subarray(0, 7)]);
    t.equal(r2.frame.hdrLen, 0);
    t.equal(r2.frame.curType, 0x51);
    t.equal(r2.frame.remaining, 3, 'rest of the body still to come');
  });

  t.test('impossible length is reported, not framed', async (t) => {
    const bad = Buffer.from([0x51, 0, 0, 0, 2, 0x41]); // Query with length 2 (< 4)
    t.equal(k.frameChunks('client', [bad]).errors, 1);
  });
}

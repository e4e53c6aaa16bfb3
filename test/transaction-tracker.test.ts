// TransactionTracker, table-driven: a script of client messages (>X) and server replies
// (<X, <ZI for ReadyForQuery 'I') in stream order -> what is still owed and whether the
// server may be released. The replies are what PostgreSQL sends for those messages,
// including its extended-protocol error rule (skip to Sync, a Query in between included)
// and COPY FROM STDIN (Sync ignored until CopyDone/CopyFail).
import t from 'tap';
import { TRACKED_REPLIES, TransactionTracker } from '../src/session/transaction-tracker';

const run = (script: string, tr = new TransactionTracker()): TransactionTracker => {
  for (const tok of script.split(/\s+/).filter(Boolean)) {
    const type = tok.charCodeAt(1);
    if (tok[0] === '>') tr.onClientMessage(type);
    else if (TRACKED_REPLIES[type]) tr.onServerMessage(type, tok.length > 2 ? Buffer.from(tok.slice(2)) : undefined);
  }
  return tr;
};

// [name, script, outstanding, idle (release), waitingForClient (idle_transaction_timeout)]
const cases: [string, string, number, boolean, boolean][] = [
  ['simple query', '>Q <T <D <C <ZI', 0, true, false],
  ['simple query error', '>Q <E <ZI', 0, true, false],
  ['query in flight', '>Q <T', 1, false, false],
  ['extended batch', '>P >B >D >E >S <1 <2 <T <D <C <ZI', 0, true, false],
  ['extended batch error', '>P >B >E >S <E <ZI', 0, true, false],
  ['Parse error, Query before Sync (skipped), then Sync', '>P >B >E >Q >S <E <ZI', 0, true, false],
  ['same, replies not yet read', '>P >B >E >Q >S', 2, false, false],
  ['same, only the error read', '>P >B >E >Q >S <E', 1, false, false],
  ['Query after a good batch without Sync: answered', '>P >B >E >Q <1 <2 <C <T <D <C <ZI', 0, true, false],
  ['Query after a good batch, the Query fails', '>P >B >E >Q <1 <2 <C <E <ZI', 0, true, false],
  ['Execute error, Query and FunctionCall skipped, no Sync yet', '>P >B >E >Q >F <1 <2 <E', 0, false, true],
  ['... then Sync ends the skipping', '>P >B >E >Q >F <1 <2 <E >S <ZI', 0, true, false],
  ['error read before the Query is sent: Query skipped', '>P >B >E >H <E >Q >S <ZI', 0, true, false],
  ['Query sent while skipping then Sync, replies pending', '>P >B >E >H <E >Q >S', 1, false, false],
  ['pipeline of Syncs, error in the middle', '>P >B >E >S >P >B >E >S >P >B >E >S <1 <2 <C <ZI <E <ZI <1 <2 <C <ZI', 0, true, false],
  ['pipeline, error in the middle, a Query before its Sync', '>P >B >E >S >P >B >E >Q >S >Q <1 <2 <C <ZI <E <ZI <T <D <C <ZI', 0, true, false],
  ['pipeline, error in the middle, not yet answered', '>P >B >E >S >P >B >E >Q >S >Q <1 <2 <C <ZI <E <ZI', 1, false, false],
  ['Sync error (commit fails): no skip', '>P >B >E >S >Q <1 <2 <C <E <ZI <C <ZI', 0, true, false],
  ['batch without Sync: held, waits for the client', '>P >B >E <1 <2 <C', 0, false, true],
  ['batch without Sync in a transaction', '>Q <C <ZT >P >B >E', 0, false, true],
  ['transaction block open', '>Q <C <ZT', 0, false, true],
  ['Flush only, nothing owed', '>P >B >E >H <1 <2 <C', 0, false, true],
  ['simple COPY FROM STDIN', '>Q <G >d >d >c <C <ZI', 0, true, false],
  ['simple COPY, client still sending', '>Q <G >d', 1, false, false],
  ['simple COPY, server error mid-copy, client still sending', '>Q <G >d <E <ZI >d', 0, false, true],
  ['... then its CopyDone', '>Q <G >d <E <ZI >d >c', 0, true, false],
  ['extended COPY (libpq): first Sync ignored, second answered', '>P >B >D >E >S <1 <2 <n <G >d >c >S <C <ZI', 0, true, false],
  ['extended COPY, before CopyDone', '>P >B >D >E >S <1 <2 <n <G >d', 0, false, true],
  ['extended COPY, CopyDone and Sync pipelined before G', '>P >B >E >d >c >S <1 <2 <G <C <ZI', 0, true, false],
  ['extended COPY, error mid-copy, skip to the Sync after CopyDone', '>P >B >E >S <1 <2 <G >d <E >d >c >S <ZI', 0, true, false],
  ['COPY TO STDOUT', '>Q <H <d <c <C <ZI', 0, true, false],
];

for (const [name, script, outstanding, idle, waiting] of cases) {
  t.test(name, async (t) => {
    const tr = run(script);
    t.equal(tr.outstanding, outstanding, 'outstanding');
    t.equal(tr.idle, idle, 'released');
    t.equal(tr.waitingForClient, waiting, 'waiting for the client');
  });
}

t.test('deep pipeline grows the ring and keeps order', async (t) => {
  const tr = new TransactionTracker();
  let script = '';
  for (let i = 0; i < 40; i++) script += i === 20 ? ' >P >B >E >Q >Q >S' : ' >Q';
  run(script, tr);
  t.equal(tr.outstanding, 42); // 39 Queries + Query, Query, Sync
  let replies = '';
  for (let i = 0; i < 20; i++) replies += ' <C <ZI';
  replies += ' <E <ZI'; // the Parse fails: both Queries skipped, one ReadyForQuery at the Sync
  for (let i = 21; i < 40; i++) replies += ' <C <ZI';
  run(replies, tr);
  t.equal(tr.outstanding, 0);
  t.ok(tr.idle);
});

t.test('hand-over from the kernel: open batch, then Query; the batch fails', async (t) => {
  const tr = new TransactionTracker();
  tr.adopt(1, true, 3); // one Sync owed, then P/B/E sent without Sync
  run('>Q >S <ZT <E <ZI', tr); // first Z answers the adopted Sync; the error skips the Query
  t.equal(tr.outstanding, 0);
  t.ok(tr.idle);
});

// ReplyFilter, table-driven: for a sequence of expectations and server messages, what the
// client receives. Each case is a small script: requests (with their action) then the
// server's replies; the output is the message types the client sees, in order.
import t from 'tap';
import { ReplyAction, ReplyEnd, ReplyFilter, Expectation } from '../src/session/reply-filter';

const msg = (type: string): Buffer => {
  const b = Buffer.alloc(5);
  b[0] = type.charCodeAt(0);
  b.writeInt32BE(4, 1);
  return b;
};
const E = (end: ReplyEnd, action = ReplyAction.Pass, extra: Partial<Expectation> = {}): Expectation =>
  ({ end, action, ...(action === ReplyAction.Synthetic || action === ReplyAction.ErrorAs ? { reply: msg(action === ReplyAction.ErrorAs ? 'e' : 'y') } : {}), ...extra });
const P = ReplyEnd.ParseComplete;
const Bd = ReplyEnd.BindComplete;
const Ex = ReplyEnd.Execute;
const Syn = (end: ReplyEnd) => E(end, ReplyAction.Synthetic);
const Sync = E(ReplyEnd.Ready, ReplyAction.Pass, { sync: true });

// Runs the script; 'y' marks a synthetic reply, 'e' the proxy's error, '-' a hidden message.
function play(expect: Expectation[], server: string): string {
  const f = new ReplyFilter();
  let out = '';
  for (const e of expect) for (const b of f.expect(e)) out += String.fromCharCode(b[0]);
  for (const ch of server) {
    const hidden = f.hides(ch.charCodeAt(0));
    const extra = f.onMessage(ch.charCodeAt(0), undefined);
    out += hidden ? '-' : ch;
    for (const b of extra) out += String.fromCharCode(b[0]);
  }
  return out + (f.idle ? '' : ' (not idle)');
}

const CASES: Array<[string, Expectation[], string, string]> = [
  ['all passed', [E(P), E(Bd), E(Ex), Sync], '12DCZ', '12DCZ'],
  ['synthetic first: sent at once', [Syn(P), E(Bd), E(Ex), Sync], '2DCZ', 'y2DCZ'],
  ['synthetic after a pending reply waits for it', [E(Bd), E(Ex), Syn(P), E(Bd), E(Ex), Sync], '2DDC2CZ', '2DDCy2CZ'],
  ['injected Parse hidden', [E(P, ReplyAction.Drop), E(Bd), E(Ex), Sync], '12DCZ', '-2DCZ'],
  ['injected Close and Parse hidden', [E(ReplyEnd.CloseComplete, ReplyAction.Drop), E(P, ReplyAction.Drop), E(Bd), E(Ex), Sync], '312CZ', '--2CZ'],
  ['error skips to Sync, synthetic replies too', [E(P), Syn(P), E(Bd), E(Ex), Sync], 'EZ', 'EZ'],
  ['error in an injected Parse reaches the client', [E(P, ReplyAction.Drop), E(Bd), E(Ex), Sync], 'EZ', 'EZ'],
  ['the proxy\'s error replaces the server\'s', [E(P), E(ReplyEnd.Describe, ReplyAction.ErrorAs), Syn(P), E(Ex), Sync], '1EZ', '1-eZ'],
  ['after Sync, normal again', [E(P), Sync, Syn(P), Sync], 'EZZ', 'EZyZ'],
  ['requests sent after the error are skipped too, until a Sync comes', [E(P), E(Bd)], 'E', 'E (not idle)'],
  ['a Query\'s error does not skip', [E(ReplyEnd.Ready), Syn(P), Sync], 'TDEZZ', 'TDEZyZ'],
  ['notices and notifications pass anywhere', [E(P, ReplyAction.Drop), E(Bd), Sync], 'N1A2Z', 'N-A2Z'],
  ['Describe of a statement: t then T', [E(ReplyEnd.Describe), Syn(ReplyEnd.CloseComplete), Sync], 'tTZ', 'tTyZ'],
  ['Describe with NoData', [E(ReplyEnd.Describe), Syn(P), Sync], 'tnZ', 'tnyZ'],
  ['Execute ends at PortalSuspended', [E(Ex), Syn(P), Sync], 'DDsZ', 'DDsyZ'],
  ['kernel prefix: replies still owed', [E(ReplyEnd.Ready, ReplyAction.Pass, { sync: true }), E(ReplyEnd.Finals, ReplyAction.Pass, { count: 2 }), Syn(P), Sync], 'DCZ2CZ', 'DCZ2CyZ'],
];

t.test('reply filter', async (t) => {
  for (const [name, expect, server, want] of CASES) t.equal(play(expect, server), want, name);
});

t.test('hooks: done on the reply, fail on error or skip, tags', async (t) => {
  const f = new ReplyFilter();
  const log: string[] = [];
  f.expect(E(P, ReplyAction.Pass, { onDone: () => log.push('p-done'), onFail: () => log.push('p-fail') }));
  f.expect(E(Bd, ReplyAction.Pass, { onFail: () => log.push('b-fail') }));
  f.expect(E(Ex, ReplyAction.Synthetic, { onFail: () => log.push('x-fail') }));
  f.expect(Sync);
  f.onMessage('1'.charCodeAt(0), undefined);
  f.onMessage('E'.charCodeAt(0), undefined);
  t.same(log, ['p-done', 'b-fail', 'x-fail'], 'the error fails Bind, the skip fails what follows');
  f.onMessage('Z'.charCodeAt(0), undefined);
  t.ok(f.idle, 'idle after Sync');
  const tags: string[] = [];
  f.expect(E(ReplyEnd.Ready, ReplyAction.Pass, { onTag: (tag) => tags.push(tag) }));
  f.onMessage('C'.charCodeAt(0), Buffer.from('UNLISTEN\0'));
  f.onMessage('C'.charCodeAt(0), Buffer.from('SELECT 1\0'));
  f.onMessage('Z'.charCodeAt(0), undefined);
  t.same(tags, ['UNLISTEN', 'SELECT 1'], 'every CommandComplete tag of a Query');
});

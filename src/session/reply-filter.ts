// What the client must see of one server's replies while the proxy rewrites the
// client's requests (prepared statements, session state): for every message written
// to the server, an Expectation says which reply ends it and whether that reply is
// passed on, dropped (the proxy injected the request) or stands for an error of the
// proxy's own; replies the proxy answers itself are queued as synthetic. Replies are
// strictly ordered, so a queue suffices; PostgreSQL's error rule (after an error in
// an extended-protocol message everything up to Sync is skipped) is applied to it.
import { Backend } from '../protocol/constants';
import { SkipToSync, Unit } from './skip-to-sync';

export enum ReplyAction {
  Pass = 'pass',
  Drop = 'drop', // the proxy injected the request: the client never sees its reply
  Synthetic = 'synthetic', // not sent to the server: the proxy answers with `reply`
  ErrorAs = 'error-as', // sent only to make the server fail here: its error becomes `reply`
}

// Which server message ends the reply to a request.
export enum ReplyEnd {
  ParseComplete = 1,
  BindComplete,
  CloseComplete,
  Describe, // RowDescription or NoData (after a ParameterDescription for a statement)
  Execute, // CommandComplete, EmptyQueryResponse or PortalSuspended
  Ready, // ReadyForQuery: Sync, Query, FunctionCall
  Finals, // `count` replies of any extended kind: what the kernel forwarded before a hand-over
}

export interface Expectation {
  end: ReplyEnd;
  action: ReplyAction;
  sync?: boolean; // a Sync: ends the skipping after an error
  reply?: Buffer; // Synthetic / ErrorAs
  count?: number; // Finals
  onDone?: () => void; // the request took effect
  onFail?: () => void; // it failed or the server skipped it
  onTag?: (tag: string) => void; // each CommandComplete tag of its reply
  // A Query's reply (end Ready): an ErrorResponse inside it, and its ReadyForQuery's status
  onError?: () => void;
  onReady?: (status: number) => void;
}

const c = (ch: string): number => ch.charCodeAt(0);
const ENDS: Record<number, ReplyEnd[]> = {
  [c('1')]: [ReplyEnd.ParseComplete],
  [c('2')]: [ReplyEnd.BindComplete],
  [c('3')]: [ReplyEnd.CloseComplete],
  [c('T')]: [ReplyEnd.Describe],
  [c('n')]: [ReplyEnd.Describe],
  [c('C')]: [ReplyEnd.Execute],
  [c('I')]: [ReplyEnd.Execute],
  [c('s')]: [ReplyEnd.Execute],
  [Backend.ReadyForQuery]: [ReplyEnd.Ready],
};
const FINAL_TYPES = new Set([c('1'), c('2'), c('3'), c('T'), c('n'), c('C'), c('I'), c('s')]);
// Sent at any time; they belong to no request.
const ASYNC_TYPES = new Set([Backend.NoticeResponse, Backend.NotificationResponse, Backend.ParameterStatus]);

// A plain expectation (the reply passes as it is, nobody waits on it) is queued as a
// number, not an object: most requests are plain, and their replies only need counting.
type Plain = number; // ReplyEnd, | PLAIN_SYNC for a Sync
const PLAIN_SYNC = 0x100;
type Entry = Expectation | Plain;
const NOTHING = Object.freeze([]) as unknown as Buffer[]; // never written to

const endOf = (e: Entry): ReplyEnd => (typeof e === 'number' ? (e & 0xff) as ReplyEnd : e.end);
const actionOf = (e: Entry): ReplyAction => (typeof e === 'number' ? ReplyAction.Pass : e.action);
const isSync = (e: Entry): boolean => (typeof e === 'number' ? (e & PLAIN_SYNC) !== 0 : e.sync === true);

export class ReplyFilter {
  private queue: Entry[] = [];
  private head = 0;
  private readonly skip = new SkipToSync(); // an extended-protocol request failed: the server skips to Sync
  private objects = 0; // entries in the queue that are not plain

  // Nothing expected: replies pass untouched (the fast path).
  get idle(): boolean {
    return this.head === this.queue.length && !this.skip.active;
  }

  // Every reply now expected passes as it is: the caller forwards the server's bytes
  // whole and only reports the messages (onMessage) to keep the count.
  get transparent(): boolean {
    return this.objects === 0;
  }

  // Queues a plain expectation: the reply to a request written now passes as it is.
  expectPass(end: ReplyEnd, sync = false): void {
    // Skipped by the server after an error (nothing ahead of it): settled at once.
    if (this.skip.active && !sync && this.head === this.queue.length) return;
    this.queue.push(sync ? end | PLAIN_SYNC : end);
  }

  // Queues what the reply to a request written now looks like. Synthetic replies that
  // are due at once are returned for the caller to send.
  expect(e: Expectation): Buffer[] {
    if (e.action === ReplyAction.Pass && e.end !== ReplyEnd.Finals && !e.onDone && !e.onFail && !e.onTag && !e.onReady) {
      this.expectPass(e.end, e.sync);
      return NOTHING;
    }
    this.queue.push(e);
    this.objects++;
    return this.drain();
  }

  // Whether a server message of this type, starting now, is hidden from the client.
  hides(type: number): boolean {
    if (ASYNC_TYPES.has(type)) return false;
    const h = this.current();
    if (h === undefined || typeof h === 'number') return false;
    if (type === Backend.ErrorResponse) return h.action === ReplyAction.ErrorAs;
    return h.action === ReplyAction.Drop || h.action === ReplyAction.ErrorAs;
  }

  // A whole server message went by. Returns what to send the client in its place
  // (null: the message itself, unless hides() said so) and after it.
  onMessage(type: number, body: Buffer | undefined): Buffer[] {
    if (ASYNC_TYPES.has(type)) return NOTHING;
    const h = this.current();
    if (h === undefined) return NOTHING;
    const end = endOf(h);
    if (type === Backend.ErrorResponse) {
      if (end === ReplyEnd.Ready) { // part of a Query's reply, or a Sync's
        if (typeof h !== 'number') h.onError?.();
        return NOTHING;
      }
      const out: Buffer[] = [];
      if (typeof h !== 'number' && h.action === ReplyAction.ErrorAs && h.reply) out.push(h.reply);
      this.pop(false);
      this.skip.failed(Unit.Extended);
      return this.drainInto(out);
    }
    if (typeof h !== 'number' && type === c('C') && h.onTag && body) h.onTag(body.toString('utf8', 0, Math.max(0, body.length - 1)));
    if (typeof h !== 'number' && type === Backend.ReadyForQuery && h.onReady && body) h.onReady(body[0]);
    if (end === ReplyEnd.Finals) {
      const f = h as Expectation;
      if (FINAL_TYPES.has(type) && --f.count! <= 0) this.pop(true);
    } else if (ENDS[type]?.includes(end)) {
      this.pop(true);
    }
    return this.objects === 0 ? NOTHING : this.drainInto(null);
  }

  // An extended-protocol request already failed before the filter saw its reply (the
  // kernel forwarded the error): the server skips to the next Sync.
  batchFailed(): void {
    this.skip.failed(Unit.Extended);
  }

  // Drops all expectations (the server is being reset or closed).
  clear(): void {
    const q = this.queue;
    if (this.objects > 0) {
      for (let i = this.head; i < q.length; i++) {
        const e = q[i];
        if (typeof e !== 'number') e.onFail?.();
      }
    }
    q.length = 0; // kept: cleared at every release, reused by the next client
    this.head = 0;
    this.skip.reset();
    this.objects = 0;
  }

  private current(): Entry | undefined {
    return this.head < this.queue.length ? this.queue[this.head] : undefined;
  }

  private pop(ok: boolean): void {
    const e = this.queue[this.head++];
    if (this.head === this.queue.length) {
      this.queue.length = 0; // kept: the next request reuses it
      this.head = 0;
    }
    if (typeof e === 'number') return;
    this.objects--;
    if (ok) e.onDone?.();
    else e.onFail?.();
  }

  private drain(): Buffer[] {
    return this.drainInto(null);
  }

  // Settles the head while it needs no server reply: synthetic replies become due, and
  // while skipping, everything before the next Sync is skipped by the server too (the
  // skip ends when the server reaches that Sync; its ReadyForQuery is still awaited).
  private drainInto(out: Buffer[] | null): Buffer[] {
    for (let h = this.current(); h !== undefined; h = this.current()) {
      if (!this.skip.reaches(isSync(h) ? Unit.Sync : endOf(h) === ReplyEnd.Ready ? Unit.Query : Unit.Extended)) this.pop(false);
      else if (actionOf(h) === ReplyAction.Synthetic) {
        (out ??= []).push((h as Expectation).reply!);
        this.pop(true);
      } else if (endOf(h) === ReplyEnd.Finals && !((h as Expectation).count! > 0)) this.pop(true);
      else break;
    }
    return out ?? NOTHING;
  }
}

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

export class ReplyFilter {
  private queue: Expectation[] = [];
  private head = 0;
  private readonly skip = new SkipToSync(); // an extended-protocol request failed: the server skips to Sync

  // Nothing expected: replies pass untouched (the fast path).
  get idle(): boolean {
    return this.head === this.queue.length && !this.skip.active;
  }

  // Queues what the reply to a request written now looks like. Synthetic replies that
  // are due at once are returned for the caller to send.
  expect(e: Expectation): Buffer[] {
    this.queue.push(e);
    return this.drain();
  }

  // Whether a server message of this type, starting now, is hidden from the client.
  hides(type: number): boolean {
    if (ASYNC_TYPES.has(type)) return false;
    const h = this.current();
    if (!h) return false;
    if (type === Backend.ErrorResponse) return h.action === ReplyAction.ErrorAs;
    return h.action === ReplyAction.Drop || h.action === ReplyAction.ErrorAs;
  }

  // A whole server message went by. Returns what to send the client in its place
  // (null: the message itself, unless hides() said so) and after it.
  onMessage(type: number, body: Buffer | undefined): Buffer[] {
    if (ASYNC_TYPES.has(type)) return [];
    const h = this.current();
    if (!h) return [];
    const out: Buffer[] = [];
    if (type === Backend.ErrorResponse) {
      if (h.end === ReplyEnd.Ready) return []; // part of a Query's reply, or a Sync's: no skip
      if (h.action === ReplyAction.ErrorAs && h.reply) out.push(h.reply);
      this.pop(false);
      this.skip.failed(Unit.Extended);
      out.push(...this.drain());
      return out;
    }
    if (type === c('C') && h.onTag && body) h.onTag(body.toString('utf8', 0, Math.max(0, body.length - 1)));
    if (h.end === ReplyEnd.Finals) {
      if (FINAL_TYPES.has(type) && --h.count! <= 0) this.pop(true);
    } else if (ENDS[type]?.includes(h.end)) {
      this.pop(true);
    }
    out.push(...this.drain());
    return out;
  }

  // An extended-protocol request already failed before the filter saw its reply (the
  // kernel forwarded the error): the server skips to the next Sync.
  batchFailed(): void {
    this.skip.failed(Unit.Extended);
  }

  // Drops all expectations (the server is being reset or closed).
  clear(): void {
    for (let i = this.head; i < this.queue.length; i++) this.queue[i].onFail?.();
    this.queue = [];
    this.head = 0;
    this.skip.reset();
  }

  private current(): Expectation | undefined {
    return this.head < this.queue.length ? this.queue[this.head] : undefined;
  }

  private pop(ok: boolean): void {
    const e = this.queue[this.head++];
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
    }
    if (ok) e.onDone?.();
    else e.onFail?.();
  }

  // Settles the head while it needs no server reply: synthetic replies become due, and
  // while skipping, everything before the next Sync is skipped by the server too (the
  // skip ends when the server reaches that Sync; its ReadyForQuery is still awaited).
  private drain(): Buffer[] {
    const out: Buffer[] = [];
    for (let h = this.current(); h; h = this.current()) {
      if (!this.skip.reaches(h.sync ? Unit.Sync : h.end === ReplyEnd.Ready ? Unit.Query : Unit.Extended)) this.pop(false);
      else if (h.action === ReplyAction.Synthetic) {
        out.push(h.reply!);
        this.pop(true);
      } else if (h.end === ReplyEnd.Finals && !(h.count! > 0)) this.pop(true);
      else break;
    }
    return out;
  }
}

// Decides when a server may leave its client (invariant 4, docs/invariants.md): only at
// ReadyForQuery 'I' with nothing owed, nothing of a next request already sent and the
// server not skipping to a Sync. The kernel keeps counters for the same (ebpf/pgsplice.h:
// outstanding, tail_open) and hands a client that mixes a Query into an open
// extended-protocol batch to user space, where this models it exactly.
//
// What the server owes is an ordered queue of sync points (Sync, Query, FunctionCall),
// each answered by one ReadyForQuery, as PostgreSQL processes them:
// - after an ErrorResponse to an extended-protocol message (P/B/D/E/C) it discards every
//   message up to the next Sync, a Query or FunctionCall included, and answers only the
//   Sync; an error of a Query, FunctionCall or Sync itself is answered at once;
// - in COPY FROM STDIN it ignores Sync and Flush until the client's CopyDone/CopyFail.
// The queue is a small ring, allocated at a client's first request and kept (no
// allocation per message; an idle client that never asked holds none).
import { Backend, Frontend, TxStatus } from '../protocol/constants';
import { SkipToSync, Unit } from './skip-to-sync';

enum Owed {
  Sync = 1,
  Query = 2, // Query or FunctionCall
  Unknown = 3, // counted by the kernel path before a hand-over: kind not known
}

const c = (ch: string): number => ch.charCodeAt(0);
const FIELDS = 4;
const KIND = 0; // Owed
const EXT = 1; // extended messages before the sync point
const COPY0 = 2; // CopyDone/CopyFail count when its request began
const COPY1 = 3; // ... when the sync point was sent
const NO_RING = new Uint32Array(0);
// The one reply that ends each P/B/C/D/E (Describe: RowDescription or NoData).
const FINAL = new Uint8Array(256);
for (const ch of '123nTCIs') FINAL[c(ch)] = 1;
// Server messages the tracker reads: finals, ErrorResponse, ReadyForQuery, CopyInResponse.
export const TRACKED_REPLIES = new Uint8Array(FINAL);
TRACKED_REPLIES[Backend.ErrorResponse] = 1;
TRACKED_REPLIES[Backend.ReadyForQuery] = 1;
TRACKED_REPLIES[c('G')] = 1;

export class TransactionTracker {
  outstanding = 0; // ReadyForQuery the server still owes (entries in the ring)
  tailOpen = false; // bytes of a next request sent after the last sync point
  status: TxStatus = 'I';
  private readonly skip = new SkipToSync(); // the server discards what the client sends until its next Sync
  get skipping(): boolean {
    return this.skip.active;
  }
  copyIn = false; // the server is in COPY FROM STDIN until the client's CopyDone/CopyFail

  // the ring, FIELDS numbers per owed sync point: its kind, extended messages before it,
  // and the client's count of CopyDone/CopyFail when that prefix began and when it was sent
  private ring: Uint32Array = NO_RING;
  private head = 0;
  private tailExt = 0; // P/B/D/E/C sent since the last sync point
  private tailCopy0 = 0;
  private finals = 0; // final replies since the last ReadyForQuery
  private copyEnds = 0; // CopyDone/CopyFail the client sent, ever

  // A complete client message was forwarded to the server.
  onClientMessage(type: number): void {
    switch (type) {
      case Frontend.Sync:
        if (this.copyIn) return; // ignored by the server in COPY FROM STDIN
        this.push(Owed.Sync, this.skip.active ? 0 : this.tailExt);
        this.skip.reaches(Unit.Sync);
        return;
      case Frontend.Query:
      case Frontend.FunctionCall:
        if (!this.skip.reaches(Unit.Query)) return; // discarded by the server, no ReadyForQuery for it
        this.push(Owed.Query, this.tailExt);
        return;
      case Frontend.CopyDone:
      case Frontend.CopyFail:
        this.copyEnds++;
        this.copyIn = false;
        return;
      case Frontend.CopyData:
        return; // part of the request in progress, not a new one
      case Frontend.Parse:
      case Frontend.Bind:
      case Frontend.Describe:
      case Frontend.Execute:
      case Frontend.Close:
        if (!this.tailOpen) this.tailCopy0 = this.copyEnds;
        if (this.skip.reaches(Unit.Extended)) this.tailExt++;
        this.tailOpen = true;
        return;
      default:
        if (!this.tailOpen) this.tailCopy0 = this.copyEnds;
        this.tailOpen = true;
    }
  }

  // Part of a message was forwarded (its end is still to come).
  onClientPartial(type: number): void {
    if (type !== Frontend.CopyData) this.tailOpen = true;
  }

  // A server message of a TRACKED_REPLIES type, in stream order (body: ReadyForQuery's status).
  onServerMessage(type: number, body: Buffer | undefined): void {
    if (type === Backend.ReadyForQuery) {
      if (body?.length) this.onReadyForQuery(String.fromCharCode(body[0]) as TxStatus);
    } else if (type === Backend.ErrorResponse) this.onError();
    else if (type === 0x47 /* G: CopyInResponse */) this.onCopyIn();
    else this.finals++;
  }

  onReadyForQuery(status: TxStatus): void {
    if (this.outstanding > 0) {
      this.head = (this.head + 1) & (this.capacity - 1);
      this.outstanding--;
    }
    this.finals = 0;
    this.status = status;
  }

  // True when the server can be given to another client.
  get idle(): boolean {
    return this.outstanding === 0 && this.status === 'I' && !this.tailOpen && !this.skipping && !this.copyIn;
  }

  // The server is held with nothing owed: it waits for the client (a transaction block, an
  // extended-protocol batch without its Sync, a COPY): idle_transaction_timeout applies.
  get waitingForClient(): boolean {
    return this.outstanding === 0 && !this.idle;
  }

  // The kernel can't count these (it owes one ReadyForQuery per Sync, Query and
  // FunctionCall): extended messages sent without their Sync, or a Query/FunctionCall
  // sent after some (skipped if they fail). User space keeps such a request.
  get mixesProtocols(): boolean {
    if (this.tailExt > 0 || this.skipping) return true;
    for (let i = 0; i < this.outstanding; i++) {
      const k = this.at(i);
      if (this.ring[k * FIELDS + KIND] !== Owed.Sync && this.ring[k * FIELDS + EXT] > 0) return true;
    }
    return false;
  }

  // State handed over by the kernel path: `outstanding` sync points of unknown kind, and an
  // open batch of `tailUnanswered` extended messages not yet answered; `failed`: the
  // server sent an ErrorResponse after its last ReadyForQuery, so with nothing owed the
  // open batch failed and the server skips to the next Sync.
  adopt(outstanding: number, tailOpen: boolean, tailUnanswered: number, failed = false): void {
    this.reset();
    for (let i = 0; i < outstanding; i++) this.push(Owed.Unknown, 0);
    this.tailOpen = tailOpen;
    this.tailExt = tailUnanswered;
    if (failed && outstanding === 0 && tailOpen) this.skip.failed(Unit.Extended);
    this.status = 'T'; // unknown until its next ReadyForQuery: never released before that
  }

  reset(): void {
    this.outstanding = 0;
    this.head = 0;
    this.tailOpen = false;
    this.status = 'I';
    this.skip.reset();
    this.copyIn = false;
    this.tailExt = 0;
    this.finals = 0;
  }

  private at(i: number): number {
    return (this.head + i) & (this.capacity - 1);
  }

  private push(kind: Owed, ext: number): void {
    if (this.outstanding === this.capacity) this.grow();
    const i = this.at(this.outstanding++);
    this.ring[i * FIELDS + KIND] = kind;
    this.ring[i * FIELDS + EXT] = ext;
    this.ring[i * FIELDS + COPY0] = this.tailOpen ? this.tailCopy0 : this.copyEnds;
    this.ring[i * FIELDS + COPY1] = this.copyEnds;
    this.tailExt = 0;
    this.tailOpen = false;
  }

  private get capacity(): number {
    return this.ring.length / FIELDS;
  }

  private grow(): void {
    const n = this.capacity;
    const ring = new Uint32Array(Math.max(16, n * 2) * FIELDS);
    for (let k = 0; k < n; k++) ring.set(this.ring.subarray(this.at(k) * FIELDS, this.at(k) * FIELDS + FIELDS), k * FIELDS);
    this.ring = ring;
    this.head = 0;
  }

  // Drops `count` entries after the first `keep` ones (the server will not answer them).
  private drop(keep: number, count: number): void {
    for (let k = keep - 1; k >= 0; k--) {
      const from = this.at(k);
      const to = this.at(k + count);
      this.ring.copyWithin(to * FIELDS, from * FIELDS, from * FIELDS + FIELDS);
    }
    this.head = this.at(count);
    this.outstanding -= count;
  }

  private onError(): void {
    if (this.outstanding === 0) {
      // in the open batch (no sync point sent yet): skipping goes on into what comes next
      this.skip.failed(this.finals < this.tailExt ? Unit.Extended : Unit.Query);
      return;
    }
    const h = this.head;
    if (this.ring[h * FIELDS + KIND] !== Owed.Query || this.finals >= this.ring[h * FIELDS + EXT]) return; // answered by its ReadyForQuery
    // A message before this Query failed: the server skips from here. What was already
    // sent meets the skip in order: the sync points it discards leave the ring; without
    // a Sync among them, it skips on into later input.
    const skip = new SkipToSync();
    skip.failed(Unit.Extended);
    let n = 0;
    while (n < this.outstanding && !skip.reaches(this.ring[this.at(n) * FIELDS + KIND] === Owed.Sync ? Unit.Sync : Unit.Query)) n++;
    this.drop(0, n);
    if (skip.active) this.skip.failed(Unit.Extended);
  }

  // The server began COPY FROM STDIN for the head entry (a Query, or an Execute before it):
  // the Syncs sent after it and before the client's CopyDone/CopyFail are ignored.
  private onCopyIn(): void {
    const base = this.outstanding ? this.ring[this.head * FIELDS + COPY0] : this.tailOpen ? this.tailCopy0 : this.copyEnds;
    const keep = this.outstanding && this.ring[this.head * FIELDS + KIND] !== Owed.Sync ? 1 : 0;
    let n = 0;
    while (keep + n < this.outstanding) {
      const i = this.at(keep + n);
      if (this.ring[i * FIELDS + KIND] !== Owed.Sync || this.ring[i * FIELDS + COPY1] !== base) break;
      n++;
    }
    if (n) this.drop(keep, n);
    this.copyIn = this.copyEnds === base;
  }
}

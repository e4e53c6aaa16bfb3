// What the kernel path copied for one mirrored client (ebpf/mirror.h), fed to its mirror
// sessions as user-space traffic is: its requests as clientBytes, its server's replies as
// primaryBytes, so a session sees one byte stream whichever path carried each part.
//
// Records come in ring order, which is the order the verdicts copied them; the controller
// drains the ring before it feeds a session bytes that reached user space, so the two
// sources never overtake each other. A record the ring had no room for is a loss: the
// kernel writes nothing more for the client until one of its transactions ends there
// (a RESYNC record), or user space finds the client idle itself (resumed). In between the
// sessions take nothing, and what they had gathered is dropped whole and counted.
//
// Bytes user space itself skipped while the copy was lost (a request the kernel passed up
// while a pipelining client's previous transaction was ending) are not covered by a
// RESYNC the kernel writes afterwards: the streams after it would lack them. Such a
// RESYNC is counted but not trusted; the feed starts again when user space finds the
// client idle, where nothing is in flight either way.
import { MirrorKind, type MirrorRecord } from '../kernel/kernel-abi';
import type { MirrorSession } from './mirror-session';

export enum FeedState {
  Clean = 'clean', // every record so far was delivered, in sequence
  Lost = 'lost', // records are missing: nothing is fed until a boundary
}

// Over all mirrored clients (SHOW BYPASS mirror_*).
export interface KernelMirrorTotals {
  records: number;
  bytes: number;
  resyncs: number;
  ignored: number; // records of clients no longer mirrored (copied before that was known)
}

export class KernelMirrorFeed {
  state = FeedState.Clean;
  private readonly next = [0, 0]; // expected seq of REQUEST, REPLY records
  private skippedUserBytes = false; // while lost, user space had bytes of its own for the sessions
  private pendingTransactions = 0; // lost ones a RESYNC reported that was not trusted
  // The kernel's count of lost copies (all clients) when this client's copy was last read
  // clean: while the count stays there, it is still clean (controller.kernelLost).
  cleanAtLosses = -1;
  private records = 0; // delivered to this feed
  private recordsAtTick = -1; // as of the last janitor tick (quietWhileAwaiting)

  constructor(
    private readonly sessions: () => readonly MirrorSession[],
    private readonly totals: KernelMirrorTotals,
  ) {}

  record(r: MirrorRecord): void {
    this.records++;
    if (r.kind === MirrorKind.RESYNC) {
      if (!this.skippedUserBytes) return this.resume(r.lostXacts);
      this.lose();
      this.pendingTransactions += r.lostXacts;
      return;
    }
    const i = r.kind === MirrorKind.REQUEST ? 0 : 1;
    if (r.seq !== this.next[i]) this.lose();
    this.next[i] = r.seq + 1;
    if (this.state !== FeedState.Clean) return;
    this.totals.records++;
    this.totals.bytes += r.data.length;
    for (const m of this.sessions()) {
      // a session's failure ends that session, never the proxy (this runs from the ring's poll)
      try {
        if (i === 0) m.clientBytes(r.data);
        else m.primaryBytes(r.data);
      } catch (e) {
        m.failWith(e);
      }
    }
  }

  // User space is about to feed the sessions bytes of its own (after draining the ring);
  // kernelLost: the kernel's state says the copy is lost (read only while clean).
  beforeUserBytes(kernelLost: () => boolean): void {
    this.checkKernelLoss(kernelLost);
    if (this.state === FeedState.Lost) this.skippedUserBytes = true;
  }

  // Asked once a second (the janitor): whether the sessions await answers of the primary
  // and no record came since the last tick. A copy lost at a transaction's end whose
  // RESYNC did not fit in the ring is reported only when the client's next transaction
  // starts (ebpf/mirror.h, LOST_AT_END); a client that goes quiet meanwhile would keep its
  // last units, and their queue_bytes, until then.
  quietWhileAwaiting(): boolean {
    const quiet = this.records === this.recordsAtTick;
    this.recordsAtTick = this.records;
    return quiet && this.state === FeedState.Clean && this.sessions().some((m) => m.awaitsPrimary());
  }

  // The kernel's state says the copy is lost (kernelLost, read while clean): the sessions
  // drop what they gathered now; the RESYNC still comes, and is trusted (no user-space
  // bytes were skipped).
  checkKernelLoss(kernelLost: () => boolean): void {
    if (this.state === FeedState.Clean && kernelLost()) this.lose();
  }

  // Bytes of the client's streams are missing: its sessions stop taking any.
  lose(): void {
    if (this.state === FeedState.Lost) return;
    this.state = FeedState.Lost;
    for (const m of this.sessions()) m.streamLost();
  }

  // Both streams are at a transaction boundary again; transactions (at least 1) ended
  // while bytes were missing.
  resume(transactions: number): void {
    this.lose(); // a RESYNC is the kernel's report of a loss not seen yet
    this.state = FeedState.Clean;
    this.totals.resyncs++;
    const lost = transactions + this.pendingTransactions;
    this.pendingTransactions = 0;
    this.skippedUserBytes = false;
    for (const m of this.sessions()) m.streamResumed(Math.max(1, lost));
  }
}

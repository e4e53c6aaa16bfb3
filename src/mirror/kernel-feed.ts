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

  constructor(
    private readonly sessions: () => readonly MirrorSession[],
    private readonly totals: KernelMirrorTotals,
  ) {}

  record(r: MirrorRecord): void {
    if (r.kind === MirrorKind.RESYNC) return this.resume(r.lostXacts);
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
    for (const m of this.sessions()) m.streamResumed(Math.max(1, transactions));
  }
}

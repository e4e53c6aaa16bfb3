// Whole-message framing for readers that look at few of the bodies they frame (the mirror
// sessions: the client's requests, which they copy, and both servers' answers, of which
// they read tags, SQLSTATEs and ReadyForQuery). Each complete message is handed over as
// its place in a buffer (type, buf, start of the body, end), so framing makes no view or
// object per message; the reader makes a view of the bodies it keeps.
//
// A message split across chunks is joined once, when it is complete (the chunks are kept
// as a list until then: linear in its size however it is split). The length limit is
// checked as soon as the header is in.
import { ProtocolError } from './messages';
import { printable } from './framer';

// Called for each complete message; return false to stop (the rest of the chunk is dropped).
export type OnMessage = (type: number, buf: Buffer, start: number, end: number) => boolean | void;

export class MessageWalker {
  private pending: Buffer[] = []; // the start of a message not complete yet
  private pendingBytes = 0;
  private need = 5; // bytes the pending message needs to be whole (5: its header first)

  constructor(private readonly maxLength: number) {}

  // Bytes kept of a message not complete yet (views of the chunks they came in).
  get buffered(): number {
    return this.pendingBytes;
  }

  // Frames the chunk's messages (after what was pending) and hands each to onMessage.
  push(chunk: Buffer, onMessage: OnMessage): void {
    if (chunk.length === 0) return;
    let buf = chunk;
    if (this.pendingBytes) {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
      if (this.need === 5) {
        if (this.pendingBytes < 5) return;
        const joined = Buffer.concat(this.pending, this.pendingBytes);
        this.pending = [joined];
        this.need = 1 + this.checkedLength(joined, 0); // the header is in: the whole message next
      }
      if (this.pendingBytes < this.need) return;
      buf = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending, this.pendingBytes);
      this.reset();
    }
    let at = 0;
    while (buf.length - at >= 5) {
      const len = this.checkedLength(buf, at);
      if (buf.length - at < 1 + len) break;
      if (onMessage(buf[at], buf, at + 5, at + 1 + len) === false) return;
      at += 1 + len;
    }
    if (at < buf.length) {
      const rest = at === 0 ? buf : buf.subarray(at);
      this.pending = [rest];
      this.pendingBytes = rest.length;
      this.need = rest.length >= 5 ? 1 + rest.readInt32BE(1) : 5;
    }
  }

  // Forgets a message not complete yet (its stream starts again elsewhere).
  reset(): void {
    this.pending = [];
    this.pendingBytes = 0;
    this.need = 5;
  }

  private checkedLength(buf: Buffer, at: number): number {
    const len = buf.readInt32BE(at + 1);
    if (len < 4 || len > this.maxLength) throw new ProtocolError(`invalid message length ${len} for message type "${printable(buf[at])}"`);
    return len;
  }
}

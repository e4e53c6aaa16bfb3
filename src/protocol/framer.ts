// Whole-message framing for the login phases (startup, auth, server login) and the
// admin console, where messages are small and each one is acted on. The data phase
// uses StreamScanner, which forwards bytes without assembling them.
//
// Received chunks are kept as a list and joined once, when a whole message is there:
// framing a message costs linear time in its size however it is split (joining on
// every chunk is quadratic, and a client that streams a huge message would pin a core).
// The length limit is checked as soon as the header is in, before the body arrives.
import { MAX_MESSAGE_LENGTH, MAX_STARTUP_LENGTH } from './constants';
import { ProtocolError } from './messages';

export interface Message {
  type: number;
  body: Buffer; // a view into the received bytes when the message was not split
}

export class MessageFramer {
  private chunks: Buffer[] = [];
  private total = 0;

  // maxLength: the largest length field accepted (body + 4); may change between messages.
  constructor(public maxLength = MAX_MESSAGE_LENGTH) {}

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  get buffered(): number {
    return this.total;
  }

  // Takes whatever has not been framed yet (when the data phase takes over).
  takeRest(): Buffer {
    const rest = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.total);
    this.chunks = [];
    this.total = 0;
    return rest;
  }

  // The first n buffered bytes as one buffer (n <= total): joins leading chunks only as
  // far as needed, so the bytes of a message are copied at most once per call site.
  private head(n: number): Buffer {
    const first = this.chunks[0];
    if (first.length >= n) return first;
    let have = 0;
    let k = 0;
    while (have < n) have += this.chunks[k++].length;
    const joined = Buffer.concat(this.chunks.slice(0, k), have);
    this.chunks.splice(0, k, joined);
    return joined;
  }

  // Drops the first n bytes (n <= the length of the first chunk).
  private consume(n: number): void {
    const first = this.chunks[0];
    if (n === first.length) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.total -= n;
  }

  // Next complete typed message, or null if more bytes are needed.
  next(): Message | null {
    if (this.total < 5) return null;
    const hdr = this.head(5);
    const len = hdr.readInt32BE(1);
    if (len < 4 || len > this.maxLength) {
      throw new ProtocolError(`invalid message length ${len} for message type "${printable(hdr[0])}"`
        + (len > this.maxLength && this.maxLength < MAX_MESSAGE_LENGTH ? ` (at most ${this.maxLength} at this point)` : ''));
    }
    if (this.total < 1 + len) return null;
    const buf = this.head(1 + len);
    const msg = { type: buf[0], body: buf.subarray(5, 1 + len) };
    this.consume(1 + len);
    return msg;
  }

  // Next complete untyped startup-phase packet (length-prefixed), or null.
  nextStartup(): Buffer | null {
    if (this.total < 4) return null;
    const len = this.head(4).readInt32BE(0);
    if (len < 8 || len > MAX_STARTUP_LENGTH) throw new ProtocolError(`invalid startup packet length ${len}`);
    if (this.total < len) return null;
    const pkt = this.head(len).subarray(4, len);
    this.consume(len);
    return pkt;
  }
}

export function printable(type: number): string {
  return type >= 0x20 && type < 0x7f ? String.fromCharCode(type) : `0x${type.toString(16)}`;
}

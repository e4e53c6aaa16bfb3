// Whole-message framing for the login phases (startup, auth, server login), where
// messages are small and each one is acted on. The data phase uses StreamScanner,
// which forwards bytes without assembling them.
import { MAX_MESSAGE_LENGTH, MAX_STARTUP_LENGTH } from './constants';
import { ProtocolError } from './messages';

export interface Message {
  type: number;
  body: Buffer; // a view into the received bytes when the message was not split
}

export class MessageFramer {
  private buf: Buffer = Buffer.alloc(0);

  constructor(private readonly maxLength = MAX_MESSAGE_LENGTH) {}

  push(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
  }

  get buffered(): number {
    return this.buf.length;
  }

  // Takes whatever has not been framed yet (when the data phase takes over).
  takeRest(): Buffer {
    const rest = this.buf;
    this.buf = Buffer.alloc(0);
    return rest;
  }

  // Next complete typed message, or null if more bytes are needed.
  next(): Message | null {
    if (this.buf.length < 5) return null;
    const len = this.buf.readInt32BE(1);
    if (len < 4 || len > this.maxLength) {
      throw new ProtocolError(`invalid message length ${len} for message type "${printable(this.buf[0])}"`);
    }
    if (this.buf.length < 1 + len) return null;
    const msg = { type: this.buf[0], body: this.buf.subarray(5, 1 + len) };
    this.buf = this.buf.subarray(1 + len);
    return msg;
  }

  // Next complete untyped startup-phase packet (length-prefixed), or null.
  nextStartup(): Buffer | null {
    if (this.buf.length < 4) return null;
    const len = this.buf.readInt32BE(0);
    if (len < 8 || len > MAX_STARTUP_LENGTH) throw new ProtocolError(`invalid startup packet length ${len}`);
    if (this.buf.length < len) return null;
    const pkt = this.buf.subarray(4, len);
    this.buf = this.buf.subarray(len);
    return pkt;
  }
}

export function printable(type: number): string {
  return type >= 0x20 && type < 0x7f ? String.fromCharCode(type) : `0x${type.toString(16)}`;
}

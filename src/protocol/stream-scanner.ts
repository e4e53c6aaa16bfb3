// Walks message headers in a byte stream that arrives in arbitrary chunks, without
// assembling message bodies (a DataRow may be a gigabyte). Only the bodies of the
// message types the caller asks for are collected. The kernel verdict program does
// the same walk (ebpf/parse.h); both are tested against test/fixtures/framing-cases.json.
import { MAX_MESSAGE_LENGTH } from './constants';
import { ProtocolError } from './messages';
import { printable } from './framer';

export interface ScannedMessage {
  type: number;
  length: number; // the length field: body + 4
  body?: Buffer; // only for the types asked for
  start: number; // offset in the current chunk where the message began (negative: an earlier chunk)
  end: number; // offset in the current chunk just past the message
}

export class StreamScanner {
  private header: Buffer | null = null; // a header split across chunks, gathered (rare: allocated then)
  private headerLen = 0;
  private type = 0;
  private length = 0;
  private remaining = 0; // body bytes still to come
  private collecting: Buffer[] | null = null;
  // A large body being collected goes straight into one buffer of its announced size,
  // allocated once COLLECT_INTO bytes of it have arrived (pages are only touched as the
  // bytes come): the chunks are not held and joined at the end, which would double it.
  private into: Buffer | null = null;
  private filled = 0;
  private startBase = 0; // chunk-relative start of the current message

  // capture[type] = true: collect that type's body (keep these small: Z, S, E, ...).
  constructor(
    public capture: Uint8Array, // may be swapped at a message boundary
    private readonly maxLength = MAX_MESSAGE_LENGTH,
  ) {}

  // True when the stream is at a message boundary.
  get atBoundary(): boolean {
    return this.headerLen === 0 && this.remaining === 0;
  }

  // Continues from a position another framer reached (the kernel's, after a hand-over):
  // partial header bytes seen, or the type and remaining body bytes of the message in
  // progress. The body seen before is gone, so that message is reported without one.
  resume(pos: { hdr: Buffer; hdrLen: number; curType: number; remaining: number }): void {
    this.collecting = null;
    this.into = null;
    this.filled = 0;
    this.bodyLost = false;
    const header = (this.header ??= Buffer.alloc(5));
    if (pos.hdrLen >= 5) {
      pos.hdr.copy(header, 0, 0, 5);
      this.headerLen = 5;
      this.type = header[0];
      this.length = header.readInt32BE(1);
      this.remaining = this.length - 4 - (pos.hdrLen - 5);
      if (this.capture[this.type]) {
        this.collecting = pos.hdrLen > 5 ? [Buffer.from(pos.hdr.subarray(5, pos.hdrLen))] : [];
        this.filled = pos.hdrLen - 5;
      }
    } else if (pos.hdrLen > 0) {
      pos.hdr.copy(header, 0, 0, pos.hdrLen);
      this.headerLen = pos.hdrLen;
      this.remaining = 0;
    } else if (pos.remaining > 0) {
      this.headerLen = 5;
      this.type = pos.curType;
      this.length = pos.remaining + 4;
      this.remaining = pos.remaining;
      this.bodyLost = true;
    } else {
      this.headerLen = 0;
      this.remaining = 0;
    }
    this.startBase = -1;
  }
  private bodyLost = false;

  // The message in progress will be reported with its whole body (its type is captured and
  // none of it was lost to a resume): a caller that rewrites it holds back its bytes.
  get deliversBody(): boolean {
    if (this.atBoundary) return false;
    if (this.headerLen < 5) return this.capture[this.header![0]] === 1;
    return this.collecting !== null && !this.bodyLost;
  }

  // Views of earlier chunks are held for the message in progress (a body gathered across
  // chunks): those chunks' bytes must stay as they are.
  get holdsInput(): boolean {
    return this.collecting !== null && this.collecting.length > 0;
  }

  // Type of the message in progress (valid when !atBoundary and the header is complete).
  get currentType(): number {
    return this.headerLen === 5 ? this.type : this.headerLen > 0 ? this.header![0] : 0;
  }

  // Calls onMessage for every message that completes inside chunk, in order.
  scan(chunk: Buffer, onMessage: (m: ScannedMessage) => void): void {
    let pos = 0;
    const n = chunk.length;
    while (pos < n) {
      if (this.remaining === 0 && this.headerLen < 5) {
        if (this.headerLen === 0 && n - pos >= 5) {
          // the usual case: the whole header is here, read where it is
          this.startBase = pos;
          this.type = chunk[pos];
          this.length = chunk.readInt32BE(pos + 1);
          this.headerLen = 5;
          pos += 5;
        } else {
          if (this.headerLen === 0) this.startBase = pos;
          const header = (this.header ??= Buffer.alloc(5));
          const take = Math.min(5 - this.headerLen, n - pos);
          chunk.copy(header, this.headerLen, pos, pos + take);
          this.headerLen += take;
          pos += take;
          if (this.headerLen < 5) break;
          this.type = header[0];
          this.length = header.readInt32BE(1);
        }
        if (this.length < 4 || this.length > this.maxLength) {
          throw new ProtocolError(`invalid message length ${this.length} for message type "${printable(this.type)}"`);
        }
        this.remaining = this.length - 4;
        this.bodyLost = false;
        if (this.capture[this.type] && this.remaining <= n - pos) {
          // a wanted body wholly in this chunk: a view of it, nothing gathered
          const end = pos + this.remaining;
          this.remaining = 0;
          this.collecting = null;
          this.headerLen = 0;
          onMessage({ type: this.type, length: this.length, body: chunk.subarray(pos, end), start: this.startBase, end });
          pos = end;
          continue;
        }
        this.collecting = this.capture[this.type] ? [] : null;
        if (this.remaining === 0) {
          this.finish(pos, onMessage);
          continue;
        }
      }
      const take = Math.min(this.remaining, n - pos);
      if (this.into) {
        this.filled += chunk.copy(this.into, this.filled, pos, pos + take);
      } else if (this.collecting) {
        this.collecting.push(chunk.subarray(pos, pos + take));
        this.filled += take;
        if (this.filled >= COLLECT_INTO && this.remaining > take) {
          this.into = Buffer.allocUnsafe(this.length - 4);
          let at = 0;
          for (const p of this.collecting) at += p.copy(this.into, at);
          this.collecting = [];
        }
      }
      this.remaining -= take;
      pos += take;
      if (this.remaining === 0) this.finish(pos, onMessage);
    }
    // A message still open continues in the next chunk: make its start relative to it.
    if (!this.atBoundary) this.startBase -= n;
  }

  private finish(end: number, onMessage: (m: ScannedMessage) => void): void {
    const parts = this.bodyLost ? null : this.collecting;
    const body = !parts ? undefined : this.into ? this.into : parts.length === 1 ? parts[0] : Buffer.concat(parts);
    this.headerLen = 0;
    this.collecting = null;
    this.into = null;
    this.filled = 0;
    this.bodyLost = false;
    onMessage({ type: this.type, length: this.length, body, start: this.startBase, end });
  }
}

const COLLECT_INTO = 1 << 20;

export function captureSet(types: string): Uint8Array {
  const set = new Uint8Array(256);
  for (const ch of types) set[ch.charCodeAt(0)] = 1;
  return set;
}

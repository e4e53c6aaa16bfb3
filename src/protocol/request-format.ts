// Checks the layout of the frontend messages the proxy reads in the data phase (Parse,
// Bind, Describe, Close, Query) before anything acts on them, as PostgreSQL's
// pq_getmsg* functions do: a body that does not match its message type ends that client
// with 08P01 naming what is wrong, never an exception deeper in the proxy.
import { Frontend } from './constants';
import { ProtocolError } from './messages';
import { printable } from './framer';

class Reader {
  pos = 0;
  constructor(private readonly b: Buffer, private readonly what: string) {}
  fail(why: string): never {
    throw new ProtocolError(`invalid message format: ${this.what} message ${why}`);
  }
  cstring(field: string): void {
    const end = this.b.indexOf(0, this.pos);
    if (end < 0) this.fail(`has no NUL-terminated ${field} (invalid string in message)`);
    this.pos = end + 1;
  }
  int16(field: string): number {
    if (this.b.length - this.pos < 2) this.fail(`ends before its ${field} (insufficient data left in message)`);
    const v = this.b.readInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  int32(field: string): number {
    if (this.b.length - this.pos < 4) this.fail(`ends before its ${field} (insufficient data left in message)`);
    const v = this.b.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  // An Int16 count, never negative, then that many `width`-byte items; returns the count.
  counted(countField: string, width: number, itemsField: string): number {
    const n = this.int16(`${countField} count`);
    if (n < 0) this.fail(`has a negative ${countField} count ${n}`);
    this.skip(width * n, itemsField);
    return n;
  }
  skip(n: number, field: string): void {
    if (n < 0 || this.b.length - this.pos < n) this.fail(`ends inside its ${field} (insufficient data left in message)`);
    this.pos += n;
  }
  end(): void {
    if (this.pos !== this.b.length) this.fail(`has ${this.b.length - this.pos} bytes after its last field`);
  }
}

export function checkRequestFormat(type: number, body: Buffer): void {
  switch (type) {
    case Frontend.Parse: {
      const r = new Reader(body, 'Parse');
      r.cstring('statement name');
      r.cstring('query string');
      r.counted('parameter type', 4, 'parameter types');
      return r.end();
    }
    case Frontend.Bind: {
      const r = new Reader(body, 'Bind');
      r.cstring('portal name');
      r.cstring('statement name');
      r.counted('parameter format', 2, 'parameter formats');
      const np = r.counted('parameter', 0, 'parameters'); // each with its own length:
      for (let i = 0; i < np; i++) {
        const len = r.int32(`parameter ${i + 1} length`);
        if (len < -1) r.fail(`has an invalid length ${len} for parameter ${i + 1}`);
        if (len > 0) r.skip(len, `parameter ${i + 1}`);
      }
      r.counted('result format', 2, 'result formats');
      return r.end();
    }
    case Frontend.Describe:
    case Frontend.Close: {
      const what = type === Frontend.Describe ? 'Describe' : 'Close';
      const r = new Reader(body, what);
      if (body.length < 1) r.fail('is empty');
      if (body[0] !== 0x53 && body[0] !== 0x50) r.fail(`has an invalid subtype "${printable(body[0])}" (expected S or P)`);
      r.pos = 1;
      r.cstring('name');
      return r.end();
    }
    case Frontend.Query: {
      const r = new Reader(body, 'Query');
      r.cstring('query string');
      return r.end();
    }
  }
}

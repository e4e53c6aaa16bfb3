// Builders and parsers for the few messages the proxy itself writes or reads.
// Data-path messages are never decoded here: they are forwarded as bytes.
import { AuthCode, Backend, PROTOCOL_3_0, TxStatus } from './constants';

// Builds one typed message: type byte, int32 length, body.
export function message(type: number, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = type;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

const cstr = (s: string): Buffer => Buffer.from(s + '\0', 'utf8');
const int32 = (n: number): Buffer => {
  const b = Buffer.allocUnsafe(4);
  b.writeInt32BE(n, 0);
  return b;
};

export interface ErrorFields {
  severity?: 'ERROR' | 'FATAL' | 'PANIC' | 'WARNING' | 'NOTICE' | 'LOG' | 'INFO' | 'DEBUG';
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

function fieldsBody(f: ErrorFields): Buffer {
  const sev = f.severity ?? 'ERROR';
  const parts = [Buffer.from('S'), cstr(sev), Buffer.from('V'), cstr(sev), Buffer.from('C'), cstr(f.code), Buffer.from('M'), cstr(f.message)];
  if (f.detail) parts.push(Buffer.from('D'), cstr(f.detail));
  if (f.hint) parts.push(Buffer.from('H'), cstr(f.hint));
  parts.push(Buffer.from([0]));
  return Buffer.concat(parts);
}

export const errorResponse = (f: ErrorFields): Buffer => message(Backend.ErrorResponse, fieldsBody(f));
export const noticeResponse = (f: ErrorFields): Buffer =>
  message(Backend.NoticeResponse, fieldsBody({ severity: 'NOTICE', ...f }));

export const authenticationOk = (): Buffer => message(Backend.Authentication, int32(AuthCode.Ok));
export const authenticationCleartext = (): Buffer => message(Backend.Authentication, int32(AuthCode.CleartextPassword));
export const authenticationMd5 = (salt: Buffer): Buffer =>
  message(Backend.Authentication, Buffer.concat([int32(AuthCode.MD5Password), salt]));
export const authenticationSasl = (mechanisms: string[]): Buffer =>
  message(Backend.Authentication, Buffer.concat([int32(AuthCode.SASL), ...mechanisms.map(cstr), Buffer.from([0])]));
export const authenticationSaslContinue = (data: Buffer): Buffer =>
  message(Backend.Authentication, Buffer.concat([int32(AuthCode.SASLContinue), data]));
export const authenticationSaslFinal = (data: Buffer): Buffer =>
  message(Backend.Authentication, Buffer.concat([int32(AuthCode.SASLFinal), data]));

export const parameterStatus = (name: string, value: string): Buffer =>
  message(Backend.ParameterStatus, Buffer.concat([cstr(name), cstr(value)]));
export const backendKeyData = (pid: number, key: number): Buffer =>
  message(Backend.BackendKeyData, Buffer.concat([int32(pid), int32(key)]));
export const readyForQuery = (status: TxStatus): Buffer => message(Backend.ReadyForQuery, Buffer.from(status));
export const negotiateProtocolVersion = (minor: number, unrecognized: string[]): Buffer =>
  message(
    Backend.NegotiateProtocolVersion,
    Buffer.concat([int32(minor), int32(unrecognized.length), ...unrecognized.map(cstr)]),
  );

// Frontend messages the proxy sends to servers.
export const query = (sql: string): Buffer => message('Q'.charCodeAt(0), cstr(sql));
export const terminate = (): Buffer => message('X'.charCodeAt(0), Buffer.alloc(0));
export const passwordMessage = (password: string): Buffer => message('p'.charCodeAt(0), cstr(password));
export const saslInitialResponse = (mechanism: string, data: Buffer): Buffer =>
  message('p'.charCodeAt(0), Buffer.concat([cstr(mechanism), int32(data.length), data]));
export const saslResponse = (data: Buffer): Buffer => message('p'.charCodeAt(0), data);

const int16 = (n: number): Buffer => {
  const b = Buffer.allocUnsafe(2);
  b.writeInt16BE(n, 0);
  return b;
};

// Parse (unnamed), Bind with text parameters, Execute, Sync: one statement with its
// parameters sent apart from the SQL text, never spliced into it.
export function extendedQuery(sql: string, params: string[]): Buffer {
  const bindParams = params.flatMap((p) => {
    const v = Buffer.from(p, 'utf8');
    return [int32(v.length), v];
  });
  return Buffer.concat([
    message('P'.charCodeAt(0), Buffer.concat([cstr(''), cstr(sql), int16(0)])),
    message('B'.charCodeAt(0), Buffer.concat([cstr(''), cstr(''), int16(0), int16(params.length), ...bindParams, int16(0)])),
    message('E'.charCodeAt(0), Buffer.concat([cstr(''), int32(0)])),
    message('S'.charCodeAt(0), Buffer.alloc(0)),
  ]);
}

export function startupMessage(params: Record<string, string>): Buffer {
  const body = Buffer.concat([
    int32(PROTOCOL_3_0),
    ...Object.entries(params).flatMap(([k, v]) => [cstr(k), cstr(v)]),
    Buffer.from([0]),
  ]);
  return Buffer.concat([int32(4 + body.length), body]);
}

export function cancelRequest(pid: number, key: number): Buffer {
  const b = Buffer.allocUnsafe(16);
  b.writeInt32BE(16, 0);
  b.writeInt32BE(80877102, 4);
  b.writeInt32BE(pid, 8);
  b.writeInt32BE(key, 12);
  return b;
}

// Reads NUL-terminated strings from a body; throws on a missing terminator.
export class BodyReader {
  pos = 0;
  constructor(readonly buf: Buffer) {}
  get remaining(): number {
    return this.buf.length - this.pos;
  }
  cstring(): string {
    const end = this.buf.indexOf(0, this.pos);
    if (end < 0) throw new ProtocolError('missing string terminator');
    const s = this.buf.toString('utf8', this.pos, end);
    this.pos = end + 1;
    return s;
  }
  int32(): number {
    if (this.remaining < 4) throw new ProtocolError('message too short');
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  bytes(n: number): Buffer {
    if (n < 0 || this.remaining < n) throw new ProtocolError('message too short');
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  rest(): Buffer {
    const b = this.buf.subarray(this.pos);
    this.pos = this.buf.length;
    return b;
  }
}

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

// Parses the fields of an ErrorResponse/NoticeResponse body into a map keyed by field code.
export function parseErrorFields(body: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = 0;
  while (pos < body.length && body[pos] !== 0) {
    const code = String.fromCharCode(body[pos]);
    const end = body.indexOf(0, pos + 1);
    if (end < 0) break;
    out[code] = body.toString('utf8', pos + 1, end);
    pos = end + 1;
  }
  return out;
}

export function parseParameterStatus(body: Buffer): [string, string] {
  const r = new BodyReader(body);
  return [r.cstring(), r.cstring()];
}

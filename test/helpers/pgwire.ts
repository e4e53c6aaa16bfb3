// A raw PostgreSQL wire-protocol client over node:net, for the tests that need
// bytes no driver would send (bad input, pipelining, cancel keys, startup packets).
// Speaks protocol 3.0 only; enough SCRAM/md5/cleartext to log in through the proxy.
import * as crypto from 'node:crypto';
import * as net from 'node:net';
import { parseErrorFields } from '../../src/protocol/messages';

export interface Msg {
  type: string;
  body: Buffer;
}

export class PgError extends Error {
  constructor(readonly fields: Record<string, string>) {
    super(`${fields.S ?? 'ERROR'} ${fields.C ?? '?????'}: ${fields.M ?? '(no message)'}`);
    this.name = 'PgError';
  }
  get code(): string {
    return this.fields.C ?? '';
  }
}

// ---- message builders -------------------------------------------------------

const PROTOCOL_3 = 0x00030000;
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;

function cstr(s: string): Buffer {
  return Buffer.concat([Buffer.from(s, 'utf8'), Buffer.from([0])]);
}
export function int32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n | 0);
  return b;
}
export function int16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeInt16BE(n);
  return b;
}

export function startupMessage(params: Record<string, string>, version = PROTOCOL_3): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of Object.entries(params)) parts.push(cstr(k), cstr(v));
  parts.push(Buffer.from([0]));
  return rawStartup(Buffer.concat(parts), version);
}
// A startup packet whose parameters are raw bytes (so they may be malformed), with the
// true length or the one given (which may lie).
export function rawStartup(params: Buffer, version = PROTOCOL_3, length?: number): Buffer {
  return Buffer.concat([int32(length ?? params.length + 8), int32(version), params]);
}
export function sslRequest(): Buffer {
  return Buffer.concat([int32(8), int32(SSL_REQUEST_CODE)]);
}
export function gssencRequest(): Buffer {
  return Buffer.concat([int32(8), int32(GSSENC_REQUEST_CODE)]);
}
export function cancelRequest(pid: number, secret: number): Buffer {
  return Buffer.concat([int32(16), int32(CANCEL_REQUEST_CODE), int32(pid), int32(secret)]);
}
// A typed frontend message: type byte, int32 length (including itself), body.
export function message(type: string, body: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([Buffer.from(type, 'latin1'), int32(body.length + 4), body]);
}
export function query(sql: string): Buffer {
  return message('Q', cstr(sql));
}
export function parse(name: string, sql: string, paramTypes: number[] = []): Buffer {
  return message('P', Buffer.concat([cstr(name), cstr(sql), int16(paramTypes.length), ...paramTypes.map(int32)]));
}
export function bind(portal: string, stmt: string, params: (string | null)[]): Buffer {
  const parts: Buffer[] = [cstr(portal), cstr(stmt), int16(0), int16(params.length)];
  for (const p of params) {
    if (p === null) parts.push(int32(-1));
    else {
      const b = Buffer.from(p, 'utf8');
      parts.push(int32(b.length), b);
    }
  }
  parts.push(int16(0));
  return message('B', Buffer.concat(parts));
}
export function describePortal(portal = ''): Buffer {
  return message('D', Buffer.concat([Buffer.from('P'), cstr(portal)]));
}
export function execute(portal = '', maxRows = 0): Buffer {
  return message('E', Buffer.concat([cstr(portal), int32(maxRows)]));
}
export function sync(): Buffer {
  return message('S');
}
export function flush(): Buffer {
  return message('H');
}
export function terminate(): Buffer {
  return message('X');
}
export function copyData(data: string | Buffer): Buffer {
  return message('d', Buffer.isBuffer(data) ? data : Buffer.from(data, 'utf8'));
}
export function copyDone(): Buffer {
  return message('c');
}
export function copyFail(reason: string): Buffer {
  return message('f', cstr(reason));
}
// One extended-protocol round: Parse (unnamed) / Bind / Execute / Sync.
export function extendedQuery(sql: string, params: (string | null)[] = []): Buffer {
  return Buffer.concat([parse('', sql), bind('', '', params), describePortal(''), execute('', 0), sync()]);
}

// ---- message parsers --------------------------------------------------------

// The fields of an ErrorResponse/NoticeResponse by code: the proxy's own parser (one copy).
export const parseFields = parseErrorFields;
export function parseDataRow(body: Buffer): (string | null)[] {
  const n = body.readInt16BE(0);
  const cols: (string | null)[] = [];
  let i = 2;
  for (let c = 0; c < n; c++) {
    const len = body.readInt32BE(i);
    i += 4;
    if (len < 0) cols.push(null);
    else {
      cols.push(body.toString('utf8', i, i + len));
      i += len;
    }
  }
  return cols;
}
export function parseParameterStatus(body: Buffer): [string, string] {
  const a = body.indexOf(0);
  const b = body.indexOf(0, a + 1);
  return [body.toString('utf8', 0, a), body.toString('utf8', a + 1, b)];
}
export function commandTag(body: Buffer): string {
  return body.toString('utf8', 0, body.indexOf(0));
}

// ---- the connection ---------------------------------------------------------

export class RawConn {
  private buf = Buffer.alloc(0);
  closed = false;
  closeError: Error | undefined;
  private notify: (() => void)[] = [];

  private constructor(readonly sock: net.Socket) {
    sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    sock.on('error', (e) => {
      this.closeError = e;
    });
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  private wake(): void {
    const n = this.notify;
    this.notify = [];
    for (const f of n) f();
  }

  static connect(port: number, host = '127.0.0.1', timeoutMs = 5000): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const opts: net.NetConnectOpts = host.startsWith('/') ? { path: `${host}/.s.PGSQL.${port}` } : { port, host };
      const sock = net.connect(opts);
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new Error(`connect to ${host}:${port} timed out`));
      }, timeoutMs);
      sock.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.setNoDelay(true);
        resolve(new RawConn(sock));
      });
    });
  }

  write(b: Buffer): void {
    this.sock.write(b);
  }
  end(b?: Buffer): void {
    if (b) this.sock.end(b);
    else this.sock.end();
  }
  destroy(): void {
    this.sock.destroy();
  }
  get pending(): number {
    return this.buf.length;
  }

  // Waits until cond() holds, the socket closes, or the timeout passes.
  private async waitFor(cond: () => boolean, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (this.closed) return cond();
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.notify.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return true;
  }

  async readBytes(n: number, timeoutMs = 5000): Promise<Buffer> {
    const ok = await this.waitFor(() => this.buf.length >= n, timeoutMs);
    if (!ok) throw new Error(this.closed ? `connection closed while waiting for ${n} bytes` : `timed out waiting for ${n} bytes`);
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  private haveMessage(): boolean {
    return this.buf.length >= 5 && this.buf.length >= 1 + this.buf.readInt32BE(1);
  }

  async readMessage(timeoutMs = 5000): Promise<Msg> {
    const ok = await this.waitFor(() => this.haveMessage(), timeoutMs);
    if (!ok) {
      throw new Error(
        this.closed ? `connection closed while waiting for a message (${this.buf.length} bytes left)` : `timed out after ${timeoutMs} ms waiting for a message`,
      );
    }
    const len = this.buf.readInt32BE(1);
    const msg = { type: String.fromCharCode(this.buf[0]), body: Buffer.from(this.buf.subarray(5, 1 + len)) };
    this.buf = this.buf.subarray(1 + len);
    return msg;
  }

  // Reads messages up to and including the first of the given type.
  async readUntil(type: string, timeoutMs = 5000): Promise<Msg[]> {
    const deadline = Date.now() + timeoutMs;
    const out: Msg[] = [];
    for (;;) {
      const m = await this.readMessage(Math.max(1, deadline - Date.now()));
      out.push(m);
      if (m.type === type) return out;
    }
  }

  // Resolves true once the peer has closed the connection (all data read or not).
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    return this.waitFor(() => this.closed, timeoutMs);
  }

  // Reads what the peer sends until it closes: returns all complete messages.
  async readAllUntilClose(timeoutMs = 5000): Promise<{ msgs: Msg[]; closed: boolean; rest: Buffer }> {
    const closed = await this.waitClosed(timeoutMs);
    const msgs: Msg[] = [];
    while (this.haveMessage()) msgs.push(await this.readMessage(10));
    return { msgs, closed, rest: this.buf };
  }
}

// ---- login ------------------------------------------------------------------

export interface LoginOptions {
  user: string;
  password?: string;
  database?: string;
  params?: Record<string, string>;
  host?: string;
  // Send an SSLRequest / GSSENCRequest first and expect 'N'.
  sslFirst?: boolean;
  gssFirst?: boolean;
}

export interface Session {
  conn: RawConn;
  params: Map<string, string>;
  pid: number;
  secret: number;
  // Authentication request codes seen (0 ok, 3 cleartext, 5 md5, 10 SASL, ...).
  authCodes: number[];
  saslMechanisms: string[];
  // Every message received during login, in order.
  loginMessages: Msg[];
}

function hmac(key: Buffer, data: string | Buffer): Buffer {
  return crypto.createHmac('sha256', key).update(data).digest();
}
function sha256(data: Buffer): Buffer {
  return crypto.createHash('sha256').update(data).digest();
}
function md5hex(s: string | Buffer): string {
  return crypto.createHash('md5').update(s).digest('hex');
}

// The md5 password hash PostgreSQL and PgBouncer store: "md5" + md5(password || user).
export function md5Hash(user: string, password: string): string {
  return 'md5' + md5hex(password + user);
}

// A SCRAM-SHA-256 verifier in PostgreSQL's pg_authid format.
export function scramVerifier(password: string, iterations = 4096): string {
  const salt = crypto.randomBytes(16);
  const salted = crypto.pbkdf2Sync(password, salt, iterations, 32, 'sha256');
  const storedKey = sha256(hmac(salted, 'Client Key'));
  const serverKey = hmac(salted, 'Server Key');
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

export async function login(port: number, o: LoginOptions, timeoutMs = 10000): Promise<Session> {
  const conn = await RawConn.connect(port, o.host ?? '127.0.0.1');
  try {
    if (o.sslFirst) {
      conn.write(sslRequest());
      const r = await conn.readBytes(1, timeoutMs);
      if (r.toString('latin1') !== 'N') throw new Error(`SSLRequest answered ${JSON.stringify(r.toString('latin1'))}, expected 'N'`);
    }
    if (o.gssFirst) {
      conn.write(gssencRequest());
      const r = await conn.readBytes(1, timeoutMs);
      if (r.toString('latin1') !== 'N') throw new Error(`GSSENCRequest answered ${JSON.stringify(r.toString('latin1'))}, expected 'N'`);
    }
    conn.write(startupMessage({ user: o.user, database: o.database ?? o.user, ...(o.params ?? {}) }));
    const s: Session = { conn, params: new Map(), pid: 0, secret: 0, authCodes: [], saslMechanisms: [], loginMessages: [] };
    let clientFirstBare = '';
    let clientNonce = '';
    let serverSignature: Buffer | undefined;
    let salted: Buffer | undefined;
    let authMessage = '';
    const password = o.password ?? '';
    for (;;) {
      const m = await conn.readMessage(timeoutMs);
      s.loginMessages.push(m);
      if (m.type === 'E') throw new PgError(parseFields(m.body));
      if (m.type === 'S') {
        const [k, v] = parseParameterStatus(m.body);
        s.params.set(k, v);
      } else if (m.type === 'K') {
        s.pid = m.body.readInt32BE(0);
        s.secret = m.body.readInt32BE(4);
      } else if (m.type === 'Z') {
        return s;
      } else if (m.type === 'R') {
        const code = m.body.readInt32BE(0);
        s.authCodes.push(code);
        if (code === 0) continue;
        if (code === 3) conn.write(message('p', cstr(password)));
        else if (code === 5) {
          const salt = m.body.subarray(4, 8);
          const inner = md5hex(password + o.user);
          conn.write(message('p', cstr('md5' + md5hex(Buffer.concat([Buffer.from(inner), salt])))));
        } else if (code === 10) {
          const mechs = m.body.toString('utf8', 4).split('\0').filter(Boolean);
          s.saslMechanisms = mechs;
          if (!mechs.includes('SCRAM-SHA-256')) throw new Error(`no SCRAM-SHA-256 in ${mechs.join(',')}`);
          clientNonce = crypto.randomBytes(18).toString('base64');
          clientFirstBare = `n=,r=${clientNonce}`;
          const first = Buffer.from('n,,' + clientFirstBare);
          conn.write(message('p', Buffer.concat([cstr('SCRAM-SHA-256'), int32(first.length), first])));
        } else if (code === 11) {
          const serverFirst = m.body.toString('utf8', 4);
          const attrs = Object.fromEntries(serverFirst.split(',').map((kv) => [kv[0], kv.slice(2)]));
          if (!attrs.r?.startsWith(clientNonce)) throw new Error('SCRAM: server nonce does not extend the client nonce');
          salted = crypto.pbkdf2Sync(password, Buffer.from(attrs.s, 'base64'), parseInt(attrs.i, 10), 32, 'sha256');
          const clientKey = hmac(salted, 'Client Key');
          const storedKey = sha256(clientKey);
          const finalNoProof = `c=biws,r=${attrs.r}`;
          authMessage = `${clientFirstBare},${serverFirst},${finalNoProof}`;
          const sig = hmac(storedKey, authMessage);
          const proof = Buffer.alloc(32);
          for (let i = 0; i < 32; i++) proof[i] = clientKey[i] ^ sig[i];
          serverSignature = hmac(hmac(salted, 'Server Key'), authMessage);
          conn.write(message('p', Buffer.from(`${finalNoProof},p=${proof.toString('base64')}`)));
        } else if (code === 12) {
          const fin = m.body.toString('utf8', 4);
          const v = fin.startsWith('v=') ? Buffer.from(fin.slice(2).split(',')[0], 'base64') : undefined;
          if (!v || !serverSignature || !v.equals(serverSignature)) throw new Error(`SCRAM: bad server signature (${fin})`);
        } else throw new Error(`unsupported authentication request ${code}`);
      } else if (m.type === 'N') {
        /* notice during login: ignore */
      } else throw new Error(`unexpected message '${m.type}' during login`);
    }
  } catch (e) {
    conn.destroy();
    throw e;
  }
}

// Result of one simple or extended round up to ReadyForQuery.
export interface RoundResult {
  rows: (string | null)[][];
  tags: string[];
  errors: Record<string, string>[];
  notices: Record<string, string>[];
  status: string; // ReadyForQuery transaction status
  messages: Msg[];
}

export function summarize(msgs: Msg[]): RoundResult {
  const r: RoundResult = { rows: [], tags: [], errors: [], notices: [], status: '', messages: msgs };
  for (const m of msgs) {
    if (m.type === 'D') r.rows.push(parseDataRow(m.body));
    else if (m.type === 'C') r.tags.push(commandTag(m.body));
    else if (m.type === 'E') r.errors.push(parseFields(m.body));
    else if (m.type === 'N') r.notices.push(parseFields(m.body));
    else if (m.type === 'Z') r.status = m.body.toString('latin1', 0, 1);
  }
  return r;
}

// Runs one simple Query and reads up to ReadyForQuery.
export async function simpleQuery(conn: RawConn, sql: string, timeoutMs = 10000): Promise<RoundResult> {
  conn.write(query(sql));
  return summarize(await conn.readUntil('Z', timeoutMs));
}

// Sends a CancelRequest on a fresh connection and waits for the proxy to close it.
export async function sendCancel(port: number, pid: number, secret: number, host = '127.0.0.1'): Promise<void> {
  const c = await RawConn.connect(port, host);
  c.write(cancelRequest(pid, secret));
  await c.waitClosed(5000);
  c.destroy();
}

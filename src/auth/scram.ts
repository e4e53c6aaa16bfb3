// SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it.
//
// Server side (ScramServerSession): authenticates a client of the proxy against a stored
// secret, which is either a verifier "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>"
// (the format of pg_authid.rolpassword) or a plain password.
// Client side (ScramClientSession): logs the proxy in to a PostgreSQL server.
//
// As in PostgreSQL: the only mechanism offered is "SCRAM-SHA-256" (no -PLUS, so no
// channel binding). A client may send the gs2 header "n,," (it does not support channel
// binding) or "y,," (it does, but thinks the server does not); "p=" is rejected, as is an
// authorization identity. The user name inside the SCRAM message is ignored (the startup
// packet's user is the one that counts), exactly like PostgreSQL.
//
// Messages are parsed as latin1 so that the bytes that make up AuthMessage are used
// exactly as received, whatever the client put in the user name.

import {
  createHash,
  createHmac,
  pbkdf2Sync,
  randomBytes,
  timingSafeEqual,
} from 'crypto';

export const SCRAM_MECHANISM = 'SCRAM-SHA-256';
export const SCRAM_DEFAULT_ITERATIONS = 4096;
const KEY_LEN = 32; // SHA-256 output
const NONCE_BYTES = 18; // what PostgreSQL and libpq use

/** A malformed or out-of-order SCRAM message: the caller answers with SQLSTATE 08P01. */
export class AuthProtocolError extends Error {
  readonly sqlstate = '08P01';
  constructor(message: string) {
    super(message);
    this.name = 'AuthProtocolError';
  }
}

// What logs the proxy in to a server as a user whose password it never saw (SCRAM
// pass-through): the ClientKey a client's proof revealed, and the verifier's ServerKey,
// salt and iteration count. Only a server storing that same verifier accepts it.
export interface ScramKeys {
  clientKey: Buffer;
  serverKey: Buffer;
  salt: Buffer;
  iterations: number;
}

export interface ScramVerifier {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

// ---------------------------------------------------------------------------------
// Primitives

function hmac(key: Buffer, data: Buffer | string): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.alloc(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

/** Constant-time equality for buffers of any length (length itself is not secret here). */
export function constantTimeEqual(a: Buffer, b: Buffer): boolean {
  if (a.length !== b.length) {
    // Still spend the time of a comparison so the mismatch is not observably faster.
    timingSafeEqual(a, a);
    return false;
  }
  return timingSafeEqual(a, b);
}

const B64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function decodeBase64(s: string, what: string): Buffer {
  if (!B64_RE.test(s)) throw new AuthProtocolError(`malformed SCRAM message: invalid base64 in ${what}`);
  return Buffer.from(s, 'base64');
}

// ---------------------------------------------------------------------------------
// SASLprep (RFC 4013), the way PostgreSQL's pg_saslprep uses it: a pure-ASCII password
// is used as is; otherwise map, NFKC-normalize and, if the result contains prohibited
// characters (or is empty), fall back to the password exactly as given.
// Not done: the unassigned-code-point and bidi checks (a password using those falls
// under "use as given" in PostgreSQL only if it fails them, so such passwords may differ).

const NON_ASCII_SPACE = /[\u00A0\u1680\u2000-\u200B\u202F\u205F\u3000]/gu;
const MAPPED_TO_NOTHING = /[\u00AD\u034F\u1806\u180B-\u180D\u200B-\u200D\u2060\uFE00-\uFE0F\uFEFF]/gu;
const PROHIBITED =
  /[\u0000-\u001F\u007F-\u009F\u0340\u0341\u06DD\u070F\u1680\u180E\u2000-\u200F\u2028-\u202F\u205F-\u2063\u206A-\u206F\u2FF0-\u2FFB\u3000\uD800-\uDFFF\uE000-\uF8FF\uFDD0-\uFDEF\uFEFF\uFFF9-\uFFFF\u{1D173}-\u{1D17A}\u{E0001}\u{E0020}-\u{E007F}\u{F0000}-\u{FFFFD}\u{100000}-\u{10FFFD}]|[\u{1FFFE}\u{1FFFF}\u{2FFFE}\u{2FFFF}\u{3FFFE}\u{3FFFF}\u{4FFFE}\u{4FFFF}\u{5FFFE}\u{5FFFF}\u{6FFFE}\u{6FFFF}\u{7FFFE}\u{7FFFF}\u{8FFFE}\u{8FFFF}\u{9FFFE}\u{9FFFF}\u{AFFFE}\u{AFFFF}\u{BFFFE}\u{BFFFF}\u{CFFFE}\u{CFFFF}\u{DFFFE}\u{DFFFF}\u{EFFFE}\u{EFFFF}]/u;

export function saslprep(password: string): string {
  // eslint-disable-next-line no-control-regex
  if (/^[\x00-\x7F]*$/.test(password)) return password;
  const mapped = password.replace(NON_ASCII_SPACE, ' ').replace(MAPPED_TO_NOTHING, '');
  const normalized = mapped.normalize('NFKC');
  if (normalized.length === 0 || PROHIBITED.test(normalized)) return password;
  return normalized;
}

function saltedPassword(password: string, salt: Buffer, iterations: number): Buffer {
  return pbkdf2Sync(Buffer.from(saslprep(password), 'utf8'), salt, iterations, KEY_LEN, 'sha256');
}

function keysFromSalted(salted: Buffer): { clientKey: Buffer; storedKey: Buffer; serverKey: Buffer } {
  const clientKey = hmac(salted, 'Client Key');
  return { clientKey, storedKey: sha256(clientKey), serverKey: hmac(salted, 'Server Key') };
}

// ---------------------------------------------------------------------------------
// Verifiers

const VERIFIER_RE = /^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$/;

export function isScramVerifier(s: string): boolean {
  try {
    parseScramVerifier(s);
    return true;
  } catch {
    return false;
  }
}

/** Parse "SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>"; throws Error saying what is wrong. */
export function parseScramVerifier(s: string): ScramVerifier {
  const m = VERIFIER_RE.exec(s);
  if (!m) {
    throw new Error('not a SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)');
  }
  const iterations = Number(m[1]);
  if (!Number.isSafeInteger(iterations) || iterations < 1) throw new Error('SCRAM verifier: bad iteration count');
  for (const [part, what] of [
    [m[2]!, 'salt'],
    [m[3]!, 'StoredKey'],
    [m[4]!, 'ServerKey'],
  ] as const) {
    if (!B64_RE.test(part)) throw new Error(`SCRAM verifier: ${what} is not valid base64`);
  }
  const salt = Buffer.from(m[2]!, 'base64');
  const storedKey = Buffer.from(m[3]!, 'base64');
  const serverKey = Buffer.from(m[4]!, 'base64');
  if (salt.length === 0) throw new Error('SCRAM verifier: empty salt');
  if (storedKey.length !== KEY_LEN) throw new Error('SCRAM verifier: StoredKey is not 32 bytes');
  if (serverKey.length !== KEY_LEN) throw new Error('SCRAM verifier: ServerKey is not 32 bytes');
  return { iterations, salt, storedKey, serverKey };
}

// A secret of this process that makes the mock salts below unpredictable to clients.
const MOCK_NONCE = randomBytes(32);

/**
 * A verifier for a user that does not exist, so that its SCRAM exchange looks like a real
 * one (as PostgreSQL's mock authentication): the same salt on every attempt for one name,
 * the default iteration count, keys nobody can match. Costs no PBKDF2.
 */
export function mockScramVerifier(user: string): string {
  const salt = createHash('sha256').update(MOCK_NONCE).update(user, 'utf8').digest().subarray(0, 16);
  return formatScramVerifier({ iterations: SCRAM_DEFAULT_ITERATIONS, salt, storedKey: randomBytes(KEY_LEN), serverKey: randomBytes(KEY_LEN) });
}

/** Pass-through keys from a verifier and the ClientKey a client's proof against it revealed. */
export function scramKeysFrom(verifier: string, clientKey: Buffer): ScramKeys {
  const v = parseScramVerifier(verifier);
  return { clientKey, serverKey: v.serverKey, salt: v.salt, iterations: v.iterations };
}

export function formatScramVerifier(v: ScramVerifier): string {
  return `SCRAM-SHA-256$${v.iterations}:${v.salt.toString('base64')}$${v.storedKey.toString('base64')}:${v.serverKey.toString('base64')}`;
}

/** The verifier PostgreSQL would store for this password (random 16-byte salt unless given). */
export function makeScramVerifier(
  password: string,
  iterations: number = SCRAM_DEFAULT_ITERATIONS,
  salt?: Buffer,
): string {
  return formatScramVerifier(deriveVerifier(password, iterations, salt ?? randomBytes(16)));
}

function deriveVerifier(password: string, iterations: number, salt: Buffer): ScramVerifier {
  if (!Number.isSafeInteger(iterations) || iterations < 1) throw new Error('SCRAM: iterations must be a positive integer');
  const { storedKey, serverKey } = keysFromSalted(saltedPassword(password, salt, iterations));
  return { iterations, salt, storedKey, serverKey };
}

// Plain passwords: derive once per password (random salt per process), not per login.
const PLAIN_CACHE_MAX = 1024;
const plainCache = new Map<string, ScramVerifier>();

function verifierForPlain(password: string): ScramVerifier {
  const hit = plainCache.get(password);
  if (hit) return hit;
  const v = deriveVerifier(password, SCRAM_DEFAULT_ITERATIONS, randomBytes(16));
  if (plainCache.size >= PLAIN_CACHE_MAX) plainCache.delete(plainCache.keys().next().value as string);
  plainCache.set(password, v);
  return v;
}

/** Turn a stored secret (SCRAM verifier or plain password) into a verifier. md5 hashes cannot do SCRAM. */
export function scramVerifierFor(secret: string): ScramVerifier {
  if (secret.startsWith('SCRAM-SHA-256$')) return parseScramVerifier(secret);
  if (/^md5[0-9a-f]{32}$/.test(secret)) {
    throw new Error('an md5 password hash cannot be used for SCRAM-SHA-256 authentication');
  }
  return verifierForPlain(secret);
}

// ---------------------------------------------------------------------------------
// Message parsing helpers

function isPrintableNonce(s: string): boolean {
  if (s.length === 0) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x21 || c > 0x7e || c === 0x2c) return false;
  }
  return true;
}

/** Split "a=x,b=y" into attributes, keeping order; each must be "<letter>=<value>". */
function parseAttributes(s: string, what: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const part of s.split(',')) {
    if (part.length < 2 || part[1] !== '=' || !/^[A-Za-z]$/.test(part[0]!)) {
      throw new AuthProtocolError(`malformed SCRAM message: bad attribute in ${what}`);
    }
    out.push([part[0]!, part.slice(2)]);
  }
  return out;
}

function escapeSaslName(name: string): string {
  return name.replace(/=/g, '=3D').replace(/,/g, '=2C');
}

// ---------------------------------------------------------------------------------
// Server side

export interface ScramServerOptions {
  /** The server's part of the nonce (tests); default: 18 random bytes, base64. */
  serverNonce?: string;
}

export type ScramFinalResult =
  | { ok: true; serverFinal: Buffer; clientKey: Buffer }
  | { ok: false; reason: string };

export class ScramServerSession {
  private readonly verifier: ScramVerifier;
  private readonly serverNoncePart: string;
  private state: 'init' | 'first-done' | 'done' = 'init';
  private gs2Header = '';
  private clientFirstBare = '';
  private serverFirst = '';
  private nonce = '';

  /** secret: a SCRAM verifier or a plain password. Throws Error for an md5 hash or a broken verifier. */
  constructor(secret: string, opts: ScramServerOptions = {}) {
    this.verifier = scramVerifierFor(secret);
    this.serverNoncePart = opts.serverNonce ?? randomBytes(NONCE_BYTES).toString('base64');
    if (!isPrintableNonce(this.serverNoncePart)) throw new Error('SCRAM: server nonce must be printable ASCII without commas');
  }

  /** Does a cleartext password match a stored SCRAM verifier? (auth_type plain against a verifier) */
  static passwordMatchesVerifier(password: string, verifier: string): boolean {
    let v: ScramVerifier;
    try {
      v = parseScramVerifier(verifier);
    } catch {
      return false;
    }
    const { storedKey } = keysFromSalted(saltedPassword(password, v.salt, v.iterations));
    return timingSafeEqual(storedKey, v.storedKey);
  }

  /** The mechanisms to list in AuthenticationSASL. */
  static mechanisms(): string[] {
    return [SCRAM_MECHANISM];
  }

  /** client-first-message (the SASLInitialResponse data) -> server-first-message. */
  handleClientFirst(msg: Buffer): Buffer {
    if (this.state !== 'init') throw new AuthProtocolError('unexpected SCRAM client-first-message');
    this.state = 'done'; // until proven well-formed: any failure ends the exchange
    const s = msg.toString('latin1');
    // gs2-header: gs2-cbind-flag "," [authzid] ","
    const flag = s[0];
    if (flag === 'p') {
      throw new AuthProtocolError('malformed SCRAM message: client requires channel binding, which is not offered (SCRAM-SHA-256-PLUS is not supported)');
    }
    if ((flag !== 'n' && flag !== 'y') || s[1] !== ',') {
      throw new AuthProtocolError('malformed SCRAM message: unexpected channel-binding flag');
    }
    if (s[2] === 'a') throw new AuthProtocolError('malformed SCRAM message: authorization identity is not supported');
    if (s[2] !== ',') throw new AuthProtocolError('malformed SCRAM message: bad gs2 header');
    this.gs2Header = s.slice(0, 3);
    const bare = s.slice(3);
    const attrs = parseAttributes(bare, 'client-first-message');
    if (attrs[0]?.[0] === 'm') throw new AuthProtocolError('malformed SCRAM message: mandatory extensions are not supported');
    if (attrs[0]?.[0] !== 'n') throw new AuthProtocolError('malformed SCRAM message: expected n= (user name)');
    if (attrs[1]?.[0] !== 'r') throw new AuthProtocolError('malformed SCRAM message: expected r= (nonce)');
    const clientNonce = attrs[1][1];
    if (!isPrintableNonce(clientNonce)) throw new AuthProtocolError('malformed SCRAM message: invalid client nonce');
    // Any further attributes are optional extensions: ignored, as PostgreSQL does.
    this.clientFirstBare = bare;
    this.nonce = clientNonce + this.serverNoncePart;
    this.serverFirst = `r=${this.nonce},s=${this.verifier.salt.toString('base64')},i=${this.verifier.iterations}`;
    this.state = 'first-done';
    return Buffer.from(this.serverFirst, 'latin1');
  }

  /** client-final-message -> server-final-message, or ok:false for a wrong password (28P01). */
  handleClientFinal(msg: Buffer): ScramFinalResult {
    if (this.state !== 'first-done') throw new AuthProtocolError('unexpected SCRAM client-final-message');
    this.state = 'done';
    const s = msg.toString('latin1');
    const attrs = parseAttributes(s, 'client-final-message');
    if (attrs[0]?.[0] !== 'c') throw new AuthProtocolError('malformed SCRAM message: expected c= (channel binding)');
    const cbind = decodeBase64(attrs[0][1], 'channel binding').toString('latin1');
    if (cbind !== this.gs2Header) {
      throw new AuthProtocolError('malformed SCRAM message: channel binding data does not match the gs2 header');
    }
    if (attrs[1]?.[0] !== 'r') throw new AuthProtocolError('malformed SCRAM message: expected r= (nonce)');
    if (attrs[1][1] !== this.nonce) throw new AuthProtocolError('invalid SCRAM response: nonce does not match');
    const last = attrs[attrs.length - 1]!;
    if (attrs.length < 3 || last[0] !== 'p') throw new AuthProtocolError('malformed SCRAM message: expected p= (proof) at the end');
    const proof = decodeBase64(last[1], 'proof');
    if (proof.length !== KEY_LEN) throw new AuthProtocolError('malformed SCRAM message: proof has the wrong length');
    const withoutProof = s.slice(0, s.length - last[1].length - 3); // drop ",p=<proof>"
    const authMessage = Buffer.from(`${this.clientFirstBare},${this.serverFirst},${withoutProof}`, 'latin1');

    const clientSignature = hmac(this.verifier.storedKey, authMessage);
    const clientKey = xor(proof, clientSignature);
    if (!constantTimeEqual(sha256(clientKey), this.verifier.storedKey)) {
      return { ok: false, reason: 'password authentication failed (SCRAM proof does not match)' };
    }
    const serverSignature = hmac(this.verifier.serverKey, authMessage);
    return { ok: true, serverFinal: Buffer.from(`v=${serverSignature.toString('base64')}`, 'latin1'), clientKey };
  }
}

// ---------------------------------------------------------------------------------
// Client side

export interface ScramClientOptions {
  /** The client nonce (tests); default: 18 random bytes, base64. */
  nonce?: string;
}

// Salted passwords the client derived, keyed by password/salt/iterations, so that filling a
// pool (many logins with the server's one salt) runs PBKDF2 once.
const SALTED_CACHE_MAX = 256;
const saltedCache = new Map<string, Buffer>();

function cachedSaltedPassword(password: string, salt: Buffer, iterations: number): Buffer {
  const key = `${iterations}\0${salt.toString('base64')}\0${password}`;
  const hit = saltedCache.get(key);
  if (hit) return hit;
  const v = saltedPassword(password, salt, iterations);
  if (saltedCache.size >= SALTED_CACHE_MAX) saltedCache.delete(saltedCache.keys().next().value as string);
  saltedCache.set(key, v);
  return v;
}

export class ScramClientSession {
  private readonly clientNonce: string;
  private readonly clientFirstBare: string;
  private expectedServerSignature: Buffer | undefined;
  private state: 'init' | 'first-sent' | 'final-sent' | 'done' = 'init';

  /** secret: the plain password, or pass-through keys (ScramKeys). */
  constructor(
    user: string,
    private readonly password: string | ScramKeys,
    opts: ScramClientOptions = {},
  ) {
    this.clientNonce = opts.nonce ?? randomBytes(NONCE_BYTES).toString('base64');
    if (!isPrintableNonce(this.clientNonce)) throw new Error('SCRAM: client nonce must be printable ASCII without commas');
    this.clientFirstBare = Buffer.from(`n=${escapeSaslName(user)},r=${this.clientNonce}`, 'utf8').toString('latin1');
  }

  /** The data of SASLInitialResponse (mechanism SCRAM-SHA-256). */
  clientFirst(): Buffer {
    if (this.state !== 'init') throw new AuthProtocolError('SCRAM client-first-message already sent');
    this.state = 'first-sent';
    return Buffer.from(`n,,${this.clientFirstBare}`, 'latin1');
  }

  /** AuthenticationSASLContinue data -> SASLResponse data (client-final-message). */
  handleServerFirst(msg: Buffer): Buffer {
    if (this.state !== 'first-sent') throw new AuthProtocolError('unexpected SCRAM server-first-message');
    this.state = 'done';
    const s = msg.toString('latin1');
    const attrs = parseAttributes(s, 'server-first-message');
    if (attrs[0]?.[0] === 'm') throw new AuthProtocolError('SCRAM: server requires an unsupported extension');
    if (attrs[0]?.[0] !== 'r') throw new AuthProtocolError('malformed SCRAM server-first-message: expected r=');
    const nonce = attrs[0][1];
    if (!isPrintableNonce(nonce) || !nonce.startsWith(this.clientNonce) || nonce.length === this.clientNonce.length) {
      throw new AuthProtocolError('invalid SCRAM server-first-message: server nonce does not extend the client nonce');
    }
    if (attrs[1]?.[0] !== 's') throw new AuthProtocolError('malformed SCRAM server-first-message: expected s=');
    const salt = decodeBase64(attrs[1][1], 'salt');
    if (salt.length === 0) throw new AuthProtocolError('malformed SCRAM server-first-message: empty salt');
    if (attrs[2]?.[0] !== 'i' || !/^[1-9]\d*$/.test(attrs[2][1])) {
      throw new AuthProtocolError('malformed SCRAM server-first-message: expected i=<iterations>');
    }
    const iterations = Number(attrs[2][1]);
    if (!Number.isSafeInteger(iterations)) throw new AuthProtocolError('SCRAM: iteration count out of range');

    let keys: { clientKey: Buffer; storedKey: Buffer; serverKey: Buffer };
    if (typeof this.password === 'string') keys = keysFromSalted(cachedSaltedPassword(this.password, salt, iterations));
    else {
      const k = this.password;
      if (!k.salt.equals(salt) || k.iterations !== iterations) {
        throw new AuthProtocolError('SCRAM pass-through: the server stores a different verifier than the one the client logged in with (password changed?)');
      }
      keys = { clientKey: k.clientKey, storedKey: sha256(k.clientKey), serverKey: k.serverKey };
    }
    const { clientKey, storedKey, serverKey } = keys;
    const withoutProof = `c=biws,r=${nonce}`; // base64("n,,")
    const authMessage = Buffer.from(`${this.clientFirstBare},${s},${withoutProof}`, 'latin1');
    const proof = xor(clientKey, hmac(storedKey, authMessage));
    this.expectedServerSignature = hmac(serverKey, authMessage);
    this.state = 'final-sent';
    return Buffer.from(`${withoutProof},p=${proof.toString('base64')}`, 'latin1');
  }

  /** AuthenticationSASLFinal data: throws unless it carries the right server signature. */
  verifyServerFinal(msg: Buffer): void {
    if (this.state !== 'final-sent' || !this.expectedServerSignature) {
      throw new AuthProtocolError('unexpected SCRAM server-final-message');
    }
    this.state = 'done';
    const s = msg.toString('latin1');
    if (s.startsWith('e=')) throw new AuthProtocolError(`SCRAM: server reported an error: ${s.slice(2)}`);
    const attrs = parseAttributes(s, 'server-final-message');
    if (attrs[0]?.[0] !== 'v') throw new AuthProtocolError('malformed SCRAM server-final-message: expected v=');
    const sig = decodeBase64(attrs[0][1], 'server signature');
    if (!constantTimeEqual(sig, this.expectedServerSignature)) {
      throw new AuthProtocolError('SCRAM: server signature is wrong (the server does not know the password)');
    }
  }
}

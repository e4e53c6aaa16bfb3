// TLS on both sides of the proxy, with PgBouncer's settings: the secure contexts built
// from the config (built again on every reload, so new connections see new files), the
// client-side upgrade after an SSLRequest, the server-side SSLRequest exchange, and the
// checks that refuse what a mode forbids. A TLS connection is always carried in user
// space: the kernel path splices plain TCP bytes and cannot see inside TLS records.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { ConfigError, type Config, type SslMode } from '../config/types';
import { SSL_REQUEST_CODE } from '../protocol/constants';
import { log } from '../observe/log';

// Index into VERSIONS for each name client_tls_protocols / server_tls_protocols accept.
const VERSIONS: readonly tls.SecureVersion[] = ['TLSv1', 'TLSv1.1', 'TLSv1.2', 'TLSv1.3'];
const PROTOCOL_NAMES: Record<string, number[]> = {
  'tlsv1.0': [0], 'tlsv1.1': [1], 'tlsv1.2': [2], 'tlsv1.3': [3], secure: [2, 3], all: [0, 1, 2, 3], legacy: [0, 1, 2, 3],
};
// PgBouncer's cipher shortcuts; the first four mean OpenSSL's defaults.
const CIPHER_SHORTCUTS: Record<string, string | undefined> = {
  default: undefined, secure: undefined, fast: undefined, normal: undefined, all: 'ALL',
};

export const requiresTls = (m: SslMode): boolean => m === 'require' || m === 'verify-ca' || m === 'verify-full';
const verifiesPeer = (m: SslMode): boolean => m === 'verify-ca' || m === 'verify-full';

type Side = 'client' | 'server';

// Accepts the TLS handshakes of clients that were answered 'S'. A tls.Server that never
// listens does the handshake (it is what sets authorized / authorizationError for client
// certificates); each raw socket is handed to it and its TLS socket handed back.
export class ClientTls {
  private pending = new Map<string, (sock: tls.TLSSocket) => void>();

  constructor(
    readonly mode: SslMode,
    private readonly server: tls.Server,
  ) {
    server.on('secureConnection', (sock: tls.TLSSocket) => {
      const done = this.pending.get(peerKey(sock));
      this.pending.delete(peerKey(sock));
      if (done) done(sock);
      else sock.destroy(); // its client left meanwhile
    });
    // The raw socket is destroyed with it: the client closes through its 'close'.
    server.on('tlsClientError', (e: Error, sock: tls.TLSSocket) =>
      log.info(`TLS handshake with client ${sock.remoteAddress ?? '?'}:${sock.remotePort ?? ''} failed: ${e.message}`));
  }

  // Starts the handshake on a TCP socket just answered 'S'; done gets the TLS socket.
  // Client certificates are requested only by verify-ca/verify-full and judged after the
  // handshake (clientRefusal), so that a refusal is a PostgreSQL error, not a TLS alert.
  accept(raw: net.Socket, done: (sock: tls.TLSSocket) => void): void {
    const key = peerKey(raw);
    this.pending.set(key, (sock) => {
      tcpUnder.set(sock, raw);
      done(sock);
    });
    raw.once('close', () => this.pending.delete(key));
    this.server.emit('connection', raw);
  }
}

// A TCP connection's four-tuple: the same for the raw socket and the TLS socket over it.
const peerKey = (s: net.Socket): string => `${s.remoteAddress}|${s.remotePort}|${s.localAddress}|${s.localPort}`;

export interface ServerTls {
  mode: SslMode;
  context: tls.SecureContext | null; // null when mode is disable
  // Digest of the settings and file contents: a reload that changes it closes idle servers.
  id: string;
}

export interface TlsContexts {
  client: ClientTls | null; // null: client_tls_sslmode is disable, SSLRequests are answered 'N'
  server: ServerTls;
}

// ---- config checks (no file access: the loader runs these) ----

// The first problem with the TLS settings, as a key and a message, or null.
export function tlsSettingProblem(cfg: Config): { key: string; message: string } | null {
  for (const side of ['client', 'server'] as Side[]) {
    const key = `${side}_tls_protocols`;
    for (const p of cfg[`${side}_tls_protocols`]) {
      if (!PROTOCOL_NAMES[p.toLowerCase()]) {
        return { key, message: `unknown protocol "${p}"; allowed: ${Object.keys(PROTOCOL_NAMES).join(', ')}` };
      }
    }
    if (cfg[`${side}_tls_protocols`].length === 0) return { key, message: 'at least one protocol is needed (e.g. secure)' };
    const keyFile = cfg[`${side}_tls_key_file`];
    const certFile = cfg[`${side}_tls_cert_file`];
    if (keyFile && !certFile) return { key: `${side}_tls_key_file`, message: `needs ${side}_tls_cert_file, the certificate for this key` };
    if (certFile && !keyFile) return { key: `${side}_tls_cert_file`, message: `needs ${side}_tls_key_file, the private key of this certificate` };
  }
  const mode = cfg.client_tls_sslmode;
  if (mode !== 'disable' && (!cfg.client_tls_key_file || !cfg.client_tls_cert_file)) {
    return { key: 'client_tls_sslmode', message: `is ${mode}: client_tls_key_file and client_tls_cert_file must be set (the key and certificate pgsplice shows to clients)` };
  }
  if (verifiesPeer(mode) && !cfg.client_tls_ca_file) {
    return { key: 'client_tls_sslmode', message: `is ${mode}: client_tls_ca_file must be set (the CA that signs client certificates)` };
  }
  return null;
}

// ---- building the contexts (reads the files) ----

function versionRange(cfg: Config, side: Side): { minVersion: tls.SecureVersion; maxVersion: tls.SecureVersion } {
  const idx = cfg[`${side}_tls_protocols`].flatMap((p) => PROTOCOL_NAMES[p.toLowerCase()] ?? []);
  // Node takes a range: a list with a gap (tlsv1.0,tlsv1.3) allows the versions between too.
  return { minVersion: VERSIONS[Math.min(...idx)]!, maxVersion: VERSIONS[Math.max(...idx)]! };
}

function failAt(cfg: Config, key: string, message: string): never {
  throw new ConfigError(message, cfg.source.file, key, cfg.source.lines.get(key));
}

function readSetting(cfg: Config, key: `${Side}_tls_${'key' | 'cert' | 'ca'}_file`, digest: crypto.Hash): Buffer | undefined {
  const name = cfg[key];
  if (!name) return undefined;
  const file = path.resolve(path.dirname(cfg.source.file), name);
  try {
    const data = fs.readFileSync(file);
    digest.update(key).update(data);
    return data;
  } catch (e) {
    failAt(cfg, key, `cannot read ${file}: ${(e as Error).message}`);
  }
}

function ciphers(cfg: Config, side: Side): string | undefined {
  const v = cfg[`${side}_tls_ciphers`];
  const c = Object.prototype.hasOwnProperty.call(CIPHER_SHORTCUTS, v.toLowerCase()) ? CIPHER_SHORTCUTS[v.toLowerCase()] : v;
  if (c !== undefined) {
    try {
      tls.createSecureContext({ ciphers: c });
    } catch (e) {
      failAt(cfg, `${side}_tls_ciphers`, `OpenSSL does not accept "${v}": ${(e as Error).message}`);
    }
  }
  return c;
}

function contextOptions(cfg: Config, side: Side, digest: crypto.Hash): tls.SecureContextOptions {
  const opts: tls.SecureContextOptions = { ...versionRange(cfg, side), ciphers: ciphers(cfg, side) };
  const key = readSetting(cfg, `${side}_tls_key_file`, digest);
  const cert = readSetting(cfg, `${side}_tls_cert_file`, digest);
  const ca = readSetting(cfg, `${side}_tls_ca_file`, digest);
  if (ca) {
    try {
      tls.createSecureContext({ ca });
    } catch (e) {
      failAt(cfg, `${side}_tls_ca_file`, `not a usable CA certificate file: ${(e as Error).message}`);
    }
    opts.ca = ca;
  }
  if (key && cert) {
    opts.key = key;
    opts.cert = cert;
  }
  return opts;
}

function keyPairProblem(cfg: Config, side: Side, e: unknown): never {
  failAt(cfg, `${side}_tls_cert_file`, `cannot use ${side}_tls_key_file and ${side}_tls_cert_file: ${(e as Error).message}`);
}

// Reads the files and builds both sides' contexts. Throws ConfigError naming the key.
export function buildTls(cfg: Config): TlsContexts {
  let client: ClientTls | null = null;
  const mode = cfg.client_tls_sslmode;
  if (mode !== 'disable') {
    const opts = contextOptions(cfg, 'client', crypto.createHash('sha256'));
    try {
      client = new ClientTls(mode, tls.createServer({ ...opts, requestCert: verifiesPeer(mode), rejectUnauthorized: false }));
    } catch (e) {
      keyPairProblem(cfg, 'client', e);
    }
  }
  const digest = crypto.createHash('sha256');
  digest.update(JSON.stringify([cfg.server_tls_sslmode, cfg.server_tls_protocols, cfg.server_tls_ciphers]));
  let context: tls.SecureContext | null = null;
  if (cfg.server_tls_sslmode !== 'disable') {
    try {
      context = tls.createSecureContext(contextOptions(cfg, 'server', digest));
    } catch (e) {
      keyPairProblem(cfg, 'server', e);
    }
  }
  return { client, server: { mode: cfg.server_tls_sslmode, context, id: digest.digest('hex').slice(0, 16) } };
}

// ---- the client side ----

export function isTlsSocket(sock: net.Socket): sock is tls.TLSSocket {
  return (sock as Partial<tls.TLSSocket>).encrypted === true;
}

// Why a client that sent its StartupMessage may not log in under mode, or null.
// Unix-socket clients are local: a mode that requires TLS does not apply to them.
export function clientRefusal(sock: net.Socket, mode: SslMode): string | null {
  if (!isTlsSocket(sock)) {
    if (requiresTls(mode) && sock.remoteFamily) return `SSL required: client_tls_sslmode is ${mode}; connect with sslmode=require or stronger`;
    return null;
  }
  if (!verifiesPeer(mode) || sock.authorized) return null;
  const cert = sock.getPeerCertificate();
  if (!cert || Object.keys(cert).length === 0) return `client certificate required: client_tls_sslmode is ${mode}`;
  return `client certificate verification failed: ${String(sock.authorizationError)}`;
}

// ---- the server side ----

function sslRequest(): Buffer {
  const b = Buffer.alloc(8);
  b.writeInt32BE(8, 0);
  b.writeInt32BE(SSL_REQUEST_CODE, 4);
  return b;
}

// Why a server's certificate is not acceptable under mode, or null.
function serverCertProblem(sock: tls.TLSSocket, mode: SslMode, host: string): string | null {
  if (!verifiesPeer(mode)) return null;
  if (!sock.authorized) return `server certificate verification failed (server_tls_sslmode ${mode}): ${String(sock.authorizationError)}`;
  if (mode === 'verify-full') {
    const err = tls.checkServerIdentity(host, sock.getPeerCertificate());
    if (err) return `server certificate does not match host "${host}" (server_tls_sslmode verify-full): ${err.message}`;
  }
  return null;
}

// Runs the SSLRequest exchange on a freshly connected server socket, as libpq does for
// prefer and stronger modes, and resolves with the socket to log in on: the TLS socket,
// or the plain one when the server says 'N' and the mode allows it. disable and allow
// (which libpq tries plain first) and unix sockets send no SSLRequest. The answer is read
// as a 'data' event (a socket that reads with onread emits it itself).
export function startServerTls(raw: net.Socket, host: string, t: ServerTls | undefined): Promise<net.Socket> {
  if (!t || !t.context || t.mode === 'disable' || t.mode === 'allow' || host.startsWith('/')) return Promise.resolve(raw);
  const context = t.context;
  return new Promise((resolve, reject) => {
    const onData = (d: Buffer) => {
      raw.off('data', onData);
      // Anything after the one-byte answer was not protected by TLS: never use it.
      if (d.length !== 1) return reject(new Error(`server answered the SSL request with ${d.length} bytes (expected 1)`));
      if (d[0] === 0x4e /* N */) {
        if (requiresTls(t.mode)) return reject(new Error(`server does not support SSL, but server_tls_sslmode is ${t.mode}`));
        return resolve(raw);
      }
      if (d[0] !== 0x53 /* S */) return reject(new Error(`server answered the SSL request with "${String.fromCharCode(d[0]!)}"`));
      const sock = tls.connect({
        socket: raw,
        secureContext: context,
        servername: net.isIP(host) ? undefined : host, // SNI takes names only
        rejectUnauthorized: false, // judged below, with a message naming the mode
      });
      tcpUnder.set(sock, raw);
      sock.once('error', reject);
      sock.once('secureConnect', () => {
        sock.off('error', reject);
        const why = serverCertProblem(sock, t.mode, host);
        if (why) {
          sock.destroy();
          return reject(new Error(why));
        }
        resolve(sock);
      });
    };
    raw.on('data', onData);
    raw.write(sslRequest());
  });
}

// The TCP socket under each TLS socket this module made, for resetAndDestroy.
const tcpUnder = new WeakMap<tls.TLSSocket, net.Socket>();

// Closes with an RST, so that a peer blocked writing to us notices at once. A TLS socket
// has no TCP handle of its own (Node throws): the reset goes to the socket under it.
export function resetAndDestroy(sock: net.Socket): void {
  const tcp = isTlsSocket(sock) ? tcpUnder.get(sock) : sock;
  if (tcp && !tcp.destroyed) {
    // libuv refuses to reset a socket whose sending side is already shut down (ours, or
    // Node's own end() after the peer's FIN) and Node then drops the handle without
    // closing it: the descriptor would leak. A connecting one would wait for a connect
    // that may never come. Those are closed plainly; unread data in the receive queue
    // still makes the kernel send the RST.
    if (tcp.writableEnded || tcp.connecting) tcp.destroy();
    else tcp.resetAndDestroy();
  }
  if (tcp !== sock) sock.destroy();
}

// "TLSv1.3/TLS_AES_256_GCM_SHA384" for SHOW CLIENTS / SERVERS, '' for a plain socket.
export function describeTls(sock: net.Socket): string {
  if (!isTlsSocket(sock)) return '';
  const cipher = sock.getCipher()?.name;
  return `${sock.getProtocol() ?? 'TLS'}${cipher ? `/${cipher}` : ''}`;
}

// One pooled connection to PostgreSQL: login, the parameters it reports, the
// queries the proxy runs on it itself, and forwarding its bytes to the client it
// serves while user space carries the data path.
import { applyTcpOptions } from './tcp-options';
import * as net from 'node:net';
import { EventEmitter } from 'node:events';
import { AuthCode, Backend, TxStatus } from '../protocol/constants';
import { MessageFramer, printable } from '../protocol/framer';
import {
  BodyReader, ProtocolError, extendedQuery, parseErrorFields, parseParameterStatus, passwordMessage, query,
  saslInitialResponse, saslResponse, startupMessage, terminate,
} from '../protocol/messages';
import { StreamScanner, captureSet } from '../protocol/stream-scanner';
import { ScramClientSession, type ScramKeys } from '../auth/scram';
import { ReplyFilter } from '../session/reply-filter';
import { TRACKED_REPLIES, type TransactionTracker } from '../session/transaction-tracker';
import { ServerStatementCache } from '../session/prepared-statements';
import { md5Response } from '../auth/md5';
import { log } from '../observe/log';
import { countError } from '../observe/stats';
import { ServerTls, resetAndDestroy, startServerTls } from '../auth/tls';
import { SERVER_MOVES, ServerState, StateOf } from './connection-state';
import { InputHold } from './input-hold';

export { ServerState } from './connection-state';

export interface ServerTarget {
  host: string; // a directory means a unix socket
  port: number;
  dbname: string;
  user: string;
  password?: string;
  scramKeys?: ScramKeys; // SCRAM pass-through for a user whose password the proxy never saw
  startupParams?: Record<string, string>;
  connectTimeout: number; // seconds
  tls?: ServerTls; // server_tls_sslmode and its context
  mirror?: boolean; // a mirror connection (src/mirror/): no client sees its errors, so they are not counted
}

// Who is told when the kernel path hands this server's bytes to user space (the KernelHost,
// src/pooling/kernel-host.ts; only the one method, so this module does not depend on it).
export interface KernelPassListener {
  serverPassed(server: ServerConnection): void;
}

// The side of a client that a linked server talks to.
export interface ServerPeer {
  onServerData(chunk: Buffer, server: ServerConnection): void;
  onServerPieces(pieces: Buffer[], server: ServerConnection): void;
  onServerReady(status: TxStatus, server: ServerConnection): void;
  // Counts what the server owes the client; reads the replies in stream order.
  readonly tracker?: TransactionTracker;
  onServerParameter(name: string, value: string): void;
  onServerLost(server: ServerConnection, reason: string): void;
  // Whether bytes handed to it by the call that just returned may still be referenced
  // (a write still queued, output held, a mirror's copy); a peer without it is assumed to.
  keepsServerBytes?(): boolean;
  // The connection's error boundary: ends the client for an exception (src/pooling/error-boundary.ts).
  failWith?(e: unknown): void;
}

export class ServerError extends Error {
  constructor(
    message: string,
    readonly fields: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'ServerError';
  }
  get code(): string {
    return this.fields.C ?? '08006';
  }
}

let nextServerId = 1;
const DATA_CAPTURE = captureSet('ZSEC');
// A plain server socket reads into a buffer of its own that is used again for the next
// read (no allocation per read), unless something still references the bytes of the last
// one; a read that fills it moves the socket to the larger size.
const READ_BUFFER_BYTES = 16 * 1024;
const LARGE_READ_BUFFER_BYTES = 64 * 1024; // C: CommandComplete tags confirm session-state changes
const INTERNAL_CAPTURE = captureSet('ZSEDC');

function parseDataRow(body: Buffer): string[] {
  const r = new BodyReader(body);
  const n = body.readInt16BE(0);
  r.pos = 2;
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const len = r.int32();
    out.push(len < 0 ? '' : r.bytes(len).toString('utf8'));
  }
  return out;
}

// How long a query of the proxy's own (settings, a reset, a read-back, a check) may wait
// for its answer before its server is closed.
export const INTERNAL_DEADLINE_MS = 10_000;

export class ServerConnection extends EventEmitter {
  readonly id = nextServerId++;
  private readonly lifecycle = new StateOf(`S-${this.id}`, SERVER_MOVES, ServerState.Connecting); // checked moves only
  get state(): ServerState {
    return this.lifecycle.current;
  }

  // Back in its pool, idle and owned by user space (Pool.release).
  parkIdle(): void {
    this.lifecycle.to(ServerState.Idle);
  }

  // The kernel path owns it now (its idle stack, or bound to a client there).
  enteredKernel(): void {
    this.lifecycle.to(ServerState.Kernel);
  }

  // User space owns it again, idle (taken from the kernel's idle stack, or a bound pair
  // handed over: the caller links it next). User space reads it from here on: a hold of
  // its input while a hand-over settled left the socket paused (holdInput), and whoever
  // takes it (a client, a reset, the pool) needs its answers. A new owner that must not
  // read it yet pauses it again.
  leftKernel(): void {
    this.lifecycle.to(ServerState.Idle);
    this.socket?.resume(); // (none yet while connecting)
  }
  readonly params = new Map<string, string>();
  loginParams: Map<string, string> | null = null; // what it reported at login: its session defaults
  readonly applied = new Map<string, string>(); // non-reported settings the proxy SET on it
  backendPid = 0;
  backendKey = 0;
  readonly createdAt = Date.now();
  lastUsed = Date.now();
  socket!: net.Socket;
  peer: ServerPeer | null = null;
  bytesRead = 0; // since the socket was registered with the kernel path (a number: exact to 2^53)
  closeNeeded = false; // RECONNECT: close instead of returning to the pool
  // The linked client was sent this server's FATAL error: when the server then closes,
  // the client is closed without a second error of the proxy's own.
  fatalForwarded = false;
  // Cancel requests forwarded for this server whose connection to PostgreSQL is still
  // open: until they complete it is not given to another client (PgBouncer's
  // sv_being_canceled), so a late cancel cannot hit that client's query.
  cancelsInFlight = 0;
  releaseAfterCancel = false; // released while a cancel was in flight: the pool takes it back after
  readonly statements = new ServerStatementCache(); // prepared here by the proxy (transaction mode)
  readonly replies = new ReplyFilter(); // what the linked client sees of the replies
  private framer = new MessageFramer();
  private scanner = new StreamScanner(DATA_CAPTURE);
  private rows: string[][] | null = null;
  private readBuf: Buffer | null = null;
  private readKept = false; // the last read's bytes are still referenced: the next read gets a new buffer
  private loginReader: ((chunk: Buffer) => void) | null = null; // login's reader, with the own read buffer
  private internal: { resolve: () => void; reject: (e: Error) => void; error?: ServerError } | null = null;

  // kernel: told when the kernel path hands this server's bytes to user space.
  constructor(
    readonly target: ServerTarget,
    private readonly kernel: KernelPassListener,
  ) {
    super();
  }

  get label(): string {
    return `S-${this.id} ${this.target.user}@${this.target.dbname}`;
  }

  // Connects and logs in; resolves when the server is ready for queries.
  connect(): Promise<void> {
    return new Promise((resolve, reject) => {
      const t = this.target;
      // Read into a buffer of its own (after TLS, the TLS socket reads the raw one itself)
      const onread = { buffer: () => this.nextReadBuffer(), callback: (n: number, buf: Uint8Array) => this.onRead(n, buf as Buffer) };
      const sock = t.host.startsWith('/')
        ? net.connect({ path: `${t.host}/.s.PGSQL.${t.port}`, onread })
        : net.connect({ host: t.host, port: t.port, onread });
      this.socket = sock;
      sock.setNoDelay(true);
      if (!t.host.startsWith('/')) applyTcpOptions(sock);
      let settled = false;
      const fail = (e: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.close(e.message);
        reject(e);
      };
      const timer = setTimeout(
        () => fail(new ServerError(`server_connect_timeout: no login within ${t.connectTimeout}s`)),
        t.connectTimeout * 1000,
      );
      sock.on('error', (e) => {
        if (!settled) fail(new ServerError(`cannot connect to server ${t.host}:${t.port}: ${e.message}`));
        else this.close(`socket error: ${e.message}`);
      });
      sock.on('close', () => {
        if (!settled) fail(new ServerError(`server ${t.host}:${t.port} closed the connection during login`));
        else this.close('server closed the connection');
      });
      sock.on('connect', () => {
        this.lifecycle.to(ServerState.Login);
        startServerTls(sock, t.host, t.tls).then(
          (s) => {
            if (settled) return;
            if (s !== sock) {
              this.socket = s; // TLS: the login and everything after go through it
              s.on('error', (e) => (settled ? this.close(`socket error: ${e.message}`) : fail(new ServerError(`server ${t.host}:${t.port}: ${e.message}`))));
              s.on('close', () => (settled ? this.close('server closed the connection') : fail(new ServerError(`server ${t.host}:${t.port} closed the connection during login`))));
            }
            if (s === sock) this.loginReader = onLoginData;
            else s.on('data', onLoginData);
            s.write(startupMessage({ user: t.user, database: t.dbname, ...t.startupParams }));
          },
          (e: Error) => fail(new ServerError(`server ${t.host}:${t.port}: ${e.message}`)),
        );
      });
      let scram: ScramClientSession | null = null;
      const onLoginData = (chunk: Buffer) => {
        this.framer.push(chunk);
        try {
          for (let m = this.framer.next(); m; m = this.framer.next()) {
            switch (m.type) {
              case Backend.Authentication: {
                const r = new BodyReader(m.body);
                const code = r.int32();
                if (code === AuthCode.Ok) break;
                if (t.password === undefined && !(t.scramKeys && code >= AuthCode.SASL)) {
                  throw new ServerError(`server asks for a password for user "${t.user}" and none is ${t.scramKeys ? 'known (only SCRAM pass-through keys: the server must use scram-sha-256)' : 'configured'}`);
                }
                if (code === AuthCode.CleartextPassword) this.socket.write(passwordMessage(t.password!));
                else if (code === AuthCode.MD5Password) this.socket.write(passwordMessage(md5Response(t.user, t.password!, r.bytes(4))));
                else if (code === AuthCode.SASL) {
                  const mechs: string[] = [];
                  for (let s = r.cstring(); s !== ''; s = r.cstring()) mechs.push(s);
                  if (!mechs.includes('SCRAM-SHA-256')) throw new ServerError(`server offers no supported SASL mechanism (${mechs.join(', ')})`);
                  scram = new ScramClientSession(t.user, t.password ?? t.scramKeys!);
                  this.socket.write(saslInitialResponse('SCRAM-SHA-256', scram.clientFirst()));
                } else if (code === AuthCode.SASLContinue) {
                  if (!scram) throw new ProtocolError('SASLContinue without SASL');
                  this.socket.write(saslResponse(scram.handleServerFirst(r.rest())));
                } else if (code === AuthCode.SASLFinal) {
                  if (!scram) throw new ProtocolError('SASLFinal without SASL');
                  scram.verifyServerFinal(r.rest());
                } else throw new ServerError(`server asks for unsupported authentication method ${code}`);
                break;
              }
              case Backend.ParameterStatus: {
                const [k, v] = parseParameterStatus(m.body);
                this.params.set(k, v);
                break;
              }
              case Backend.BackendKeyData: {
                const r = new BodyReader(m.body);
                this.backendPid = r.int32();
                this.backendKey = r.int32();
                break;
              }
              case Backend.ErrorResponse: {
                const f = parseErrorFields(m.body);
                throw new ServerError(`server login failed: ${f.M ?? 'unknown error'}`, f);
              }
              case Backend.NoticeResponse:
              case Backend.NegotiateProtocolVersion:
                break;
              case Backend.ReadyForQuery: {
                settled = true;
                clearTimeout(timer);
                this.socket.off('data', onLoginData);
                this.loginReader = null;
                this.lifecycle.to(ServerState.Idle);
                this.loginParams = new Map(this.params);
                const rest = this.framer.takeRest();
                if (this.socket !== sock) this.socket.on('data', (d: Buffer) => this.onDataGuarded(d));
                if (rest.length) this.onDataGuarded(rest);
                log.debug(`${this.label} login ok (backend pid ${this.backendPid})`);
                resolve();
                return;
              }
              default:
                throw new ProtocolError(`unexpected message "${printable(m.type)}" during server login`);
            }
          }
        } catch (e) {
          fail(e instanceof Error ? e : new Error(String(e)));
        }
      };
    });
  }

  // The read buffer for the socket's next read: the same one again unless the last read's
  // bytes are still referenced (then they stay where they are and a new buffer takes the next).
  private nextReadBuffer(): Buffer {
    if (!this.readBuf || this.readKept) {
      this.readBuf = Buffer.allocUnsafeSlow(this.readBuf?.length ?? READ_BUFFER_BYTES);
      this.readKept = false;
    }
    return this.readBuf;
  }

  private onRead(n: number, buf: Buffer): true {
    if (n === buf.length && buf.length < LARGE_READ_BUFFER_BYTES) {
      this.readBuf = Buffer.allocUnsafeSlow(LARGE_READ_BUFFER_BYTES); // a large reply: read it in larger pieces
      this.readKept = false;
    }
    const chunk = buf.subarray(0, n);
    if (this.loginReader) {
      this.readKept = true; // the login framer keeps what it has not framed yet
      this.loginReader(chunk);
    } else if (this.state === ServerState.Login) {
      // the answer to an SSLRequest, which startServerTls reads as a 'data' event
      this.readKept = true;
      this.socket.emit('data', chunk);
    } else this.onDataGuarded(chunk);
    return true; // read on (pause() stops reading)
  }

  // The server connection's error boundary: an exception while handling its bytes (in
  // the client it serves, too) ends that client and this server, not the proxy.
  private onDataGuarded(chunk: Buffer): void {
    try {
      this.onData(chunk);
    } catch (e) {
      this.failWith(e);
    }
  }

  private failWith(e: unknown): void {
    const peer = this.peer;
    if (peer?.failWith) peer.failWith(e);
    else log.error(`${this.label} internal error: ${e instanceof Error ? e.stack : String(e)}`);
    this.close(`internal error: ${(e as Error)?.message ?? String(e)}`, false);
  }

  private onData(chunk: Buffer): void {
    this.bytesRead += chunk.length;
    this.lastUsed = Date.now();
    if (this.state === ServerState.Kernel && !this.heldInput.active) this.kernel.serverPassed(this);
    if (this.heldInput.keep(chunk)) {
      this.readKept = true;
      return;
    }
    this.onBytes(chunk);
  }

  // Reads nothing into the protocol until `until` resolves (a hand-over from the kernel
  // path is settling): what arrives meanwhile is kept, in order, and read then. The socket
  // stays paused afterwards: whoever adopted the server resumes it when it may be read.
  holdInput(until: Promise<void>): void {
    this.heldInput.start(this.socket, until, (held) => {
      // (a promise continuation: the same boundary as a read)
      try {
        for (const chunk of held) if (!this.socket.destroyed) this.onBytes(chunk);
      } catch (e) {
        this.failWith(e);
      }
    });
  }
  private readonly heldInput = new InputHold();

  private onBytes(chunk: Buffer): void {
    const peer = this.state === ServerState.Active ? this.peer : null;
    const ready: TxStatus[] = [];
    // While the proxy rewrites the client's requests, the replies are cut and spliced;
    // while every reply expected passes as it is, they are only counted.
    const counted = peer && !this.replies.idle ? this.replies : null;
    const replies = counted && !counted.transparent ? counted : null; // (stays transparent within a chunk: nothing is queued meanwhile)
    const tracker = peer && !this.internal ? peer.tracker : undefined;
    const pieces: Buffer[] = [];
    let from = 0;
    let lastEnd = 0;
    try {
      this.scanner.scan(chunk, (m) => {
        if (tracker && TRACKED_REPLIES[m.type]) tracker.onServerMessage(m.type, m.body);
        if (m.type === Backend.ReadyForQuery && m.body?.length) {
          if (this.internal) this.finishInternal();
          else if (peer) ready.push(String.fromCharCode(m.body[0]) as TxStatus);
        } else if (!m.body && m.type !== Backend.DataRow) {
          // a message whose start the kernel carried (resumed mid-body): nothing to learn
        } else if (m.type === Backend.ParameterStatus) {
          const [k, v] = parseParameterStatus(m.body!);
          this.params.set(k, v);
          if (peer) peer.onServerParameter(k, v);
        } else if (m.type === Backend.DataRow && this.internal && this.rows) {
          this.rows.push(parseDataRow(m.body!));
        } else if (m.type === Backend.ErrorResponse) {
          const f = parseErrorFields(m.body!);
          if (peer && !this.target.mirror) countError('server', f.C);
          if (peer && (f.S === 'FATAL' || f.S === 'PANIC')) this.fatalForwarded = true;
          if (this.internal) this.internal.error = new ServerError(f.M ?? 'error', f);
          else if (!peer || f.S === 'FATAL' || f.S === 'PANIC') log.info(`${this.label} server error: ${f.S} ${f.C} ${f.M}`);
        } else if (!peer && !this.internal && m.type !== Backend.NoticeResponse && m.type !== Backend.DataRow
            && m.type !== Backend.NotificationResponse && m.type !== Backend.CommandComplete) {
          throw new ProtocolError(`idle server sent unexpected message "${printable(m.type)}"`);
        }
        if (replies) {
          const start = Math.max(m.start, 0);
          if (replies.hides(m.type)) {
            if (start > from) pieces.push(chunk.subarray(from, start));
            from = m.end;
          }
          const extra = replies.onMessage(m.type, m.body);
          if (extra.length) {
            if (m.end > from) pieces.push(chunk.subarray(from, m.end));
            from = m.end;
            pieces.push(...extra);
          }
        } else if (counted) counted.onMessage(m.type, m.body); // passes: nothing to add or hide
        lastEnd = m.end;
      });
    } catch (e) {
      this.close(`protocol error from server: ${(e as Error).message}`);
      return;
    }
    if (this.scanner.holdsInput) this.readKept = true; // a body it gathers across reads // a body it gathers across reads
    if (!peer) return;
    if (replies) {
      // the message still open is hidden too if the filter would hide it
      const cut = !this.scanner.atBoundary && replies.hides(this.scanner.currentType) ? Math.max(lastEnd, from) : chunk.length;
      if (cut > from) pieces.push(chunk.subarray(from, cut));
      peer.onServerPieces(pieces, this);
    } else {
      // Forward first: a ReadyForQuery may release this server to another client.
      peer.onServerData(chunk, this);
    }
    if (peer.keepsServerBytes?.() !== false) this.readKept = true;
    for (const status of ready) if (this.peer === peer) peer.onServerReady(status, this);
  }

  // Takes over framing where the kernel path left this server's stream.
  resumeFrame(pos: { hdr: Buffer; hdrLen: number; curType: number; remaining: number }): void {
    this.scanner.resume(pos);
  }

  // Links this server to a client for user-space forwarding.
  link(peer: ServerPeer): void {
    this.peer = peer;
    this.lifecycle.to(ServerState.Active);
  }

  // Its client no longer reads for it: a pause the client made (output held after a
  // hand-over, back-pressure) ends here, or the reset or pool that takes it over would
  // never see its answers.
  unlink(): void {
    this.peer = null;
    this.socket?.resume();
    this.replies.clear();
    if (this.state === ServerState.Active) this.lifecycle.to(ServerState.Idle);
  }

  // Runs SQL of the proxy's own and swallows its results. Rejects with the server's error.
  runInternal(sql: string): Promise<void> {
    return this.runInternalMessages(query(sql));
  }

  private runInternalMessages(messages: Buffer): Promise<void> {
    if (this.state === ServerState.Closed) return Promise.reject(new ServerError('server connection is closed'));
    const prev = this.state;
    this.lifecycle.to(ServerState.Internal);
    return new Promise<void>((resolve, reject) => {
      // A query of the proxy's own that gets no answer (a server left inside a message,
      // whatever the cause) would hold the server, and whoever waits for it, for good:
      // past the deadline the server is closed and the caller learns it is lost.
      const deadline = setTimeout(() => this.close(`the proxy's own query got no answer within ${INTERNAL_DEADLINE_MS / 1000} s`, false), INTERNAL_DEADLINE_MS);
      deadline.unref();
      this.internal = {
        resolve: () => {
          clearTimeout(deadline);
          this.lifecycle.to(prev === ServerState.Active ? ServerState.Active : ServerState.Idle);
          resolve();
        },
        reject: (e: Error) => {
          clearTimeout(deadline);
          reject(e);
        },
      };
      this.socket.write(messages);
    });
  }

  // Runs a query of the proxy's own and resolves with its first row, as text (NULL as '').
  // With params: the extended protocol, the values sent apart from the SQL ($1, $2 ...).
  async queryValues(sql: string, params?: string[]): Promise<string[]> {
    this.rows = [];
    this.scanner.capture = INTERNAL_CAPTURE; // at a boundary: the server is quiet
    try {
      await this.runInternalMessages(params ? extendedQuery(sql, params) : query(sql));
      return this.rows[0] ?? [];
    } finally {
      this.rows = null;
      this.scanner.capture = DATA_CAPTURE;
    }
  }

  private finishInternal(): void {
    const job = this.internal!;
    this.internal = null;
    if (job.error) {
      this.lifecycle.to(ServerState.Idle);
      job.reject(job.error);
    } else job.resolve();
  }

  // Bytes from the client this server serves.
  write(chunk: Buffer): boolean {
    return this.socket.write(chunk);
  }

  // The client's Terminate was passed on to PostgreSQL, which ends this session after
  // what it still has to answer: never reused.
  retiring = false;

  get isUsable(): boolean {
    return this.state !== ServerState.Closed && !this.socket.destroyed && !this.retiring;
  }

  close(reason: string, graceful = true): void {
    if (this.state === ServerState.Closed) return;
    const was = this.state;
    this.lifecycle.to(ServerState.Closed);
    if (was !== ServerState.Connecting) log.info(`${this.label} closed: ${reason}`);
    if (this.socket && !this.socket.destroyed) {
      if (graceful && this.socket.writable) this.socket.end(terminate());
      else resetAndDestroy(this.socket); // RST: a server blocked writing to us must notice now
      setTimeout(() => this.socket.destroy(), 1000).unref();
    }
    if (this.internal) {
      const job = this.internal;
      this.internal = null;
      job.reject(new ServerError(`server connection lost: ${reason}`));
    }
    const peer = this.peer;
    this.peer = null;
    if (peer) peer.onServerLost(this, reason);
    this.emit('close', reason);
  }
}

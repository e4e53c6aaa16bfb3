// One client of the proxy: startup, authentication, then its requests, carried to
// a pooled server either by user space (here) or by the kernel path (the bypass
// controller moves it there and back at safe points).
import * as net from 'node:net';
import * as crypto from 'node:crypto';
import {
  CANCEL_REQUEST_CODE, Frontend, GSSENC_REQUEST_CODE, MAX_AUTH_MESSAGE_LENGTH, MAX_MESSAGE_LENGTH, PROTOCOL_3_0,
  SSL_REQUEST_CODE, SqlState, TxStatus,
} from '../protocol/constants';
import { MessageFramer, printable } from '../protocol/framer';
import {
  BodyReader, ErrorFields, ProtocolError, authenticationCleartext, authenticationMd5, authenticationOk,
  authenticationSasl, authenticationSaslContinue, authenticationSaslFinal, backendKeyData, errorResponse,
  message, negotiateProtocolVersion, parameterStatus, readyForQuery,
} from '../protocol/messages';
import { StreamScanner, captureSet } from '../protocol/stream-scanner';
import { TransactionTracker } from '../session/transaction-tracker';
import { ServerConnection, ServerPeer } from './server-connection';
import { Pool, PoolError, type PoolWaiter } from './pool';
import {
  RESET_SESSION, TRACKED_PARAMETERS, canonicalName, isReported, needsReset, poolStartup, recordApplied, settingsSignature, settingsSql, startupSettings,
} from '../session/session-parameters';
import { runEach } from './server-reset';
import { cleanServer, clientTimeout, stepsAtTransactionEnd, stepsOnLeave, type TimeoutVerdict } from './policy';
import { ScramServerSession, mockScramVerifier } from '../auth/scram';
import { ClientAuthType, chooseAuthMethod, clientAuthType, verifyPlainPassword } from '../auth/verifier';
import type { ClientProof } from '../auth/auth-query';
import { verifyMd5Response } from '../auth/md5';
import type { AuthType, Config } from '../config/types';
import { ClientTls, clientRefusal } from '../auth/tls';
import { log } from '../observe/log';
import { ClientTiming, countError } from '../observe/stats';
import { parseMessage } from '../session/prepared-statements';
import { MARKED_TYPES, REWRITTEN_TYPES, RequestRewriter, RequestUnit, type RewriterOptions } from '../session/request-rewriter';
import { ReplyAction, ReplyEnd } from '../session/reply-filter';
import { Guarded, errorFieldsFor, guard } from './error-boundary';
import { checkRequestFormat } from '../protocol/request-format';
import { joinAdjacent } from '../protocol/contiguous';
import { CLIENT_MOVES, ClientState, StateOf } from './connection-state';
import { InputHold } from './input-hold';
import type { MirrorSession } from '../mirror/mirror-session';
import { newCancelPid } from '../workers/cancel-key';

export { ClientState } from './connection-state';

// What a client needs from the proxy around it (the Pooler).
export interface ClientHost {
  readonly config: Config;
  // The TLS context an SSLRequest is answered with ('S'), or null for 'N' (src/auth/tls.ts).
  clientTls?(sock: net.Socket): ClientTls | null;
  // Finds or creates the pool for these startup settings (its servers are opened with
  // them); called only once the client has authenticated, so that unauthenticated names
  // allocate nothing. Throws PoolError (3D000, ...).
  resolvePool(database: string, user: string, startup?: Record<string, string>): Pool;
  // Why the database cannot be served (3D000), checked before authentication; allocates nothing.
  databaseRefusal(database: string): PoolError | null;
  // Whether the proxy can log in to the server as this user (trust with no secret of the client's).
  serverLoginKnown(database: string, user: string): boolean;
  userSecret(user: string): string | undefined;
  // auth_query: the secret of a user not in the config, or undefined if no lookup applies.
  lookupSecret?(client: ClientConnection): Promise<string | undefined> | undefined;
  // A client proved it knows `secret`: how the proxy may log in to the server as it.
  clientProved?(client: ClientConnection, secret: string, proof: ClientProof): void;
  isAdminDatabase(database: string): boolean;
  // max_client_conn, applied once the database is known: the refusal, or null to go on.
  admitted?(client: ClientConnection): ErrorFields | null;
  startAdmin(client: ClientConnection): void;
  cancel(pid: number, key: number): void;
  clientLoggedIn(client: ClientConnection): void;
  clientClosed(client: ClientConnection): void;
  // The kernel path: offered idle clients, handed requests, told of passes.
  readonly kernel: ClientKernel;
}

// The part of the KernelHost (src/pooling/kernel-host.ts) a client calls, declared here so
// this module does not depend on it.
export interface ClientKernel {
  offerClient(client: ClientConnection, aboutToWrite: number): boolean;
  leftKernel(client: ClientConnection): void;
  bindInKernel(client: ClientConnection, server: ServerConnection, request: Buffer[]): boolean;
  // Whether bindInKernel can take anything (false: user space only): a request is not
  // prepared for the kernel when it cannot.
  readonly bindsRequests: boolean;
  feedKernelBound(client: ClientConnection, data: Buffer): boolean;
  reclaimBound(client: ClientConnection): boolean;
  // Settings the client changed in the kernel still being read back (its next server waits), or null.
  settingsLearned(client: ClientConnection): Promise<void> | null;
  // Before user space feeds the client's mirror sessions: what the kernel copied first.
  beforeMirrorFeed(client: ClientConnection): void;
  // The client has no mirror session left: nothing of its traffic is copied from now on.
  mirrorsEnded(client: ClientConnection): void;
}

let nextClientId = 1;
const OWNER = Symbol('pgsplice client');
type ClientSocket = net.Socket & { [OWNER]?: ClientConnection };
const CLIENT_CAPTURE = captureSet('');
const REWRITE_CAPTURE = captureSet(REWRITTEN_TYPES);
const encryptionBit = (code: number): number => (code === SSL_REQUEST_CODE ? 1 : 2);
const MAX_PENDING_BYTES = 1 << 20;
// Shared empties for what a logged-in client no longer needs (never written to).
const NO_STARTUP: Map<string, string> = new Map();
const NO_SETTINGS: ReadonlyMap<string, string> = new Map();
const NO_MIRRORS = Object.freeze([]) as unknown as MirrorSession[];
// The settings the last client of a pool logged in with. A client whose are the same
// shares that Map until it changes a setting (most clients of a pool send the same
// startup packet and get the same defaults): one Map per pool, not one per idle client.
const LAST_LOGIN_SETTINGS = new WeakMap<object, ReadonlyMap<string, string>>();
function sharedSettings(key: object, own: ReadonlyMap<string, string>): ReadonlyMap<string, string> {
  const last = LAST_LOGIN_SETTINGS.get(key);
  if (last && last.size === own.size) {
    let same = true;
    for (const [k, v] of own) if (last.get(k) !== v) { same = false; break; }
    if (same) return last;
  }
  LAST_LOGIN_SETTINGS.set(key, own);
  return own;
}
// The rewriter's options are the config's: one object per config, not per client.
const REWRITER_OPTIONS = new WeakMap<Config, RewriterOptions>();
function rewriterOptions(c: Config): RewriterOptions {
  let o = REWRITER_OPTIONS.get(c);
  if (!o) REWRITER_OPTIONS.set(c, (o = { maxPreparedStatements: c.max_prepared_statements, policies: c.session_state }));
  return o;
}
const NO_NAMES: Set<string> = new Set(); // stop reading a client that sends this much ahead of its server

export class ClientConnection implements ServerPeer, PoolWaiter, Guarded {
  readonly id = nextClientId++;
  private readonly lifecycle = new StateOf<ClientState>(this, CLIENT_MOVES, ClientState.Startup); // checked moves only
  get state(): ClientState {
    return this.lifecycle.current;
  }
  user = '';
  database = '';
  appName = '';
  // Tracked and startup settings; possibly shared with other clients (sharedSettings), so
  // written only through setSetting/deleteSetting, which copy it first.
  settings: ReadonlyMap<string, string> = NO_SETTINGS;
  private settingsShared = true;
  private signature: string | null = null; // settingsSignature, until the settings change
  private startupNames: Set<string> | null = null; // settings the client sent at startup (session mode)
  readonly cancelPid: number;
  readonly cancelKey: number;
  pool: Pool | null = null;
  server: ServerConnection | null = null;
  readonly tracker = new TransactionTracker();
  readonly connectedAt = Date.now();
  lastActivity = Date.now(); // last byte from the client or its server (user space only)
  requestSince = 0; // when the oldest outstanding request was sent, 0 = none
  bytesRead = 0; // since the socket was registered with the kernel path
  // Plain numbers, not BigInt (no allocation per chunk): a double counts exactly to 2^53 (8 PiB).
  stats = { xacts: 0, queries: 0, bytesIn: 0, bytesOut: 0 };
  readonly timing = new ClientTiming(); // wait/query/xact time for SHOW STATS and metrics
  // Before login only startup packets (10000 bytes) and password messages fit.
  // Dropped at login unless the admin console reads through it: the data phase scans.
  private framer: MessageFramer | null = new MessageFramer(MAX_AUTH_MESSAGE_LENGTH);
  private readPaused = false; // stopped reading while login is pending (bytes buffered in the framer)
  private scanner = new StreamScanner(CLIENT_CAPTURE);
  private pending: RequestUnit[] = [];
  private pendingBytes = 0;
  private scram: ScramServerSession | null = null;
  private authMethod: ClientAuthType = 'trust';
  private authType: ClientAuthType = 'trust'; // configured, or chosen by the HBA rule
  private secret: string | undefined; // from the config or auth_query
  private md5Salt: Buffer | null = null;
  private terminated = false;
  private loginTimer: NodeJS.Timeout | null = null;
  private startup = new Map<string, string>();
  private encryptionAnswered = 0; // bits: SSL (1) and GSS (2) requests answered
  // The server the kernel has bound to this client in state KernelBound (kept once it closed,
  // for the controller to take back), else null.
  get kernelServer(): ServerConnection | null {
    return this.state === ClientState.KernelBound || this.state === ClientState.Closed ? this.boundServer : null;
  }
  private boundServer: ServerConnection | null = null; // set only by boundInKernel
  // Transaction mode: renames statements and watches session state (null in session mode).
  rewriter: RequestRewriter | null = null;
  // Its copies toward mirrors (docs/mirroring.md); on the kernel path the verdicts copy its
  // traffic and BypassController feeds them (src/mirror/kernel-feed.ts).
  mirrors: MirrorSession[] = NO_MIRRORS; // (the pooler assigns a client's own list, if any)
  // A mirror session of it ended (docs/mirroring.md): no more copies for it; with none
  // left (its mirrors were removed on reload) the kernel stops copying its traffic too.
  mirrorEnded(session: MirrorSession): void {
    this.mirrors = this.mirrors.filter((m) => m !== session);
    if (!this.mirrors.length && this.state !== ClientState.Closed) this.host.kernel.mirrorsEnded(this);
  }

  // Its named statements for its mirror sessions (transaction mode: the rewriter's map),
  // each as the Parse under the client's own name.
  statementsNow(): Map<string, Buffer> | null {
    const statements = this.rewriter?.statements;
    if (!statements) return null;
    const out = new Map<string, Buffer>();
    for (const name of statements.keys()) out.set(name, this.statementNow(name)!);
    return out;
  }

  statementNow(name: string): Buffer | null {
    const e = this.rewriter?.statements.get(name);
    if (!e) return null;
    const body = e.parse.subarray(5); // server name, then the client's text and types
    return parseMessage(name, body.subarray(body.indexOf(0) + 1));
  }

  // Its settings as they are now, for a mirror session to keep: the Map itself, marked
  // shared so that a later change copies it first (no copy per mirrored transaction).
  settingsSnapshot(): ReadonlyMap<string, string> {
    this.settingsShared = true;
    return this.settings;
  }

  // What a mirror connection of this client is opened with: its startup settings, application_name.
  get mirrorStartup(): Record<string, string> {
    const out = poolStartup(startupSettings(this.startup));
    if (this.appName) out.application_name = this.appName;
    return out;
  }
  // When set, the admin console consumes this client's messages instead of a pool (serveAdmin).
  private adminHandler: ((type: number, body: Buffer) => void) | null = null;
  get isAdmin(): boolean {
    return this.adminHandler !== null;
  }

  // The admin console takes this client's messages from now on (called at its login).
  serveAdmin(handler: (type: number, body: Buffer) => void): void {
    this.adminHandler = handler;
  }

  constructor(
    public socket: net.Socket, // a tls.TLSSocket after an SSLRequest answered 'S'
    private readonly host: ClientHost,
  ) {
    this.cancelPid = newCancelPid(); // names this process when it has peers (src/workers/)
    this.cancelKey = crypto.randomInt(-0x80000000, 0x7fffffff);
    socket.setNoDelay(true);
    this.listenTo(socket);
    const lt = host.config.client_login_timeout;
    if (lt > 0) {
      this.loginTimer = setTimeout(this.guard(() => this.fatal({ code: SqlState.ProtocolViolation, message: 'client_login_timeout' })), lt * 1000);
      this.loginTimer.unref();
    }
  }

  // The socket's handlers are shared by all clients and find theirs on the socket: three
  // closures per client would be a good part of what an idle client costs.
  private listenTo(sock: net.Socket): void {
    (sock as ClientSocket)[OWNER] = this;
    sock.on('data', ClientConnection.onSocketData);
    sock.on('error', ClientConnection.onSocketError);
    sock.on('close', ClientConnection.onSocketClose);
  }

  private static onSocketData(this: ClientSocket, d: Buffer): void {
    this[OWNER]?.onData(d); // onData has its own boundary
  }

  private static onSocketError(this: ClientSocket, e: Error): void {
    this[OWNER]?.closeGuarded(`socket error: ${e.message}`);
  }

  private static onSocketClose(this: ClientSocket): void {
    this[OWNER]?.closeGuarded('client closed the connection');
  }

  private closeGuarded(reason: string): void {
    try {
      this.close(reason);
    } catch (e) {
      this.failWith(e);
    }
  }

  // ---- the error boundary: whatever this connection's handlers throw ends it alone ----

  // Wraps a callback (event handler, timer, promise continuation) of this connection.
  guard<A extends unknown[]>(fn: (...args: A) => void): (...args: A) => void {
    return guard(this, fn);
  }

  failWith(e: unknown): void {
    try {
      const f = errorFieldsFor(e, this.label);
      if (this.state === ClientState.Closed) return;
      this.fatal(f);
    } catch (e2) {
      // Even the error path failed: drop the socket, and still leave the registry.
      log.error(`${this.label} closing after an internal error failed: ${(e2 as Error).stack}`);
      if (this.state !== ClientState.Closed) this.move(ClientState.Closed);
      this.socket.destroy();
      try {
        this.host.clientClosed(this);
      } catch {
        /* logged above */
      }
    }
  }

  get label(): string {
    // Names a client sent before logging in are its own words: logged bounded and escaped.
    const who = !this.user ? 'unauthenticated' : this.loggedIn ? `${this.user}@${this.database}` : `${logSafe(this.user)}@${logSafe(this.database)}`;
    return `C-${this.id} ${who} ${this.socket.remoteAddress ?? 'unix'}:${this.socket.remotePort ?? ''}`;
  }

  get addr(): string {
    return this.socket.remoteAddress ?? 'unix';
  }

  // ---- input ----

  private onData(chunk: Buffer): void {
    this.lastActivity = Date.now();
    this.bytesRead += chunk.length;
    this.stats.bytesIn += chunk.length;
    try {
      switch (this.state) {
        case ClientState.Startup:
        case ClientState.Auth:
          this.framer!.push(chunk);
          this.drainLogin();
          return;
        case ClientState.Login:
        case ClientState.AuthLookup:
          this.framer!.push(chunk); // kept until login completes / the lookup answers
          if (this.framer!.buffered > MAX_PENDING_BYTES && !this.readPaused) {
            this.readPaused = true; // read on once login is done: no unbounded buffering meanwhile
            this.socket.pause();
          }
          return;
        case ClientState.Closed:
          return;
        default:
          if (this.adminHandler) {
            this.framer!.push(chunk);
            for (let m = this.framer!.next(); m; m = this.framer!.next()) {
              if (m.type === Frontend.Terminate) return this.close('client sent Terminate');
              this.adminHandler(m.type, m.body);
            }
            return;
          }
          this.onRequestBytes(chunk);
      }
    } catch (e) {
      this.failWith(e);
    }
  }

  private resumeReading(): void {
    if (!this.readPaused) return;
    this.readPaused = false;
    this.socket.resume();
  }

  private drainLogin(): void {
    while (this.state === ClientState.Startup || this.state === ClientState.Auth) {
      if (this.state === ClientState.Startup) {
        const pkt = this.framer!.nextStartup();
        if (!pkt) return;
        this.onStartupPacket(pkt);
      } else {
        const m = this.framer!.next();
        if (!m) return;
        if (m.type === Frontend.Terminate) return this.close('client sent Terminate during login');
        if (m.type !== Frontend.Password) throw new ProtocolError(`expected password message, got "${printable(m.type)}"`);
        this.onPassword(m.body);
      }
    }
  }

  private onStartupPacket(pkt: Buffer): void {
    const code = pkt.readInt32BE(0);
    if ((code === SSL_REQUEST_CODE || code === GSSENC_REQUEST_CODE) && !(this.encryptionAnswered & encryptionBit(code))) {
      if (pkt.length !== 4) throw new ProtocolError('invalid SSL/GSS request length');
      this.encryptionAnswered |= encryptionBit(code); // a repeated request is a bad startup packet, as in PostgreSQL
      if (this.framer!.buffered > 0) throw new ProtocolError('data sent before the SSL/GSS response');
      const tls = code === SSL_REQUEST_CODE ? this.host.clientTls?.(this.socket) : null;
      if (!tls) {
        this.socket.write('N');
        return;
      }
      this.socket.write('S');
      // From here on the client speaks TLS: its bytes arrive through the TLS socket.
      this.socket.off('data', ClientConnection.onSocketData);
      tls.accept(this.socket, this.guard((sock: net.Socket) => {
        if (this.state === ClientState.Closed) return sock.destroy();
        this.socket = sock;
        this.listenTo(sock);
      }));
      return;
    }
    if (code === CANCEL_REQUEST_CODE) {
      if (pkt.length !== 12) throw new ProtocolError('invalid cancel request length');
      this.host.cancel(pkt.readInt32BE(4), pkt.readInt32BE(8));
      this.close('cancel request handled', true);
      return;
    }
    const major = code >>> 16;
    const minor = code & 0xffff;
    if (major !== 3) {
      this.fatal({
        code: SqlState.FeatureNotSupported,
        message: `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.0`,
      });
      return;
    }
    const r = new BodyReader(pkt.subarray(4));
    const unrecognized: string[] = [];
    for (;;) {
      const k = r.cstring();
      if (k === '') break;
      const v = r.cstring();
      if (k.startsWith('_pq_.')) unrecognized.push(k);
      else this.startup.set(k, v);
    }
    this.user = this.startup.get('user') ?? '';
    this.database = this.startup.get('database') || this.user;
    if (!this.user) return this.fatal({ code: SqlState.InvalidAuthorization, message: 'no PostgreSQL user name specified in startup packet' });
    const full = this.host.admitted?.(this);
    if (full) return this.fatal(full);
    const refusal = clientRefusal(this.socket, this.host.config.client_tls_sslmode);
    if (refusal) return this.fatal({ code: SqlState.InvalidAuthorization, message: refusal });
    if (this.startup.has('replication') && this.startup.get('replication') !== 'false') {
      return this.fatal({ code: SqlState.FeatureNotSupported, message: 'replication connections are not supported by pgsplice' });
    }
    if (code !== PROTOCOL_3_0 || unrecognized.length) this.socket.write(negotiateProtocolVersion(0, unrecognized));

    // The pool is resolved after authentication: nothing is allocated per name a client
    // that has not logged in sends. An unknown database is refused now, as in PgBouncer.
    if (!this.host.isAdminDatabase(this.database)) {
      const refusal = this.host.databaseRefusal(this.database);
      if (refusal) return this.fatal({ code: refusal.code, message: refusal.message });
    }
    this.beginAuth();
  }

  private beginAuth(): void {
    this.move(ClientState.Auth);
    const local = this.socket.remoteAddress === undefined; // the unix-socket listener
    const encrypted = (this.socket as { encrypted?: boolean }).encrypted === true; // a TLSSocket, once TLS is in
    const hba = clientAuthType(this.host.config, { local, ssl: encrypted, address: this.socket.remoteAddress, database: this.database, user: this.user });
    if ('refusal' in hba) return this.fatal({ code: SqlState.InvalidAuthorization, message: hba.refusal });
    this.authType = hba.authType;
    this.secret = this.host.userSecret(this.user);
    const lookup = this.secret === undefined && !this.host.isAdminDatabase(this.database) ? this.host.lookupSecret?.(this) : undefined;
    if (!lookup) return this.askForPassword();
    this.move(ClientState.AuthLookup);
    lookup.then(
      this.guard((secret: string | undefined) => {
        if (this.state !== ClientState.AuthLookup) return;
        this.secret = secret;
        this.move(ClientState.Auth);
        this.askForPassword();
        this.resumeReading();
        if ((this.state as ClientState) === ClientState.Auth) this.onData(Buffer.alloc(0)); // messages that came early
      }),
      this.guard((e: Error) => this.fatal({ code: SqlState.ConnectionFailure, message: e.message })),
    );
  }

  private askForPassword(): void {
    const secret = this.secret;
    const choice = chooseAuthMethod(this.authType, secret);
    // No usable secret: still run the configured exchange, so a missing user is not revealed.
    const method = 'method' in choice ? choice.method : this.authType;
    if ('error' in choice && secret !== undefined) log.warn(`user "${this.user}": ${choice.error}`);
    this.authMethod = method;
    switch (method) {
      case 'trust':
        if (secret === undefined && (this.host.isAdminDatabase(this.database) || !this.host.serverLoginKnown(this.database, this.user))) return this.authFailed();
        return this.authenticatedWith({});
      case 'plain':
        this.socket.write(authenticationCleartext());
        return;
      case 'md5':
        this.md5Salt = crypto.randomBytes(4);
        this.socket.write(authenticationMd5(this.md5Salt));
        return;
      case 'scram-sha-256':
        // An unknown user still gets a full exchange, so its absence is not revealed.
        this.scram = new ScramServerSession('method' in choice && secret !== undefined ? secret : mockScramVerifier(this.user));
        this.socket.write(authenticationSasl(['SCRAM-SHA-256']));
        return;
    }
  }

  private onPassword(body: Buffer): void {
    const secret = this.secret;
    switch (this.authMethod) {
      case 'plain': {
        const pw = new BodyReader(body).cstring();
        if (secret === undefined || !verifyPlainPassword(secret, this.user, pw)) return this.authFailed();
        return this.authenticatedWith({ password: pw });
      }
      case 'md5': {
        const resp = new BodyReader(body).cstring();
        if (secret === undefined || !verifyMd5Response(secret, this.user, this.md5Salt!, resp)) return this.authFailed();
        return this.authenticatedWith({});
      }
      case 'scram-sha-256': {
        const scram = this.scram!;
        if (!this.saslStarted) {
          const r = new BodyReader(body);
          const mech = r.cstring();
          if (mech !== 'SCRAM-SHA-256') throw new ProtocolError(`unsupported SASL mechanism "${mech}"`);
          const len = r.int32();
          const data = len < 0 ? Buffer.alloc(0) : r.bytes(len);
          this.saslStarted = true;
          this.socket.write(authenticationSaslContinue(scram.handleClientFirst(data)));
          return;
        }
        const res = scram.handleClientFinal(body);
        if (!res.ok || secret === undefined || 'error' in choiceFor(this.authType, secret)) return this.authFailed();
        this.socket.write(authenticationSaslFinal(res.serverFinal));
        return this.authenticatedWith({ clientKey: res.clientKey });
      }
      default:
        throw new ProtocolError('unexpected password message');
    }
  }
  private saslStarted = false;

  // Past authentication (the names it sent are a known user's).
  loggedIn = false;

  private authFailed(): void {
    const kind = this.authMethod === 'trust' ? 'authentication' : 'password authentication';
    this.fatal({ code: SqlState.InvalidPassword, message: `${kind} failed for user "${this.user}"` });
  }

  private authenticatedWith(proof: ClientProof): void {
    if (this.secret !== undefined && !this.host.isAdminDatabase(this.database)) this.host.clientProved?.(this, this.secret, proof);
    this.authenticated();
  }

  private authenticated(): void {
    this.move(ClientState.Login);
    this.loggedIn = true;
    this.scram = null;
    if (this.host.isAdminDatabase(this.database)) {
      this.host.startAdmin(this); // refuses (28000) before AuthenticationOk, as PgBouncer does
      this.finishLogin(new Map([['server_version', '15.0'], ['client_encoding', 'UTF8'], ['server_encoding', 'UTF8'],
        ['DateStyle', 'ISO, MDY'], ['standard_conforming_strings', 'on'], ['integer_datetimes', 'on']]));
      return;
    }
    let pool: Pool;
    try {
      pool = this.pool = this.host.resolvePool(this.database, this.user, poolStartup(startupSettings(this.startup)));
    } catch (e) {
      if (e instanceof PoolError) return this.fatal({ code: e.code, message: e.message });
      throw e;
    }
    // The pool's copies of the same names: one string per pool, not two per idle client.
    if (pool.database === this.database) this.database = pool.database;
    if (pool.user === this.user) this.user = pool.user;
    // What the pool's newest server reported at its login: the defaults of a session opened
    // now (ALTER DATABASE/ROLE ... SET reaches servers opened after it). In session mode
    // the server the client gets later corrects what differs (ParameterStatus).
    const newest = [...pool.servers].reverse().find((s) => s.loginParams && s.isUsable);
    if (newest) return this.finishLogin(newest.loginParams!);
    // A pool without a server yet: wait for one to learn what to report.
    pool.acquire().then(
      this.guard((server: ServerConnection) => {
        pool.release(server);
        if (this.state === ClientState.Login) this.finishLogin(server.loginParams ?? server.params);
      }),
      this.guard((e: Error) => this.fatal({ code: e instanceof PoolError ? e.code : SqlState.ConnectionFailure, message: e.message })),
    );
  }

  private finishLogin(serverParams: Map<string, string>): void {
    if (this.state !== ClientState.Login) return;
    if (this.loginTimer) clearTimeout(this.loginTimer);
    this.loginTimer = null;
    this.framer!.maxLength = MAX_MESSAGE_LENGTH; // the admin console frames after login
    const settings = new Map<string, string>();
    for (const k of TRACKED_PARAMETERS) {
      const v = serverParams.get(k);
      if (v !== undefined) settings.set(k, v);
    }
    const session = this.pool?.settings.mode === 'session';
    for (const [k, v] of startupSettings(this.startup)) {
      settings.set(k, v);
      if (session) (this.startupNames ??= new Set()).add(k);
    }
    this.settings = sharedSettings(this.pool ?? this.host, settings);
    this.signature = null;
    this.startup = NO_STARTUP; // login is over: nothing reads the startup packet again
    this.appName = this.settings.get('application_name') ?? '';
    const pool = this.pool;
    if (pool && pool.settings.mode !== 'session') {
      this.rewriter = new RequestRewriter(rewriterOptions(this.host.config), this);
      this.scanner.capture = REWRITE_CAPTURE; // at a boundary: nothing was read yet
    }
    const out: Buffer[] = [authenticationOk()];
    const reported = new Map(serverParams);
    for (const [k, v] of this.settings) if (isReported(k)) reported.set(k, v);
    for (const [k, v] of reported) out.push(parameterStatus(k, v));
    out.push(backendKeyData(this.cancelPid, this.cancelKey), readyForQuery('I'));
    this.move(ClientState.Idle);
    this.host.clientLoggedIn(this);
    log.info(`${this.label} login ok${this.appName ? ` (${this.appName})` : ''}`);
    // The kernel path sees every byte after registration, so register before the client can answer.
    const response = Buffer.concat(out);
    const toKernel = this.host.kernel.offerClient(this, response.length);
    this.socket.write(response);
    this.resumeReading(); // (events come later: the early bytes below go first)
    if (this.adminHandler) return this.onData(Buffer.alloc(0)); // the console reads any early messages from the framer
    const early = this.framer!.takeRest();
    this.framer = null;
    if (early.length && !toKernel) this.onRequestBytes(early);
  }

  // ---- data phase in user space ----

  private onRequestBytes(chunk: Buffer): void {
    if (this.heldInput.keep(chunk)) return;
    if (this.state === ClientState.Kernel || this.state === ClientState.KernelBound) {
      this.move(ClientState.Idle); // the kernel passed it up (leftKernel binds it again if it still carries it)
      this.requestSince = 0;
      this.host.kernel.leftKernel(this);
      if (this.heldInput.keep(chunk)) return; // a hand-over is settling (holdInput)
    }
    if (this.mirrors.length) {
      this.host.kernel.beforeMirrorFeed(this);
      for (const m of this.mirrors) m.clientBytes(chunk); // copied; the mirror is never waited for
    }
    let cut = -1;
    const rw = this.rewriter;
    const units: RequestUnit[] = [];
    let from = 0; // chunk bytes before this are in units
    let lastEnd = 0;
    this.scanner.scan(chunk, (m) => {
      if (cut >= 0) return;
      if (m.body) checkRequestFormat(m.type, m.body); // before anything acts on it (08P01)
      if (m.type === Frontend.Terminate) {
        cut = Math.max(m.start, 0);
        return;
      }
      if (this.tracker.outstanding === 0 && this.requestSince === 0) this.requestSince = Date.now();
      this.tracker.onClientMessage(m.type);
      if (m.type === Frontend.Query || m.type === Frontend.Sync || m.type === Frontend.FunctionCall) {
        this.stats.queries++;
        this.timing.request();
      }
      if (rw) {
        // messages the rewriter reads become units; the bytes between them stay raw
        if (m.body) {
          const start = Math.max(m.start, 0);
          if (start > from) units.push(chunk.subarray(from, start));
          units.push(m.start >= 0 ? { type: m.type, body: m.body, raw: chunk.subarray(m.start, m.end) } : { type: m.type, body: m.body });
          from = m.end;
        } else if (MARKED_TYPES.has(m.type) || REWRITE_CAPTURE[m.type]) {
          // (a rewritable message whose start the kernel forwarded passes as it is)
          if (m.end > from) units.push(chunk.subarray(from, m.end));
          units.push(m.type);
          from = m.end;
        }
      }
      lastEnd = m.end;
    });
    if (!this.scanner.atBoundary && cut < 0) this.tracker.onClientPartial(this.scanner.currentType);
    let end = cut >= 0 ? cut : chunk.length;
    // the start of a message the rewriter must read whole waits for the rest of it
    if (rw && cut < 0 && this.scanner.deliversBody) end = Math.max(lastEnd, from);
    if (end > from) units.push(chunk.subarray(from, end));
    if (this.kernelServer && units.length) {
      // named statements the server has are renamed here as the kernel would
      const direct = rw ? rw.kernelRewrite(units, this.kernelServer) : rawBytes(units);
      if (!direct) {
        if (!this.host.kernel.reclaimBound(this)) this.move(ClientState.Idle); // released meanwhile: a new request
      } else {
        if (this.host.kernel.feedKernelBound(this, Buffer.concat(direct))) return;
        this.move(ClientState.Idle); // released by the kernel: these bytes are a new request
      }
    }
    if (units.length) this.forward(units);
    if (cut >= 0) {
      this.terminated = true;
      // Close now unless the server still owes answers to what came before the Terminate;
      // an open transaction is rolled back when the server is given up (leaveServer).
      if (!this.server || (this.tracker.outstanding === 0 && !this.tracker.tailOpen)) this.close('client sent Terminate');
      else if (this.state === ClientState.Active) {
        // The server still owes answers, or owes none the tracker can count on: PostgreSQL
        // sends no ReadyForQuery for messages without a Sync, and skips a Query sent after
        // an extended-protocol error until the next Sync. Waiting for them could be forever;
        // pass the Terminate on instead, as PostgreSQL would read it after the rest, and let
        // the server end that session on its own.
        const server = this.server;
        server.retiring = true; // its close (leaveServer) ends with a Terminate after the rest
        this.close('client sent Terminate');
      }
    }
  }

  private forward(units: RequestUnit[]): void {
    if (this.server && this.state === ClientState.Active) {
      this.writeToServer(this.server, units);
      return;
    }
    for (const u of units) {
      this.pending.push(u);
      if (Buffer.isBuffer(u)) this.pendingBytes += u.length;
      else if (typeof u !== 'number') this.pendingBytes += u.body.length + 5;
    }
    if (this.pendingBytes > MAX_PENDING_BYTES) this.socket.pause();
    if (this.state === ClientState.Idle) this.requestServer();
  }

  private writeToServer(server: ServerConnection, units: RequestUnit[]): void {
    // What passed unchanged is rejoined: usually the client's chunk goes out as it came.
    const out = joinAdjacent(this.rewriter ? this.rewriter.write(units, server) : (units as Buffer[]));
    let ok = true;
    if (out.length > 1) server.socket.cork(); // one writev, not a write per message
    for (const b of out) ok = server.write(b);
    if (out.length > 1) server.socket.uncork();
    if (!ok) this.throttle(server.socket);
  }

  // Pauses reading this client until the server socket drains (TCP back-pressure).
  private throttle(to: net.Socket): void {
    this.socket.pause();
    to.once('drain', () => {
      if (this.state !== ClientState.Closed) this.socket.resume();
    });
  }

  // An idle server (the common case) is attached and written to in this same tick, with
  // no promise and no closure; only a client that must wait gets the pool's promise.
  private requestServer(): void {
    const pool = this.pool!;
    this.move(ClientState.Waiting);
    this.timing.waiting(pool);
    const server = pool.acquireFor(this); // null: serverGranted/serverRefused come later
    if (!server) return;
    if (this.host.kernel.bindsRequests) this.later(() => this.gotServer(server));
    else this.gotServer(server); // (an exception reaches the caller's error boundary)
  }

  // The pool's answer to a client that waited (PoolWaiter): called from whatever freed
  // the server (another client's transaction end), so this client's errors stay its own.
  serverGranted(server: ServerConnection): void {
    this.poolAnswered(() => this.gotServer(server));
  }

  serverRefused(e: Error): void {
    this.poolAnswered(() => this.noServer(e));
  }

  private poolAnswered(take: () => void): void {
    if (this.host.kernel.bindsRequests) return this.later(take);
    try {
      take();
    } catch (e) {
      this.failWith(e);
    }
  }

  // With the kernel path in play a server is taken up once the code that freed it is done
  // (a microtask): binding it in the kernel from inside the kernel host's own callbacks,
  // or inside the released server's read, would re-enter them. User space alone has no
  // such callbacks and takes it at once.
  private later(fn: () => void): void {
    queueMicrotask(this.guard(fn));
  }

  private gotServer(server: ServerConnection): void {
    if (this.state !== ClientState.Waiting) return this.pool!.release(server);
    try {
      this.attach(server);
    } catch (e) {
      // Not linked to this client yet: nobody else would close it.
      if (this.server !== server && this.kernelServer !== server) server.close('client failed before using it', false);
      throw e;
    }
  }

  private noServer(e: Error): void {
    if (this.state !== ClientState.Waiting) return;
    const code = e instanceof PoolError ? e.code : SqlState.ConnectionFailure;
    this.fatal({ code, message: e.message });
  }

  private attach(server: ServerConnection): void {
    // Settings it changed in the kernel are being read back: its server waits for them.
    const learning = this.host.kernel.settingsLearned(this);
    if (learning) {
      learning.then(this.guard(() => this.attach(server)));
      return;
    }
    if (needsReset(this.settings, server)) {
      // Another client's settings are on it: back to the session defaults first. A server
      // that cannot be reset is closed and this client gets another one.
      runEach(server, RESET_SESSION).then(
        this.guard(() => {
          server.applied.clear();
          this.attach(server);
        }),
        this.guard((e: Error) => {
          server.close(`resetting another client's settings failed: ${e.message}`);
          if (this.state === ClientState.Waiting) this.requestServer();
        }),
      );
      return;
    }
    const session = this.pool!.settings.mode === 'session';
    // Session mode: the pool's servers were opened with the client's startup settings;
    // only those not in the pool key can differ. Transaction mode: all the client has.
    const sql = settingsSql(this.settings, server, session ? (this.startupNames ?? NO_NAMES) : undefined);
    if (sql) {
      server.runInternal(sql).then(
        this.guard(() => {
          recordApplied(this.settings, server);
          // The server reports the normalized form ('ISO' becomes 'ISO, MDY'): adopt it.
          for (const k of [...this.settings.keys()]) {
            const v = server.params.get(k);
            if (isReported(k) && v !== undefined) this.setSetting(k, v);
          }
          this.attach(server);
        }),
        this.guard((e: Error) => {
          const f = (e as { fields?: Record<string, string> }).fields ?? {};
          if (!f.C || !server.isUsable) {
            // The server was lost (closed before or while the SETs ran), not the SETs
            // refused: nothing of this client's reached it, so another server serves it.
            server.close(`applying a client's settings failed: ${e.message}`);
            if (this.state === ClientState.Waiting) this.requestServer();
            return;
          }
          // One Query: the failed SETs changed nothing on the server, which stays clean.
          log.info(`${this.label} could not apply its settings on ${server.label}: ${e.message}`);
          this.pool!.release(server);
          if (this.state !== ClientState.Waiting) return;
          const failed = this.failFirstRequest({
            code: f.C ?? SqlState.ConnectionFailure, message: `could not apply session settings: ${f.M ?? e.message}`, detail: f.D, hint: f.H,
          });
          if (!failed) return this.fatal({ code: f.C ?? SqlState.ConnectionFailure, message: `could not apply session settings: ${f.M ?? e.message}` });
          if (this.pending.length) this.requestServer();
          else {
            this.move(ClientState.Idle);
            this.host.kernel.offerClient(this, 0);
          }
        }),
      );
      return;
    }
    if (session) this.adoptServerParameters(server);
    if (this.state !== ClientState.Waiting) return this.pool!.release(server);
    const rw = this.rewriter;
    // A request that needs no rewriting, or only the renaming of statements this server
    // has (what the kernel does itself), goes to the kernel with its server.
    const direct = this.host.kernel.bindsRequests && this.scanner.atBoundary && !rw?.session.pinned
      ? (rw ? rw.kernelRewrite(this.pending, server) : rawBytes(this.pending)) : null;
    if (direct) {
      const units = this.pending;
      this.pending = []; // empty while binding: the bind flips the client back only if it is quiet
      if (this.host.kernel.bindInKernel(this, server, direct)) {
        this.pendingBytes = 0;
        this.requestSince = 0; // the kernel sees its answer (the controller moved it to KernelBound or Kernel)
        this.socket.resume();
        return;
      }
      this.pending = units;
    }
    this.server = server;
    this.move(ClientState.Active);
    this.timing.attached();
    server.link(this);
    const pending = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    this.socket.resume();
    this.writeToServer(server, pending);
  }

  // Session mode: the client was told the defaults of the pool's newest server at login;
  // the server it got says what they are on it (before any of its requests ran there).
  private adoptServerParameters(server: ServerConnection): void {
    const out: Buffer[] = [];
    for (const k of TRACKED_PARAMETERS) {
      const v = server.params.get(k);
      if (v === undefined || this.settings.get(k) === v) continue;
      this.setSetting(k, v);
      out.push(parameterStatus(k, v));
      if (k === 'application_name') this.appName = v;
    }
    if (out.length && !this.socket.destroyed) this.socket.write(Buffer.concat(out));
  }

  // The first request waiting for a server fails with f, as PostgreSQL fails a request:
  // its messages up to the Query or Sync that ends it are dropped, then ReadyForQuery.
  private failFirstRequest(f: ErrorFields): boolean {
    const end = this.pending.findIndex((u) => (typeof u === 'number'
      ? u === Frontend.Sync || u === Frontend.FunctionCall
      : !Buffer.isBuffer(u) && (u.type === Frontend.Query || u.type === Frontend.Sync || u.type === Frontend.FunctionCall)));
    if (end < 0) return false;
    this.pending.splice(0, end + 1);
    this.pendingBytes = 0;
    for (const u of this.pending) {
      if (Buffer.isBuffer(u)) this.pendingBytes += u.length;
      else if (typeof u !== 'number') this.pendingBytes += u.body.length + 5;
    }
    this.sendError({ severity: 'ERROR', ...f });
    if (!this.socket.destroyed) this.socket.write(readyForQuery('I'));
    if (this.mirrors.length) {
      this.host.kernel.beforeMirrorFeed(this);
      const answer = Buffer.concat([errorResponse({ severity: 'ERROR', ...f }), readyForQuery('I')]);
      for (const m of this.mirrors) m.primaryBytes(answer);
    }
    this.tracker.onReadyForQuery('I');
    this.requestSince = this.tracker.outstanding > 0 ? Date.now() : 0;
    return true;
  }

  // Reads none of the client's requests until `until` resolves (a hand-over of its
  // transaction from the kernel path is settling); they are kept in order and read then.
  holdInput(until: Promise<void>): void {
    // (a promise continuation: its exceptions, such as a malformed message among the held
    // bytes, end this client through its boundary as a read's would)
    this.heldInput.start(this.socket, until, this.guard((held: Buffer[]) => {
      if (this.state === ClientState.Closed) return;
      this.socket.resume(); // before: reading them may pause it again (back-pressure)
      for (const chunk of held) if ((this.state as ClientState) !== ClientState.Closed) this.onRequestBytes(chunk);
    }));
  }
  private readonly heldInput = new InputHold();

  // Holds what the server sends until `until` resolves (bytes the kernel queued for this
  // client must reach it first); its server is not read meanwhile (back-pressure). A
  // server it gave up meanwhile was resumed when it was unlinked; the one it has now
  // (maybe a later one, paused by onServerData) is resumed here.
  holdOutput(until: Promise<void>): void {
    this.held = [];
    until.then(this.guard(() => {
      const held = this.held ?? [];
      this.held = null;
      let ok = true;
      for (const b of held) if (!this.socket.destroyed) ok = this.socket.write(b);
      if (this.closeWhenReleased) return this.closeAfterServerFatal();
      const server = this.server;
      if (!server) return;
      if (ok) server.socket.resume();
      else this.socket.once('drain', () => server.socket.resume());
    }));
  }
  private held: Buffer[] | null = null;

  // Replies spliced by the reply filter: written as one batch.
  onServerPieces(pieces: Buffer[], server: ServerConnection): void {
    if (pieces.length > 1 && !this.held) this.socket.cork();
    for (const p of pieces) this.onServerData(p, server);
    if (pieces.length > 1 && !this.held) this.socket.uncork();
  }

  onServerData(chunk: Buffer, server: ServerConnection): void {
    if (this.mirrors.length) {
      this.host.kernel.beforeMirrorFeed(this);
      for (const m of this.mirrors) m.primaryBytes(chunk); // what the mirror's answers are compared with
    }
    this.lastActivity = Date.now();
    this.stats.bytesOut += chunk.length;
    if (this.socket.destroyed) return;
    if (this.held) {
      this.held.push(chunk);
      server.socket.pause();
      return;
    }
    if (!this.socket.write(chunk)) {
      server.socket.pause();
      this.socket.once('drain', () => server.socket.resume());
    }
  }

  // Bytes of its server's last read are still referenced after onServerData/Pieces: a
  // write the socket has not finished, output held, or a mirror's copy.
  keepsServerBytes(): boolean {
    return this.held !== null || this.mirrors.length > 0 || this.socket.writableLength > 0;
  }

  // (the tracker has read the ReadyForQuery, with the rest of the chunk, in stream order)
  onServerReady(status: TxStatus, server: ServerConnection): void {
    // Statement pooling: the server goes back after every statement, so a transaction
    // block can't be kept; refused as PgBouncer refuses it (the open block is rolled back).
    if (status !== 'I' && this.pool!.settings.mode === 'statement') {
      return this.fatal({ code: SqlState.ProtocolViolation, message: 'transaction blocks not allowed in statement pooling mode' });
    }
    this.timing.ready(this.tracker.outstanding, status);
    this.requestSince = this.tracker.outstanding > 0 ? Date.now() : 0;
    if (!this.tracker.idle) return;
    this.stats.xacts++;
    this.pool!.stats.xacts++;
    if (this.terminated) return this.close('client sent Terminate');
    if (this.pool!.settings.mode === 'session') return;
    const session = this.rewriter?.session;
    if (session?.pinned) return; // keeps its server while the state it left there exists
    if (session && (session.hasPendingParameters || session.resetAll)) return this.readBackSettings(server);
    this.detach(server);
  }

  // After a transaction that SET parameters: learn what they are now (a rolled-back or
  // failed SET changed nothing), so the next server gets the same (session_state.parameters: track).
  private readBackSettings(server: ServerConnection): void {
    const session = this.rewriter!.session;
    const names = new Set([...session.pendingParameters].filter((n) => !isReported(n)));
    if (session.resetAll) for (const k of [...this.settings.keys(), ...server.applied.keys()]) if (!isReported(k)) names.add(k);
    session.pendingParameters.clear();
    session.resetAll = false;
    if (names.size === 0) return this.detach(server);
    const list = [...names];
    this.server = null;
    this.move(ClientState.Waiting); // requests meanwhile wait in pending
    server.unlink();
    const sql = `SELECT ${list.map((n) => `coalesce(pg_catalog.current_setting('${n.replace(/'/g, "''")}', true), '${UNSET}')`).join(', ')}`;
    server.queryValues(sql).then(
      this.guard((values: string[]) => {
        list.forEach((n, i) => {
          const v = values[i];
          if (v === UNSET) this.deleteSetting(n);
          else this.setSetting(n, v);
        });
        recordApplied(this.settings, server);
        for (const m of this.mirrors) m.settingsLearned();
        if (this.state !== ClientState.Waiting) return this.pool!.release(server);
        this.detach(server); // as at any transaction end: release, then serve what waited or go to the kernel
      }),
      this.guard((e: Error) => {
        server.close(`reading back session settings failed: ${e.message}`);
        this.fatal({ code: SqlState.ConnectionFailure, message: `could not read back session settings: ${e.message}` });
      }),
    );
  }

  onServerParameter(name: string, value: string): void {
    const k = canonicalName(name);
    if (this.settings.has(k) || isReported(k)) this.setSetting(k, value);
    if (k === 'application_name') this.appName = value;
  }

  // A setting changed: on this client's own copy of its settings (the first change copies
  // a shared Map). Setting what it already is copies nothing.
  setSetting(k: string, v: string): void {
    if (this.settings.get(k) === v) return;
    this.ownSettings().set(k, v);
  }

  private deleteSetting(k: string): void {
    if (this.settings.has(k)) this.ownSettings().delete(k);
  }

  // Its settings as one string (the kernel path's pools are split by it): worked out once
  // per change of its settings, not at each hand-over.
  get settingsSignature(): string {
    return (this.signature ??= settingsSignature(this.settings));
  }

  private ownSettings(): Map<string, string> {
    this.signature = null; // (the caller changes them next)
    if (this.settingsShared) {
      this.settings = new Map(this.settings);
      this.settingsShared = false;
    }
    return this.settings as Map<string, string>;
  }

  // The rewriter's synthetic replies that are due now (RewriterClient).
  deliverReplies(replies: Buffer[], server: ServerConnection): void {
    for (const r of replies) this.onServerData(r, server);
  }

  onServerLost(server: ServerConnection, reason: string): void {
    if (this.server !== server) return;
    this.server = null;
    // The server's own FATAL already reached the client: that is its last word.
    if (server.fatalForwarded) return this.closeAfterServerFatal();
    this.fatal({ code: SqlState.ConnectionFailure, message: `server connection lost: ${reason}` });
  }

  // Closes once the server's FATAL error (forwarded, maybe still held) is written.
  closeAfterServerFatal(): void {
    if (this.state === ClientState.Closed) return;
    if (this.held) {
      this.closeWhenReleased = true; // the held bytes (the FATAL among them) go out first
      return;
    }
    log.info(`${this.label} closing: the server sent a FATAL error and closed the connection`);
    this.close('server closed the connection after a FATAL error', true);
  }
  private closeWhenReleased = false;

  // Gives the server back at a transaction end; the client stays, idle.
  private detach(server: ServerConnection): void {
    this.server = null;
    this.move(ClientState.Idle);
    const pool = this.pool!;
    const steps = stepsAtTransactionEnd(pool.settings.resetQuery, pool.settings.resetQueryAlways);
    if (steps.length === 0) pool.release(server); // (unlinks it) the common case: no closure, no promise
    else {
      server.unlink();
      cleanServer(server, steps, (s) => pool.release(s), 'server_reset_query failed', this.guard.bind(this));
    }
    if (this.pending.length) this.requestServer();
    else this.host.kernel.offerClient(this, 0);
  }

  // ---- errors and shutdown ----

  sendError(f: ErrorFields): void {
    countError('proxy', f.code);
    if (!this.socket.destroyed) this.socket.write(errorResponse(f));
  }

  // Sends a FATAL error and closes: logs one line.
  fatal(f: ErrorFields): void {
    if (this.state === ClientState.Closed) return;
    log.info(`${this.label} closing: ${f.code} ${this.loggedIn ? f.message : logSafe(f.message, 200)}`);
    this.sendError({ severity: 'FATAL', ...f });
    this.close(f.message, true);
  }

  close(reason: string, quiet = false): void {
    if (this.state === ClientState.Closed) return;
    // what the kernel copied of its last transactions reaches the sessions before they end
    if (this.mirrors.length) this.host.kernel.beforeMirrorFeed(this);
    const wasLoggedIn = this.state !== ClientState.Startup && this.state !== ClientState.Auth && this.state !== ClientState.AuthLookup;
    const wasWaiting = this.state === ClientState.Waiting;
    this.move(ClientState.Closed);
    if (wasWaiting) this.pool?.cancelWait(this); // (a server granted later goes back: gotServer)
    if (this.loginTimer) clearTimeout(this.loginTimer);
    if (!quiet && wasLoggedIn) log.info(`${this.label} closed: ${reason}`);
    const server = this.server;
    this.server = null;
    if (server) this.leaveServer(server);
    this.pending = [];
    for (const m of this.mirrors) m.clientClosed();
    if (!this.socket.destroyed) {
      // Read nothing more: a client cut off mid-message (a 1 GB password) could otherwise
      // make us read and drop its stream until the socket is destroyed.
      this.socket.pause();
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 1000).unref();
    }
    this.host.clientClosed(this);
  }

  // The client is gone: its server is rolled back and reset, or closed (invariant 3, docs/invariants.md).
  leaveServer(server: ServerConnection): void {
    server.unlink();
    const pool = this.pool!;
    // (a stream that stopped inside a message, such as a CopyData after its COPY failed,
    // which the tracker does not count, would make the proxy's own query the rest of it)
    const quiet = this.tracker.outstanding === 0 && !this.tracker.tailOpen && this.scanner.atBoundary;
    if (this.serverCloseReason) {
      server.close(this.serverCloseReason, false);
      return;
    }
    if (server.retiring) {
      // It has the client's Terminate: a graceful end lets PostgreSQL finish what came before.
      server.close('client sent Terminate with answers outstanding', true);
      return;
    }
    if (!quiet || !server.isUsable) {
      // A busy server may be blocked sending to us: reset the connection, don't wait for it.
      server.close('client left while a request was in progress', false);
      return;
    }
    const s = pool.settings;
    const steps = stepsOnLeave({
      inTransaction: this.tracker.status !== 'I', pinned: this.rewriter?.session.pinned ?? false,
      mode: s.mode, resetQuery: s.resetQuery, resetQueryAlways: s.resetQueryAlways,
    });
    cleanServer(server, steps, (x) => pool.release(x), 'reset after client left failed', this.guard.bind(this));
  }

  // Applies client_idle_timeout, idle_transaction_timeout, query_timeout and
  // transaction_timeout (user-space path; the bypass controller applies them to clients in
  // the kernel).
  checkTimeouts(now: number): void {
    if (this.state === ClientState.Kernel || this.state === ClientState.KernelBound) return; // the bypass controller watches these
    const why = clientTimeout(this.host.config, {
      busySince: this.requestSince,
      quietSince: this.lastActivity,
      idleInTransaction: this.server !== null && this.tracker.waitingForClient,
      betweenTransactions: this.state === ClientState.Idle,
      transactionAge: this.server !== null ? this.timing.transactionAgeMs : 0, // its wait for a server does not count
    }, now);
    if (!why) return;
    this.endForTimeout(why);
  }

  // Ends the client for a timeout: the running query is cancelled on the server when the
  // timeout says so, and its server closed rather than cleaned (transaction_timeout).
  endForTimeout(why: TimeoutVerdict): void {
    if (why.cancelQuery) this.cancelRunningQuery(); // stop the query on the server, not just the client
    if (why.closeServer) this.serverCloseReason = why.message;
    this.fatal({ code: why.code, message: why.message });
  }

  // Set when the server this client holds must be closed when it leaves, not cleaned and
  // pooled (transaction_timeout); read by leaveServer and the bypass controller.
  serverCloseReason: string | null = null;

  // ---- moves the kernel path makes (called by the bypass controller only) ----

  // The kernel carries this client's traffic now: moved there idle, or quiet again after
  // KernelBound.
  enteredKernel(): void {
    this.move(ClientState.Kernel);
  }

  // The kernel has bound server to this client (and carries that transaction) while the
  // client's bytes still reach user space: its request was bound from Waiting, or the kernel
  // passed it up mid-transaction (from Idle).
  boundInKernel(server: ServerConnection): void {
    this.move(ClientState.KernelBound);
    this.boundServer = server;
  }

  // Every move of the lifecycle; the server of KernelBound goes with that state (a closed
  // client keeps it for the controller's clientClosed).
  private move(next: ClientState): void {
    this.lifecycle.to(next);
    if (next !== ClientState.KernelBound && next !== ClientState.Closed) this.boundServer = null;
  }

  // Sends a cancel request for the query this client is running (query_timeout).
  cancelRunningQuery(): void {
    this.host.cancel(this.cancelPid, this.cancelKey);
  }

  // The kernel handed this client and its server to user space mid-transaction. tail: of
  // the extended-protocol messages after the last Sync the kernel forwarded, and of the
  // final answers since the last ReadyForQuery it forwarded (hand-overs for a named
  // statement or session state, or the in-flight bound).
  // tail.failed: the server's last message after its last ReadyForQuery included an
  // ErrorResponse (the open batch failed, the server skips to the next Sync).
  adoptedTail: { tailMessages: number; tailAnswered: number; failed?: boolean } | null = null;
  adoptServer(server: ServerConnection, outstanding: number, tailOpen: boolean, tail?: { tailMessages: number; tailAnswered: number; failed?: boolean }): void {
    this.adoptedTail = tail ?? null;
    const failed = !!tail?.failed && outstanding === 0 && tailOpen;
    // (status 'T' until its next ReadyForQuery: never released before that)
    this.tracker.adopt(outstanding, tailOpen, tail ? tail.tailMessages - (outstanding === 0 ? tail.tailAnswered : 0) : 0, failed);
    this.server = server;
    this.move(ClientState.Active);
    server.link(this);
    if (this.rewriter) {
      // What the kernel forwarded is answered first: the rewriter's replies queue behind it.
      for (let i = 0; i < outstanding; i++) server.replies.expect({ end: ReplyEnd.Ready, action: ReplyAction.Pass, sync: true });
      const open = tail ? tail.tailMessages - (outstanding === 0 ? tail.tailAnswered : 0) : 0;
      if (failed) server.replies.batchFailed();
      else if (open > 0) server.replies.expect({ end: ReplyEnd.Finals, action: ReplyAction.Pass, count: open });
    }
  }

  // Takes over framing where the kernel path left this client's stream (a hand-over can
  // come after the kernel forwarded the first part of a message).
  resumeFrame(pos: { hdr: Buffer; hdrLen: number; curType: number; remaining: number }): void {
    this.scanner.resume(pos);
  }

  // As quiet, but for a request of its own that the kernel is carrying (bound there).
  get quietExceptKernelServer(): boolean {
    return this.tracker.outstanding === 0 && !this.tracker.tailOpen && this.pending.length === 0 && this.scanner.atBoundary
      && (this.framer?.buffered ?? 0) === 0 && !this.server;
  }

  // Nothing of this client is held in user space or in flight to a server.
  get quiet(): boolean {
    return this.tracker.idle && this.pending.length === 0 && this.scanner.atBoundary && (this.framer?.buffered ?? 0) === 0 && !this.server
      && !this.kernelServer && !this.held;
  }
}

const choiceFor = chooseAuthMethod;

// A client-sent string for the log: control characters escaped, at most `max` characters.
export function logSafe(s: string, max = 64): string {
  // eslint-disable-next-line no-control-regex
  const clean = s.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  return clean.length > max ? `${clean.slice(0, max)}...(${s.length} chars)` : clean;
}
const UNSET = '\u0001unset'; // current_setting() of a parameter that does not exist

// The bytes of request units as the client sent them.
function rawBytes(units: RequestUnit[]): Buffer[] {
  const out: Buffer[] = [];
  for (const u of units) {
    if (Buffer.isBuffer(u)) out.push(u);
    else if (typeof u !== 'number') out.push(u.raw ?? message(u.type, u.body));
  }
  return joinAdjacent(out);
}

// The proxy's registry: clients, pools per (database, user), cancel keys, limits,
// and applying a new configuration on reload.
import * as net from 'node:net';
import { ClientConnection, ClientHost, ClientState } from './client-connection';
import { ConnectionBudget, Pool, PoolError, PoolSettings } from './pool';
import { ServerConnection, type ServerTarget } from './server-connection';
import type { KernelHost } from './kernel-host';
import { ErrorFields, cancelRequest } from '../protocol/messages';
import { SqlState } from '../protocol/constants';
import type { Config, DatabaseConfig } from '../config/types';
import { resolveDatabase } from '../config/load';
import { log } from '../observe/log';
import { countLogin, retireClient } from '../observe/stats';
import { AuthQuery, ClientProof, ServerCredential, serverCredentialFrom } from '../auth/auth-query';
import { ClientTls, TlsContexts, buildTls } from '../auth/tls';
import { Mirrors } from '../mirror/mirror';

export const ADMIN_DATABASES = new Set(['pgsplice', 'pgbouncer']);
// Connections accepted beyond max_client_conn so that admin-console users get in on a full proxy.
export const ADMIN_RESERVE = 16;

// Runs the admin console for a client that logged in to the admin database.
export type AdminStarter = (client: ClientConnection) => void;

// The (database, server user) pair whose variant pools share pool_size.
const pairKey = (database: string, user: string): string => `${database}\0${user}`;
const BLOCKED_PAIR = 1;
const BLOCKED_DB = 2;
const BLOCKED_USER = 4;
// (no array of keys: asked for every waiting request)
function isEmpty(o: object): boolean {
  for (const _ in o) return false;
  return true;
}

export class Pooler implements ClientHost, ConnectionBudget {
  readonly clients = new Set<ClientConnection>();
  readonly pools = new Map<string, Pool>();
  private byCancelKey = new Map<string, ClientConnection>();
  private dbConnections = new Map<string, number>();
  private janitorTimer: NodeJS.Timeout;
  accepting = true;
  // Set when other pgsplice processes serve this port: sends a key they issued to its owner.
  forwardCancel: ((pid: number, key: number) => boolean) | null = null;
  readonly authQuery = new AuthQuery(() => this.config.server_idle_timeout);
  // Server logins learned from clients for users without a usable password in the config.
  private learned = new Map<string, ServerCredential>();
  // Secure contexts of the running config; built again (files re-read) on every reload.
  tls: TlsContexts;
  // The databases' mirrors (docs/mirroring.md).
  readonly mirrors: Mirrors;

  // kernel: the kernel path, or UserSpaceOnly (src/pooling/kernel-host.ts).
  constructor(
    public config: Config,
    readonly kernel: KernelHost,
    private readonly adminStarter: AdminStarter,
  ) {
    this.tls = buildTls(config); // throws ConfigError naming the key: start-up fails
    this.mirrors = new Mirrors(config);
    this.janitorTimer = setInterval(() => this.janitor(), 1000);
    this.janitorTimer.unref();
  }

  // ---- ClientHost ----

  isAdminDatabase(database: string): boolean {
    return ADMIN_DATABASES.has(database);
  }

  startAdmin(client: ClientConnection): void {
    this.adminStarter(client);
  }

  // Unix sockets answer 'N', as PostgreSQL does: TLS is for TCP.
  clientTls(sock: net.Socket): ClientTls | null {
    return sock.remoteFamily ? this.tls.client : null;
  }

  userSecret(user: string): string | undefined {
    const u = this.config.users.get(user);
    if (u?.password !== undefined) return u.password;
    return undefined;
  }

  lookupSecret(client: ClientConnection): Promise<string | undefined> | undefined {
    const db = this.databaseConfig(client.database);
    const authUser = db?.auth_user ?? this.config.auth_user;
    if (!db || !authUser) return undefined;
    const target: ServerTarget = {
      host: db.host, port: db.port, dbname: db.auth_dbname ?? (this.config.auth_dbname || db.dbname),
      user: authUser, password: this.configPassword(authUser), connectTimeout: this.config.server_connect_timeout,
    };
    return this.authQuery.lookup(client.user, target, this.config.auth_query, this.config.auth_query_cache_ttl);
  }

  clientProved(client: ClientConnection, secret: string, proof: ClientProof): void {
    if (this.configPassword(client.user) !== undefined) return; // the config's password logs in
    const cred = serverCredentialFrom(secret, proof);
    if (!cred) return;
    this.learned.set(client.user, cred);
    for (const pool of this.pools.values()) {
      const db = this.databaseConfig(pool.database);
      if (db && !db.user && pool.user === client.user) pool.target = this.target(db, client.user, this.poolStartup.get(pool));
    }
  }

  // A user's password from the config that can log in to a server (plain or md5 hash).
  private configPassword(user: string): string | undefined {
    const secret = this.config.users.get(user)?.password;
    // A SCRAM verifier cannot log in to a server; plain and md5 forms can.
    return secret !== undefined && !secret.startsWith('SCRAM-SHA-256$') ? secret : undefined;
  }

  // The entry for a database name, or the "*" fallback's (one rule: config/load.ts).
  private databaseConfig(name: string): DatabaseConfig | undefined {
    return resolveDatabase(this.config, name);
  }

  databaseRefusal(database: string): PoolError | null {
    return this.databaseConfig(database) ? null : new PoolError(`no such database: ${database}`, SqlState.InvalidCatalogName);
  }

  serverLoginKnown(database: string, user: string): boolean {
    const db = this.databaseConfig(database);
    if (!db) return false;
    const t = this.target(db, user);
    return t.password !== undefined || t.scramKeys !== undefined;
  }

  // Called once the client has authenticated (never for a name nobody logged in as).
  // startup: the client's startup settings that its servers must be opened with (so they are
  // the session defaults RESET returns to); clients that differ in them use different pools
  // (variants) that share the pair's pool_size. Past max_pool_variants variants of a pair,
  // a client with new settings gets the plain pool and its settings are SET on its servers.
  resolvePool(database: string, user: string, startup: Record<string, string> = {}): Pool {
    const db = this.databaseConfig(database);
    if (!db) throw new PoolError(`no such database: ${database}`, SqlState.InvalidCatalogName);
    const serverUser = db.user ?? user;
    const pair = pairKey(database, serverUser);
    let key = `${pair}\0${JSON.stringify(startup)}`;
    let pool = this.pools.get(key);
    if (!pool && Object.keys(startup).length > 0 && (this.variantCount.get(pair) ?? 0) >= this.config.max_pool_variants) {
      log.info(`${serverUser}@${database}: max_pool_variants (${this.config.max_pool_variants}) reached; startup settings ${JSON.stringify(startup)} are SET on the plain pool's servers`);
      startup = {};
      key = `${pair}\0{}`;
      pool = this.pools.get(key);
    }
    if (!pool) {
      const kernel = this.kernel;
      pool = new Pool(database, serverUser, this.target(db, user, startup), this.poolSettings(db, serverUser), {
        budget: this, kernel, newServer: (target) => new ServerConnection(target, kernel),
      });
      this.poolStartup.set(pool, startup);
      this.pools.set(key, pool);
      const variant = Object.keys(startup).length > 0;
      if (variant) this.variantCount.set(pair, (this.variantCount.get(pair) ?? 0) + 1);
      log.info(`pool ${pool.label}${variant ? ` ${JSON.stringify(startup)}` : ''} created (mode ${pool.settings.mode}, size ${pool.settings.size} per ${serverUser}@${database})`);
      kernel.poolCreated(pool);
      if (this.isPaused(database)) pool.pause(); // created while its database is paused
      pool.grow();
    }
    return pool;
  }

  private poolStartup = new WeakMap<Pool, Record<string, string>>();
  // Pools with startup settings per (database, server user) pair (pools are never removed).
  private variantCount = new Map<string, number>();

  // The startup settings a pool's servers are opened with ({} for the plain pool).
  startupOf(pool: Pool): Record<string, string> {
    return this.poolStartup.get(pool) ?? {};
  }

  private target(db: DatabaseConfig, user: string, clientStartup: Record<string, string> = {}): ServerTarget {
    const serverUser = db.user ?? user;
    let password = db.user ? db.password : undefined;
    if (password === undefined) password = this.configPassword(serverUser);
    // Else what a client's login taught (auth_query users, users stored as a SCRAM verifier).
    const learned = password === undefined ? this.learned.get(serverUser) : undefined;
    if (learned && 'password' in learned) password = learned.password;
    const scramKeys = learned && 'scramKeys' in learned ? learned.scramKeys : undefined;
    const startupParams: Record<string, string> = {};
    if (db.client_encoding) startupParams.client_encoding = db.client_encoding;
    if (db.datestyle) startupParams.datestyle = db.datestyle;
    if (db.timezone) startupParams.timezone = db.timezone;
    if (db.application_name) startupParams.application_name = db.application_name;
    for (const [k, v] of Object.entries(clientStartup)) {
      for (const c of Object.keys(startupParams)) if (c.toLowerCase() === k.toLowerCase()) delete startupParams[c];
      startupParams[k] = v;
    }
    return {
      host: db.host, port: db.port, dbname: db.dbname, user: serverUser, password, ...(scramKeys ? { scramKeys } : {}), startupParams,
      connectTimeout: this.config.server_connect_timeout,
      tls: this.tls.server,
    };
  }

  private poolSettings(db: DatabaseConfig, user: string): PoolSettings {
    const c = this.config;
    const u = c.users.get(user);
    return {
      mode: u?.pool_mode ?? db.pool_mode ?? c.pool_mode,
      size: db.pool_size ?? u?.pool_size ?? c.default_pool_size,
      minSize: db.min_pool_size ?? c.min_pool_size,
      reserveSize: db.reserve_pool_size ?? c.reserve_pool_size,
      reserveTimeout: c.reserve_pool_timeout,
      queryWaitTimeout: c.query_wait_timeout,
      serverIdleTimeout: c.server_idle_timeout,
      serverLifetime: c.server_lifetime,
      resetQuery: c.server_reset_query,
      resetQueryAlways: c.server_reset_query_always,
      checkQuery: c.server_check_query,
      checkDelay: c.server_check_delay,
      loginRetry: c.server_login_retry,
    };
  }

  // Forwards a CancelRequest to the server serving the client now. That server is held
  // (not given to another client) until the request's own connection to PostgreSQL has
  // closed: PostgreSQL signals the backend before it closes it, so a query of the next
  // client on that server cannot be the one cancelled (PgBouncer's rule).
  // A key this process did not issue goes to the peer that did (src/workers/peer.ts), unless
  // the request came from a peer already.
  cancel(pid: number, key: number, fromPeer = false): void {
    const client = this.byCancelKey.get(`${pid}:${key}`);
    if (!client) {
      if (!fromPeer && this.forwardCancel?.(pid, key)) return;
      log.info(`cancel request with an unknown key ignored`);
      return;
    }
    const server = this.kernel.cancelServer(client) ?? this.userSpaceCancelServer(client);
    const pool = client.pool;
    if (!server || !server.backendPid || !pool) {
      log.info(`${client.label} cancel request: no query running`);
      return;
    }
    const target = server.target;
    log.info(`${client.label} cancel request forwarded to backend ${server.backendPid}`);
    pool.cancelStarted(server);
    const sock = target.host.startsWith('/')
      ? net.connect(`${target.host}/.s.PGSQL.${target.port}`)
      : net.connect({ host: target.host, port: target.port });
    sock.on('connect', () => sock.end(cancelRequest(server.backendPid, server.backendKey)));
    sock.on('error', (e) => log.warn(`cancel request to server failed: ${e.message}`));
    sock.on('data', () => {}); // PostgreSQL answers nothing; read to see its close
    sock.once('close', () => pool.cancelDone(server));
    sock.setTimeout(5000, () => sock.destroy());
  }

  private userSpaceCancelServer(client: ClientConnection): ServerConnection | null {
    const s = client.server;
    return s && s.backendPid ? s : null;
  }

  clientLoggedIn(client: ClientConnection): void {
    this.byCancelKey.set(`${client.cancelPid}:${client.cancelKey}`, client);
    if (client.pool && !this.isAdminDatabase(client.database)) {
      const mirrors = this.mirrors.sessionsFor(this.config, client);
      if (mirrors.length) client.mirrors = mirrors; // else the shared empty list stays
    }
    countLogin(client);
  }

  clientClosed(client: ClientConnection): void {
    this.clients.delete(client);
    this.adminClients.delete(client);
    retireClient(client); // keep its counters in its pool's totals
    this.byCancelKey.delete(`${client.cancelPid}:${client.cancelKey}`);
    this.kernel.clientClosed(client);
  }

  // ---- accepting ----

  accept(socket: net.Socket): void {
    if (!this.accepting) {
      socket.on('error', () => {});
      const c = new ClientConnection(socket, this);
      c.fatal({ code: SqlState.CannotConnectNow, message: 'pgsplice is shutting down' });
      return;
    }
    const c = new ClientConnection(socket, this);
    // max_client_conn is applied once the startup packet names the database (admitted):
    // the admin console stays reachable on a full proxy, as in PgBouncer. Up to
    // ADMIN_RESERVE connections beyond the limit are read that far, no more.
    if (this.clients.size >= this.config.max_client_conn + ADMIN_RESERVE) {
      c.fatal(this.tooManyClients());
      return;
    }
    this.clients.add(c);
  }

  // Whether a client that has sent its startup packet may stay: admin-console clients
  // always, the others while at most max_client_conn of them are connected.
  admitted(client: ClientConnection): ErrorFields | null {
    if (this.isAdminDatabase(client.database)) {
      this.adminClients.add(client);
      return null;
    }
    const others = this.clients.size - this.adminClients.size - (this.clients.has(client) ? 1 : 0);
    if (others >= this.config.max_client_conn) return this.tooManyClients();
    // PgBouncer's max_db_client_connections / max_user_client_connections: clients counted
    // as max_client_conn counts them (connected, past their startup packet), by the database
    // name they asked for and by user name.
    const dbLimit = this.databaseConfig(client.database)?.max_db_client_connections ?? this.config.max_db_client_connections;
    const userLimit = this.config.users.get(client.user)?.max_user_client_connections ?? this.config.max_user_client_connections;
    if (dbLimit === 0 && userLimit === 0) return null;
    let sameDb = 0;
    let sameUser = 0;
    for (const c of this.clients) {
      if (c === client || this.adminClients.has(c) || c.state === ClientState.Closed) continue;
      if (c.database === client.database) sameDb++;
      if (c.user === client.user) sameUser++;
    }
    if (dbLimit > 0 && sameDb >= dbLimit) {
      return { code: SqlState.TooManyConnections, message: `no more connections allowed to database "${client.database}" (max_db_client_connections ${dbLimit})` };
    }
    if (userLimit > 0 && sameUser >= userLimit) {
      return { code: SqlState.TooManyConnections, message: `no more connections allowed for user "${client.user}" (max_user_client_connections ${userLimit})` };
    }
    return null;
  }
  private adminClients = new Set<ClientConnection>(); // not counted against max_client_conn

  private tooManyClients(): ErrorFields {
    return { code: SqlState.TooManyConnections, message: `no more connections allowed (max_client_conn ${this.config.max_client_conn})` };
  }

  // ---- ConnectionBudget (pool_size per pair, max_db_connections, max_user_connections) ----
  // Server connections are counted per (database, server user) pair over its startup-variant
  // pools (pool_size, reserve_pool_size, min_pool_size are the pair's, as PgBouncer's pool's),
  // per database over its pools and per (server) user over all databases, as PgBouncer counts
  // them; a pool opens one only when all allow it.

  canOpen(pool: Pool, limit: number): boolean {
    return this.blockedBy(pool, limit) === 0;
  }
  // Which limits are taken for this pool now (limit: the pair's size, with the reserve if
  // due), as bits (asked for every waiting request: no object).
  private blockedBy(pool: Pool, limit: number): number {
    const maxDb = this.databaseConfig(pool.database)?.max_db_connections ?? this.config.max_db_connections;
    const maxUser = this.config.users.get(pool.user)?.max_user_connections ?? this.config.max_user_connections;
    return (this.pairServers(pool) >= limit ? BLOCKED_PAIR : 0)
      | (maxDb > 0 && (this.dbConnections.get(pool.database) ?? 0) >= maxDb ? BLOCKED_DB : 0)
      | (maxUser > 0 && (this.userConnections.get(pool.user) ?? 0) >= maxUser ? BLOCKED_USER : 0);
  }
  opened(pool: Pool): void {
    const pair = pairKey(pool.database, pool.user);
    this.pairConnections.set(pair, (this.pairConnections.get(pair) ?? 0) + 1);
    this.dbConnections.set(pool.database, (this.dbConnections.get(pool.database) ?? 0) + 1);
    this.userConnections.set(pool.user, (this.userConnections.get(pool.user) ?? 0) + 1);
  }
  closed(pool: Pool): void {
    const pair = pairKey(pool.database, pool.user);
    this.pairConnections.set(pair, (this.pairConnections.get(pair) ?? 1) - 1);
    this.dbConnections.set(pool.database, (this.dbConnections.get(pool.database) ?? 1) - 1);
    this.userConnections.set(pool.user, (this.userConnections.get(pool.user) ?? 1) - 1);
  }
  // The pools that may use the freed slot grow, the one whose client has waited longest first.
  freed(pool: Pool): void {
    if (this.pools.size === 1) return; // (called at every release: the usual single pool allocates nothing)
    const waiting = [...this.pools.values()].filter((p) => p !== pool && (p.database === pool.database || p.user === pool.user) && p.waitingCount);
    waiting.sort((a, b) => a.oldestWaitSince - b.oldestWaitSince);
    for (const p of waiting) p.grow();
  }
  // Only a pool under every limit that blocks this one frees a slot it can use (the pair's
  // limit: a sibling variant pool).
  evictIdleFor(pool: Pool, limit: number): boolean {
    const bits = this.blockedBy(pool, limit);
    const b = { pair: (bits & BLOCKED_PAIR) !== 0, db: (bits & BLOCKED_DB) !== 0, user: (bits & BLOCKED_USER) !== 0 };
    for (const p of this.pools.values()) {
      if (p === pool || ((b.db || b.pair) && p.database !== pool.database) || ((b.user || b.pair) && p.user !== pool.user)) continue;
      if (p.closeOneIdle(`evicted for pool ${pool.label} (${b.pair ? 'pool_size shared by startup variants' : 'connection limit'})`)) return true;
    }
    return false;
  }
  pairServers(pool: Pool): number {
    let key = this.pairOf.get(pool);
    if (key === undefined) this.pairOf.set(pool, (key = pairKey(pool.database, pool.user)));
    return this.pairConnections.get(key) ?? 0;
  }
  // min_pool_size is opened by the pair's plain pool, or by its oldest pool while it has none.
  warms(pool: Pool): boolean {
    for (const p of this.pools.values()) {
      if (p.database !== pool.database || p.user !== pool.user) continue;
      if (isEmpty(this.startupOf(p))) return p === pool;
    }
    for (const p of this.pools.values()) if (p.database === pool.database && p.user === pool.user) return p === pool;
    return false;
  }
  // FIFO across variants at no churn: a released server is closed for a sibling only when the
  // pair is full, the sibling's client has waited longer than any of this pool's and the sibling
  // holds at least two servers fewer (so busy variants converge to an even split and stay there).
  yieldsTo(pool: Pool): Pool | null {
    if (this.pairServers(pool) < pool.settings.size) return null;
    let best: Pool | null = null;
    for (const p of this.pools.values()) {
      if (p === pool || p.database !== pool.database || p.user !== pool.user || p.paused) continue;
      if (p.waitingCount <= p.connectingCount || p.servers.size + 1 >= pool.servers.size) continue;
      if (p.oldestWaitSince >= pool.oldestWaitSince) continue;
      if (!best || p.oldestWaitSince < best.oldestWaitSince) best = p;
    }
    return best;
  }
  private pairConnections = new Map<string, number>();
  private pairOf = new WeakMap<Pool, string>(); // each pool's pair key, made once (asked at every release and wait)
  private userConnections = new Map<string, number>();

  // ---- PAUSE / RESUME: no new server assignments for a database (all when omitted) ----

  private pausedAll = false;
  private pausedDbs = new Set<string>();

  isPaused(database: string): boolean {
    return this.pausedAll || this.pausedDbs.has(database);
  }

  pause(database?: string): void {
    if (database === undefined) this.pausedAll = true;
    else this.pausedDbs.add(database);
    for (const p of this.pools.values()) if (database === undefined || p.database === database) p.pause();
  }

  resume(database?: string): void {
    if (database === undefined) {
      this.pausedAll = false;
      this.pausedDbs.clear();
    } else this.pausedDbs.delete(database);
    for (const p of this.pools.values()) if ((database === undefined || p.database === database) && !this.isPaused(p.database)) p.resume();
  }

  // ---- upkeep, reload, shutdown ----

  private janitor(): void {
    for (const p of this.pools.values()) p.janitor();
    const now = Date.now();
    for (const c of this.clients) c.checkTimeouts(now);
    this.kernel.janitor(now);
  }

  // Applies a new config: pool sizes, users, databases, timeouts. The keys that need a
  // restart (RESTART_KEYS) are reported by the caller, once.
  reload(next: Config): void {
    this.tls = buildTls(next); // throws before anything changes: a bad file keeps the running config
    this.config = next;
    this.authQuery.reset(); // auth_user, auth_query or the servers may have changed
    this.mirrors.reconcile(next);
    for (const [key, pool] of this.pools) {
      const db = this.databaseConfig(pool.database);
      if (!db) {
        log.info(`pool ${pool.label}: database removed from config; closing idle servers`);
        pool.closeIdle('database removed');
        continue;
      }
      const user = key.split('\0')[1];
      const before = JSON.stringify(pool.target);
      pool.settings = this.poolSettings(db, user);
      pool.target = this.target(db, user, this.poolStartup.get(pool));
      if (JSON.stringify(pool.target) !== before) pool.closeIdle('server settings changed on reload');
      pool.shrink(); // a smaller pool_size takes effect now, not at server_idle_timeout
      pool.grow();
    }
  }

  // Clients inside a transaction, in user space or in the kernel.
  get activeClients(): ClientConnection[] {
    return [...this.clients].filter(
      (c) => c.state === ClientState.Active || c.state === ClientState.Waiting || c.state === ClientState.KernelBound
        || (c.state === ClientState.Kernel && this.kernel.clientBound(c)),
    );
  }

  // Connected clients other than admin-console users (a drain waits for them to leave).
  get poolClientCount(): number {
    return this.clients.size - this.adminClients.size;
  }

  close(): void {
    clearInterval(this.janitorTimer);
    this.authQuery.close();
    for (const c of [...this.clients]) c.fatal({ code: SqlState.AdminShutdown, message: 'pgsplice is shutting down' });
    for (const p of this.pools.values()) p.closeAll('pgsplice is shutting down');
    this.mirrors.close();
  }
}

// auth_query: the secret of a user who is not in the config, looked up in PostgreSQL
// (as PgBouncer does) by running auth_query as auth_user with the user name as $1, and
// cached for auth_query_cache_ttl. Also what a client's login taught the proxy about
// logging in to the server as that user (the server credentials), since the proxy never
// sees such a user's password.
import { ServerConnection, ServerError, ServerState, type KernelPassListener, type ServerTarget } from '../pooling/server-connection';
import { isMd5Hash } from './md5';
import { scramKeysFrom, type ScramKeys } from './scram';
import { log } from '../observe/log';

// auth_query's own server connections are never offered to the kernel path.
const NOT_IN_KERNEL: KernelPassListener = { serverPassed: () => undefined };

// How long a "no such user" answer is kept at most: a role created a moment later should
// not wait for the full TTL.
const NEGATIVE_TTL_MAX = 2; // s
// Bound on cached answers: logins with many made-up names must not grow memory without end.
const CACHE_MAX = 10000;

interface CacheEntry {
  secret: string | undefined; // undefined: no such role, no password, or expired
  until: number; // ms timestamp
}

// One lookup connection per (server, database, auth_user); lookups on it run one at a time.
interface LookupConnection {
  server: ServerConnection | null;
  connecting: Promise<ServerConnection> | null;
  queue: Promise<unknown>;
  idleTimer: NodeJS.Timeout | null;
}

/** A lookup could not be made (server unreachable, auth_user refused, query error). */
export class AuthQueryError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AuthQueryError';
  }
}

// What the client proved at login, beyond knowing the stored secret.
export interface ClientProof {
  password?: string; // the cleartext password (auth_type plain)
  clientKey?: Buffer; // SCRAM: the ClientKey its proof revealed
}

export type ServerCredential = { password: string } | { scramKeys: ScramKeys };

/**
 * How the proxy can log in to the server as a user, learned from a client that logged in
 * against `secret`: its cleartext password, the md5 hash itself (md5 servers), or SCRAM
 * pass-through keys. undefined if nothing usable was learned.
 */
export function serverCredentialFrom(secret: string, proof: ClientProof): ServerCredential | undefined {
  if (proof.password !== undefined) return { password: proof.password };
  if (isMd5Hash(secret)) return { password: secret };
  if (proof.clientKey && secret.startsWith('SCRAM-SHA-256$')) return { scramKeys: scramKeysFrom(secret, proof.clientKey) };
  return undefined;
}

export class AuthQuery {
  private cache = new Map<string, CacheEntry>();
  private inflight = new Map<string, Promise<string | undefined>>();
  private connections = new Map<string, LookupConnection>();

  constructor(private idleCloseSeconds: () => number) {}

  /**
   * The stored secret of `user` (SCRAM verifier or md5 hash) as auth_query returns it, or
   * undefined when there is none (no such role, NULL password, expired). Rejects with
   * AuthQueryError when the lookup itself fails.
   */
  lookup(user: string, target: ServerTarget, sql: string, ttlSeconds: number): Promise<string | undefined> {
    const conKey = `${target.host}\0${target.port}\0${target.dbname}\0${target.user}\0${target.password ?? ''}`;
    const key = `${conKey}\0${sql}\0${user}`;
    const hit = this.cache.get(key);
    if (hit && hit.until > Date.now()) return Promise.resolve(hit.secret);
    const running = this.inflight.get(key);
    if (running) return running; // concurrent logins of one user share a lookup
    const p = this.run(conKey, target, sql, user).then(
      (secret) => {
        const ttl = secret === undefined ? Math.min(ttlSeconds, NEGATIVE_TTL_MAX) : ttlSeconds;
        if (ttl > 0) this.remember(key, { secret, until: Date.now() + ttl * 1000 });
        else this.cache.delete(key);
        return secret;
      },
    );
    this.inflight.set(key, p);
    const done = () => this.inflight.delete(key);
    p.then(done, done);
    return p;
  }

  private remember(key: string, entry: CacheEntry): void {
    if (this.cache.size >= CACHE_MAX) {
      const now = Date.now();
      for (const [k, e] of this.cache) if (e.until <= now) this.cache.delete(k);
      // Still full of live entries: drop the oldest (a Map keeps insertion order).
      while (this.cache.size >= CACHE_MAX) this.cache.delete(this.cache.keys().next().value as string);
    }
    this.cache.delete(key); // re-inserted at the end: the newest
    this.cache.set(key, entry);
  }

  private run(conKey: string, target: ServerTarget, sql: string, user: string): Promise<string | undefined> {
    let lc = this.connections.get(conKey);
    if (!lc) {
      lc = { server: null, connecting: null, queue: Promise.resolve(), idleTimer: null };
      this.connections.set(conKey, lc);
    }
    const conn = lc;
    const job = conn.queue.then(async () => {
      if (conn.idleTimer) clearTimeout(conn.idleTimer);
      const server = await this.connected(conn, target);
      let row: string[];
      // A server that does not answer must not hold every later login in the queue.
      const timer = setTimeout(() => server.close('auth_query got no answer within server_connect_timeout'), target.connectTimeout * 1000);
      try {
        row = await server.queryValues(sql, [user]);
      } catch (e) {
        const msg = (e as Error).message;
        // A query error leaves the connection usable; a lost connection is reopened next time.
        throw new AuthQueryError(`auth_query failed: ${msg}`);
      } finally {
        clearTimeout(timer);
        this.armIdleClose(conn);
      }
      // PgBouncer's shape: (name, secret); a one-column query gives just the secret.
      const secret = row.length >= 2 ? row[1] : row[0];
      return secret === undefined || secret === '' ? undefined : secret;
    });
    conn.queue = job.catch(() => undefined);
    return job;
  }

  private async connected(conn: LookupConnection, target: ServerTarget): Promise<ServerConnection> {
    if (conn.server && conn.server.isUsable && conn.server.state === ServerState.Idle) return conn.server;
    conn.server = null;
    const server = new ServerConnection(target, NOT_IN_KERNEL); // never offered to the kernel path
    try {
      await server.connect();
    } catch (e) {
      const why = e instanceof ServerError ? e.message : String(e);
      throw new AuthQueryError(`auth_user "${target.user}" cannot reach ${target.host}:${target.port}/${target.dbname}: ${why}`);
    }
    server.once('close', () => {
      if (conn.server === server) conn.server = null;
    });
    conn.server = server;
    log.debug(`auth_query connection ${server.label} open`);
    return server;
  }

  private armIdleClose(conn: LookupConnection): void {
    const s = this.idleCloseSeconds();
    if (conn.idleTimer) clearTimeout(conn.idleTimer);
    if (s <= 0) return;
    conn.idleTimer = setTimeout(() => conn.server?.close('auth_query connection idle'), s * 1000);
    conn.idleTimer.unref();
  }

  /** Forgets cached secrets and closes lookup connections (reload: auth settings may have changed). */
  reset(): void {
    this.cache.clear();
    for (const c of this.connections.values()) {
      if (c.idleTimer) clearTimeout(c.idleTimer);
      c.server?.close('configuration reloaded');
    }
    this.connections.clear();
  }

  close(): void {
    this.reset();
  }
}

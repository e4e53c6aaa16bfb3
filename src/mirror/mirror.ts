// A mirror: a second server that gets a copy of a database's transactions (docs/mirroring.md).
// It owns the bound on memory (queue_bytes, shared by its mirrored clients), its state and
// back-off, and the counters SHOW MIRRORS and the metrics read. The per-client work is in
// mirror-session.ts; the registry that follows the config is Mirrors below.
import type { Config, MirrorConfig } from '../config/types';
import { resolveDatabase } from '../config/load';
import { log } from '../observe/log';
import type { ServerTarget } from '../pooling/server-connection';
import { DivergenceLog } from './divergence';
import { MirrorSession, type MirroredClient } from './mirror-session';

export enum MirrorState {
  Idle = 'idle', // no connection tried yet
  Up = 'up', // the last connection attempt succeeded and no connection was lost since
  Down = 'down', // a connection failed or was lost: new ones wait for the back-off
  Removed = 'removed', // gone from the config
}

const BACKOFF_MIN_MS = 250;
// How long transactions wait to be written to a mirror session's connection together
// (MirrorSession.flush): one write per session per interval instead of one per transaction.
export const FLUSH_MS = 10;
const BACKOFF_MAX_MS = 10_000;

export class Mirror {
  state = MirrorState.Idle;
  readonly sessions = new Set<MirrorSession>();
  queuedBytes = 0; // gathered + queued + sent and not yet answered, over all its sessions
  peakQueuedBytes = 0;
  transactions = 0n; // answered by the mirror
  dropped = 0n; // transactions not mirrored (queue full, mirror down or lost mid-way)
  diverged = 0n;
  clientsMirrored = 0n;
  clientsSkipped = 0n; // sampled but pool_size mirror connections were in use
  lagMs = 0; // primary's end of the last mirrored transaction -> mirror's answer
  lastError = '';
  readonly divergences: DivergenceLog;
  private backoffMs = 0;
  private retryAt = 0;
  private readonly toFlush = new Set<MirrorSession>();
  private flushTimer: NodeJS.Timeout | null = null;

  constructor(
    readonly database: string, // the config entry's name
    public config: MirrorConfig,
    public connectTimeout: number,
  ) {
    this.divergences = new DivergenceLog(`${database} -> ${this.name}`);
  }

  get name(): string {
    return `${this.config.host}:${this.config.port}/${this.config.dbname}`;
  }

  target(startupParams: Record<string, string>): ServerTarget {
    const c = this.config;
    return { host: c.host, port: c.port, dbname: c.dbname, user: c.user, password: c.password, startupParams, connectTimeout: this.connectTimeout, mirror: true };
  }

  // Reserves room for bytes held for this mirror; false when queue_bytes would be passed.
  reserve(bytes: number): boolean {
    if (this.queuedBytes + bytes > this.config.queue_bytes) return false;
    this.queuedBytes += bytes;
    if (this.queuedBytes > this.peakQueuedBytes) this.peakQueuedBytes = this.queuedBytes;
    return true;
  }

  release(bytes: number): void {
    this.queuedBytes -= bytes;
  }

  flushSoon(session: MirrorSession): void {
    this.toFlush.add(session);
    if (this.flushTimer) return;
    this.flushTimer = setTimeout(() => this.flushAll(), FLUSH_MS);
    this.flushTimer.unref();
  }

  private flushAll(): void {
    this.flushTimer = null;
    const sessions = [...this.toFlush];
    this.toFlush.clear();
    for (const s of sessions) {
      try {
        s.flush();
      } catch (e) {
        s.failWith(e); // ends that session, never the others
      }
    }
  }

  // Whether a new mirror connection may be tried now (not while backing off).
  mayConnect(now = Date.now()): boolean {
    return this.state !== MirrorState.Removed && now >= this.retryAt;
  }

  connected(): void {
    if (this.state !== MirrorState.Up && this.state !== MirrorState.Removed) log.info(`mirror ${this.database} -> ${this.name}: up`);
    if (this.state !== MirrorState.Removed) this.state = MirrorState.Up;
    this.backoffMs = 0;
    this.retryAt = 0;
  }

  // A connection failed or was lost: wait before the next one, longer each time (once per window).
  failed(reason: string): void {
    this.lastError = reason;
    if (this.state === MirrorState.Removed) return;
    const now = Date.now();
    if (this.state === MirrorState.Down && now < this.retryAt) return; // already backing off
    this.backoffMs = Math.min(BACKOFF_MAX_MS, this.backoffMs ? this.backoffMs * 2 : BACKOFF_MIN_MS);
    this.retryAt = now + this.backoffMs;
    if (this.state !== MirrorState.Down) log.warn(`mirror ${this.database} -> ${this.name}: down (${reason}); mirroring resumes when it answers again`);
    this.state = MirrorState.Down;
  }

  // Decides whether a client that logged in is mirrored: whole clients are sampled.
  admit(client: MirroredClient): MirrorSession | null {
    if (this.state === MirrorState.Removed || Math.random() >= this.config.sample) return null;
    if (this.sessions.size >= this.config.pool_size) {
      this.clientsSkipped++;
      return null;
    }
    const s = new MirrorSession(this, client);
    this.sessions.add(s);
    this.clientsMirrored++;
    return s;
  }

  remove(): void {
    this.state = MirrorState.Removed;
    for (const s of [...this.sessions]) s.stop('mirror removed from the config');
  }
}

// The mirrors of the running config, by database; follows reloads.
export class Mirrors {
  readonly all = new Map<string, Mirror>();

  constructor(config: Config) {
    this.reconcile(config);
  }

  // Adds the mirrors a new config names, updates the settings of those it keeps, and stops the others.
  reconcile(config: Config): void {
    const wanted = new Set<string>();
    for (const db of config.databases.values()) {
      for (const m of db.mirrors ?? []) {
        const key = `${db.name}\0${m.host}:${m.port}/${m.dbname}`;
        wanted.add(key);
        const have = this.all.get(key);
        if (have) {
          have.config = m; // sample, queue_bytes, compare, pool_size, login: for what comes next
          have.connectTimeout = config.server_connect_timeout;
        } else {
          this.all.set(key, new Mirror(db.name, m, config.server_connect_timeout));
          log.info(`mirror ${db.name} -> ${m.host}:${m.port}/${m.dbname} added`);
        }
      }
    }
    for (const [key, m] of this.all) {
      if (wanted.has(key)) continue;
      m.remove();
      this.all.delete(key);
      log.info(`mirror ${m.database} -> ${m.name} removed`);
    }
  }

  // The mirror sessions of a client that just logged in (none for most databases).
  sessionsFor(config: Config, client: MirroredClient): MirrorSession[] {
    if (this.all.size === 0) return [];
    const db = resolveDatabase(config, client.database);
    if (!db?.mirrors?.length) return [];
    const out: MirrorSession[] = [];
    for (const m of this.all.values()) {
      if (m.database !== db.name) continue;
      const s = m.admit(client);
      if (s) out.push(s);
    }
    return out;
  }

  close(): void {
    for (const m of this.all.values()) m.remove();
  }
}

// YAML -> Config. The only module that reads YAML.
//
// Every key is checked against a schema; an unknown key, a wrong type or a bad value is a
// ConfigError naming the key path (e.g. "databases.bench.hots") and its line, with a
// "did you mean" suggestion when a known key is close. Key names and defaults follow
// PgBouncer (pgbouncer.ini) where the concept exists.

import { readFileSync } from 'fs';
import * as path from 'node:path';
import {
  Alias,
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  parseDocument,
  type Document,
  type Node as YamlNode,
  type Pair,
} from 'yaml';
import { parseScramVerifier } from '../auth/scram';
import { parseUserlist, UserlistError } from '../auth/userlist';
import { HbaError, readHbaFile, ruleFromEntry, type HbaEntry, type HbaRule } from '../auth/hba';
import { tlsSettingProblem } from '../auth/tls';
import {
  ConfigError,
  SYSLOG_FACILITIES,
  type AuthType,
  type BypassMode,
  type Config,
  type DatabaseConfig,
  type ListenConfig,
  type LogFormat,
  type LogLevel,
  type MetricsConfig,
  type MirrorConfig,
  type PoolMode,
  type SessionStatePolicies,
  type SslMode,
  type UserConfig,
} from './types';

// ---------------------------------------------------------------------------------
// Schema

export type Kind =
  | { t: 'string'; nonEmpty?: boolean }
  | { t: 'int'; min: number; max?: number; pow2?: boolean } // pow2: a power of two (then min, a page, makes it a page multiple)
  | { t: 'duration' }
  | { t: 'bool' }
  | { t: 'enum'; values: readonly string[] }
  | { t: 'list' }
  | { t: 'mode' } // file permission bits, written in octal as in pgbouncer.ini (0777)
  | { t: 'mirrors' }
  | { t: 'countOrAuto'; min: number; max: number };

export const POOL_MODES: readonly PoolMode[] = ['session', 'transaction', 'statement'];
export const AUTH_TYPES: readonly AuthType[] = ['scram-sha-256', 'md5', 'plain', 'trust', 'hba'];

/** PgBouncer's auth_query: the role's secret, NULL once it expired; only roles that can log in. */
export const DEFAULT_AUTH_QUERY =
  'SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname = $1 AND rolcanlogin';
export const BYPASS_MODES: readonly BypassMode[] = ['auto', 'on', 'off'];
export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug'];
export const LOG_FORMATS: readonly LogFormat[] = ['text', 'json'];
export const SSL_MODES: readonly SslMode[] = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'];

const str: Kind = { t: 'string' };
const nonEmptyStr: Kind = { t: 'string', nonEmpty: true };
const size0: Kind = { t: 'int', min: 0 };
const size1: Kind = { t: 'int', min: 1 };
const port: Kind = { t: 'int', min: 1, max: 65535 };
const duration: Kind = { t: 'duration' };
const poolMode: Kind = { t: 'enum', values: POOL_MODES };
const bool: Kind = { t: 'bool' };
const list: Kind = { t: 'list' };

type Settings = Omit<Config, 'listen' | 'databases' | 'users' | 'source' | 'metrics' | 'session_state' | 'hba' | 'hbaRules'>;

interface Setting<T> {
  kind: Kind;
  def: T;
}
const setting = <T>(kind: Kind, def: T): Setting<T> => ({ kind, def });

/** Top-level scalar settings: each key's kind and PgBouncer's default, a line per concern, in
 * SHOW CONFIG order. */
const SETTINGS: { [K in keyof Settings]: Setting<Settings[K]> } = {
  // Pools: mode and sizes.
  pool_mode: setting(poolMode, 'session'), default_pool_size: setting(size1, 20), min_pool_size: setting(size0, 0), reserve_pool_size: setting(size0, 0),
  reserve_pool_timeout: setting(duration, 5),
  // Connection limits.
  max_client_conn: setting(size1, 100), max_db_connections: setting(size0, 0), max_user_connections: setting(size0, 0), max_db_client_connections: setting(size0, 0),
  max_user_client_connections: setting(size0, 0), max_pool_variants: setting(size0, 8),
  // Server reset and health check.
  server_reset_query: setting(str, 'DISCARD ALL'), server_reset_query_always: setting(bool, false), server_check_query: setting(str, 'select 1'),
  server_check_delay: setting(duration, 30),
  // Client timeouts.
  query_wait_timeout: setting(duration, 120), query_timeout: setting(duration, 0), client_idle_timeout: setting(duration, 0), client_login_timeout: setting(duration, 60),
  idle_transaction_timeout: setting(duration, 0), transaction_timeout: setting(duration, 0),
  // Server timeouts and lifetime.
  server_idle_timeout: setting(duration, 600), server_lifetime: setting(duration, 3600), server_connect_timeout: setting(duration, 15),
  server_login_retry: setting(duration, 15), shutdown_timeout: setting(duration, 30),
  // Processes (docs/workers.md): how many serve clients, whether the port is bound with
  // SO_REUSEPORT (a takeover needs it), and this process's id in proxy-issued cancel keys.
  workers: setting({ t: 'countOrAuto', min: 1, max: 64 }, 1), so_reuseport: setting(bool, false), peer_id: setting({ t: 'int', min: 0, max: 16383 }, 0),
  // Authentication.
  auth_type: setting({ t: 'enum', values: AUTH_TYPES }, 'scram-sha-256'), auth_hba_file: setting(str, ''), auth_user: setting(str, ''),
  auth_query: setting(nonEmptyStr, DEFAULT_AUTH_QUERY), auth_dbname: setting(str, ''), auth_query_cache_ttl: setting(duration, 60), admin_users: setting(list, []),
  stats_users: setting(list, []),
  // Data path and logging.
  bypass: setting({ t: 'enum', values: BYPASS_MODES }, 'auto'),
  // The ring the kernel path copies mirrored clients' traffic into (docs/mirroring.md): 4 MiB.
  mirror_ring_bytes: setting({ t: 'int', min: 4096, max: 1 << 30, pow2: true }, 4 << 20),
  log_level: setting({ t: 'enum', values: LOG_LEVELS }, 'info'),
  log_format: setting({ t: 'enum', values: LOG_FORMATS }, 'text'), logfile: setting(str, ''), pidfile: setting(str, ''), syslog: setting(bool, false),
  syslog_ident: setting(nonEmptyStr, 'pgsplice'), syslog_facility: setting({ t: 'enum', values: Object.keys(SYSLOG_FACILITIES) }, 'daemon'),
  syslog_socket: setting(nonEmptyStr, '/dev/log'), // pgsplice's own (PgBouncer always uses /dev/log)
  auth_file: setting(str, ''),
  // PgBouncer's TCP settings (src/pooling/tcp-options.ts): Node sets SO_KEEPALIVE and
  // TCP_KEEPIDLE, the addon the other three (0 = the kernel's default; their limits are the kernel's).
  tcp_keepalive: setting(bool, true), tcp_keepidle: setting(duration, 0), tcp_keepcnt: setting({ t: 'int', min: 0, max: 127 }, 0),
  tcp_keepintvl: setting(duration, 0), tcp_user_timeout: setting({ t: 'int', min: 0, max: 2147483647 }, 0),
  // Session state in transaction pools.
  max_prepared_statements: setting(size0, 200), track_extra_parameters: setting(list, []),
  // PgBouncer's TLS keys and defaults; files and protocols are checked in crossCheck and src/auth/tls.ts.
  client_tls_sslmode: setting({ t: 'enum', values: SSL_MODES }, 'disable'), client_tls_key_file: setting(str, ''), client_tls_cert_file: setting(str, ''),
  client_tls_ca_file: setting(str, ''), client_tls_protocols: setting(list, ['secure']), client_tls_ciphers: setting(nonEmptyStr, 'default'),
  server_tls_sslmode: setting({ t: 'enum', values: SSL_MODES }, 'prefer'), server_tls_ca_file: setting(str, ''), server_tls_key_file: setting(str, ''),
  server_tls_cert_file: setting(str, ''), server_tls_protocols: setting(list, ['secure']), server_tls_ciphers: setting(nonEmptyStr, 'default'),
};

/** The value kind of a top-level setting ('string', 'int', 'duration', 'bool', 'enum',
 * 'list'), or undefined for a key that is not one (`pgsplice import` converts by it). */
export function settingKind(key: string): string | undefined {
  return Object.prototype.hasOwnProperty.call(SETTINGS, key) ? SETTINGS[key as keyof Settings].kind.t : undefined;
}

/** Defaults of the top-level settings (a copy), e.g. for docs and SHOW CONFIG. */
export function defaultSettings(): Settings {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(SETTINGS)) out[k] = Array.isArray(v.def) ? [...v.def] : v.def;
  return out as unknown as Settings;
}

/** listen.unix_socket_mode when unset: PgBouncer's. */
export const DEFAULT_UNIX_SOCKET_MODE = 0o777;

const LISTEN_KEYS: Record<keyof ListenConfig, Kind> = {
  host: str, // '' = no TCP listener
  port,
  unix_socket_dir: str,
  unix_socket_mode: { t: 'mode' },
};

// Where a server is and how many connections to it: keys of a database and of its mirrors.
const SERVER_KEYS: Record<'host' | 'port' | 'dbname' | 'user' | 'password' | 'pool_size', Kind> = {
  host: nonEmptyStr, port, dbname: nonEmptyStr, user: nonEmptyStr, password: str, pool_size: size1,
};

const DATABASE_KEYS: Record<Exclude<keyof DatabaseConfig, 'name'>, Kind> = {
  ...SERVER_KEYS,
  min_pool_size: size0,
  reserve_pool_size: size0,
  pool_mode: poolMode,
  max_db_connections: size0,
  max_db_client_connections: size0,
  client_encoding: nonEmptyStr,
  datestyle: nonEmptyStr,
  timezone: nonEmptyStr,
  application_name: str,
  auth_user: nonEmptyStr,
  auth_dbname: nonEmptyStr,
  mirrors: { t: 'mirrors' },
};

// One entry of databases.<name>.mirrors (sample is a fraction, checked apart).
const MIRROR_KEYS: Record<Exclude<keyof MirrorConfig, 'sample'>, Kind> = {
  ...SERVER_KEYS,
  queue_bytes: { t: 'int', min: 4096 },
  compare: { t: 'enum', values: ['tags', 'rows'] },
};
const MIRROR_KEY_NAMES = [...Object.keys(MIRROR_KEYS), 'sample'];
export const MIRROR_DEFAULTS = { port: 5432, pool_size: 20, sample: 1, queue_bytes: 16 << 20, compare: 'tags' } as const;

const USER_KEYS: Record<Exclude<keyof UserConfig, 'name'>, Kind> = {
  password: str,
  pool_mode: poolMode,
  pool_size: size1,
  max_user_connections: size0,
  max_user_client_connections: size0,
};

const METRICS_KEYS: Record<keyof MetricsConfig, Kind> = { host: nonEmptyStr, port };

const pinOrReject: Kind = { t: 'enum', values: ['pin', 'reject'] };
const SESSION_STATE_KEYS: Record<keyof SessionStatePolicies, Kind> = {
  parameters: { t: 'enum', values: ['track', 'pin', 'reject'] },
  listen: pinOrReject,
  advisory_locks: pinOrReject,
  temp_tables: pinOrReject,
  prepared_sql: pinOrReject,
  hold_cursors: pinOrReject,
};
export const DEFAULT_SESSION_STATE: SessionStatePolicies = {
  parameters: 'track', listen: 'pin', advisory_locks: 'pin', temp_tables: 'pin', prepared_sql: 'pin', hold_cursors: 'pin',
};

/** Every key the loader accepts, by section, with its value kind (and, for the top-level
 * settings, its default): what docs/config.md documents, checked by test/docs-config.test.ts. */
export function configSchema() {
  return {
    settings: Object.fromEntries(Object.entries(SETTINGS).map(([k, v]) => [k, { kind: v.kind, def: v.def as unknown }])),
    sections: SECTIONS,
    listen: LISTEN_KEYS as Record<string, Kind>,
    database: DATABASE_KEYS as Record<string, Kind>,
    mirror: MIRROR_KEYS as Record<string, Kind>, // and sample, a fraction checked apart
    mirrorKeys: MIRROR_KEY_NAMES,
    user: USER_KEYS as Record<string, Kind>,
    metrics: METRICS_KEYS as Record<string, Kind>,
    session_state: SESSION_STATE_KEYS as Record<string, Kind>,
  };
}

// The top-level keys that hold a section or list rather than one setting.
const SECTIONS = ['listen', 'databases', 'users', 'metrics', 'session_state', 'hba'] as const;
const TOP_KEYS = [...SECTIONS, ...Object.keys(SETTINGS)];

const HBA_ENTRY_KEYS = ['type', 'database', 'user', 'address', 'method'];

// pgbouncer.ini names that live elsewhere here: point the user at the right place.
const MOVED: Record<string, string> = {
  listen_addr: 'listen.host',
  listen_port: 'listen.port',
  unix_socket_dir: 'listen.unix_socket_dir',
  pool_size: 'default_pool_size (or databases.<name>.pool_size)',
};

/** Database names the admin console answers to; a real database may not use them. */
export const ADMIN_DATABASE_NAMES: readonly string[] = ['pgsplice', 'pgbouncer'];

// ---------------------------------------------------------------------------------
// Helpers

function levenshtein(a: string, b: string): number {
  const dp = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = dp[0]!;
    dp[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = dp[j]!;
      dp[j] = Math.min(dp[j]! + 1, dp[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return dp[b.length]!;
}

function suggest(key: string, known: readonly string[]): string | undefined {
  const k = key.toLowerCase();
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of known) {
    const d = levenshtein(k, c);
    if (d < bestD) {
      best = c;
      bestD = d;
    }
  }
  if (best !== undefined && bestD <= 2) return best;
  // A key that contains a known one or vice versa (e.g. "max_client_connections").
  let contained: string | undefined;
  for (const c of known) {
    if (c.length >= 4 && k.length >= 4 && (k.includes(c) || c.includes(k))) {
      if (!contained || c.length > contained.length) contained = c;
    }
  }
  if (contained) return contained;
  if (best !== undefined && bestD <= Math.floor(k.length / 4)) return best;
  return undefined;
}

const DURATION_RE = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|min|h|d)?\s*$/;
const DURATION_UNITS: Record<string, number> = { ms: 0.001, s: 1, m: 60, min: 60, h: 3600, d: 86400 };

/** Seconds from a number of seconds or a string like "500ms", "30s", "5m", "1h"; undefined if invalid. */
export function parseDuration(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) && v >= 0 ? v : undefined;
  if (typeof v !== 'string') return undefined;
  const m = DURATION_RE.exec(v);
  if (!m) return undefined;
  return Number(m[1]) * DURATION_UNITS[m[2] ?? 's']!;
}

function describeValue(v: unknown): string {
  if (v === null || v === undefined) return 'nothing (null)';
  if (typeof v === 'string') return `the string ${JSON.stringify(v)}`;
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return `${typeof v} ${String(v)}`;
}

// ---------------------------------------------------------------------------------
// The walk

class Loader {
  readonly lines = new Map<string, number>();

  constructor(
    readonly file: string,
    readonly doc: Document,
    readonly lc: LineCounter,
  ) {}

  lineOf(node: unknown, fallback?: number): number | undefined {
    const r = (node as { range?: [number, number, number] } | null)?.range;
    return r ? this.lc.linePos(r[0]).line : fallback;
  }

  fail(path: string | undefined, line: number | undefined, message: string): never {
    throw new ConfigError(message, this.file, path, line);
  }

  resolve(node: unknown): unknown {
    let n = node;
    for (let i = 0; i < 100 && n instanceof Alias; i++) n = n.resolve(this.doc);
    return n;
  }

  /** The pairs of a mapping node, as [name, key line, value node], recording lines; rejects non-maps. */
  entries(node: unknown, path: string, line: number | undefined): Array<[string, number | undefined, unknown, Pair]> {
    const n = this.resolve(node);
    if (!isMap(n)) this.fail(path, line ?? this.lineOf(n), `expected a mapping (key: value ...), got ${describeValue(this.plain(n))}`);
    const out: Array<[string, number | undefined, unknown, Pair]> = [];
    for (const pair of n.items) {
      const keyNode = this.resolve(pair.key);
      const kline = this.lineOf(keyNode, this.lineOf(pair.value, line));
      if (!isScalar(keyNode)) this.fail(path, kline, 'a key must be a plain name, not a list or mapping');
      const name = keyNode.value === null || keyNode.value === undefined ? '' : String(keyNode.value);
      const full = path ? `${path}.${name}` : name;
      if (name === '<<') this.fail(full, kline, 'YAML merge keys (<<) are not supported; write the keys out');
      this.lines.set(full, kline ?? 0);
      out.push([name, kline, pair.value, pair]);
    }
    return out;
  }

  plain(node: unknown): unknown {
    const n = this.resolve(node);
    if (n === null || n === undefined) return null;
    if (isScalar(n)) return n.value;
    if (isSeq(n)) return [];
    if (isMap(n)) return {};
    return null;
  }

  unknownKey(path: string, name: string, line: number | undefined, known: readonly string[]): never {
    const hint = suggest(name, known);
    let msg = 'unknown key';
    if (path === '' && MOVED[name]) msg += ` (in pgsplice this is ${MOVED[name]})`;
    else if (hint) msg += ` (did you mean "${hint}"?)`;
    else msg += `; known keys here: ${known.join(', ')}`;
    this.fail(path ? `${path}.${name}` : name, line, msg);
  }

  value(kind: Kind, node: unknown, path: string, line: number | undefined): unknown {
    const n = this.resolve(node);
    if (kind.t === 'mirrors') return this.mirrorList(n, path, line);
    if (kind.t === 'list') {
      if (isSeq(n)) {
        return n.items.map((it, i) => {
          const v = this.plain(it);
          if (typeof v !== 'string' || v === '') {
            this.fail(`${path}[${i}]`, this.lineOf(it, line), `expected a non-empty name, got ${describeValue(v)}`);
          }
          return v;
        });
      }
      const v = this.plain(n);
      if (typeof v === 'string') {
        return v
          .split(',')
          .map((s) => s.trim())
          .filter((s) => s !== '');
      }
      if (v === null) return [];
      this.fail(path, line, `expected a list of names (or "a, b"), got ${describeValue(v)}`);
    }
    if (!isScalar(n) && n !== null && n !== undefined) {
      this.fail(path, line, `expected a single value, got ${describeValue(this.plain(n))}`);
    }
    const v = this.plain(n);
    switch (kind.t) {
      case 'mode': {
        // The digits as written are octal (0777, 777, 0o777, "0660"); YAML would read 0777 as 777.
        const text = String((isScalar(n) && typeof n.source === 'string' ? n.source : v) ?? '').replace(/^0o/i, '');
        if (!/^[0-7]{1,4}$/.test(text)) this.fail(path, line, `expected permission bits in octal such as 0777 or 0660, got ${describeValue(v)}`);
        return parseInt(text, 8);
      }
      case 'string':
        if (typeof v !== 'string') {
          const quote = typeof v === 'number' || typeof v === 'boolean' ? ' (quote it to make it a string)' : '';
          this.fail(path, line, `expected a string, got ${describeValue(v)}${quote}`);
        }
        if (kind.nonEmpty && v.trim() === '') this.fail(path, line, 'must not be empty');
        return v;
      case 'int': {
        if (typeof v !== 'number' || !Number.isInteger(v)) {
          this.fail(path, line, `expected a whole number, got ${describeValue(v)}`);
        }
        if (kind.max !== undefined && (v < kind.min || v > kind.max)) {
          this.fail(path, line, `${v} is out of range; must be ${kind.min}..${kind.max}`);
        }
        if (v < kind.min) this.fail(path, line, `${v} is too small; must be >= ${kind.min}`);
        if (kind.pow2 && (v & (v - 1)) !== 0) this.fail(path, line, `${v} is not a power of two (such as ${kind.min}, 65536 or 4194304)`);
        return v;
      }
      case 'duration': {
        const d = parseDuration(v);
        if (d === undefined) {
          this.fail(
            path,
            line,
            `expected a duration: seconds (e.g. 30 or 0.5) or a string like "500ms", "30s", "5m", "1h"; got ${describeValue(v)}` +
              (typeof v === 'number' && v < 0 ? ' (must not be negative)' : ''),
          );
        }
        return d;
      }
      case 'bool': {
        if (typeof v === 'boolean') return v;
        if (typeof v === 'number' && (v === 0 || v === 1)) return v === 1;
        if (typeof v === 'string') {
          const s = v.toLowerCase();
          if (['true', 'on', 'yes', '1'].includes(s)) return true;
          if (['false', 'off', 'no', '0'].includes(s)) return false;
        }
        this.fail(path, line, `expected true or false, got ${describeValue(v)}`);
      }
      case 'countOrAuto': {
        if (v === 'auto') return v;
        if (typeof v !== 'number' || !Number.isInteger(v) || v < kind.min || v > kind.max) {
          this.fail(path, line, `expected a whole number ${kind.min}..${kind.max} or "auto", got ${describeValue(v)}`);
        }
        return v;
      }
      case 'enum': {
        let s = v;
        // YAML 1.1 readers (or %YAML 1.1 files) turn on/off into booleans.
        if (typeof s === 'boolean' && kind.values.includes('on')) s = s ? 'on' : 'off';
        if (typeof s !== 'string' || !kind.values.includes(s)) {
          this.fail(path, line, `bad value ${typeof s === 'string' ? JSON.stringify(s) : describeValue(s)}; allowed: ${kind.values.join(', ')}`);
        }
        return s;
      }
    }
  }

  /** Fill obj from a mapping against a key schema. */
  section<T extends object>(node: unknown, path: string, line: number | undefined, schema: Record<string, Kind>, obj: T): T {
    const n = this.resolve(node);
    if (n === null || n === undefined || (isScalar(n) && n.value === null)) return obj; // "name:" with nothing = all defaults
    const known = Object.keys(schema);
    for (const [name, kline, vnode] of this.entries(n, path, line)) {
      const kind = schema[name];
      if (!kind) this.unknownKey(path, name, kline, known);
      (obj as Record<string, unknown>)[name] = this.value(kind, vnode, `${path}.${name}`, kline);
    }
    return obj;
  }

  load(): Config {
    const root = this.doc.contents;
    if (root === null || (isScalar(root) && root.value === null)) {
      this.fail('databases', 1, 'the file is empty; at least a "databases:" section is required');
    }
    const settings = defaultSettings() as unknown as Record<string, unknown>;
    let listen: ListenConfig = { host: '127.0.0.1', port: 6432 };
    const databases = new Map<string, DatabaseConfig>();
    const users = new Map<string, UserConfig>();
    let sawDatabases = false;
    let metrics: MetricsConfig | undefined;
    let sessionState: SessionStatePolicies = { ...DEFAULT_SESSION_STATE };
    let hba: HbaRule[] | undefined;

    for (const [name, kline, vnode] of this.entries(root, '', 1)) {
      if (name === 'listen') {
        listen = this.section(vnode, 'listen', kline, LISTEN_KEYS, { host: '127.0.0.1', port: 6432 } as ListenConfig);
      } else if (name === 'databases') {
        sawDatabases = true;
        for (const [db, dline, dnode] of this.entries(vnode, 'databases', kline)) {
          const path = `databases.${db}`;
          if (db.trim() === '') this.fail(path, dline, 'a database name must not be empty');
          if (ADMIN_DATABASE_NAMES.includes(db)) {
            this.fail(path, dline, `"${db}" is reserved for the admin console`);
          }
          const entry = this.section(dnode, path, dline, DATABASE_KEYS, {
            name: db,
            host: '127.0.0.1',
            port: 5432,
            dbname: '',
          } as DatabaseConfig);
          // "*" is the fallback: without an explicit dbname it connects to the name the client asked for.
          if (entry.dbname === '' && db !== '*') entry.dbname = db;
          databases.set(db, entry);
        }
      } else if (name === 'users') {
        for (const [user, uline, unode] of this.entries(vnode, 'users', kline)) {
          const path = `users.${user}`;
          if (user.trim() === '') this.fail(path, uline, 'a user name must not be empty');
          users.set(user, this.section(unode, path, uline, USER_KEYS, { name: user } as UserConfig));
        }
      } else if (name === 'metrics') {
        metrics = this.section(vnode, 'metrics', kline, METRICS_KEYS, { host: '127.0.0.1', port: 9127 } as MetricsConfig);
      } else if (name === 'session_state') {
        sessionState = this.section(vnode, 'session_state', kline, SESSION_STATE_KEYS, { ...DEFAULT_SESSION_STATE });
      } else if (name === 'hba') {
        hba = this.hbaList(vnode, kline);
      } else if (name in SETTINGS) {
        settings[name] = this.value(SETTINGS[name as keyof Settings].kind, vnode, name, kline);
      } else {
        this.unknownKey('', name, kline, TOP_KEYS);
      }
    }

    const cfg = {
      listen,
      databases,
      users,
      ...(settings as unknown as Settings),
      ...(metrics ? { metrics } : {}),
      session_state: sessionState,
      ...(hba ? { hba } : {}),
      hbaRules: [],
      source: { file: this.file, lines: this.lines },
    } as Config;
    this.crossCheck(cfg, sawDatabases);
    return cfg;
  }

  /** databases.<name>.mirrors: a list of { host, port, dbname, user, password, pool_size, sample, queue_bytes, compare }. */
  mirrorList(n: unknown, path: string, line: number | undefined): MirrorConfig[] {
    if (!isSeq(n)) this.fail(path, line, `expected a list of mirrors ({ host, port, dbname, user, ... }), got ${describeValue(this.plain(n))}`);
    const seen = new Set<string>();
    return n.items.map((item, i) => {
      const where = `${path}[${i}]`;
      const iline = this.lineOf(this.resolve(item), line);
      const m: Record<string, unknown> = { ...MIRROR_DEFAULTS };
      for (const [key, kline, vnode] of this.entries(item, where, iline)) {
        if (key === 'sample') {
          const v = this.plain(vnode);
          if (typeof v !== 'number' || !(v >= 0 && v <= 1)) this.fail(`${where}.sample`, kline, `expected a fraction of clients from 0.0 to 1.0, got ${describeValue(v)}`);
          m.sample = v;
          continue;
        }
        const kind = MIRROR_KEYS[key as keyof typeof MIRROR_KEYS];
        if (!kind) this.unknownKey(where, key, kline, MIRROR_KEY_NAMES);
        m[key] = this.value(kind, vnode, `${where}.${key}`, kline);
      }
      for (const key of ['host', 'dbname', 'user']) if (m[key] === undefined) this.fail(where, iline, `missing "${key}"`);
      const id = `${m.host}:${m.port}/${m.dbname}`;
      if (seen.has(id)) this.fail(where, iline, `mirror ${id} is listed twice`);
      seen.add(id);
      return m as unknown as MirrorConfig;
    });
  }

  /** The inline `hba:` list: mappings of type, database, user, address, method. */
  hbaList(node: unknown, line: number | undefined): HbaRule[] {
    const n = this.resolve(node);
    if (!isSeq(n)) this.fail('hba', line, `expected a list of rules ({ type, database, user, address, method }), got ${describeValue(this.plain(n))}`);
    return n.items.map((item, i) => {
      const where = `hba[${i}]`;
      const iline = this.lineOf(this.resolve(item), line);
      const entry: Record<string, string | string[]> = {};
      for (const [key, kline, vnode] of this.entries(item, where, iline)) {
        if (!HBA_ENTRY_KEYS.includes(key)) this.unknownKey(where, key, kline, HBA_ENTRY_KEYS);
        const listOk = key === 'database' || key === 'user';
        entry[key] = this.value(listOk && isSeq(this.resolve(vnode)) ? { t: 'list' } : nonEmptyStr, vnode, `${where}.${key}`, kline) as string | string[];
      }
      for (const key of ['type', 'database', 'user', 'method']) {
        if (entry[key] === undefined) this.fail(where, iline, `missing "${key}"`);
      }
      try {
        return ruleFromEntry(entry as unknown as HbaEntry, path.dirname(this.file), this.file, iline ?? 0);
      } catch (e) {
        if (e instanceof HbaError) this.fail(where, iline, e.message);
        throw e;
      }
    });
  }

  crossCheck(cfg: Config, sawDatabases: boolean): void {
    const L = (k: string) => this.lines.get(k);
    if (!sawDatabases) this.fail('databases', undefined, 'required: the databases clients may connect to');
    if (cfg.databases.size === 0) this.fail('databases', L('databases'), 'at least one database is required');
    if (cfg.listen.host === '' && !cfg.listen.unix_socket_dir) {
      this.fail('listen', L('listen.host'), 'nothing to listen on: set listen.host or listen.unix_socket_dir');
    }
    if (cfg.default_pool_size < cfg.min_pool_size) {
      const k = this.lines.has('min_pool_size') ? 'min_pool_size' : 'default_pool_size';
      this.fail(k, L(k), `default_pool_size (${cfg.default_pool_size}) must be >= min_pool_size (${cfg.min_pool_size})`);
    }
    for (const db of cfg.databases.values()) {
      const size = db.pool_size ?? cfg.default_pool_size;
      const min = db.min_pool_size ?? cfg.min_pool_size;
      if (size < min) {
        const p = `databases.${db.name}`;
        const k = this.lines.has(`${p}.min_pool_size`) ? `${p}.min_pool_size` : this.lines.has(`${p}.pool_size`) ? `${p}.pool_size` : p;
        this.fail(k, L(k), `pool_size (${size}) must be >= min_pool_size (${min})`);
      }
      if (db.password !== undefined && db.user === undefined) {
        this.fail(`databases.${db.name}.password`, L(`databases.${db.name}.password`), 'a password needs a user (the fixed server user it belongs to)');
      }
    }
    this.checkOperations(cfg); // first: auth_file adds users that checkAuth looks at
    this.checkAuth(cfg);
    const tls = tlsSettingProblem(cfg);
    if (tls) this.fail(tls.key, L(tls.key), tls.message);
    for (const u of cfg.users.values()) {
      const pw = u.password;
      if (pw === undefined) continue;
      const k = `users.${u.name}.password`;
      if (pw.startsWith('SCRAM-SHA-256$')) {
        try {
          parseScramVerifier(pw);
        } catch (e) {
          this.fail(k, L(k), (e as Error).message);
        }
      } else if (/^md5[0-9a-f]{32}$/.test(pw) && cfg.auth_type === 'scram-sha-256') {
        this.fail(
          k,
          L(k),
          'is an md5 hash, which cannot authenticate clients with auth_type scram-sha-256; give the plain password or a SCRAM verifier, or set auth_type: md5',
        );
      }
    }
  }

  // Keys accepted for pgbouncer.ini's sake whose other values cannot be honoured, the auth_file.
  checkOperations(cfg: Config): void {
    const L = (k: string) => this.lines.get(k);
    if (cfg.tcp_keepintvl > 32767) this.fail('tcp_keepintvl', L('tcp_keepintvl'), 'at most 32767 s (the kernel\'s limit for TCP_KEEPINTVL)');
    if (cfg.auth_file) {
      const file = path.resolve(path.dirname(cfg.source.file), cfg.auth_file);
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch (e) {
        this.fail('auth_file', L('auth_file'), `cannot read ${file}: ${(e as Error).message}`);
      }
      let entries;
      try {
        entries = parseUserlist(text);
      } catch (e) {
        if (!(e instanceof UserlistError)) throw e;
        throw new ConfigError(e.message, file, 'auth_file', e.line);
      }
      // users: entries win; a users: entry without a password takes the file's.
      for (const e of entries) {
        const own = cfg.users.get(e.name);
        if (!own) cfg.users.set(e.name, { name: e.name, password: e.password });
        else if (own.password === undefined) own.password = e.password;
      }
    }
  }

  // HBA rules (inline or auth_hba_file, read here so that a reload re-reads the file) and
  // auth_query's user.
  checkAuth(cfg: Config): void {
    const L = (k: string) => this.lines.get(k);
    if (cfg.hba && cfg.auth_hba_file) {
      this.fail('hba', L('hba'), 'give the HBA rules either inline (hba:) or in auth_hba_file, not both');
    }
    if (cfg.hba && cfg.auth_type !== 'hba') this.fail('hba', L('hba'), 'HBA rules apply only with auth_type: hba');
    let rules = cfg.hba ?? [];
    if (cfg.auth_hba_file) {
      const file = path.resolve(path.dirname(cfg.source.file), cfg.auth_hba_file);
      try {
        rules = readHbaFile(file);
      } catch (e) {
        if (!(e instanceof HbaError)) throw e;
        if (e.line === 0) this.fail('auth_hba_file', L('auth_hba_file'), e.message + ` (${file})`);
        throw new ConfigError(e.message, e.file, 'auth_hba_file', e.line);
      }
    }
    if (cfg.auth_type === 'hba' && !cfg.hba && !cfg.auth_hba_file) {
      this.fail('auth_type', L('auth_type'), 'auth_type hba needs auth_hba_file (a pg_hba.conf-format file) or an inline hba: list');
    }
    cfg.hbaRules = rules;
    if (!/\$1\b/.test(cfg.auth_query)) {
      this.fail('auth_query', L('auth_query'), 'must take the user name as the parameter $1');
    }
    const authUsers: Array<[string, string]> = [];
    if (cfg.auth_user) authUsers.push(['auth_user', cfg.auth_user]);
    for (const db of cfg.databases.values()) if (db.auth_user) authUsers.push([`databases.${db.name}.auth_user`, db.auth_user]);
    for (const [key, name] of authUsers) {
      const u = cfg.users.get(name);
      if (!u) this.fail(key, L(key), `"${name}" must be listed under users: with the password the proxy logs in with to run auth_query`);
      if (u.password?.startsWith('SCRAM-SHA-256$')) {
        this.fail(key, L(key), `users.${name}.password is a SCRAM verifier, which cannot log in to PostgreSQL; give the plain password (or an md5 hash for md5 servers)`);
      }
    }
  }
}

// ---------------------------------------------------------------------------------
// API

/** Best-effort key path of a "key:" line, from indentation (for YAML syntax errors). */
function keyPathAtLine(text: string, line: number): string | undefined {
  const lines = text.split('\n');
  const keyRe = /^(\s*)(?:-\s+)?(["']?)([^\s"':#{}[\],][^"':#{}[\],]*?)\2\s*:(?:\s|$)/;
  const m = keyRe.exec(lines[line - 1] ?? '');
  if (!m) return undefined;
  const path = [m[3]!];
  let indent = m[1]!.length;
  for (let i = line - 2; i >= 0 && indent > 0; i--) {
    const pm = keyRe.exec(lines[i]!);
    if (pm && pm[1]!.length < indent) {
      path.unshift(pm[3]!);
      indent = pm[1]!.length;
    }
  }
  return path.join('.');
}

/** Parse and validate config text; file is used in messages only. Throws ConfigError. */
export function parseConfig(text: string, file: string): Config {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    const line = lc.linePos(e.pos[0]).line;
    const msg = e.message.split('\n')[0]!;
    throw new ConfigError(`YAML syntax error: ${msg}`, file, keyPathAtLine(text, line), line);
  }
  return new Loader(file, doc, lc).load();
}

/** Read and parse a config file. Throws ConfigError (also when the file cannot be read). */
export function loadConfigFile(path: string): Config {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read the config file: ${(e as Error).message}`, path);
  }
  return parseConfig(text, path);
}

/**
 * The database entry for a name a client asked for: its own entry, else the "*" fallback
 * with name and (unless the fallback fixes one) dbname set to the requested name.
 */
export function resolveDatabase(config: Config, name: string): DatabaseConfig | undefined {
  const own = config.databases.get(name);
  if (own) return own;
  const star = config.databases.get('*');
  if (!star) return undefined;
  return { ...star, name, dbname: star.dbname === '' ? name : star.dbname };
}

function show(v: unknown): string {
  if (Array.isArray(v)) return v.join(',');
  if (v === undefined) return '';
  return String(v);
}

/** [key, value] pairs for SHOW CONFIG: listen.* then the top-level settings. No secrets. */
export function describeConfig(config: Config): Array<[string, string]> {
  const out: Array<[string, string]> = [
    ['listen.host', show(config.listen.host)],
    ['listen.port', show(config.listen.port)],
    ['listen.unix_socket_dir', show(config.listen.unix_socket_dir)],
    ['listen.unix_socket_mode', config.listen.unix_socket_mode === undefined ? '' : `0${config.listen.unix_socket_mode.toString(8)}`],
  ];
  for (const k of Object.keys(SETTINGS) as Array<keyof Settings>) out.push([k, show(config[k])]);
  for (const [k, v] of Object.entries(config.session_state)) out.push([`session_state.${k}`, v]);
  return out;
}

/**
 * A copy of config with one top-level setting changed (the admin console's SET), validated
 * as the loader validates it (value kind, then the cross-checks). text is YAML for the value.
 * Throws ConfigError.
 */
export function applySetting(config: Config, key: string, text: string): Config {
  if (!Object.prototype.hasOwnProperty.call(SETTINGS, key)) {
    const hint = suggest(key, Object.keys(SETTINGS));
    throw new ConfigError(`unknown setting${hint ? ` (did you mean "${hint}"?)` : ''}`, 'SET', key);
  }
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false });
  if (doc.errors.length > 0) throw new ConfigError(`bad value: ${doc.errors[0]!.message.split('\n')[0]}`, 'SET', key);
  const loader = new Loader('SET', doc, lc);
  const value = loader.value(SETTINGS[key as keyof Settings].kind, doc.contents, key, undefined);
  const next = { ...config, [key]: value } as Config;
  loader.crossCheck(next, true);
  return next;
}

/** Keys whose change takes effect only after a restart (everything else reloads on SIGHUP).
 * The one list: RELOAD, SIGHUP and the admin console's SET all read it. */
export const RESTART_KEYS: readonly string[] = ['listen.host', 'listen.port', 'listen.unix_socket_dir', 'listen.unix_socket_mode', 'bypass', 'mirror_ring_bytes', 'metrics', 'pidfile', 'workers', 'so_reuseport', 'peer_id'];

/** Which restart-only keys differ between two configs (a RELOAD applies the rest and reports these). */
export function changesNeedingRestart(before: Config, after: Config): string[] {
  const get = (c: Config, k: string): unknown => {
    if (k.startsWith('listen.')) return c.listen[k.slice(7) as keyof ListenConfig];
    if (k === 'metrics') return JSON.stringify(c.metrics ?? null); // an object: compared by value
    return (c as unknown as Record<string, unknown>)[k];
  };
  return RESTART_KEYS.filter((k) => get(before, k) !== get(after, k));
}

// The validated configuration the proxy runs on. Names and meanings follow
// PgBouncer's where the concept exists; durations are in seconds (floats allowed),
// as in pgbouncer.ini. The loader (load.ts) turns YAML into this and nothing else
// reads YAML.

import type { HbaRule } from '../auth/hba';

export type PoolMode = 'session' | 'transaction' | 'statement';
export type AuthType = 'scram-sha-256' | 'md5' | 'plain' | 'trust' | 'hba';
export type BypassMode = 'auto' | 'on' | 'off';
export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
// The syslog facilities PgBouncer accepts, with their codes (src/observe/syslog.ts).
export const SYSLOG_FACILITIES = {
  auth: 4, authpriv: 10, daemon: 3, user: 1,
  local0: 16, local1: 17, local2: 18, local3: 19, local4: 20, local5: 21, local6: 22, local7: 23,
} as const;
export type SyslogFacility = keyof typeof SYSLOG_FACILITIES;
export type LogFormat = 'text' | 'json';
// TLS modes, as PgBouncer's client_tls_sslmode / server_tls_sslmode (libpq's names).
export type SslMode = 'disable' | 'allow' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';

export interface ListenConfig {
  host: string; // '' or omitted: no TCP listener
  port: number;
  unix_socket_dir?: string; // socket file is <dir>/.s.PGSQL.<port>
  unix_socket_mode?: number; // its permission bits (default 0o777, as PgBouncer)
}

// Prometheus endpoint (GET /metrics); absent = off.
export interface MetricsConfig {
  host: string;
  port: number;
}

// What transaction pooling does with each kind of session state (docs/transaction-mode.md).
export type ParameterPolicy = 'track' | 'pin' | 'reject';
export type StatePolicy = 'pin' | 'reject';
export interface SessionStatePolicies {
  parameters: ParameterPolicy; // SET / RESET / set_config of any parameter
  listen: StatePolicy;
  advisory_locks: StatePolicy; // session-level advisory locks
  temp_tables: StatePolicy;
  prepared_sql: StatePolicy; // PREPARE as SQL
  hold_cursors: StatePolicy; // DECLARE ... WITH HOLD
}

// A second server that receives a copy of a database's traffic (docs/mirroring.md).
export type MirrorCompare = 'tags' | 'rows';
export interface MirrorConfig {
  host: string;
  port: number;
  dbname: string;
  user: string;
  password?: string;
  pool_size: number; // mirror connections, one per mirrored client: at most this many clients are mirrored at once
  sample: number; // 0.0-1.0: the share of clients mirrored (whole clients)
  queue_bytes: number; // bound on bytes held for this mirror (queued, in flight, being gathered)
  compare: MirrorCompare; // tags: command tags, row counts, SQLSTATEs; rows: also a hash of the rows
}

export interface DatabaseConfig {
  name: string; // the name clients connect to
  host: string; // host name, IP, or a directory for a unix socket
  port: number;
  dbname: string; // the real database name on the server
  user?: string; // fixed server user: every client of this db uses it
  password?: string; // password for the fixed user
  pool_size?: number;
  min_pool_size?: number;
  reserve_pool_size?: number;
  pool_mode?: PoolMode;
  max_db_connections?: number;
  client_encoding?: string;
  datestyle?: string;
  timezone?: string;
  application_name?: string;
  auth_user?: string; // overrides the top-level auth_user for this database
  auth_dbname?: string; // overrides the top-level auth_dbname for this database
  max_db_client_connections?: number; // overrides the top-level one for this database
  mirrors?: MirrorConfig[]; // servers that get a copy of this database's transactions
}

export interface UserConfig {
  name: string;
  // Plain text, a SCRAM verifier "SCRAM-SHA-256$<iter>:<salt>$<stored>:<server>",
  // or an md5 hash "md5<32 hex>" (md5(password || username)).
  password?: string;
  pool_mode?: PoolMode;
  pool_size?: number;
  max_user_connections?: number;
  max_user_client_connections?: number; // overrides the top-level one for this user
}

export interface Config {
  listen: ListenConfig;
  databases: Map<string, DatabaseConfig>;
  users: Map<string, UserConfig>;
  pool_mode: PoolMode;
  default_pool_size: number;
  min_pool_size: number;
  reserve_pool_size: number;
  reserve_pool_timeout: number;
  max_client_conn: number;
  max_db_connections: number; // 0 = unlimited
  max_user_connections: number; // 0 = unlimited
  max_db_client_connections: number; // client connections per database; 0 = unlimited
  max_user_client_connections: number; // client connections per user; 0 = unlimited
  max_pool_variants: number; // startup-settings variant pools per (database, server user); 0 = none
  server_reset_query: string;
  server_reset_query_always: boolean;
  server_check_query: string;
  server_check_delay: number;
  query_wait_timeout: number; // 0 = wait forever
  query_timeout: number;
  client_idle_timeout: number;
  client_login_timeout: number;
  idle_transaction_timeout: number;
  transaction_timeout: number; // s: a transaction holding a server longer is ended, its server closed; 0 = off
  server_idle_timeout: number;
  server_lifetime: number;
  server_connect_timeout: number;
  server_login_retry: number;
  shutdown_timeout: number; // SIGTERM: how long clients get to finish
  workers: number | 'auto'; // worker processes; 'auto' = one per core (docs/workers.md)
  so_reuseport: boolean; // bind TCP listeners with SO_REUSEPORT (a takeover needs it)
  peer_id: number; // 0 = chosen at start; else this process's id in cancel keys (1..16383)
  auth_type: AuthType;
  auth_hba_file: string; // '' = none; pg_hba.conf format (auth_type hba)
  auth_user: string; // '' = no auth_query lookups
  auth_query: string;
  auth_dbname: string; // '' = the client's database
  auth_query_cache_ttl: number; // s; 0 = look up on every login
  admin_users: string[];
  stats_users: string[];
  bypass: BypassMode;
  mirror_ring_bytes: number; // the kernel path's ring for mirrored clients' traffic (restart)
  log_level: LogLevel;
  log_format: LogFormat; // text lines, or one JSON object per line
  logfile: string; // '' = stderr only; else also appended here (reopened on SIGHUP)
  pidfile: string; // '' = none; written at start, removed at exit
  syslog: boolean; // also log to syslog (src/observe/syslog.ts)
  syslog_ident: string;
  syslog_facility: SyslogFacility;
  syslog_socket: string; // pgsplice's own: the syslog daemon's unix datagram socket
  auth_file: string; // '' = none; PgBouncer's userlist.txt format, merged under users:
  tcp_keepalive: boolean; // SO_KEEPALIVE on client and server TCP sockets
  tcp_keepidle: number; // s before the first probe; 0 = the kernel's default
  tcp_keepcnt: number; // keepalive probes before the connection is dropped; 0 = the kernel's default
  tcp_keepintvl: number; // s between keepalive probes; 0 = the kernel's default
  tcp_user_timeout: number; // ms unacknowledged data may wait before the connection is dropped; 0 = the kernel's default
  max_prepared_statements: number; // per server, transaction mode; 0 = named statements pin the client
  track_extra_parameters: string[]; // reported parameters carried besides the built-in ones
  session_state: SessionStatePolicies;
  // TLS (src/auth/tls.ts builds the contexts). File names are '' when not set; relative names
  // are relative to the config file's directory.
  client_tls_sslmode: SslMode;
  client_tls_key_file: string;
  client_tls_cert_file: string;
  client_tls_ca_file: string;
  client_tls_protocols: string[];
  client_tls_ciphers: string;
  server_tls_sslmode: SslMode;
  server_tls_ca_file: string;
  server_tls_key_file: string;
  server_tls_cert_file: string;
  server_tls_protocols: string[];
  server_tls_ciphers: string;
  metrics?: MetricsConfig;
  // The rules written inline as `hba:` (pgsplice's own form), if any.
  hba?: HbaRule[];
  // The rules in force with auth_type hba: the inline ones or auth_hba_file's (re-read on reload).
  hbaRules: HbaRule[];
  // Where the keys were found, for messages that name a key and its line.
  source: { file: string; lines: Map<string, number> };
}

export class ConfigError extends Error {
  constructor(
    message: string,
    readonly file: string,
    readonly key?: string,
    readonly line?: number,
  ) {
    super(
      `${file}${line !== undefined ? `:${line}` : ''}: ${key !== undefined ? `${key}: ` : ''}${message}`,
    );
    this.name = 'ConfigError';
  }
}

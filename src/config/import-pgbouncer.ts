// `pgsplice import pgbouncer.ini [userlist.txt]`: PgBouncer's configuration as pgsplice
// YAML, plus the list of what could not be translated and why. Keys that mean the same
// thing keep their names; the [databases] and [users] connection strings become mappings.
import * as fs from 'node:fs';
import * as path from 'node:path';
import YAML from 'yaml';
import { parseUserlist } from '../auth/userlist';
import { settingKind } from './load';

export interface ImportResult {
  yaml: string;
  untranslated: string[]; // "<section>.<key> = <value>: <why>"
}

// [pgbouncer] keys with another name (or place) in pgsplice.
const RENAMED: Record<string, string> = {
  listen_addr: 'listen.host',
  listen_port: 'listen.port',
  unix_socket_dir: 'listen.unix_socket_dir',
  unix_socket_mode: 'listen.unix_socket_mode',
};

// [pgbouncer] keys with nothing to translate to, and why.
const NO_EQUIVALENT: Record<string, string> = {
  user: 'run pgsplice as that user (systemd User=, the container USER)',
  ignore_startup_parameters: 'not needed: pgsplice tracks every startup parameter per client',
  stats_period: 'SHOW STATS averages are computed over pgsplice\'s own period',
  log_connections: 'connections are logged at log_level info',
  log_disconnections: 'disconnections are logged at log_level info',
  log_pooler_errors: 'errors sent to clients are logged at log_level info',
  log_stats: 'use SHOW STATS or the Prometheus metrics',
  dns_max_ttl: 'server host names are resolved at each connect',
  dns_nxdomain_ttl: 'server host names are resolved at each connect',
  dns_zone_check_period: 'server host names are resolved at each connect',
  resolv_conf: 'the system resolver is used',
  pkt_buf: 'buffers are sized by Node and the kernel',
  sbuf_loopcnt: 'no equivalent',
  max_packet_size: 'pgsplice applies PostgreSQL\'s own limits before login',
  listen_backlog: 'the backlog is 4096',
  tcp_defer_accept: 'not supported',
  tcp_socket_buffer: 'not supported',
  disable_pqexec: 'not supported',
  application_name_add_host: 'not supported',
  conffile: 'no equivalent',
  service_name: 'Windows only',
  job_name: 'Windows only',
  autodb_idle_timeout: 'not supported',
  suspend_timeout: 'no online restart with -R (not supported)',
  server_round_robin: 'not supported',
  server_fast_close: 'not supported',
  query_wait_notify: 'not supported',
  auth_ident_file: 'ident authentication is not supported',
  client_tls13_ciphers: 'not supported (TLS 1.3 suites are OpenSSL\'s defaults)',
  server_tls13_ciphers: 'not supported (TLS 1.3 suites are OpenSSL\'s defaults)',
  client_tls_ecdhcurve: 'not supported',
  client_tls_dheparams: 'not supported',
};

const DB_KEYS: Record<string, string> = {
  host: 'host', port: 'port', dbname: 'dbname', user: 'user', password: 'password', pool_size: 'pool_size',
  min_pool_size: 'min_pool_size', reserve_pool: 'reserve_pool_size', reserve_pool_size: 'reserve_pool_size',
  pool_mode: 'pool_mode', max_db_connections: 'max_db_connections', client_encoding: 'client_encoding',
  datestyle: 'datestyle', timezone: 'timezone', application_name: 'application_name', auth_user: 'auth_user', auth_dbname: 'auth_dbname',
  max_db_client_connections: 'max_db_client_connections',
};
const DB_INTS = new Set(['port', 'pool_size', 'min_pool_size', 'reserve_pool_size', 'max_db_connections', 'max_db_client_connections']);
const USER_KEYS: Record<string, string> = {
  pool_mode: 'pool_mode', pool_size: 'pool_size', max_user_connections: 'max_user_connections', max_user_client_connections: 'max_user_client_connections',
};
const USER_INTS = new Set(['pool_size', 'max_user_connections', 'max_user_client_connections']);
const AUTH_TYPES = new Set(['scram-sha-256', 'md5', 'plain', 'trust', 'hba']);

interface IniLine {
  section: string;
  key: string;
  value: string;
  line: number;
}

function parseIni(text: string): { entries: IniLine[]; other: string[] } {
  const entries: IniLine[] = [];
  const other: string[] = [];
  let section = '';
  text.split(/\r?\n/).forEach((raw, i) => {
    const s = raw.trim();
    if (s === '' || s.startsWith(';') || s.startsWith('#')) return;
    const sec = /^\[([^\]]+)\]$/.exec(s);
    if (sec) {
      section = sec[1].trim().toLowerCase();
      return;
    }
    if (s.startsWith('%')) {
      other.push(`line ${i + 1}: ${s}: directives (%include) are not followed; import the included file and merge by hand`);
      return;
    }
    const eq = s.indexOf('=');
    if (eq < 0) {
      other.push(`line ${i + 1}: ${s}: not a key = value line`);
      return;
    }
    entries.push({ section, key: s.slice(0, eq).trim(), value: s.slice(eq + 1).trim(), line: i + 1 });
  });
  return { entries, other };
}

// libpq-style "k=v k='v w'" as in [databases] and [users].
function parseConnString(s: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const re = /\s*([A-Za-z_][\w]*)\s*=\s*(?:'((?:[^'\\]|\\.|'')*)'|(\S*))/gy;
  let m: RegExpExecArray | null;
  let last = 0;
  while ((m = re.exec(s))) {
    out.push([m[1], m[2] !== undefined ? m[2].replace(/''/g, "'").replace(/\\(.)/g, '$1') : m[3]]);
    last = re.lastIndex;
  }
  if (s.slice(last).trim() !== '') throw new Error(`cannot parse "${s.slice(last).trim()}"`);
  return out;
}

function typed(kind: string | undefined, v: string): unknown {
  if (kind === 'int' || kind === 'duration') return Number(v);
  if (kind === 'bool') return ['1', 'yes', 'on', 'true'].includes(v.toLowerCase());
  if (kind === 'list') return v.split(',').map((x) => x.trim()).filter(Boolean);
  return v;
}

export function importPgbouncer(iniFile: string, userlistFile?: string): ImportResult {
  const { entries, other } = parseIni(fs.readFileSync(iniFile, 'utf8'));
  const untranslated: string[] = [...other];
  const skip = (e: IniLine, why: string) => untranslated.push(`[${e.section}] ${e.key} = ${e.value} (line ${e.line}): ${why}`);
  const top: Record<string, unknown> = {};
  const listen: Record<string, unknown> = {};
  const databases: Record<string, Record<string, unknown>> = {};
  const users: Record<string, Record<string, unknown>> = {};
  const iniDir = path.dirname(path.resolve(iniFile));

  for (const e of entries) {
    if (e.section === 'databases') {
      const db: Record<string, unknown> = {};
      try {
        for (const [k, v] of parseConnString(e.value)) {
          const to = DB_KEYS[k];
          if (!to) skip({ ...e, key: `${e.key}.${k}`, value: v }, 'no per-database equivalent');
          else if (k === 'host' && v.includes(',')) skip({ ...e, key: `${e.key}.host`, value: v }, 'several hosts (load balancing) are not supported; the first is used');
          if (to) db[to] = DB_INTS.has(to) ? Number(v) : k === 'host' ? v.split(',')[0] : v;
        }
      } catch (err) {
        skip(e, (err as Error).message);
        continue;
      }
      databases[e.key] = db;
    } else if (e.section === 'users') {
      const u: Record<string, unknown> = {};
      try {
        for (const [k, v] of parseConnString(e.value)) {
          const to = USER_KEYS[k];
          if (!to) skip({ ...e, key: `${e.key}.${k}`, value: v }, 'no per-user equivalent');
          else u[to] = USER_INTS.has(to) ? Number(v) : v;
        }
      } catch (err) {
        skip(e, (err as Error).message);
        continue;
      }
      users[e.key] = u;
    } else if (e.section === 'pgbouncer') {
      const k = e.key;
      if (k in RENAMED) {
        const sub = RENAMED[k].split('.')[1];
        if (k === 'unix_socket_dir' && e.value === '') continue; // PgBouncer: '' = no unix socket
        listen[sub] = k === 'listen_port' ? Number(e.value) : e.value;
      } else if (k === 'auth_type' && !AUTH_TYPES.has(e.value)) {
        skip(e, `auth_type ${e.value} is not supported (scram-sha-256, md5, plain, trust, hba are)`);
      } else if (k === 'auth_file') {
        if (!userlistFile) top.auth_file = path.resolve(iniDir, e.value);
      } else if (k === 'verbose') {
        if (Number(e.value) > 0) top.log_level = 'debug';
      } else if (k in NO_EQUIVALENT) {
        skip(e, NO_EQUIVALENT[k]);
      } else if (['logfile', 'pidfile', 'auth_hba_file', 'client_tls_key_file', 'client_tls_cert_file', 'client_tls_ca_file', 'server_tls_key_file', 'server_tls_cert_file', 'server_tls_ca_file'].includes(k)) {
        if (e.value !== '') top[k] = path.resolve(iniDir, e.value);
      } else if (settingKind(k) !== undefined) {
        top[k] = typed(settingKind(k), e.value);
      } else {
        skip(e, 'unknown to pgsplice');
      }
    } else {
      skip(e, e.section === 'peers' ? '[peers] is not supported by this version' : `section [${e.section}] is not known`);
    }
  }

  if (userlistFile) {
    const scram = (top.auth_type ?? 'scram-sha-256') === 'scram-sha-256';
    for (const u of parseUserlist(fs.readFileSync(userlistFile, 'utf8'))) {
      // PgBouncer cannot log such a user in either (an md5 hash cannot answer SCRAM).
      if (scram && /^md5[0-9a-f]{32}$/.test(u.password)) {
        untranslated.push(`userlist ${u.name} (line ${u.line}): an md5 secret cannot authenticate with auth_type scram-sha-256; give its plain password or SCRAM verifier`);
        continue;
      }
      users[u.name] = { password: u.password, ...(users[u.name] ?? {}) };
    }
  }
  const doc: Record<string, unknown> = {};
  if (Object.keys(listen).length) doc.listen = { host: '127.0.0.1', port: 6432, ...listen };
  doc.databases = databases;
  if (Object.keys(users).length) doc.users = users;
  Object.assign(doc, top);
  const header = [
    `# Imported from ${path.resolve(iniFile)}${userlistFile ? ` and ${path.resolve(userlistFile)}` : ''} by pgsplice import.`,
    ...(untranslated.length ? ['# Not translated:', ...untranslated.map((u) => `#   ${u}`)] : ['# Everything was translated.']),
  ];
  return { yaml: `${header.join('\n')}\n${YAML.stringify(doc)}`, untranslated };
}

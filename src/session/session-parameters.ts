// Session settings a client carries from server to server in transaction mode.
// Parameters the server reports (GUC_REPORT) are compared with what each server
// last reported; other startup settings (extra_float_digits, options -c ...) are
// compared with what the proxy last applied on that server.
import type { ServerConnection } from '../pooling/server-connection';

// Reported parameters tracked for every client, with PostgreSQL's spelling.
export const TRACKED_PARAMETERS = [
  'client_encoding', 'DateStyle', 'TimeZone', 'IntervalStyle', 'standard_conforming_strings', 'application_name',
];
const CANONICAL = new Map(TRACKED_PARAMETERS.map((p) => [p.toLowerCase(), p]));

// track_extra_parameters: more parameters the server reports (GUC_REPORT), carried like
// the built-in ones. Added for good (a reload can add, not remove: clients hold them).
export function trackExtraParameters(names: string[]): void {
  for (const n of names) {
    if (CANONICAL.has(n.toLowerCase())) continue;
    TRACKED_PARAMETERS.push(n);
    CANONICAL.set(n.toLowerCase(), n);
  }
}

// Startup keys that are about the connection, not settings.
const CONNECTION_KEYS = new Set(['user', 'database', 'replication', 'options']);

export const canonicalName = (name: string): string => CANONICAL.get(name.toLowerCase()) ?? name.toLowerCase();
export const isReported = (name: string): boolean => CANONICAL.has(name.toLowerCase());

// Settings requested in a StartupMessage: plain keys plus "-c k=v" / "--k=v" in options.
export function startupSettings(startup: Map<string, string>): Map<string, string> {
  const out = new Map<string, string>();
  for (const [k, v] of startup) {
    if (CONNECTION_KEYS.has(k) || k.startsWith('_pq_.')) continue;
    out.set(canonicalName(k), v);
  }
  const options = startup.get('options');
  if (options) {
    const words = options.match(/(?:\\.|\S)+/g) ?? [];
    for (let i = 0; i < words.length; i++) {
      let w = words[i].replace(/\\(.)/g, '$1');
      if (w === '-c' && i + 1 < words.length) w = '--' + words[++i].replace(/\\(.)/g, '$1');
      else if (w.startsWith('-c')) w = '--' + w.slice(2);
      const m = /^--([^=]+)=(.*)$/.exec(w);
      if (m) out.set(canonicalName(m[1].replace(/-/g, '_')), m[2]);
    }
  }
  return out;
}

const quoteLiteral = (v: string): string => `'${v.replace(/'/g, "''")}'`;
const quoteIdent = (n: string): string => (/^[a-z_][a-z0-9_.]*$/i.test(n) ? n : `"${n.replace(/"/g, '""')}"`);

// Startup settings that do not choose a pool: they are SET on the server when they differ
// (clients of one application rarely agree on them, and nobody RESETs them).
const NOT_POOL_KEYED = new Set(['application_name', 'client_encoding']);

// The startup settings a pool's servers are opened with, so that they are the session
// defaults RESET, RESET ALL and DISCARD ALL return to (pg_settings.source = client).
export function poolStartup(settings: Map<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of [...settings].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
    if (!NOT_POOL_KEYED.has(k.toLowerCase())) out[k] = v;
  }
  return out;
}

// What a server was opened with (its session defaults), by canonical name. Read at every
// attach: made once per target (a server's target never changes).
export function serverStartup(server: ServerConnection): ReadonlyMap<string, string> {
  let out = startupByTarget.get(server.target);
  if (!out) {
    out = new Map<string, string>();
    for (const [k, v] of Object.entries(server.target.startupParams ?? {})) out.set(canonicalName(k), v);
    startupByTarget.set(server.target, out);
  }
  return out;
}
const startupByTarget = new WeakMap<object, Map<string, string>>();

// The settings a server has now: the tracked reported ones, its startup settings and
// what the proxy SET on it (the kernel path pairs clients and servers by these).
// Settings as one string, the same for the same settings in any order: the kernel path
// keeps one pool (idle stack) per distinct string, so a kernel-bound pair always agrees.
export function settingsSignature(settings: ReadonlyMap<string, string>): string {
  return JSON.stringify([...settings.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)));
}

export function serverSettings(server: ServerConnection): Map<string, string> {
  const m = new Map<string, string>();
  for (const k of TRACKED_PARAMETERS) {
    const v = server.params.get(k);
    if (v !== undefined) m.set(k, v);
  }
  for (const [k, v] of serverStartup(server)) if (!isReported(k)) m.set(k, v);
  for (const [k, v] of server.applied) m.set(k, v);
  return m;
}

// Returns a server to its session defaults. Role-dependent state goes first, so that the
// rest runs as the session user and cannot fail for privilege reasons; RESET ALL needs no
// privilege. Each is its own statement.
export const RESET_SESSION = ['RESET SESSION AUTHORIZATION', 'RESET ROLE', 'RESET ALL'];

// Whether the server carries settings a client must not inherit (a previous client's).
export function needsReset(client: ReadonlyMap<string, string>, server: ServerConnection): boolean {
  for (const k of server.applied.keys()) if (!client.has(k)) return true;
  return false;
}

// Replay order: who the session is first (SET SESSION AUTHORIZATION resets the role and
// decides what may be SET), then plain settings, then the role last (a superuser-only
// setting must be SET before SET ROLE drops the privilege).
function replayRank(k: string): number {
  return k === 'session_authorization' ? 0 : k === 'role' ? 2 : 1;
}

// The SQL that makes server match the client's settings, or null when it already does.
// Run as one Query: an implicit transaction, so a failure changes nothing on the server.
export function settingsSql(client: ReadonlyMap<string, string>, server: ServerConnection, only?: Set<string>): string | null {
  let stmts: [number, string][] | null = null; // (made only when something differs: this runs at every attach)
  const defaults = serverStartup(server);
  for (const k of client.keys()) {
    if (only && !only.has(k)) continue;
    const v = client.get(k)!;
    const current = isReported(k) ? server.params.get(k) : (server.applied.get(k) ?? defaults.get(k));
    if (current === v) continue;
    if (isDefaultIdentity(k, v, server) && !server.applied.has(k)) continue;
    // set_config takes the value as the server shows it (a list such as search_path included)
    (stmts ??= []).push([replayRank(k), isReported(k) ? `SET ${quoteIdent(k)} = ${quoteLiteral(v)}` : `SELECT pg_catalog.set_config(${quoteLiteral(k)}, ${quoteLiteral(v)}, false)`]);
  }
  if (!stmts) return null;
  stmts.sort((a, b) => a[0] - b[0]);
  return stmts.map((s) => s[1]).join('; ');
}

// Records on the server what settingsSql applied (reported ones arrive as ParameterStatus);
// a value equal to the server's startup setting is its default, not applied.
export function recordApplied(client: ReadonlyMap<string, string>, server: ServerConnection): void {
  server.applied.clear();
  const defaults = serverStartup(server);
  for (const [k, v] of client) if (!isReported(k) && defaults.get(k) !== v && !isDefaultIdentity(k, v, server)) server.applied.set(k, v);
}

// A role or session authorization read back as what a fresh session has: nothing to replay.
function isDefaultIdentity(k: string, v: string, server: ServerConnection): boolean {
  return (k === 'role' && v === 'none') || (k === 'session_authorization' && v === server.target.user);
}

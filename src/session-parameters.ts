// Session settings a client carries from server to server in transaction mode.
// Parameters the server reports (GUC_REPORT) are compared with what each server
// last reported; other startup settings (extra_float_digits, options -c ...) are
// compared with what the proxy last applied on that server.
import type { ServerConnection } from './server-connection';

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

// The SQL that makes server match the client's settings, or null when it already does.
export function settingsSql(client: Map<string, string>, server: ServerConnection): string | null {
  const stmts: string[] = [];
  for (const [k, v] of client) {
    const current = isReported(k) ? server.params.get(k) : server.applied.get(k);
    if (current === v) continue;
    // set_config takes the value as the server shows it (a list such as search_path included)
    stmts.push(isReported(k) ? `SET ${quoteIdent(k)} = ${quoteLiteral(v)}` : `SELECT pg_catalog.set_config(${quoteLiteral(k)}, ${quoteLiteral(v)}, false)`);
  }
  for (const k of server.applied.keys()) {
    if (!client.has(k)) stmts.push(`RESET ${quoteIdent(k)}`);
  }
  return stmts.length ? stmts.join('; ') : null;
}

// Records on the server what settingsSql applied (reported ones arrive as ParameterStatus).
export function recordApplied(client: Map<string, string>, server: ServerConnection): void {
  server.applied.clear();
  for (const [k, v] of client) if (!isReported(k)) server.applied.set(k, v);
}

// Host-based authentication in pg_hba.conf terms: which authentication method a client
// gets, decided by connection type, database, user and address. The first rule that
// matches wins; no match (or a "reject" rule) refuses the client with 28000, worded as
// PostgreSQL words it.
//
// Rules come from a pg_hba.conf-format file (auth_hba_file, as in PgBouncer) or from
// the YAML list `hba:` (pgsplice's own); both end up as HbaRule. Supported:
//   type      local | host | hostssl | hostnossl
//   database  all | sameuser | replication | name[,name...] | "quoted" | @file
//   user      all | name[,name...] | "quoted" | @file
//   address   all | samehost | samenet | CIDR (IPv4/IPv6) | address + netmask
//   method    trust | reject | password | md5 | scram-sha-256
// Refused at load, with the file and line: +group and samerole/samegroup (role membership
// lives in PostgreSQL, not here), host names, other methods, and options after the method.

import { readFileSync } from 'fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

export type HbaConnType = 'local' | 'host' | 'hostssl' | 'hostnossl';
export type HbaMethod = 'trust' | 'reject' | 'password' | 'md5' | 'scram-sha-256';

export const HBA_CONN_TYPES: readonly HbaConnType[] = ['local', 'host', 'hostssl', 'hostnossl'];
export const HBA_METHODS: readonly HbaMethod[] = ['trust', 'reject', 'password', 'md5', 'scram-sha-256'];

// One name of a database or user column; keywords count only unquoted.
interface NameToken {
  text: string;
  quoted: boolean;
}

type AddressMatch =
  | { kind: 'all' }
  | { kind: 'samehost' }
  | { kind: 'samenet' }
  | { kind: 'cidr'; bytes: Buffer; prefix: number }; // bytes: 4 (IPv4) or 16 (IPv6)

export interface HbaRule {
  type: HbaConnType;
  databases: NameToken[];
  users: NameToken[];
  address: AddressMatch | null; // null for local
  method: HbaMethod;
  // Where the rule was written, for logs.
  file: string;
  line: number;
}

// What is known about a client when its method is chosen.
export interface HbaClient {
  local: boolean; // came in over the unix socket
  ssl: boolean; // TLS (always false until the proxy speaks TLS)
  address?: string; // remote address as Node reports it (may be IPv4-mapped IPv6)
  database: string;
  user: string;
}

/** A bad rule: message plus the file and line it came from. */
export class HbaError extends Error {
  constructor(
    message: string,
    readonly file: string,
    readonly line: number,
  ) {
    super(message);
    this.name = 'HbaError';
  }
}

// ---------------------------------------------------------------------------------
// Tokens

/**
 * Splits one line into fields; a field is a comma-separated list of tokens ("a,b" and
 * "a, b" are one field). Double quotes keep spaces, commas and '#' and mark a token as
 * quoted ("" inside quotes is a literal quote). '#' outside quotes starts a comment.
 */
export function tokenizeLine(text: string): NameToken[][] {
  const fields: NameToken[][] = [];
  let i = 0;
  const n = text.length;
  const isSpace = (c: string) => c === ' ' || c === '\t' || c === '\r' || c === '\n';
  const skipSpace = () => {
    while (i < n && isSpace(text[i]!)) i++;
  };
  for (;;) {
    skipSpace();
    if (i >= n || text[i] === '#') return fields;
    const field: NameToken[] = [];
    for (;;) {
      let tok = '';
      let quoted = false;
      let inQuote = false;
      while (i < n) {
        const c = text[i]!;
        if (inQuote) {
          if (c === '"') {
            if (text[i + 1] === '"') {
              tok += '"';
              i += 2;
              continue;
            }
            inQuote = false;
          } else tok += c;
          i++;
          continue;
        }
        if (isSpace(c) || c === ',' || c === '#') break;
        if (c === '"') {
          inQuote = true;
          quoted = true;
        } else tok += c;
        i++;
      }
      if (inQuote) throw new Error('unterminated quoted string');
      field.push({ text: tok, quoted });
      if (text[i] === ',') {
        i++;
        skipSpace();
        if (i >= n || text[i] === '#') throw new Error('a list ends with a comma');
        continue;
      }
      break;
    }
    fields.push(field);
  }
}

// Expands @file tokens (names read from a file, relative to the including file's directory).
function expandNames(tokens: NameToken[], dir: string, depth = 0): NameToken[] {
  const out: NameToken[] = [];
  for (const t of tokens) {
    if (t.quoted || !t.text.startsWith('@')) {
      out.push(t);
      continue;
    }
    if (depth > 10) throw new Error('@file inclusions nested too deeply');
    const file = path.resolve(dir, t.text.slice(1));
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      throw new Error(`cannot read ${t.text}: ${(e as Error).message}`);
    }
    const names: NameToken[] = [];
    for (const line of text.split('\n')) for (const f of tokenizeLine(line)) names.push(...f);
    out.push(...expandNames(names, path.dirname(file), depth + 1));
  }
  return out;
}

function checkNames(tokens: NameToken[], column: 'database' | 'user'): void {
  for (const t of tokens) {
    if (t.quoted) continue;
    if (t.text === '') throw new Error(`empty ${column} name`);
    if (t.text.startsWith('+')) {
      throw new Error(`group membership ("${t.text}") is not supported: pgsplice cannot see role membership; list the users instead`);
    }
    if (column === 'database' && (t.text === 'samerole' || t.text === 'samegroup')) {
      throw new Error(`"${t.text}" is not supported: pgsplice cannot see role membership`);
    }
  }
}

// ---------------------------------------------------------------------------------
// Addresses

/** The 4 or 16 bytes of an IP address, with IPv4-mapped IPv6 turned into IPv4; undefined if not an IP. */
export function ipBytes(addr: string): Buffer | undefined {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(addr);
  if (mapped) addr = mapped[1]!;
  if (net.isIPv4(addr)) return Buffer.from(addr.split('.').map(Number));
  const zone = addr.indexOf('%');
  if (zone >= 0) addr = addr.slice(0, zone);
  if (!net.isIPv6(addr)) return undefined;
  // Expand "::" and a trailing dotted IPv4 part into eight 16-bit groups.
  let groups: string[];
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(addr);
  if (v4) {
    const b = v4[1]!.split('.').map(Number);
    addr = addr.slice(0, addr.length - v4[1]!.length) + `${((b[0]! << 8) | b[1]!).toString(16)}:${((b[2]! << 8) | b[3]!).toString(16)}`;
  }
  const halves = addr.split('::');
  if (halves.length === 2) {
    const head = halves[0] ? halves[0].split(':') : [];
    const tail = halves[1] ? halves[1].split(':') : [];
    groups = [...head, ...Array(8 - head.length - tail.length).fill('0'), ...tail];
  } else groups = addr.split(':');
  const out = Buffer.alloc(16);
  groups.forEach((g, k) => out.writeUInt16BE(parseInt(g, 16), k * 2));
  const v4mapped = out.subarray(0, 10).every((x) => x === 0) && out[10] === 0xff && out[11] === 0xff;
  return v4mapped ? Buffer.from(out.subarray(12)) : out;
}

function prefixMatches(a: Buffer, b: Buffer, prefix: number): boolean {
  if (a.length !== b.length) return false;
  const full = prefix >> 3;
  for (let k = 0; k < full; k++) if (a[k] !== b[k]) return false;
  const rest = prefix & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (a[full]! & mask) === (b[full]! & mask);
}

// Prefix length of a netmask such as 255.255.0.0, or undefined if it is not contiguous.
function maskPrefix(mask: Buffer): number | undefined {
  let bits = 0;
  let ended = false;
  for (const byte of mask) {
    for (let k = 7; k >= 0; k--) {
      const set = (byte >> k) & 1;
      if (set && ended) return undefined;
      if (set) bits++;
      else ended = true;
    }
  }
  return bits;
}

// Consumes the address (and a netmask field when the address has no /prefix).
function parseAddress(fields: NameToken[][], at: number): { address: AddressMatch; used: number } {
  const f = fields[at];
  if (!f) throw new Error('missing address');
  if (f.length !== 1) throw new Error('an address cannot be a list');
  const text = f[0]!.text;
  if (!f[0]!.quoted && (text === 'all' || text === 'samehost' || text === 'samenet')) {
    return { address: { kind: text }, used: 1 };
  }
  const slash = text.indexOf('/');
  const ip = slash >= 0 ? text.slice(0, slash) : text;
  const bytes = ipBytes(ip);
  if (!bytes) {
    throw new Error(`invalid IP address "${ip}" (host names are not supported; give an address in CIDR form, e.g. 10.0.0.0/8)`);
  }
  const maxBits = bytes.length * 8;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^\d+$/.test(p) || Number(p) > maxBits) throw new Error(`invalid CIDR mask in address "${text}"`);
    return { address: { kind: 'cidr', bytes, prefix: Number(p) }, used: 1 };
  }
  const maskField = fields[at + 1];
  const maskBytes = maskField?.length === 1 ? ipBytes(maskField[0]!.text) : undefined;
  if (!maskBytes) throw new Error(`address "${text}" needs a CIDR mask (/n) or a netmask column`);
  if (maskBytes.length !== bytes.length) throw new Error('IP address and mask do not match in family');
  const prefix = maskPrefix(maskBytes);
  if (prefix === undefined) throw new Error(`invalid netmask "${maskField![0]!.text}"`);
  return { address: { kind: 'cidr', bytes, prefix }, used: 2 };
}

function localAddresses(): Array<{ bytes: Buffer; prefix: number }> {
  const out: Array<{ bytes: Buffer; prefix: number }> = [];
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) {
      const bytes = ipBytes(a.address);
      const prefix = a.cidr ? Number(a.cidr.split('/')[1]) : bytes ? bytes.length * 8 : 0;
      if (bytes) out.push({ bytes, prefix });
    }
  }
  return out;
}

function addressMatches(m: AddressMatch, addr: string | undefined): boolean {
  if (m.kind === 'all') return true;
  const bytes = addr === undefined ? undefined : ipBytes(addr);
  if (!bytes) return false;
  switch (m.kind) {
    case 'cidr':
      return prefixMatches(bytes, m.bytes, m.prefix);
    case 'samehost':
      return localAddresses().some((l) => l.bytes.equals(bytes));
    case 'samenet':
      return localAddresses().some((l) => prefixMatches(bytes, l.bytes, l.prefix));
  }
}

// ---------------------------------------------------------------------------------
// Rules

function oneWord(fields: NameToken[][], at: number, what: string): string {
  const f = fields[at];
  if (!f) throw new Error(`missing ${what}`);
  if (f.length !== 1) throw new Error(`the ${what} cannot be a list`);
  return f[0]!.text;
}

/** One rule from its fields (the tokens of a pg_hba.conf line). dir resolves @file names. */
export function ruleFromFields(fields: NameToken[][], dir: string, file: string, line: number): HbaRule {
  try {
    const type = oneWord(fields, 0, 'connection type');
    if (!(HBA_CONN_TYPES as readonly string[]).includes(type)) {
      const hint = type === 'hostgssenc' || type === 'hostnogssenc' ? ' (GSSAPI encryption is not supported)' : '';
      throw new Error(`invalid connection type "${type}"${hint}; allowed: ${HBA_CONN_TYPES.join(', ')}`);
    }
    if (!fields[1]) throw new Error('missing database');
    if (!fields[2]) throw new Error('missing user');
    const databases = expandNames(fields[1], dir);
    const users = expandNames(fields[2], dir);
    checkNames(databases, 'database');
    checkNames(users, 'user');
    let at = 3;
    let address: AddressMatch | null = null;
    if (type !== 'local') {
      const a = parseAddress(fields, at);
      address = a.address;
      at += a.used;
    }
    const method = oneWord(fields, at, 'authentication method');
    if (!(HBA_METHODS as readonly string[]).includes(method)) {
      throw new Error(`authentication method "${method}" is not supported; allowed: ${HBA_METHODS.join(', ')}`);
    }
    if (fields.length > at + 1) {
      const extra = fields.slice(at + 1).map((f) => f.map((x) => x.text).join(',')).join(' ');
      throw new Error(`options after the method are not supported ("${extra}")`);
    }
    return { type: type as HbaConnType, databases, users, address, method: method as HbaMethod, file, line };
  } catch (e) {
    if (e instanceof HbaError) throw e;
    throw new HbaError((e as Error).message, file, line);
  }
}

// The YAML form of a rule: each column a string (as in pg_hba.conf) or a list of names.
export interface HbaEntry {
  type: string;
  database: string | string[];
  user: string | string[];
  address?: string;
  method: string;
}

/** One rule from the YAML list `hba:`; the columns mean what they mean in pg_hba.conf. */
export function ruleFromEntry(e: HbaEntry, dir: string, file: string, line: number): HbaRule {
  const column = (v: string | string[], what: string, multi = false): NameToken[][] => {
    try {
      const parts = Array.isArray(v) ? v.map((x) => tokenizeLine(x)) : [tokenizeLine(v)];
      for (const p of parts) {
        if (p.length === 0) throw new Error(`empty ${what}`);
        if (p.length > 1 && !multi) throw new Error(`${what} "${String(v)}" is more than one value (use a list or commas)`);
      }
      return Array.isArray(v) ? [parts.flatMap((p) => p[0]!)] : parts[0]!;
    } catch (err) {
      throw new HbaError((err as Error).message, file, line);
    }
  };
  const fields = [...column(e.type, 'type'), ...column(e.database, 'database'), ...column(e.user, 'user')];
  if (e.address !== undefined) {
    if (e.type === 'local') throw new HbaError('a "local" rule has no address (it matches unix-socket clients)', file, line);
    fields.push(...column(e.address, 'address', true));
  } else if (e.type !== 'local') throw new HbaError(`a "${e.type}" rule needs an address`, file, line);
  fields.push(...column(e.method, 'method'));
  return ruleFromFields(fields, dir, file, line);
}

/** Parses pg_hba.conf text; file names the source in errors and resolves @file. */
export function parseHbaText(text: string, file: string): HbaRule[] {
  const rules: HbaRule[] = [];
  const dir = path.dirname(file);
  text.split('\n').forEach((lineText, k) => {
    let fields: NameToken[][];
    try {
      fields = tokenizeLine(lineText);
    } catch (e) {
      throw new HbaError((e as Error).message, file, k + 1);
    }
    if (fields.length) rules.push(ruleFromFields(fields, dir, file, k + 1));
  });
  return rules;
}

/** Reads and parses a pg_hba.conf-format file. Throws HbaError (line 0 if it cannot be read). */
export function readHbaFile(file: string): HbaRule[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new HbaError(`cannot read the HBA file: ${(e as Error).message}`, file, 0);
  }
  return parseHbaText(text, file);
}

function nameMatches(tokens: NameToken[], name: string, client: HbaClient, column: 'database' | 'user'): boolean {
  for (const t of tokens) {
    if (!t.quoted) {
      if (t.text === 'all') return true;
      if (column === 'database' && t.text === 'sameuser') {
        if (client.database === client.user) return true;
        continue;
      }
      if (column === 'database' && t.text === 'replication') continue; // replication connections are refused earlier
    }
    if (t.text === name) return true;
  }
  return false;
}

/** The first rule that applies to the client, or undefined. */
export function matchHba(rules: readonly HbaRule[], client: HbaClient): HbaRule | undefined {
  for (const r of rules) {
    if (r.type === 'local') {
      if (!client.local) continue;
    } else {
      if (client.local) continue;
      if (r.type === 'hostssl' && !client.ssl) continue;
      if (r.type === 'hostnossl' && client.ssl) continue;
      if (!addressMatches(r.address!, client.address)) continue;
    }
    if (!nameMatches(r.databases, client.database, client, 'database')) continue;
    if (!nameMatches(r.users, client.user, client, 'user')) continue;
    return r;
  }
  return undefined;
}

function hostLabel(client: HbaClient): string {
  if (client.local) return '[local]';
  const a = client.address ?? '';
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a);
  return m ? m[1]! : a;
}

/**
 * The method the client gets, or the FATAL 28000 message that refuses it (no rule, or a
 * reject rule), worded as PostgreSQL words it.
 */
export function hbaDecision(rules: readonly HbaRule[], client: HbaClient): { method: Exclude<HbaMethod, 'reject'>; rule: HbaRule } | { refusal: string } {
  const rule = matchHba(rules, client);
  const who = `host "${hostLabel(client)}", user "${client.user}", database "${client.database}", ${client.ssl ? 'SSL encryption' : 'no encryption'}`;
  if (!rule) return { refusal: `no pg_hba.conf entry for ${who}` };
  if (rule.method === 'reject') return { refusal: `pg_hba.conf rejects connection for ${who}` };
  return { method: rule.method, rule };
}

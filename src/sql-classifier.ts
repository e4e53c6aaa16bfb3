// Finds the statements in a SQL string that leave state in the server session, so
// that transaction pooling can track, pin or reject them (docs/transaction-mode.md).
// A lexer, not a parser: it knows strings, quoted identifiers, comments and dollar
// quotes, splits statements at top-level semicolons and looks at their leading words.
// It cannot see what a function or a DO block does inside; the docs say so.

import { STATE_COMMANDS, STATE_WORDS } from './session-words.generated';

export type SessionEffect =
  | { kind: 'parameter'; names: string[] } // SET / RESET / set_config: read back at the transaction's end
  | { kind: 'reset_all' } // RESET ALL
  | { kind: 'discard_all' }
  | { kind: 'discard_temp' }
  | { kind: 'listen'; channel: string }
  | { kind: 'unlisten'; channel: string | null } // null: UNLISTEN *
  | { kind: 'advisory_lock'; delta: number } // +1 per lock taken, -1 per unlock
  | { kind: 'advisory_unlock_all' }
  | { kind: 'temp_table' }
  | { kind: 'prepare'; name: string }
  | { kind: 'deallocate'; name: string | null } // null: ALL
  | { kind: 'hold_cursor'; name: string }
  | { kind: 'close_cursor'; name: string | null } // null: ALL
  | { kind: 'other'; what: string }; // state of an unknown extent (LOAD, set_config with a computed name)

interface Token {
  t: 'word' | 'qident' | 'string' | 'punct' | 'other';
  v: string; // words lowercased; quoted identifiers and strings as written, unquoted
}

// Tokens per top-level statement. Returns null for text the lexer cannot follow
// (an unterminated string or comment): the caller treats that as unknown state.
export function splitStatements(sql: string): Token[][] | null {
  const out: Token[][] = [];
  let cur: Token[] = [];
  const n = sql.length;
  let i = 0;
  while (i < n) {
    const c = sql[i];
    if (c === ' ' || c === '\t' || c === '\n' || c === '\r' || c === '\f') {
      i++;
    } else if (c === '-' && sql[i + 1] === '-') {
      const e = sql.indexOf('\n', i);
      i = e < 0 ? n : e + 1;
    } else if (c === '/' && sql[i + 1] === '*') {
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (sql[i] === '/' && sql[i + 1] === '*') { depth++; i += 2; } else if (sql[i] === '*' && sql[i + 1] === '/') { depth--; i += 2; } else i++;
      }
      if (depth > 0) return null;
    } else if (c === "'" || ((c === 'e' || c === 'E') && sql[i + 1] === "'")) {
      const escapes = c !== "'";
      i += escapes ? 2 : 1;
      let v = '';
      for (;;) {
        if (i >= n) return null;
        const d = sql[i];
        if (escapes && d === '\\') { v += sql[i + 1] ?? ''; i += 2; continue; }
        if (d === "'") {
          if (sql[i + 1] === "'") { v += "'"; i += 2; continue; }
          i++;
          break;
        }
        v += d;
        i++;
      }
      cur.push({ t: 'string', v });
    } else if (c === '"') {
      let v = '';
      i++;
      for (;;) {
        if (i >= n) return null;
        if (sql[i] === '"') {
          if (sql[i + 1] === '"') { v += '"'; i += 2; continue; }
          i++;
          break;
        }
        v += sql[i++];
      }
      cur.push({ t: 'qident', v });
    } else if (c === '$' && /[A-Za-z_$]/.test(sql[i + 1] ?? '')) {
      const m = /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/.exec(sql.slice(i));
      if (!m) { cur.push({ t: 'other', v: c }); i++; continue; }
      const end = sql.indexOf(m[0], i + m[0].length);
      if (end < 0) return null;
      cur.push({ t: 'string', v: sql.slice(i + m[0].length, end) });
      i = end + m[0].length;
    } else if (/[A-Za-z_\u0080-\uffff]/.test(c)) {
      let j = i + 1;
      while (j < n && /[A-Za-z0-9_$\u0080-\uffff]/.test(sql[j])) j++;
      cur.push({ t: 'word', v: sql.slice(i, j).toLowerCase() });
      i = j;
    } else if (c === ';') {
      if (cur.length) out.push(cur);
      cur = [];
      i++;
    } else if ('(),.='.includes(c)) {
      cur.push({ t: 'punct', v: c });
      i++;
    } else {
      let j = i + 1;
      while (j < n && /[0-9.]/.test(c) && /[0-9.eE]/.test(sql[j])) j++;
      cur.push({ t: 'other', v: sql.slice(i, j) });
      i = j;
    }
  }
  if (cur.length) out.push(cur);
  return out;
}

const name = (tok: Token | undefined): string | null =>
  tok && (tok.t === 'word' || tok.t === 'qident') ? tok.v : null;

// SET forms whose target is not "SET <parameter>".
const SET_SPECIAL: Record<string, string[]> = {
  time: ['TimeZone'], // SET TIME ZONE
  role: ['role'],
  schema: ['search_path'],
  names: ['client_encoding'],
  xml: ['xmloption'],
};

function parameterNames(toks: Token[], from: number): string[] | 'all' | null {
  const first = toks[from];
  if (!first) return null;
  if (first.t === 'word' && first.v === 'session' && toks[from + 1]?.v === 'authorization') return ['session_authorization'];
  if (first.t === 'word' && first.v === 'session' && toks[from + 1]?.v === 'characteristics') {
    return ['default_transaction_isolation', 'default_transaction_read_only', 'default_transaction_deferrable'];
  }
  if (first.t === 'word' && first.v === 'all') return 'all';
  if (first.t === 'word' && SET_SPECIAL[first.v] && (first.v !== 'time' || toks[from + 1]?.v === 'zone')) return SET_SPECIAL[first.v];
  const n = name(first);
  if (!n) return null;
  // qualified names (plpgsql.extra_warnings) are one parameter
  let full = n;
  for (let k = from + 1; toks[k]?.v === '.' && name(toks[k + 1]); k += 2) full += '.' + name(toks[k + 1]);
  return [full];
}

const ADVISORY_LOCKS = new Set(['pg_advisory_lock', 'pg_advisory_lock_shared', 'pg_try_advisory_lock', 'pg_try_advisory_lock_shared']);
const ADVISORY_UNLOCKS = new Set(['pg_advisory_unlock', 'pg_advisory_unlock_shared']);

// Effects of one statement's tokens.
function classifyStatement(toks: Token[]): SessionEffect[] {
  const out: SessionEffect[] = [];
  const w0 = toks[0].t === 'word' ? toks[0].v : '';
  const w1 = toks[1]?.t === 'word' ? toks[1].v : '';
  switch (w0) {
    case 'set': {
      if (w1 === 'local' || w1 === 'transaction' || w1 === 'constraints') break; // this transaction only
      const names = parameterNames(toks, w1 === 'session' && toks[2]?.v !== 'authorization' && toks[2]?.v !== 'characteristics' ? 2 : 1);
      if (names === 'all' || names === null) out.push({ kind: 'other', what: 'SET' });
      else out.push({ kind: 'parameter', names });
      break;
    }
    case 'reset': {
      const names = parameterNames(toks, 1);
      if (names === 'all') out.push({ kind: 'reset_all' });
      else if (names) out.push({ kind: 'parameter', names });
      else out.push({ kind: 'other', what: 'RESET' });
      break;
    }
    case 'discard':
      if (w1 === 'all') out.push({ kind: 'discard_all' });
      else if (w1 === 'temp' || w1 === 'temporary') out.push({ kind: 'discard_temp' });
      break; // PLANS and SEQUENCES leave nothing another client could see
    case 'listen':
      out.push({ kind: 'listen', channel: name(toks[1]) ?? '' });
      break;
    case 'unlisten':
      out.push({ kind: 'unlisten', channel: toks[1]?.v === '*' || toks[1]?.t === 'other' ? null : name(toks[1]) });
      break;
    case 'prepare':
      if (w1 === 'transaction') break; // two-phase commit: ends the transaction
      out.push({ kind: 'prepare', name: name(toks[1]) ?? '' });
      break;
    case 'deallocate': {
      const t = w1 === 'prepare' ? toks[2] : toks[1];
      out.push({ kind: 'deallocate', name: t?.t === 'word' && t.v === 'all' ? null : name(t) ?? '' });
      break;
    }
    case 'declare': {
      const forAt = toks.findIndex((t) => t.t === 'word' && t.v === 'for');
      const head = forAt < 0 ? toks : toks.slice(0, forAt);
      const hold = head.some((t, k) => t.t === 'word' && t.v === 'hold' && head[k - 1]?.v === 'with');
      if (hold) out.push({ kind: 'hold_cursor', name: name(toks[1]) ?? '' });
      break;
    }
    case 'close':
      out.push({ kind: 'close_cursor', name: w1 === 'all' ? null : name(toks[1]) });
      break;
    case 'load':
      out.push({ kind: 'other', what: 'LOAD' });
      break;
    case 'create': {
      for (let k = 1; k <= 3 && toks[k]?.t === 'word'; k++) {
        if (toks[k].v === 'temp' || toks[k].v === 'temporary') { out.push({ kind: 'temp_table' }); break; }
        if (toks[k].v !== 'global' && toks[k].v !== 'local' && toks[k].v !== 'or' && toks[k].v !== 'replace') break;
      }
      break;
    }
  }
  for (let k = 0; k < toks.length; k++) {
    const t = toks[k];
    if (t.t !== 'word' && t.t !== 'qident') continue;
    // SELECT ... INTO TEMP x
    if (t.v === 'into' && (w0 === 'select' || w0 === 'with') && (toks[k + 1]?.v === 'temp' || toks[k + 1]?.v === 'temporary')) {
      out.push({ kind: 'temp_table' });
    }
    if (toks[k + 1]?.v !== '(') continue; // the rest are function calls
    if (ADVISORY_LOCKS.has(t.v)) out.push({ kind: 'advisory_lock', delta: 1 });
    else if (ADVISORY_UNLOCKS.has(t.v)) out.push({ kind: 'advisory_lock', delta: -1 });
    else if (t.v === 'pg_advisory_unlock_all') out.push({ kind: 'advisory_unlock_all' });
    else if (t.v === 'dblink_connect' || t.v === 'dblink_connect_u') out.push({ kind: 'other', what: 'dblink_connect' });
    else if (t.v === 'set_config') {
      const arg = toks[k + 2];
      // set_config(name, value, is_local): a literal true third argument is this transaction only
      let depth = 0;
      let commas = 0;
      let third: Token | undefined;
      for (let j = k + 2; j < toks.length; j++) {
        const x = toks[j];
        if (x.v === '(' && x.t === 'punct') depth++;
        else if (x.v === ')' && x.t === 'punct') { if (depth-- === 0) break; } else if (x.v === ',' && x.t === 'punct' && depth === 0) {
          commas++;
          if (commas === 2) third = toks[j + 1];
        }
      }
      if (third?.t === 'word' && third.v === 'true') continue;
      if (arg?.t === 'string' && toks[k + 3]?.v === ',') out.push({ kind: 'parameter', names: [arg.v.toLowerCase()] });
      else out.push({ kind: 'other', what: 'set_config with a computed name' });
    }
  }
  return out;
}

// All session effects of a query string, in order; an unknown effect if the text
// cannot be lexed.
export function classifySql(sql: string): SessionEffect[] {
  const stmts = splitStatements(sql);
  if (!stmts) return [{ kind: 'other', what: 'SQL the proxy cannot lex' }];
  const out: SessionEffect[] = [];
  for (const s of stmts) out.push(...classifyStatement(s));
  return out;
}

// Quick reject for the common case (every query passes here): false only when no
// statement can start with a word that has an effect and no such function or keyword
// appears anywhere. Comments could hide a statement's first word: the lexer decides then.
// The words come from ebpf/session-state-words.json, the list the kernel inspector uses too.
const FIRST_WORD = new RegExp(`(?:^|;)\\s*(?:${STATE_COMMANDS.join('|')})\\b`, 'i');
const ANYWHERE = new RegExp(`\\b(?:${STATE_WORDS.join('|')})\\b`, 'i');
const COMMENT = /\/\*|--/;
export function mayAffectSession(sql: string): boolean {
  return FIRST_WORD.test(sql) || ANYWHERE.test(sql) || COMMENT.test(sql);
}

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
  // +1 per lock taken, -1 per unlock; key: the lock's mode and literal arguments ('x:42',
  // 's:1,2'), or its mode and '?' when they are not literals ($1, an expression)
  | { kind: 'advisory_lock'; delta: number; key: string }
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
  long?: true; // a string too long to be a name: its value is not kept (v is '')
}

// String literals longer than this are never decoded: no parameter or channel name is
// that long, and a huge literal (a 100 MB INSERT) must cost no more than finding its end.
const MAX_DECODED_STRING = 4096;

const SQ = 0x27; // '
const DQ = 0x22; // "
const BS = 0x5c; // backslash
const DOLLAR = 0x24;

const isSpace = (c: number): boolean => c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d || c === 0x0c;
const isLetter = (c: number): boolean => (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || c === 0x5f; // a-z A-Z _
const isDigit = (c: number): boolean => c >= 0x30 && c <= 0x39;
// Bytes of a word: letters, digits, _ and $, and every byte of a multi-byte UTF-8 character.
const isWordStart = (c: number): boolean => isLetter(c) || c >= 0x80;
const isWordByte = (c: number): boolean => isLetter(c) || isDigit(c) || c === DOLLAR || c >= 0x80;
const PUNCT = new Set([0x28, 0x29, 0x2c, 0x2e, 0x3d]); // ( ) , . =

const asBytes = (sql: string | Buffer): Buffer => (typeof sql === 'string' ? Buffer.from(sql, 'utf8') : sql);

// The value of a quoted string or identifier between from and to, with its doubled quote
// (and, for E'' strings, backslash escapes) undone.
function unquote(b: Buffer, from: number, to: number, quote: number, escapes: boolean): Token {
  if (to - from > MAX_DECODED_STRING) return { t: 'string', v: '', long: true };
  let v = b.toString('utf8', from, to);
  if (escapes) v = v.replace(/\\([\s\S])|''/g, (_m, ch: string | undefined) => ch ?? "'");
  else if (quote === SQ) v = v.replace(/''/g, "'");
  else v = v.replace(/""/g, '"');
  return { t: quote === DQ ? 'qident' : 'string', v };
}

// Tokens per top-level statement. Returns null for text the lexer cannot follow
// (an unterminated string or comment): the caller treats that as unknown state.
// Works on the UTF-8 bytes (every character with a meaning here is ASCII) and skips
// literals and comments with indexOf: linear in the text, allocation only per token.
export function splitStatements(sql: string | Buffer): Token[][] | null {
  const b = asBytes(sql);
  const out: Token[][] = [];
  let cur: Token[] = [];
  const n = b.length;
  let i = 0;
  while (i < n) {
    const c = b[i];
    const d = i + 1 < n ? b[i + 1] : -1;
    if (isSpace(c)) {
      i++;
    } else if (c === 0x2d && d === 0x2d) { // -- comment
      const e = b.indexOf(0x0a, i);
      i = e < 0 ? n : e + 1;
    } else if (c === 0x2f && d === 0x2a) { // /* comment, nested
      let depth = 1;
      i += 2;
      let open = -2; // next "/*" at or after i (-1: none left), found again only once passed
      while (depth > 0) {
        if (open !== -1 && open < i) open = b.indexOf('/*', i);
        const close = b.indexOf('*/', i);
        if (close < 0) return null;
        if (open >= 0 && open < close) { depth++; i = open + 2; } else { depth--; i = close + 2; }
      }
    } else if (c === SQ || ((c === 0x65 || c === 0x45) && d === SQ)) { // '...' or E'...'
      const escapes = c !== SQ;
      const from = i + (escapes ? 2 : 1);
      let j = from;
      let bs = escapes ? -2 : -1; // next backslash at or after j (-1: none left)
      for (;;) {
        const q = b.indexOf(SQ, j);
        if (q < 0) return null;
        if (bs !== -1 && bs < j) bs = b.indexOf(BS, j);
        if (bs >= 0 && bs < q) { j = bs + 2; if (j > n) return null; continue; }
        if (q + 1 < n && b[q + 1] === SQ) { j = q + 2; continue; }
        cur.push(unquote(b, from, q, SQ, escapes));
        i = q + 1;
        break;
      }
    } else if (c === DQ) {
      let j = i + 1;
      for (;;) {
        const q = b.indexOf(DQ, j);
        if (q < 0) return null;
        if (q + 1 < n && b[q + 1] === DQ) { j = q + 2; continue; }
        const tok = unquote(b, i + 1, q, DQ, false);
        cur.push(tok.long ? { t: 'qident', v: b.toString('utf8', i + 1, q).replace(/""/g, '"') } : tok);
        i = q + 1;
        break;
      }
    } else if (c === DOLLAR && (isLetter(d) || d === DOLLAR)) { // $tag$ ... $tag$
      let j = i + 1;
      if (d !== DOLLAR) while (j < n && (isLetter(b[j]) || isDigit(b[j]))) j++;
      if (j >= n || b[j] !== DOLLAR) { cur.push({ t: 'other', v: '$' }); i++; continue; }
      const tag = b.subarray(i, j + 1);
      let end = b.indexOf(DOLLAR, j + 1); // a byte search: much faster than indexOf(tag)
      while (end >= 0 && (end + tag.length > n || b.compare(tag, 0, tag.length, end, end + tag.length) !== 0)) end = b.indexOf(DOLLAR, end + 1);
      if (end < 0) return null;
      const len = end - (j + 1);
      cur.push(len > MAX_DECODED_STRING ? { t: 'string', v: '', long: true } : { t: 'string', v: b.toString('utf8', j + 1, end) });
      i = end + tag.length;
    } else if (isWordStart(c)) {
      let j = i + 1;
      while (j < n && isWordByte(b[j])) j++;
      cur.push({ t: 'word', v: b.toString('utf8', i, j).toLowerCase() });
      i = j;
    } else if (c === 0x3b) { // ;
      if (cur.length) out.push(cur);
      cur = [];
      i++;
    } else if (PUNCT.has(c)) {
      cur.push({ t: 'punct', v: String.fromCharCode(c) });
      i++;
    } else {
      let j = i + 1;
      if (isDigit(c) || c === 0x2e) while (j < n && (isDigit(b[j]) || b[j] === 0x2e || b[j] === 0x65 || b[j] === 0x45)) j++;
      cur.push({ t: 'other', v: b.toString('latin1', i, j) });
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

// Which lock an advisory lock function names: its mode (exclusive or shared: an unlock
// releases only its own mode) and its arguments when they are integer literals. An unlock
// releases only a lock of the same key, so pg_advisory_unlock(2) never unpins a client that
// holds lock 1.
function advisoryKey(fn: string, toks: Token[], from: number): string {
  const mode = fn.endsWith('_shared') ? 's' : 'x';
  let args = '';
  for (let j = from; j < toks.length; j++) {
    const v = toks[j].v;
    if (v === ')' && toks[j].t === 'punct') return `${mode}:${args}`;
    if (toks[j].t === 'punct' ? v !== ',' : toks[j].t !== 'other' || !/^-?\d+$|^-$/.test(v)) break;
    args += v;
  }
  return `${mode}:?`;
}

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
    if (ADVISORY_LOCKS.has(t.v)) out.push({ kind: 'advisory_lock', delta: 1, key: advisoryKey(t.v, toks, k + 2) });
    else if (ADVISORY_UNLOCKS.has(t.v)) out.push({ kind: 'advisory_lock', delta: -1, key: advisoryKey(t.v, toks, k + 2) });
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
      if (arg?.t === 'string' && !arg.long && toks[k + 3]?.v === ',') out.push({ kind: 'parameter', names: [arg.v.toLowerCase()] });
      else out.push({ kind: 'other', what: 'set_config with a computed name' });
    }
  }
  return out;
}

// All session effects of a query string, in order; an unknown effect if the text
// cannot be lexed.
export function classifySql(sql: string | Buffer): SessionEffect[] {
  const stmts = splitStatements(sql);
  if (!stmts) return [{ kind: 'other', what: 'SQL the proxy cannot lex' }];
  const out: SessionEffect[] = [];
  for (const s of stmts) out.push(...classifyStatement(s));
  return out;
}

// Quick reject for the common case (every query passes here): false only when no
// statement can start with a word that has an effect and no such function or keyword
// appears anywhere. Comments could hide a statement's first word: the lexer decides then.
// Text longer than QUICK_REJECT_MAX goes to the lexer directly: it skips a literal with
// indexOf, where these expressions would test every position of it.
// The words come from ebpf/session-state-words.json, the list the kernel inspector uses too.
const FIRST_WORD = new RegExp(`(?:^|;)\\s*(?:${STATE_COMMANDS.join('|')})\\b`, 'i');
const ANYWHERE = new RegExp(`\\b(?:${STATE_WORDS.join('|')})\\b`, 'i');
const COMMENT = /\/\*|--/;
const QUICK_REJECT_MAX = 16384;
export function mayAffectSession(sql: string | Buffer): boolean {
  if (sql.length > QUICK_REJECT_MAX) return true;
  const s = typeof sql === 'string' ? sql : sql.toString('utf8');
  return FIRST_WORD.test(s) || ANYWHERE.test(s) || COMMENT.test(s);
}

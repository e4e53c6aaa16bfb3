// The admin console's command grammar: "VERB [arg]" and "SET key = value",
// case-insensitive verbs, optional trailing ";", several statements per query.

export type Command =
  | { verb: 'EMPTY' }
  | { verb: 'SET'; key: string; value: string; quoted: boolean }
  | { verb: string; arg?: string };

export class CommandSyntaxError extends Error {}

// Splits a query on ";" outside quotes; drops empty statements (but keeps one if all are empty).
export function splitStatements(sql: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quote: string | null = null;
  for (let i = 0; i < sql.length; i++) {
    const ch = sql[i];
    if (quote) {
      cur += ch;
      if (ch === quote) {
        if (sql[i + 1] === quote) cur += sql[++i];
        else quote = null;
      }
    } else if (ch === "'" || ch === '"') {
      quote = ch;
      cur += ch;
    } else if (ch === '-' && sql[i + 1] === '-') {
      while (i < sql.length && sql[i] !== '\n') i++;
    } else if (ch === ';') {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (quote) throw new CommandSyntaxError('unterminated quoted string');
  out.push(cur);
  const nonEmpty = out.map((s) => s.trim()).filter((s) => s !== '');
  return nonEmpty.length ? nonEmpty : [''];
}

const WORD = /^(?:"((?:[^"]|"")+)"|([A-Za-z0-9_.\-]+))/;

function takeWord(s: string): { word: string; rest: string; quoted: boolean } | null {
  const m = WORD.exec(s);
  if (!m) return null;
  const quoted = m[1] !== undefined;
  return { word: quoted ? m[1].replace(/""/g, '"') : m[2], rest: s.slice(m[0].length).trimStart(), quoted };
}

// Parses one statement (no ";").
export function parseCommand(stmt: string): Command {
  const s = stmt.trim();
  if (s === '') return { verb: 'EMPTY' };
  const first = takeWord(s);
  if (!first || first.quoted) throw new CommandSyntaxError(`invalid command '${s}', use SHOW HELP;`);
  const verb = first.word.toUpperCase();
  if (verb === 'SET') {
    const key = takeWord(first.rest);
    if (!key) throw new CommandSyntaxError(`invalid SET: expected SET key = value`);
    let rest = key.rest;
    const eq = /^(=|to\b)\s*/i.exec(rest);
    if (!eq) throw new CommandSyntaxError(`invalid SET: expected "=" or TO after ${key.word}`);
    rest = rest.slice(eq[0].length);
    let value: string;
    let quoted = false;
    const str = /^'((?:[^']|'')*)'\s*$/.exec(rest);
    if (str) {
      value = str[1].replace(/''/g, "'");
      quoted = true;
    } else {
      const w = /^([^\s'"]+)\s*$/.exec(rest);
      if (!w) throw new CommandSyntaxError(`invalid SET value '${rest}': quote it with single quotes`);
      value = w[1];
    }
    return { verb: 'SET', key: key.word.toLowerCase(), value, quoted };
  }
  if (first.rest === '') return { verb };
  const arg = takeWord(first.rest);
  if (!arg || arg.rest !== '') throw new CommandSyntaxError(`invalid command '${s}', use SHOW HELP;`);
  return { verb, arg: verb === 'SHOW' ? arg.word.toUpperCase() : arg.word };
}

// docs/config.md against the loader's schema (src/config/load.ts, configSchema): every key
// the loader accepts is in a table of the reference and every documented key is accepted,
// with the documented default, the documented reload behaviour (restart iff in
// RESTART_KEYS) and, for enums, every allowed value named; examples/pgsplice.yaml sets
// every key. A key added to the loader without a line in the docs fails here.
import t from 'tap';
import { join } from 'node:path';
import { configSchema, loadConfigFile, parseConfig, RESTART_KEYS, MIRROR_DEFAULTS, type Kind } from '../src/config/load';
import { readDoc, section, tableRows, backticked, ROOT } from './helpers/docs';

const md = readDoc('docs/config.md');
const schema = configSchema();

interface Row {
  key: string;
  def: string;
  meaning: string;
  change?: string;
}
// A table's rows by key: the key is the first cell's backticked name.
function rowsOf(text: string, prefix = ''): Map<string, Row> {
  const out = new Map<string, Row>();
  for (const cells of tableRows(text)) {
    const m = /^`([^`]+)`$/.exec(cells[0]!);
    if (!m) throw new Error(`a row without a key: ${cells.join(' | ')}`);
    const key = m[1]!.startsWith(prefix) ? m[1]!.slice(prefix.length) : m[1]!;
    if (out.has(key)) throw new Error(`${key} is documented twice`);
    out.set(key, { key, def: cells[1]!, meaning: cells[2]!, change: cells[3] });
  }
  return out;
}

// The default as the docs write it, as the loader's value would print: `x` -> x, `""` or
// none -> '', `[]` -> ''.
function docDefault(cell: string): string {
  const m = /^`([^`]*)`/.exec(cell);
  if (m) return m[1] === '""' || m[1] === '[]' ? '' : m[1]!;
  if (/^none\b/.test(cell)) return '';
  return cell;
}
const shown = (v: unknown): string => (Array.isArray(v) ? v.join(',') : String(v));

// Every allowed value of an enum is named in the text: backticked, or inside a range such as `local0`..`local7`.
function namesEnum(text: string, kind: Kind): string[] {
  if (kind.t !== 'enum') return [];
  const named = new Set(backticked(text).flatMap((w) => w.split(/[|/, ]+/)));
  for (const m of text.matchAll(/`([a-z]+)(\d+)`\.\.`\1(\d+)`/g)) for (let i = Number(m[2]); i <= Number(m[3]); i++) named.add(`${m[1]}${i}`);
  return kind.values.filter((v) => !named.has(v));
}

const top = new Map([...rowsOf(section(md, 'Top-level settings')), ...rowsOf(section(md, 'TLS'))]);

t.test('every top-level key the loader accepts is documented, and nothing else', async (t) => {
  const documented = [...top.keys(), 'listen', 'databases', 'users'].sort();
  const accepted = [...Object.keys(schema.settings), ...schema.sections].sort();
  t.same(documented, accepted, 'the same top-level keys');
});

t.test('top-level settings: default, reload behaviour, enum values', async (t) => {
  for (const [key, s] of Object.entries(schema.settings)) {
    const row = top.get(key);
    if (!row) continue; // reported by the test above
    t.equal(docDefault(row.def), shown(s.def), `${key}: documented default ${row.def}`);
    t.equal(/^restart/.test(row.change ?? ''), RESTART_KEYS.includes(key), `${key}: "${row.change}" (restart iff in RESTART_KEYS)`);
    t.same(namesEnum(row.meaning, s.kind), [], `${key}: every allowed value named`);
  }
  // The sections among the top-level rows.
  t.equal(/^restart/.test(top.get('metrics')!.change!), RESTART_KEYS.includes('metrics'), 'metrics: restart');
  for (const k of ['session_state', 'hba']) t.notOk(/^restart/.test(top.get(k)!.change!), `${k} reloads`);
  const ss = top.get('session_state')!.meaning;
  for (const [k, kind] of Object.entries(schema.session_state)) {
    t.match(ss, new RegExp(`\\b${k}\\b`), `session_state.${k} named`);
    if (kind.t === 'enum') for (const v of kind.values) t.match(ss, new RegExp(`\\b${v}\\b`), `session_state.${k}: ${v} named`);
  }
  const metrics = top.get('metrics')!.meaning;
  t.same(Object.keys(schema.metrics).filter((k) => !new RegExp(`\\b${k}\\b`).test(metrics)), [], 'metrics: every key named');
});

t.test('the reload paragraph names every restart-only key', async (t) => {
  const para = /\*\*Reload\.\*\*[\s\S]*?\n\n/.exec(md)![0];
  const named = backticked(para);
  for (const k of RESTART_KEYS) t.ok(named.includes(k) || (k.startsWith('listen.') && named.includes('listen.*')), `${k} named`);
});

t.test('listen keys', async (t) => {
  const rows = rowsOf(section(md, '`listen`'), 'listen.');
  t.same([...rows.keys()].sort(), Object.keys(schema.listen).sort(), 'the same keys');
  const c = parseConfig('databases:\n  a:\n', 'd.yaml');
  t.equal(docDefault(rows.get('host')!.def), c.listen.host);
  t.equal(docDefault(rows.get('port')!.def), String(c.listen.port));
  for (const [k, r] of rows) t.ok(/^restart/.test(r.change!) && RESTART_KEYS.includes(`listen.${k}`), `listen.${k} needs a restart`);
});

t.test('database keys', async (t) => {
  const text = section(md, '`databases` (required)');
  const [dbTable, mirrorTable] = text.split('Each entry of `mirrors`');
  const rows = rowsOf(dbTable!);
  t.same([...rows.keys()].sort(), Object.keys(schema.database).sort(), 'the same keys');
  const d = parseConfig('databases:\n  app:\n', 'd.yaml').databases.get('app')!;
  t.equal(docDefault(rows.get('host')!.def), d.host);
  t.equal(docDefault(rows.get('port')!.def), String(d.port));
  t.match(rows.get('dbname')!.def, /entry's name/);
  t.equal(d.dbname, 'app', "dbname defaults to the entry's name");
  for (const [k, r] of rows) {
    // A default written as a key name is inherited from that top-level setting.
    const inherited = /^`([a-z_]+)`$/.exec(r.def)?.[1];
    if (inherited && inherited !== d[k as keyof typeof d]?.toString()) t.ok(inherited in schema.settings, `databases.*.${k} inherits ${inherited}, a top-level setting`);
    t.notOk(/^restart/.test(r.change!), `databases.*.${k} reloads`);
    t.same(namesEnum(r.meaning, schema.database[k]!), [], `databases.*.${k}: every allowed value named`);
  }
  const mrows = rowsOf(mirrorTable!);
  t.same([...mrows.keys()].sort(), [...schema.mirrorKeys].sort(), 'the same mirror keys');
  for (const [k, v] of Object.entries(MIRROR_DEFAULTS)) t.equal(Number(docDefault(mrows.get(k)!.def)) || docDefault(mrows.get(k)!.def), v, `mirrors[].${k} default`);
  for (const k of ['host', 'dbname', 'user']) t.equal(mrows.get(k)!.def, 'required', `mirrors[].${k} is required`);
  t.throws(() => parseConfig('databases:\n  a:\n    mirrors: [{ host: m, dbname: d }]\n', 'm.yaml'), /missing "user"/, 'and the loader requires it');
  t.same(namesEnum(mrows.get('compare')!.meaning, schema.mirror.compare!), [], 'mirrors[].compare: every value named');
});

t.test('user keys', async (t) => {
  const rows = rowsOf(section(md, '`users`'));
  t.same([...rows.keys()].sort(), Object.keys(schema.user).sort(), 'the same keys');
  for (const [k, r] of rows) t.notOk(/^restart/.test(r.change!), `users.*.${k} reloads`);
});

t.test('examples/pgsplice.yaml loads and sets every documented key', async (t) => {
  const c = loadConfigFile(join(ROOT, 'examples', 'pgsplice.yaml'));
  const set = c.source.lines;
  // hba is shown commented out: the example uses auth_hba_file, and the two exclude each other.
  for (const k of [...Object.keys(schema.settings), ...schema.sections.filter((s) => s !== 'hba')]) t.ok(set.has(k), `sets ${k}`);
  t.match(readDoc('examples/pgsplice.yaml'), /^# hba:$/m, 'shows hba: (commented out)');
  for (const k of Object.keys(schema.listen)) t.ok(set.has(`listen.${k}`), `sets listen.${k}`);
  for (const k of Object.keys(schema.database)) t.ok(set.has(`databases.app.${k}`) || set.has(`databases.reports.${k}`), `sets databases.<name>.${k}`);
  for (const k of schema.mirrorKeys) t.ok(set.has(`databases.app.mirrors[0].${k}`), `sets databases.app.mirrors[0].${k}`);
  for (const k of Object.keys(schema.user)) t.ok(set.has(`users.app.${k}`), `sets users.app.${k}`);
  for (const k of Object.keys(schema.session_state)) t.ok(set.has(`session_state.${k}`), `sets session_state.${k}`);
  for (const k of Object.keys(schema.metrics)) t.ok(set.has(`metrics.${k}`), `sets metrics.${k}`);
  // Its header names the restart-only keys as the reference does.
  const header = readDoc('examples/pgsplice.yaml').split('\n').find((l) => /need a restart/.test(l)) ?? '';
  for (const k of RESTART_KEYS) t.ok(header.includes(k) || (k.startsWith('listen.') && header.includes('listen.*')), `the example's header names ${k} as restart-only`);
});

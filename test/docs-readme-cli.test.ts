// README.md and docs/*.md against the code: the command-line options and commands
// docs/deploy.md lists are the ones the real CLI (dist/src/cli.js, yargs) knows and every
// option written after `pgsplice` in the docs exists; the quick start is the two npm
// scripts package.json has; every relative link points at a file that exists (and a
// heading that exists, for #anchors into the docs); every number the README's benchmark
// section quotes cites a bench/results file.
import t from 'tap';
import { existsSync } from 'node:fs';
import { readdirSync } from 'node:fs';
import { dirname, join, normalize } from 'node:path';
import { run } from './helpers/cluster';
import { readDoc, section, tableRows, backticked, ROOT } from './helpers/docs';

const CLI = join(ROOT, 'dist', 'src', 'cli.js');
const DOCS = ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

// Options and commands from yargs' help: "  -c, --config  ..." and "  pgsplice check  ...".
async function cliHelp(args: string[]): Promise<{ options: Set<string>; commands: string[] }> {
  const r = await run('node', [CLI, ...args, '--help'], { timeoutMs: 30000 });
  if (r.code !== 0) throw new Error(`pgsplice --help: ${r.stderr}`);
  const options = new Set<string>();
  const commands: string[] = [];
  for (const line of r.stdout.split('\n')) {
    const o = /^\s+(?:(-\w), )?(--[\w-]+)\s/.exec(line);
    if (o) {
      if (o[1]) options.add(o[1]);
      options.add(o[2]!);
    }
    const c = /^\s+(pgsplice \S+(?: [<[]\S+)*)/.exec(line);
    if (c) commands.push(c[1]!);
  }
  return { options, commands };
}

t.test('docs/deploy.md lists the CLI\'s commands and options, and only those', async (t) => {
  const main = await cliHelp([]);
  const imp = await cliHelp(['import']);
  const known = new Set([...main.options, ...imp.options]);
  const rows = tableRows(section(readDoc('docs/deploy.md'), 'Command line'));
  const documented = new Set(rows.flatMap((r) => backticked(r[0]!)).filter((w) => w.startsWith('-')));
  t.same([...documented].sort(), [...known].sort(), 'options');
  const commands = rows.flatMap((r) => backticked(r[0]!)).filter((w) => w.startsWith('pgsplice '));
  for (const c of main.commands) t.ok(commands.includes(c), `${c} documented`);
  for (const c of commands) t.ok(c === 'pgsplice' || main.commands.includes(c), `${c} is a command`);
  t.ok(main.options.has('--takeover') && !imp.commands.length, 'parsed the help');
});

t.test('every option the docs write after pgsplice exists', async (t) => {
  const { options } = await cliHelp(['import']); // the import command's help lists every option
  let seen = 0;
  for (const file of DOCS) {
    const text = readDoc(file);
    // Code spans and code blocks only: "pgsplice ARGS" or "cli.js ARGS" up to the end of the command.
    const code = [...text.matchAll(/```[^\n]*\n([\s\S]*?)```|`([^`\n]+)`/g)].map((m) => m[1] ?? m[2]!);
    for (const c of code) {
      for (const m of c.matchAll(/(?:^|[\s(])(?:pgsplice|cli\.js)((?: +[^\s#|;&)]+)*)/gm)) {
        for (const arg of m[1]!.trim().split(/\s+/)) {
          if (!/^--?[a-z]/.test(arg)) continue;
          seen++;
          t.ok(options.has(arg.split('=')[0]!), `${file}: pgsplice ... ${arg}`);
        }
      }
    }
  }
  t.ok(seen >= 5, `found the options the docs use (${seen})`);
});

t.test('the README quick start is npm run demo and npm test, both scripts that exist', async (t) => {
  const qs = section(readDoc('README.md'), 'Quick start');
  const block = /```sh\n([\s\S]*?)```/.exec(qs)![1]!;
  const commands = block.split('\n').map((l) => l.replace(/#.*/, '').trim()).filter((l) => l !== '');
  t.same(commands, ['npm run demo', 'npm test'], 'exactly two commands');
  const pkg = JSON.parse(readDoc('package.json'));
  t.match(pkg.scripts.demo, /^bash scripts\/bootstrap && node dist\/scripts\/demo\.js$/, 'demo bootstraps, then runs the demo');
  t.match(pkg.scripts.test, /^bash scripts\/bootstrap && tap$/, 'test bootstraps, then runs tap');
  t.ok(existsSync(join(ROOT, 'scripts', 'demo.ts')) && existsSync(join(ROOT, 'scripts', 'bootstrap')), 'their files exist');
  t.match(qs, /Node\.js 20/, 'says Node.js 20 must be there (npm runs before bootstrap can install anything)');
  t.equal(pkg.engines.node, '>=20', 'as package.json requires');
});

// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
const slug = (h: string) => h.trim().toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, '').replace(/ /g, '-');

t.test('relative links in the README and docs point at files and headings that exist', async (t) => {
  let n = 0;
  for (const file of DOCS) {
    const text = readDoc(file).replace(/```[\s\S]*?```/g, '');
    for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = m[1]!;
      if (/^[a-z]+:/.test(target)) continue; // http:, mailto:
      const [path, anchor] = target.split('#');
      const rel = path ? normalize(join(dirname(file), path)) : file;
      n++;
      if (!t.ok(existsSync(join(ROOT, rel)), `${file}: ${target} exists`)) continue;
      if (anchor && rel.endsWith('.md')) {
        const headings = readDoc(rel).replace(/```[\s\S]*?```/g, '').split('\n').filter((l) => /^#+ /.test(l)).map((l) => slug(l.replace(/^#+ /, '')));
        t.ok(headings.includes(anchor), `${file}: ${target}: heading #${anchor} in ${rel}`);
      }
    }
  }
  t.ok(n > 50, `checked ${n} links`);
});

t.test('every number in the README\'s benchmark section cites a bench/results file that exists', async (t) => {
  const bench = section(readDoc('README.md'), 'Benchmark');
  // Paragraphs and bullets; the table rows belong to the paragraph that introduces them.
  const parts = bench.split(/\n(?=- )|\n\n/).filter((p) => !p.startsWith('|') && !p.startsWith('!['));
  let before: string[] = [];
  for (const p of parts) {
    let cited = [...p.matchAll(/\((bench\/results\/[^)]+\.md)\)/g)].map((m) => m[1]!);
    // A line that introduces a table ("YCSB C (read-only), 64 clients:") quotes the run cited before it.
    if (cited.length === 0 && p.trim().endsWith(':')) cited = before;
    before = cited;
    if (!/\d/.test(p.replace(/bench\/results\/[^)]+/g, ''))) continue;
    t.ok(cited.length > 0, `cites a result: ${p.slice(0, 70).replace(/\n/g, ' ')}...`);
    for (const f of cited) t.ok(existsSync(join(ROOT, f)), `${f} exists`);
  }
});

t.test('docs/architecture.md and the README\'s layout name every folder of src/', async (t) => {
  const folders = readdirSync(join(ROOT, 'src'), { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => `${d.name}/`).sort();
  const arch = section(readDoc('docs/architecture.md'), 'Architecture');
  const table = tableRows(arch).flatMap((r) => backticked(r[0]!)).filter((w) => w.endsWith('/'));
  t.same([...table].sort(), folders, 'the architecture table has a row per folder');
  const layout = section(readDoc('README.md'), 'Layout');
  for (const f of folders) t.ok(backticked(layout).includes(f), `README's layout names src/${f}`);
  for (const w of backticked(layout).filter((w) => /^[a-z-]+\/$/.test(w) && !['src/', 'ebpf/', 'addon/', 'test/', 'bench/', 'benchbase-configs/', 'scripts/'].includes(w))) {
    t.ok(folders.includes(w), `README's layout: src/${w} exists`);
  }
});

t.test('the source, test and script files the README and docs name exist', async (t) => {
  let n = 0;
  for (const file of DOCS) {
    for (const m of readDoc(file).matchAll(/(?<![\w/.-])((?:src|test|ebpf|addon|scripts|bench|packaging|examples)\/[\w./-]*\.(?:ts|c|h|js|mjs|sh|json|yaml|conf|service|gyp|cc))\b/g)) {
      const p = m[1]!;
      if (/FILE|NAME/.test(p)) continue; // placeholders such as test/FILE.test.ts
      n++;
      t.ok(existsSync(join(ROOT, p)), `${file}: ${p}`);
    }
  }
  t.ok(n > 30, `checked ${n} paths`);
});

t.test('every PGSPLICE_ environment variable the proxy reads is documented', async (t) => {
  const r = await run('grep', ['-rhoE', 'PGSPLICE_[A-Z_]+', join(ROOT, 'src')], { timeoutMs: 30000 });
  const used = [...new Set(r.stdout.split('\n').filter((v) => v !== ''))].sort();
  t.ok(used.includes('PGSPLICE_ADDON') && used.length >= 4, `found ${used.join(', ')}`);
  const docs = DOCS.map(readDoc).join('\n');
  for (const v of used) t.match(docs, new RegExp(`\`${v}[=\`]`), `${v} documented`);
});

// The session-state word lists of both data paths come from one source,
// ebpf/session-state-words.json (scripts/gen-session-words.mjs). This test regenerates the
// kernel header and the TypeScript module in a temp dir and fails when the committed ones
// differ, checks the FNV-1a 64 constants, and checks that the two paths agree on every word
// the source does not explicitly leave out of one of them (with a reason).
// The behaviour of both classifiers is in test/ebpf-inspect.test.ts and
// test/sql-classifier.test.ts (shared fixture test/fixtures/session-state-cases.json).
import t from 'tap';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { execFileSync } from 'child_process';
import { STATE_COMMANDS, STATE_WORDS } from '../src/session/session-words.generated';
import { mayAffectSession } from '../src/session/sql-classifier';

const root = path.join(__dirname, '..');
const source = path.join(root, 'ebpf', 'session-state-words.json');
const header = path.join(root, 'ebpf', 'session-words.h');
const tsModule = path.join(root, 'src', 'session', 'session-words.generated.ts');

interface Entry { word: string; kernel?: boolean; classifier?: boolean; why?: string }
const spec = JSON.parse(fs.readFileSync(source, 'utf8')) as { commands: Entry[]; words: Entry[] };

// Reference FNV-1a 64, written independently of the generator.
function fnv(word: string): bigint {
  let h = 0xcbf29ce484222325n;
  for (const c of Buffer.from(word)) h = BigInt.asUintN(64, (h ^ BigInt(c)) * 0x100000001b3n);
  return h;
}

t.test('committed outputs are what the source generates', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-words-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const h = path.join(dir, 'session-words.h');
  const m = path.join(dir, 'session-words.generated.ts');
  execFileSync(process.execPath, [path.join(root, 'scripts', 'gen-session-words.mjs'), source, h, m], { stdio: 'pipe' });
  t.equal(fs.readFileSync(header, 'utf8'), fs.readFileSync(h, 'utf8'), 'ebpf/session-words.h is up to date');
  t.equal(fs.readFileSync(tsModule, 'utf8'), fs.readFileSync(m, 'utf8'), 'src/session/session-words.generated.ts is up to date');
});

t.test('FNV-1a 64 constants and hashes', async (t) => {
  t.equal(fnv(''), 0xcbf29ce484222325n, 'offset basis');
  t.equal(fnv('a'), 0xaf63dc4c8601ec8cn, 'published test vector for "a"');
  const text = fs.readFileSync(header, 'utf8');
  const cases = [...text.matchAll(/case 0x([0-9a-f]{16})ULL: \/\* (\w+) \*\//g)];
  const inKernel = [...spec.commands, ...spec.words].filter((e) => e.kernel !== false);
  t.equal(cases.length, inKernel.length, 'one case per word the kernel punts on');
  for (const [, h, w] of cases) t.equal(BigInt('0x' + h), fnv(w), `hash of ${w}`);
});

t.test('both paths use every word unless the source says why not', async (t) => {
  for (const e of spec.commands) {
    if (e.classifier !== false) t.ok(STATE_COMMANDS.includes(e.word), `user space knows command ${e.word}`);
    else t.ok(e.why, `${e.word}: why user space leaves it out`);
    if (e.kernel === false) t.ok(e.why, `${e.word}: why the kernel leaves it out`);
    if (e.classifier !== false) t.ok(mayAffectSession(`${e.word.toUpperCase()} x`), `filter passes ${e.word} at a statement's start`);
  }
  for (const e of spec.words) {
    if (e.classifier !== false) t.ok(mayAffectSession(`SELECT 1 FROM t WHERE ${e.word}(1) > 0`), `filter passes ${e.word} anywhere`);
    else t.ok(e.why);
    if (e.kernel === false) t.ok(e.why, `${e.word}: why the kernel leaves it out`);
  }
  t.equal(STATE_WORDS.length, spec.words.filter((e) => e.classifier !== false).length);
  t.notOk(mayAffectSession('SELECT settings, reset_val, temp_c FROM t'), 'words inside identifiers do not match');
});

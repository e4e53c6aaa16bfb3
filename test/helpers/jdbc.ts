// The JDBC client of the tests (test/fixtures/JdbcClient.java) run against an endpoint,
// and the checks every test makes of its key=value output.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Test } from 'tap';
import { Endpoint, FIXTURES, JDBC_JAR, RunResult, run } from './cluster';

const SOURCE = path.join(FIXTURES, 'JdbcClient.java');

// `java File.java` compiles the source on every run: ~2.5 s of CPU per client, more than
// the client's own work. So it is compiled once per machine into a directory keyed by the
// source and the JDK (built under a private name and renamed into place, so concurrent
// test processes never see a half-written one), and every run loads the class.
function classDir(): string {
  const javaVersion = spawnSync('java', ['-version'], { encoding: 'utf8' }).stderr ?? '';
  const key = createHash('sha256').update(fs.readFileSync(SOURCE)).update(javaVersion).update(fs.statSync(JDBC_JAR).mtimeMs.toString()).digest('hex').slice(0, 16);
  const dir = path.join(os.tmpdir(), `pgsplice-jdbc-${key}`);
  if (fs.existsSync(path.join(dir, 'JdbcClient.class'))) return dir;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-jdbc-build-'));
  try {
    execFileSync('javac', ['-cp', JDBC_JAR, '-d', work, SOURCE], { stdio: 'pipe' });
    try {
      fs.renameSync(work, dir);
    } catch (e) {
      // Another process installed the same classes first: use theirs.
      if (!fs.existsSync(path.join(dir, 'JdbcClient.class'))) throw e;
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  return dir;
}

let compiled: string | undefined;

export function haveJdbc(): boolean {
  return fs.existsSync(JDBC_JAR);
}

export interface JdbcRun {
  result: RunResult;
  // The client's key=value lines.
  kv: Record<string, string>;
}

// Runs one JdbcClient: ROW_PREFIX keeps the rows of concurrent runs apart.
export async function runJdbcClient(
  ep: Endpoint,
  o: { db: string; table: string; prepareThreshold: string; rowPrefix?: string; timeoutMs?: number },
): Promise<JdbcRun> {
  compiled ??= classDir();
  const args = ['-cp', `${JDBC_JAR}${path.delimiter}${compiled}`, 'JdbcClient', ep.host, String(ep.port), 'app', 'app-pw', o.db, o.table, o.prepareThreshold];
  if (o.rowPrefix !== undefined) args.push(o.rowPrefix);
  const result = await run('java', args, { timeoutMs: o.timeoutMs ?? 60000 });
  const kv = Object.fromEntries(result.stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  return { result, kv };
}

// What every JdbcClient run must print: 20 executions of a prepared statement, a batch
// insert, an error inside a transaction that then is aborted, and its own rows kept by
// the commit, dropped by the rollback.
export function checkJdbcRun(t: Test, r: JdbcRun, label: string): void {
  t.equal(r.result.code, 0, `${label}JDBC client exits 0 (${r.result.stderr.slice(-1500)})`);
  t.equal(r.kv.sum, String(2 * 210), `${label}prepared statement results (20 executions)`);
  t.equal(r.kv.batch, '50', `${label}batch insert`);
  t.equal(r.kv.error, '22012', `${label}error inside a transaction`);
  t.equal(r.kv.aborted, '25P02', `${label}then the transaction is aborted`);
  t.equal(r.kv.count, '50', `${label}its own rows, commit kept, rollback dropped`);
  t.equal(r.kv.done, 'ok', `${label}done`);
}

// The benchmark runner's readers: pgbench output captured from real runs (bench/fixtures),
// per-transaction logs, /proc parsing, goals, and the result JSON schema on a real result.
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { slope } from '../bench/idle';
import { median, parsePgbenchOutput, percentile, readTxLogs } from '../bench/pgbench';
import { parseMachineCpuLine, parseProcStat, runtimeSeconds, treeCpuSeconds } from '../bench/proc';
import { evaluateGoals, markdownReport, svgChart } from '../bench/report';
import { BenchResult, validateResult } from '../bench/schema';
import { parseExtraTarget, pgbouncerIni, pgspliceYaml } from '../bench/targets';
import { parseXml } from '../bench/xml-lite';

const FIX = path.join(__dirname, '..', 'bench', 'fixtures');
const RESULTS = path.join(__dirname, '..', 'bench', 'results');
const fixture = (f: string) => fs.readFileSync(path.join(FIX, f), 'utf8');

t.test('pgbench summary: two weighted scripts, extended protocol', async (t) => {
  const s = parsePgbenchOutput(fixture('pgbench-ycsb-a-extended.txt'));
  t.equal(s.queryMode, 'extended');
  t.equal(s.clients, 16);
  t.equal(s.threads, 2);
  t.equal(s.durationS, 3);
  t.equal(s.transactions, 25607);
  t.equal(s.failed, 0);
  t.equal(s.latencyAvgMs, 1.799);
  t.equal(s.initialConnectionMs, 139.407);
  t.equal(s.averageConnectionMs, null);
  t.equal(s.tps, 8896.178364);
  t.equal(s.tpsIncludesConnections, false);
  t.equal(s.aborted, false);
  t.same(s.errors, []);
  t.same(s.scripts.map((x) => [x.name, x.weight, x.transactions, x.failed, x.latencyAvgMs]), [
    ['read.sql', 50, 12678, 0, 1.477],
    ['update.sql', 50, 12926, 0, 1.663],
  ]);
});

t.test('pgbench summary: connection storm (-C)', async (t) => {
  const s = parsePgbenchOutput(fixture('pgbench-storm-simple.txt'));
  t.equal(s.queryMode, 'simple');
  t.equal(s.transactions, 422);
  t.equal(s.averageConnectionMs, 13.687);
  t.equal(s.initialConnectionMs, null);
  t.equal(s.tps, 140.377909);
  t.equal(s.tpsIncludesConnections, true);
  t.equal(s.scripts.length, 0);
});

t.test('pgbench summary: an aborted run', async (t) => {
  const s = parsePgbenchOutput(fixture('pgbench-aborted.txt'));
  t.equal(s.aborted, true);
  t.equal(s.transactions, 0);
  t.equal(s.tps, null);
  t.ok(s.errors.some((e) => e.includes('zipfian parameter must be in range')), 'the cause is kept');
  t.ok(s.errors.length <= 10, 'errors are deduplicated and bounded');
  t.equal(new Set(s.errors).size, s.errors.length);
});

t.test('per-transaction log: percentiles and the measurement window', async (t) => {
  const file = path.join(FIX, 'pgbench-txlog-sample.log');
  const all = readTxLogs([file]);
  t.equal(all.count, 200);
  t.equal(percentile(all.latenciesUs, 50), 2054);
  t.equal(percentile(all.latenciesUs, 99), 13492);
  t.equal(percentile(all.latenciesUs, 100), 23185);
  const ends = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => {
    const p = l.split(' ');
    return Number(p[4]) * 1000 + Number(p[5]) / 1000;
  });
  const sorted = [...ends].sort((a, b) => a - b);
  const from = sorted[49];
  const to = sorted[149];
  t.equal(readTxLogs([file], from, to).count, ends.filter((e) => e > from && e <= to).length, 'window is (from, to]');
  t.equal(percentile([], 50), null);
  t.equal(median([3, 1, 2]), 2);
  t.equal(median([4, 1, 2, 3]), 2.5);
  t.equal(median([]), null);
});

t.test('/proc parsing', async (t) => {
  const st = parseProcStat('4242 (postgres: bench (x) idle) S 100 4242 4242 0 -1 4194560 1 0 0 0 17 5 3 2 20 0 1 0 123 0 0');
  t.same(st, { pid: 4242, comm: 'postgres: bench (x) idle', ppid: 100, utime: 17, stime: 5, cutime: 3, cstime: 2 });
  const m = parseMachineCpuLine('cpu  1000 10 500 9000 50 5 20 1 0 0');
  t.equal(m.busy, (1000 + 10 + 500 + 5 + 20 + 1) / 100);
  t.equal(m.total, (1000 + 10 + 500 + 5 + 20 + 1 + 9000 + 50) / 100);
  t.equal(m.irq, (5 + 20) / 100);
  t.equal(slope([[0, 100], [10, 200], [20, 300]]), 10);
  t.equal(slope([[0, 1]]), null);
  // Live CPU comes from schedstat: this process has used some, and it only grows.
  const a = runtimeSeconds(process.pid)!;
  let x = 0;
  for (let i = 0; i < 2e6; i++) x += Math.sqrt(i);
  t.ok(x > 0);
  const b = runtimeSeconds(process.pid)!;
  t.ok(a > 0 && b > a, `runtime grows (${a} -> ${b})`);
  t.ok(treeCpuSeconds(process.pid)! >= b);
  t.equal(runtimeSeconds(2 ** 22 + 12345), null, 'no such process');
});

t.test('target specs and generated pooler configs', async (t) => {
  const x = parseExtraTarget('127.0.0.1:6543:odyssey:777');
  t.same([x.host, x.port, x.label, x.pid, x.kind], ['127.0.0.1', 6543, 'odyssey', 777, 'extra']);
  t.equal(parseExtraTarget('localhost:6000:pgcat').pid, null);
  t.throws(() => parseExtraTarget('localhost:pgcat'));
  const backend = { host: '127.0.0.1', port: 5555, user: 'bench', password: 'bench', db: 'bench' };
  const ini = pgbouncerIni({ dir: '/tmp/x', port: 6000, backend, poolSize: 16, maxClientConn: 9000 });
  for (const line of ['pool_mode = transaction', 'default_pool_size = 16', 'max_client_conn = 9000', 'auth_type = scram-sha-256', 'unix_socket_dir =', 'bench = host=127.0.0.1 port=5555 dbname=bench']) {
    t.ok(ini.split('\n').includes(line), line);
  }
  const yaml = pgspliceYaml({ port: 6001, backend, poolSize: 16, maxClientConn: 9000, bypass: 'on' });
  t.match(yaml, /bypass: on/);
  t.match(yaml, /pool_mode: transaction/);
  t.match(yaml, /default_pool_size: 16/);
});

function latestResult(): { file: string; result: BenchResult } {
  const files = fs.readdirSync(RESULTS).filter((f) => /^\d{4}-\d\d-\d\dT[\d-]+Z\.json$/.test(f)).sort();
  if (files.length === 0) throw new Error(`no result file in ${RESULTS}`);
  const file = path.join(RESULTS, files[files.length - 1]);
  return { file, result: JSON.parse(fs.readFileSync(file, 'utf8')) };
}

t.test('result schema: the newest committed result is valid', async (t) => {
  const { file, result } = latestResult();
  t.same(validateResult(result), [], path.basename(file));
  t.ok(result.runs.length > 0, 'it has runs');
  t.ok(result.targets.some((x) => x.label === 'direct' && x.status === 'ok'), 'direct ran');
  t.ok(result.targets.some((x) => x.label === 'pgbouncer' && x.status === 'ok'), 'pgbouncer ran');
  t.ok(result.runs.some((r) => r.ok && r.tps! > 0 && r.cpu_us_per_tx.machine! > 0), 'a successful run with throughput and CPU');
  t.equal(result.goals.length, 5, 'the five issue-4 goals are reported');
  // The Markdown and SVG a person reads are produced from it without error.
  t.match(markdownReport(result), /## Goals/);
  const svg = parseXml(svgChart(result));
  t.equal(svg.name, 'svg', 'the chart is well-formed SVG');
});

t.test('result schema: the validator finds what is wrong', async (t) => {
  const { result } = latestResult();
  const broken = JSON.parse(JSON.stringify(result));
  delete broken.machine.cpus;
  broken.runs[0].tps = 'fast';
  broken.cells.push({ ...broken.cells[0], target: 'nobody' });
  broken.schema = 'other/9';
  const errs = validateResult(broken);
  t.ok(errs.includes('$.machine.cpus: missing'), 'missing field');
  t.ok(errs.includes('$.runs[0].tps: expected a number or null'), 'wrong type');
  t.ok(errs.some((e) => e.startsWith('$.schema')), 'schema id');
  t.same(validateResult([]), ['$: expected an object']);
  const onlyRef = JSON.parse(JSON.stringify(result));
  onlyRef.cells.push({ ...onlyRef.cells[0], target: 'nobody' });
  t.ok(validateResult(onlyRef).some((e) => e.includes("'nobody' is not in $.targets")), 'cells name known targets');
});

t.test('goals: met, missed, not measured', async (t) => {
  const { result } = latestResult();
  const r: BenchResult = JSON.parse(JSON.stringify(result));
  const mk = (target: string, tps: number, machine: number) => ({
    target, workload: 'c', mode: 'extended', clients: 64, connect_per_tx: false, rounds_ok: 1, tps,
    latency_p50_ms: 1, latency_p99_ms: 2, cpu_us_per_tx: { proxy: null, postgres: null, pgbench: null, kernel: null, ours: machine, machine }, proxy_attributable_us_per_tx: null as number | null, proxy_attributable_ours_us_per_tx: null as number | null,
  });
  r.cells = [mk('direct', 10000, 100), mk('pgbouncer', 8000, 130), mk('pgsplice-on', 11500, 105), mk('pgsplice-off', 7000, 160)];
  for (const c of r.cells) c.proxy_attributable_us_per_tx = c.proxy_attributable_ours_us_per_tx = c.cpu_us_per_tx.machine! - 100;
  r.idle = [{ target: 'pgsplice-on', clients_requested: 10, clients_opened: 10, open_seconds: 1, opens_per_second: 10, rss_before_kib: 1, rss_after_kib: 2, bytes_per_client: 5000, error: null }];
  const g = Object.fromEntries(evaluateGoals(r).map((x) => [x.id, x]));
  t.equal(g['on-vs-pgbouncer-tps'].met, true, '11500 >= 1.4 x 8000');
  t.equal(g['on-vs-direct-tps'].met, true);
  t.equal(g['on-cpu-vs-pgbouncer'].met, true, '5 <= 30/3');
  t.equal(g['off-vs-pgbouncer-tps'].met, false);
  t.match(g['off-vs-pgbouncer-tps'].detail, /MISSED.*short by 1000 tps/);
  t.equal(g['on-idle-memory'].met, false);
  r.cells = r.cells.filter((c) => c.target !== 'pgsplice-on');
  t.equal(evaluateGoals(r).find((x) => x.id === 'on-vs-direct-tps')!.met, null, 'no run: not measured');
});

// The benchmark runner's readers: pgbench output captured from real runs (bench/fixtures),
// per-transaction logs, /proc parsing, goals, and the result JSON schema on a real result.
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { slope } from '../bench/idle';
import { parse as parseYaml } from 'yaml';
import { RATE_SETTLE_MS, keptUpWithRate, median, parsePgbenchOutput, percentile, readTxLogs, windowStartMs } from '../bench/pgbench';
import { spawn } from 'node:child_process';
import { IdleCpuGroup, cpuControllerMount, makeIdleCpuGroup, parseCpuCgroup, policyCount, removeIdleCpuGroup, setIdlePriority } from '../bench/mirror-server';
import { SCHED_IDLE, parseMachineCpuLine, parseProcStat, parseSchedPolicy, readProcTable, runtimeSeconds, schedPolicy, treeCpuSeconds } from '../bench/proc';
import { mirrorCell } from '../bench/run';
import { evaluateGoals, markdownReport, svgChart } from '../bench/report';
import { BenchResult, CellSummary, MirrorRunStats, RunRecord, SCHEMA_ID, SCHEMA_ID_V1, validateResult } from '../bench/schema';
import { BUILTIN_TARGETS, kernelCounts, mirrorCountersOf, parseExtraTarget, pgbouncerIni, pgspliceYaml } from '../bench/targets';
import { parseConfig } from '../src/config/load';
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

// Captured from pgbench 15 against a scratch PostgreSQL on this machine: YCSB C, extended,
// 8 clients, -R 500 (kept up) and -R 200000 (could not).
t.test('pgbench summary: a fixed offered load (--rate)', async (t) => {
  const s = parsePgbenchOutput(fixture('pgbench-rate-extended.txt'));
  t.equal(s.queryMode, 'extended');
  t.equal(s.clients, 8);
  t.equal(s.transactions, 1306);
  t.equal(s.latencyAvgMs, 2.232, 'latency from the scheduled start');
  t.equal(s.rateLagAvgMs, 0.822);
  t.equal(s.rateLagMaxMs, 22.432);
  t.equal(s.tps, 490.424333);
  t.equal(keptUpWithRate(500, s.tps), true, '98% of the rate: kept up');
  const over = parsePgbenchOutput(fixture('pgbench-rate-overloaded.txt'));
  t.equal(over.rateLagAvgMs, 1044.668);
  t.equal(over.rateLagMaxMs, 2315.834);
  t.equal(over.tps, 5908.687797);
  t.equal(keptUpWithRate(200000, over.tps), false, 'far below the rate: did not keep up');
  t.equal(keptUpWithRate(5000, 4700), false, '94%: behind');
  t.equal(keptUpWithRate(5000, 4760), true, '95.2%: within Poisson noise');
  t.equal(keptUpWithRate(5000, null), null);
  const plain = parsePgbenchOutput(fixture('pgbench-ycsb-a-extended.txt'));
  t.equal(plain.rateLagAvgMs, null, 'no --rate, no lag line');
});

t.test('per-transaction log with --rate: the lag column', async (t) => {
  const file = path.join(FIX, 'pgbench-rate-txlog-sample.log');
  const s = readTxLogs([file]);
  t.equal(s.count, 200);
  t.ok(s.lagsUs, 'lag column read');
  t.equal(s.lagsUs!.length, 200);
  t.equal(percentile(s.latenciesUs, 50), 921);
  t.equal(percentile(s.latenciesUs, 99), 28710);
  t.equal(percentile(s.lagsUs!, 50), 162);
  t.equal(percentile(s.lagsUs!, 99), 7818);
  // pgbench's latency counts from the scheduled start: never below the lag.
  const lines = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => l.split(' ').map(Number));
  t.ok(lines.every((p) => p[2] >= p[6]), 'latency includes the schedule lag on every line');
  t.equal(readTxLogs([path.join(FIX, 'pgbench-txlog-sample.log')]).lagsUs, null, 'no --rate: no lags');
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

t.test('the window of a fixed-rate run starts RATE_SETTLE_MS after the load began', async (t) => {
  const file = path.join(FIX, 'pgbench-rate-txlog-sample.log');
  const s = readTxLogs([file]);
  const lines = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => l.split(' ').map(Number));
  // the earliest start: end (epoch s + µs) minus latency (µs, from the scheduled start)
  const firstStart = Math.min(...lines.map((p) => p[4] * 1000 + p[5] / 1000 - p[2] / 1000));
  t.ok(Math.abs(s.loadStartedMs! - firstStart) < 1e-3, `load began at the first scheduled start (${s.loadStartedMs} vs ${firstStart})`);
  t.ok(s.allClientsStartedMs! >= s.loadStartedMs!, 'every client ran after the load began');
  t.equal(windowStartMs(s, false), s.allClientsStartedMs, 'saturated: when every client has run a transaction');
  t.equal(windowStartMs(s, true), Math.max(s.allClientsStartedMs!, s.loadStartedMs! + RATE_SETTLE_MS), 'fixed rate: not before RATE_SETTLE_MS after the load began');
  // Two targets whose clients took different times to log in get the same start-up left out.
  const slowLogins = { allClientsStartedMs: 10_050, loadStartedMs: 10_000 };
  const fastLogins = { allClientsStartedMs: 20_030, loadStartedMs: 20_000 };
  t.equal(windowStartMs(slowLogins, true)! - slowLogins.loadStartedMs, windowStartMs(fastLogins, true)! - fastLogins.loadStartedMs, 'the same offset from the load start for both');
  t.equal(windowStartMs({ allClientsStartedMs: null, loadStartedMs: null }, true), null, 'an empty log: no window');
  t.equal(readTxLogs([]).loadStartedMs, null);
});

t.test('/proc parsing', async (t) => {
  const st = parseProcStat('4242 (postgres: bench (x) idle) S 100 4242 4242 0 -1 4194560 1 0 0 0 17 5 3 2 20 0 1 0 123 0 0');
  t.same(st, { pid: 4242, comm: 'postgres: bench (x) idle', state: 'S', ppid: 100, utime: 17, stime: 5, cutime: 3, cstime: 2 });
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
  t.ok(BUILTIN_TARGETS.includes('pgsplice-auto'), 'auto is a default target');
  // Each generated pgsplice config is one the proxy's own loader accepts, as written.
  for (const bypass of ['on', 'off', 'auto'] as const) {
    const yaml = pgspliceYaml({ port: 6001, backend, poolSize: 16, maxClientConn: 9000, bypass });
    const c = parseConfig(yaml, `${bypass}.yaml`);
    t.equal(c.bypass, bypass, `bypass: ${bypass}`);
    t.equal(c.pool_mode, 'transaction');
    t.equal(c.default_pool_size, 16);
    t.equal(c.max_client_conn, 9000);
    t.equal(c.databases.get('bench')?.port, 5555);
    t.notMatch(yaml, /mirrors/, 'no mirrors unless asked');
  }
  // The mirror row's config: one mirror in the database entry (issue 15's key names).
  const mirror = { host: '127.0.0.1', port: 5556, dbname: 'bench', user: 'bench', password: 'p"w', pool_size: 64 };
  const doc = parseYaml(pgspliceYaml({ port: 6002, backend, poolSize: 16, maxClientConn: 9000, bypass: 'on', mirrors: [mirror] }));
  t.same(doc.databases.bench.mirrors, [mirror], 'every key, pool_size too (the default 20 would leave most of 64 clients unmirrored)');
  t.equal(doc.databases.bench.port, 5555, 'the primary stays the backend');
  t.equal(doc.bypass, 'on');
});

t.test('SHOW BYPASS: the kernel transaction count and hand-backs', async (t) => {
  // Rows as pgsplice-on printed them at the end of a run on this machine.
  const rows = { mode: 'on', loaded: 'yes', reason: 'loaded', user_clientsToKernel: '6771', kernel_transactions: '35867', kernel_passed_skbs: '28704',
    fallback_no_idle_server: '6129', fallback_terminate: '501', fallback_named_statement: '141', fallback_tls_client: '0', transactions_total: '46273' };
  t.same(kernelCounts(rows), { transactions: 35867, handbacks: 6129 + 501 + 141 });
  t.equal(kernelCounts({ mode: 'off', loaded: 'no', reason: 'bypass: off', transactions_total: '9' }), null, 'not loaded');
  t.equal(kernelCounts({ loaded: 'yes' }), null, 'no such row');
});

// The committed results, newest first. A run may cover a subset of the targets
// (--targets); the full checks below read the newest run that compared pgsplice's three
// modes with PgBouncer and a fixed offered load, and every result must be valid.
function committedResults(): { file: string; result: BenchResult }[] {
  const files = fs.readdirSync(RESULTS).filter((f) => /^\d{4}-\d\d-\d\dT[\d-]+Z\.json$/.test(f)).sort().reverse();
  if (files.length === 0) throw new Error(`no result file in ${RESULTS}`);
  return files.map((f) => ({ file: path.join(RESULTS, f), result: JSON.parse(fs.readFileSync(path.join(RESULTS, f), 'utf8')) }));
}
const COMPARED = ['pgbouncer', 'pgsplice-off', 'pgsplice-on', 'pgsplice-auto'];
function latestResult(): { file: string; result: BenchResult } {
  const all = committedResults();
  const full = all.find(({ result }) => COMPARED.every((l) => result.options.targets.includes(l)) && result.options.rate_tps.length > 0);
  if (!full) throw new Error(`no committed result compares ${COMPARED.join(', ')} at a fixed rate`);
  return full;
}

t.test('result schema: the newest committed result is valid', async (t) => {
  const newest = committedResults()[0];
  t.same(validateResult(newest.result), [], `${path.basename(newest.file)} (the newest) is valid`);
  const { file, result } = latestResult();
  t.same(validateResult(result), [], path.basename(file));
  t.ok(result.runs.length > 0, 'it has runs');
  // (quick runs leave direct out)
  for (const label of ['pgsplice-off', 'pgsplice-on', 'pgsplice-auto', ...(result.options.targets.includes('direct') ? ['direct'] : [])]) {
    t.ok(result.targets.some((x) => x.label === label && x.status === 'ok'), `${label} ran`);
  }
  t.ok(result.targets.some((x) => x.label === 'pgbouncer' && x.status === 'ok'), 'pgbouncer ran');
  t.ok(result.runs.some((r) => r.ok && r.tps! > 0 && r.cpu_us_per_tx.machine! > 0), 'a successful run with throughput and CPU');
  t.equal(result.schema, SCHEMA_ID);
  const ids = result.goals.map((g) => g.id);
  for (const id of ['i13-prepared-kernel-share', 'i13-prepared-on-vs-off', 'i13-prepared-auto-vs-off', 'i13-ext-on-tps', 'i13-ext-on-p99', 'i13-rate-on-cpu', 'i13-rate-on-p99', 'i13-auto-never-below-off',
    'i14-off-tps-c-extended', 'i14-off-tps-a-simple', 'i14-off-proxy-cpu', 'i14-off-postgres-cpu', 'i14-off-pgbench-cpu', 'i14-rate-off-p50', 'i14-rate-off-p99', 'i14-idle-memory-off', 'i14-idle-memory-on']) {
    t.ok(ids.includes(id), `goal ${id} is reported`);
  }
  t.ok(result.cells.some((c) => c.rate_tps && c.rounds_ok > 0 && c.kept_up !== null), 'a fixed-rate cell with its keep-up verdict');
  if (result.options.mirror) {
    const m = result.targets.find((x) => x.label === 'pgsplice-mirror');
    t.ok(m && (m.status === 'ok' || /^not available: .+/.test(m.reason ?? '')), 'the mirror row ran or says why it is not available');
    t.ok(result.goals.some((g) => g.id === 'i15-mirror-tps'), 'and its goal is reported');
  }
  // The Markdown and SVG a person reads are produced from it without error.
  t.match(markdownReport(result), /## Goals/);
  const svg = parseXml(svgChart(result));
  t.equal(svg.name, 'svg', 'the chart is well-formed SVG');
});

t.test('result schema: version 1 results stay readable', async (t) => {
  const v1 = fs.readdirSync(RESULTS).filter((f) => f.endsWith('.json')).map((f) => JSON.parse(fs.readFileSync(path.join(RESULTS, f), 'utf8')) as BenchResult).filter((r) => r.schema === SCHEMA_ID_V1);
  t.ok(v1.length > 0, 'committed version 1 results');
  for (const r of v1) t.same(validateResult(r), []);
  const noRate = JSON.parse(JSON.stringify(latestResult().result));
  delete noRate.options.rate_tps;
  t.ok(validateResult(noRate).includes('$.options.rate_tps: missing'), 'version 2 requires the new fields');
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
  r.machine.background_busy_cpus = 0;
  const mk = (target: string, workload: string, mode: string, rate: number | null, tps: number, o: Partial<CellSummary> = {}): CellSummary => ({
    target, workload, mode, clients: 64, connect_per_tx: false, rate_tps: rate, rounds_ok: 2, error: null, tps,
    latency_p50_ms: 1, latency_p99_ms: 10, lag_p50_ms: rate ? 0.1 : null, lag_p99_ms: rate ? 1 : null, kept_up: rate ? true : null, kernel_share: null, handbacks_per_tx: null,
    cpu_us_per_tx: { proxy: 30, postgres: 100, pgbench: 30, kernel: 5, ours: 170, machine: 200 }, proxy_attributable_us_per_tx: null, proxy_attributable_ours_us_per_tx: null, ...o,
  });
  r.cells = [
    mk('pgbouncer', 'c', 'extended', null, 10000, { latency_p99_ms: 30 }),
    mk('pgsplice-on', 'c', 'extended', null, 11500, { latency_p99_ms: 25, kernel_share: 0.99 }),
    mk('pgsplice-off', 'c', 'extended', null, 9500, { cpu_us_per_tx: { proxy: 50, postgres: 105, pgbench: 36, kernel: 5, ours: 196, machine: 220 } }),
    mk('pgsplice-auto', 'c', 'extended', null, 9400),
    mk('pgbouncer', 'c', 'prepared', null, 0, { rounds_ok: 0, tps: null, error: 'pgbench: error: prepared statement "P_0" already exists' }),
    mk('pgsplice-on', 'c', 'prepared', null, 12000, { kernel_share: 0.85, handbacks_per_tx: 0.15 }),
    mk('pgsplice-auto', 'c', 'prepared', null, 9000, { kernel_share: 0.2 }),
    mk('pgsplice-off', 'c', 'prepared', null, 8500),
    mk('pgbouncer', 'c', 'extended', 5000, 5000, { latency_p50_ms: 1.0, latency_p99_ms: 8 }),
    mk('pgsplice-on', 'c', 'extended', 5000, 5000, { latency_p99_ms: 7, cpu_us_per_tx: { proxy: 5, postgres: 90, pgbench: 30, kernel: 20, ours: 145, machine: 140 } }),
    mk('pgsplice-off', 'c', 'extended', 5000, 4600, { kept_up: false, latency_p50_ms: 1.3, latency_p99_ms: 9 }),
    mk('pgsplice-auto', 'c', 'extended', 5000, 5000),
  ];
  r.idle = [{ target: 'pgsplice-on', clients_requested: 10, clients_opened: 10, open_seconds: 1, opens_per_second: 10, rss_before_kib: 1, rss_after_kib: 2, bytes_per_client: 5000, error: null }];
  r.options.mirror = false;
  const goals = evaluateGoals(r);
  const g = Object.fromEntries(goals.map((x) => [x.id, x]));
  t.equal(g['i13-prepared-kernel-share'].met, false, '85% < 90%');
  t.match(g['i13-prepared-kernel-share'].detail, /85\.0%.*0\.150 hand-backs.*auto 20\.0%/);
  t.equal(g['i13-prepared-on-vs-off'].met, true, '12000 >= 1.1 x 8500');
  t.equal(g['i13-prepared-auto-vs-off'].met, false, '9000 < 1.1 x 8500');
  t.equal(g['i13-prepared-on-vs-pgbouncer'].met, true, "against PgBouncer's extended row, its prepared row failed");
  t.equal(g['i13-ext-on-tps'].met, true, '11500 >= 1.1 x 10000');
  t.equal(g['i13-ext-on-p99'].met, true);
  t.equal(g['i13-rate-on-cpu'].met, true, '140 <= 0.75 x 200');
  t.match(g['i13-rate-on-cpu'].detail, /basis: machine CPU/);
  t.equal(g['i13-rate-on-p99'].met, true);
  t.equal(g['i13-auto-never-below-off'].met, false, 'auto 9400 < off 9500 on the extended row');
  t.match(g['i13-auto-never-below-off'].detail, /extended 64 clients 0\.99x/);
  t.notMatch(g['i13-auto-never-below-off'].detail, /5,000 tps/, 'auto kept up where off did not: not below');
  t.equal(g['i14-off-tps-c-extended'].met, true, '9500 >= 0.9 x 10000');
  t.equal(g['i14-off-tps-a-simple'].met, null, 'no YCSB A cells: not measured');
  t.equal(g['i14-off-proxy-cpu'].met, false, '50 > 1.5 x 30');
  t.match(g['i14-off-proxy-cpu'].detail, /over by 5\.0 µs\/tx/);
  t.equal(g['i14-off-postgres-cpu'].met, true, '105 within 10% of 100');
  t.equal(g['i14-off-pgbench-cpu'].met, false, '36 is 20% over 30');
  t.equal(g['i14-rate-off-p50'].met, false, '1.3 > 1.2 x 1.0');
  t.match(g['i14-rate-off-p50'].detail, /did not keep up with the rate: pgsplice-off/);
  t.equal(g['i14-rate-off-p99'].met, true, '9 <= 1.2 x 8');
  t.equal(g['i14-idle-memory-on'].met, false);
  t.equal(g['i14-idle-memory-off'].met, null, 'no idle run for off');
  r.idle.push({ target: 'pgsplice-off', clients_requested: 500, clients_opened: 500, open_seconds: 3, opens_per_second: 165, rss_before_kib: 74.5 * 1024, rss_after_kib: 68.1 * 1024, bytes_per_client: -10847, error: null });
  const shrank = evaluateGoals(r).find((x) => x.id === 'i14-idle-memory-off')!;
  t.equal(shrank.met, null, 'RSS shrank while opening: no figure, not met');
  t.match(shrank.detail, /shrank/);
  // With a reading after a full collection in the proxy, the goal reads that one.
  r.idle[0] = { ...r.idle[0], bytes_per_client: 6500, after_gc: { rss_bytes_per_client: 3200, heap_used_bytes_per_client: 2400, rss_less_young_gen_bytes_per_client: 3200, young_gen_growth_bytes: 0, external_bytes_per_client: 0, outside_v8_heap_bytes_per_client: 800 } };
  const gcGoal = evaluateGoals(r).find((x) => x.id === 'i14-idle-memory-on')!;
  t.equal(gcGoal.measured, 3200, 'the after-collection RSS per client, not the slope');
  t.equal(gcGoal.met, true);
  t.match(gcGoal.detail, /after a full collection \(JS heap 2400 B of it; RSS while opening, young generation included: 6500 B\)/);
  t.notOk(goals.some((x) => x.issue === 15), 'no mirror goal unless --mirror');
  r.options.mirror = true;
  r.targets = r.targets.filter((x) => x.label !== 'pgsplice-mirror');
  r.targets.push({ label: 'pgsplice-mirror', kind: 'pgsplice-mirror', status: 'failed', reason: 'not available: databases.bench.mirrors: unknown key', host: null, port: null, pid: null, note: null, peak_rss_kib: null, bypass_after: null });
  const m = evaluateGoals(r).find((x) => x.id === 'i15-mirror-tps')!;
  t.equal(m.met, null);
  t.match(m.detail, /not available: databases\.bench\.mirrors: unknown key/);
  // A busy machine: the CPU goal is judged on `ours` and says so.
  r.machine.background_busy_cpus = 1;
  t.match(evaluateGoals(r).find((x) => x.id === 'i13-rate-on-cpu')!.detail, /basis: ours/);
  r.goals = evaluateGoals(r);
  const md = markdownReport(r);
  t.match(md, /### Issue 13/);
  t.match(md, /### Issue 14/);
  t.match(md, /## Fixed offered load/);
  t.match(md, /\| 5,000 \| pgsplice-off \| 4,600 \| \*\*no\*\*/, 'the rate row says who did not keep up');
  t.match(md, /\*\*pgbouncer\*\*, C prepared 64 clients: pgbench: error: prepared statement "P_0" already exists/, 'a failed cell says why');
  t.equal(parseXml(svgChart(r)).name, 'svg');
});

t.test('SHOW MIRRORS: the counters the mirror rows read', async (t) => {
  // A row as pgsplice-mirror-idle printed it after a run on this machine (int8 columns arrive as text).
  const row = { database: 'bench', mirror: '127.0.0.1:38033/bench', state: 'up', clients: '0', queued_bytes: '0', peak_queued_bytes: '1048576', queue_bytes: '16777216',
    transactions: '20385', dropped: '2642', diverged: '0', lag_ms: '3', clients_mirrored: '130', clients_skipped: '0', last_error: '', last_divergence: '' };
  const c = mirrorCountersOf([row]);
  t.same(c, { mirrors: 1, states: 'up', transactions: 20385, dropped: 2642, diverged: 0, queued_bytes: 0, peak_queued_bytes: 1048576, clients_mirrored: 130, clients_skipped: 0, lag_ms: 3, last_error: '' });
  const two = mirrorCountersOf([row, { ...row, state: 'down', transactions: '5', dropped: '7', queued_bytes: '10', last_error: 'connection refused' }]);
  t.equal(two.transactions, 20390, 'summed over mirrors');
  t.equal(two.dropped, 2649);
  t.equal(two.queued_bytes, 10);
  t.equal(two.states, 'up,down');
  t.equal(two.last_error, 'connection refused');
  t.equal(mirrorCountersOf([]).transactions, 0, 'no mirror: zeros, and mirrors: 0 says so');
});

t.test('scheduling policy: SCHED_IDLE set on a process tree is inherited by what it forks later', async (t) => {
  t.equal(parseSchedPolicy(fs.readFileSync('/proc/self/sched', 'utf8')), 0, 'this process runs SCHED_NORMAL');
  t.equal(parseSchedPolicy('se.exec_start : 1.0\npolicy                                       :                    5\nprio : 120\n'), SCHED_IDLE);
  t.equal(parseSchedPolicy('no such line'), null);
  // A parent that has one child now and forks another after the policy is set, as the
  // mirror postmaster forks backends for the proxy's mirror connections.
  // (The second child is forked when the test writes a line: no timing.)
  const sh = spawn('bash', ['-c', 'sleep 30 & read -r go; sleep 30 & wait'], { stdio: ['pipe', 'ignore', 'ignore'], detached: true });
  t.teardown(() => {
    try {
      process.kill(-sh.pid!, 'SIGKILL');
    } catch {
      /* gone */
    }
  });
  const until = Date.now() + 10_000;
  while (policyCount(sh.pid!).processes < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  // With autogroups on, SCHED_IDLE alone leaves a process that calls setsid() (every
  // PostgreSQL backend) competing at nice 0: the bench puts the cluster in a CPU cgroup
  // with cpu.idle too. Here as root with the cpu controller mounted, as the bench runs.
  let group: IdleCpuGroup | null = null;
  if (cpuControllerMount() && process.getuid?.() === 0) {
    group = makeIdleCpuGroup(`pgsplice-bench-test-${process.pid}`);
    t.match(group.knob, /^cpu\.(idle=1|shares=2|weight=1)$/);
  }
  t.same(policyCount(sh.pid!, undefined, group), { processes: 2, idle: 0 }, 'parent and first child, normal');
  t.same(setIdlePriority(sh.pid!, group), { processes: 2, idle: 2 }, `chrt --idle on the tree${group ? ', moved into the group' : ''}`);
  sh.stdin!.write('go\n');
  const until2 = Date.now() + 10_000;
  while (policyCount(sh.pid!).processes < 3 && Date.now() < until2) await new Promise((r) => setTimeout(r, 20));
  t.same(policyCount(sh.pid!, undefined, group), { processes: 3, idle: 3 }, 'the child forked afterwards inherits SCHED_IDLE (and the group)');
  t.equal(schedPolicy(sh.pid!), SCHED_IDLE);
  t.equal(schedPolicy(process.pid), 0, 'the bench itself is untouched');
  if (group) t.not(parseCpuCgroup(fs.readFileSync('/proc/self/cgroup', 'utf8')), group.relPath, 'nor moved');
  // Stopped and reaped, the group is removed (as the bench does after the mirror cluster).
  const exited = new Promise((r) => sh.once('exit', r));
  process.kill(-sh.pid!, 'SIGKILL');
  await exited;
  if (group) {
    await removeIdleCpuGroup(group);
    t.notOk(fs.existsSync(group.dir), 'the group is gone');
  }
  t.equal(parseCpuCgroup('9:name=systemd:/\n2:cpuacct:/\n1:cpu:/pgsplice-bench-mirror-1-2\n0::/\n'), '/pgsplice-bench-mirror-1-2', 'v1: the cpu hierarchy, not cpuacct');
  t.equal(parseCpuCgroup('0::/user.slice/x\n'), '/user.slice/x', 'v2 only');
  t.same(cpuControllerMount('cgroup /sys/fs/cgroup/cpuacct cgroup rw,cpuacct 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n'), { dir: '/sys/fs/cgroup/cpu', version: 1 });
  t.equal(cpuControllerMount('cgroup /sys/fs/cgroup/cpuacct cgroup rw,cpuacct 0 0\n'), null, 'cpuacct is not cpu');
  // An exited child not yet reaped (a backend the postmaster has not reaped yet) is not
  // counted: cgroup v1 shows it in the root group. Here the parent never reaps.
  const z = spawn('bash', ['-c', 'sleep 0.05 & exec sleep 30'], { stdio: 'ignore', detached: true });
  const zUntil = Date.now() + 10_000;
  const zombie = () => (readProcTable().get(z.pid!) ?? []).some((c) => c.state === 'Z');
  while (!zombie() && Date.now() < zUntil) await new Promise((r) => setTimeout(r, 20));
  t.ok(zombie(), 'a zombie child');
  t.same(policyCount(z.pid!), { processes: 1, idle: 0 }, 'only the live parent is counted');
  const zExited = new Promise((r) => z.once('exit', r));
  process.kill(-z.pid!, 'SIGKILL');
  await zExited;
});

const mirrorRun = (target: string, round: number, tps: number, proxy: number, transactions: number, m: Partial<MirrorRunStats> | null): RunRecord => ({
  target, workload: 'c', mode: 'extended', clients: 64, round, connect_per_tx: false, rate_tps: null, ok: true, error: null, tps, transactions, failed: 0, latency_avg_ms: 1,
  window_s: 3, window_transactions: transactions, window_tps: tps, latency_p50_ms: 1, latency_p99_ms: 5, lag_p50_ms: null, lag_p99_ms: null, kept_up: null,
  cpu_s: { proxy: 1, postgres: 1, pgbench: 1, kernel: 0, ours: 3, machine: 4 }, cpu_us_per_tx: { proxy, postgres: 100, pgbench: 30, kernel: 5, ours: 165, machine: 200 },
  proxy_peak_rss_kib: 1, kernel_transactions: transactions, kernel_share: 1, kernel_handbacks: 0, handbacks_per_tx: 0,
  ...(m === null ? {} : { mirror: { priority: 'idle', transactions, dropped: 0, diverged: 0, mirrored_share: 1, drain_s: 0.4, queued_bytes_after: 0, peak_queued_bytes: 4096, clients_skipped: 0, state_after: 'up', last_error: '', server_processes: 70, server_processes_idle: 70, postgres_cpu_us_per_tx: 90, ...m } }),
});

t.test('mirror rows: counters over a cell, the two goals, the per-round table', async (t) => {
  // mirrorCell: sums over the rounds that have counters; a round that saw a process at
  // another policy makes the cell unverified; one still queued is counted.
  const cell = mirrorCell('idle', [
    mirrorRun('pgsplice-mirror-idle', 1, 9000, 31, 30000, { transactions: 29000, dropped: 1000, mirrored_share: 0.967, postgres_cpu_us_per_tx: 80 }),
    mirrorRun('pgsplice-mirror-idle', 2, 9100, 30, 31000, { transactions: 31000, diverged: 2, drain_s: null, postgres_cpu_us_per_tx: 100 }),
  ])!;
  t.same(cell, { priority: 'idle', rounds: 2, pgbench_transactions: 61000, transactions: 60000, dropped: 1000, diverged: 2, mirrored_share: 0.984, undrained_rounds: 1, idle_verified: true, postgres_cpu_us_per_tx: 90 });
  t.equal(mirrorCell('idle', [mirrorRun('pgsplice-mirror-idle', 1, 9000, 31, 30000, { server_processes_idle: 69 })])!.idle_verified, false, 'one process not at SCHED_IDLE');
  t.equal(mirrorCell('idle', [mirrorRun('pgsplice-mirror-idle', 1, 9000, 31, 30000, { server_processes: null, server_processes_idle: null })])!.idle_verified, false, 'never seen: not verified');
  t.equal(mirrorCell('normal', [mirrorRun('pgsplice-mirror', 1, 9000, 31, 30000, { priority: 'normal', server_processes_idle: 0 })])!.idle_verified, null, 'equal priority: nothing to verify');
  t.equal(mirrorCell('idle', [mirrorRun('pgsplice-mirror-idle', 1, 9000, 31, 30000, null)]), null, 'no counters read: no figures');

  const { result } = latestResult();
  const r: BenchResult = JSON.parse(JSON.stringify(result));
  r.options.mirror = true;
  r.machine.background_busy_cpus = 0;
  const ext = (target: string, tps: number, proxy: number, mirror?: CellSummary['mirror']): CellSummary => ({
    target, workload: 'c', mode: 'extended', clients: 64, connect_per_tx: false, rate_tps: null, rounds_ok: 2, error: null, tps, latency_p50_ms: 1, latency_p99_ms: 5,
    lag_p50_ms: null, lag_p99_ms: null, kept_up: null, kernel_share: 1, handbacks_per_tx: 0, cpu_us_per_tx: { proxy, postgres: 100, pgbench: 30, kernel: 5, ours: 165, machine: 200 },
    proxy_attributable_us_per_tx: null, proxy_attributable_ours_us_per_tx: null, ...(mirror ? { mirror } : {}),
  });
  const normal = { priority: 'normal' as const, rounds: 2, pgbench_transactions: 40000, transactions: 32000, dropped: 8000, diverged: 0, mirrored_share: 0.8, undrained_rounds: 0, idle_verified: null, postgres_cpu_us_per_tx: 110 };
  r.targets = r.targets.filter((x) => !x.label.startsWith('pgsplice-mirror'));
  for (const label of ['pgsplice-mirror', 'pgsplice-mirror-idle']) r.targets.push({ label, kind: label, status: 'ok', reason: null, host: '127.0.0.1', port: 1, pid: 1, note: null, peak_rss_kib: null, bypass_after: null });
  const setCells = (idle: CellSummary['mirror']) => {
    r.cells = [ext('pgsplice-on', 10000, 28), ext('pgsplice-mirror', 5800, 31), ext('pgsplice-mirror-idle', 9300, 32, idle)];
    r.cells[1].mirror = normal;
    return Object.fromEntries(evaluateGoals(r).map((x) => [x.id, x]));
  };
  let g = setCells({ ...cell, mirrored_share: 0.984 });
  t.equal(g['i15-mirror-tps'].met, false, 'the co-located row: 5800 < 0.9 x 10000, judged as before');
  t.equal(g['i15-mirror-tps'].measured, 0.58);
  t.match(g['i15-mirror-tps'].detail, /^MISSED: 0\.58x.*32,000 of 40,000 transactions mirrored \(80\.0%\), 8,000 dropped, 0 diverged/);
  t.match(g['i15-mirror-tps'].detail, /proxy CPU 31\.0 µs\/tx vs 28\.0 µs\/tx \(11%\)/);
  t.match(g['i15-mirror-tps'].detail, /primary-side CPU \(ours\) 165\.0 µs\/tx vs 165\.0 µs\/tx \(0%\)/);
  t.equal(g['i15-mirror-idle-tps'].met, true, '9300 >= 0.9 x 10000 with 98.4% mirrored');
  t.match(g['i15-mirror-idle-tps'].detail, /^met: 0\.93x.*60,000 of 61,000 transactions mirrored \(98\.4%\), 1,000 dropped, 2 diverged, 1 round\(s\) still queued/);
  g = setCells({ ...cell, transactions: 3000, dropped: 58000, mirrored_share: 0.049 });
  t.equal(g['i15-mirror-idle-tps'].met, false, 'a mirror that dropped nearly everything does not meet the goal, whatever the throughput');
  t.match(g['i15-mirror-idle-tps'].detail, /^MISSED: the mirror answered 4\.9% of the transactions \(< 90%\); throughput within the bound: 0\.93x/);
  g = setCells({ ...cell, idle_verified: false });
  t.equal(g['i15-mirror-idle-tps'].met, null, 'priority not verified: not measured');
  t.match(g['i15-mirror-idle-tps'].detail, /not all seen at SCHED_IDLE/);
  g = setCells(undefined);
  t.equal(g['i15-mirror-idle-tps'].met, null, 'no counters: not measured');
  r.targets = r.targets.filter((x) => x.label !== 'pgsplice-mirror-idle');
  r.targets.push({ label: 'pgsplice-mirror-idle', kind: 'pgsplice-mirror-idle', status: 'failed', reason: 'not available: chrt --idle -p 0 1: Operation not permitted', host: null, port: null, pid: null, note: null, peak_rss_kib: null, bypass_after: null });
  r.cells = r.cells.filter((c) => c.target !== 'pgsplice-mirror-idle');
  t.match(Object.fromEntries(evaluateGoals(r).map((x) => [x.id, x]))['i15-mirror-idle-tps'].detail, /not measured: pgsplice-mirror-idle: not available: chrt/);

  // The per-round table pairs each mirror run with pgsplice-on's run of the same round.
  r.runs = [
    mirrorRun('pgsplice-on', 1, 10000, 28, 40000, null), mirrorRun('pgsplice-on', 2, 8000, 30, 32000, null),
    mirrorRun('pgsplice-mirror', 1, 5800, 31, 23000, { priority: 'normal', transactions: 18400, dropped: 4600, mirrored_share: 0.8, server_processes_idle: 0 }),
    mirrorRun('pgsplice-mirror-idle', 2, 7600, 33, 30000, { drain_s: null, transactions: 29000, mirrored_share: 0.967, state_after: 'down', last_error: 'connect timeout' }),
  ];
  r.targets.push({ label: 'pgsplice-on', kind: 'pgsplice-on', status: 'ok', reason: null, host: null, port: null, pid: null, note: null, peak_rss_kib: null, bypass_after: null });
  const md = markdownReport(r);
  t.match(md, /## Mirroring \(issue 15\)/);
  t.match(md, /\| 1 \| pgsplice-mirror \| 5,800 \| 10,000 \| 0\.58x \| 31\.0 \| 28\.0 \| 1\.11x \| 165\.0 \| 165\.0 \| 1\.00x \| 18,400 \| 23,000 \| 80\.0% \| 4,600 \| 0 \| 0\.4 \| 0\/70 \| 90\.0 \|/);
  t.match(md, /\| 2 \| pgsplice-mirror-idle \| 7,600 \| 8,000 \| 0\.95x \| 33\.0 \| 30\.0 \| 1\.10x \| 165\.0 \| 165\.0 \| 1\.00x \| 29,000 \| 30,000 \| 96\.7% \| 0 \| 0 \| \*\*not drained\*\* \| 70\/70 \|/, 'against round 2 of pgsplice-on; an undrained round says so');
  t.match(md, /- round 2, pgsplice-mirror-idle: mirror down, last error: connect timeout/, 'the mirror\'s last error is shown');
  t.notMatch(md, /round 1, pgsplice-mirror:/, 'none where there was none');
  t.notMatch(markdownReport(latestResult().result), /## Mirroring/, 'no section without mirror runs');

  // The schema: mirror fields are optional, checked when present.
  t.same(validateResult(r).filter((e) => e.includes('mirror')), []);
  const bad = JSON.parse(JSON.stringify(r));
  bad.runs[2].mirror.dropped = 'many';
  bad.cells[1].mirror.idle_verified = 'yes';
  const errs = validateResult(bad);
  t.ok(errs.includes('$.runs[2].mirror.dropped: expected a number'), errs.join('; '));
  t.ok(errs.includes('$.cells[1].mirror.idle_verified: expected a boolean or null'));
});

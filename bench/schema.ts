// The result file bench/results/<timestamp>.json: its types and a dependency-free
// validator. bench/README.md documents the same schema; keep them in step.
import type { IdleResult } from './idle';

export const SCHEMA_ID = 'pgsplice-bench/2';
// Results written before the fixed-rate rows and per-cell kernel shares; still readable.
export const SCHEMA_ID_V1 = 'pgsplice-bench/1';

export interface CpuPerTx {
  // CPU microseconds per transaction, by whom. null when not measurable
  // (no proxy process for direct; an extra target without a pid).
  proxy: number | null;
  postgres: number | null;
  pgbench: number | null;
  kernel: number | null; // kernel threads (kworkers, ksoftirqd)
  ours: number | null; // proxy + postgres + pgbench + kernel: machine CPU without other users' work
  machine: number | null; // all non-idle CPU time of the machine (/proc/stat)
}

export interface RunRecord {
  target: string;
  workload: string;
  mode: string;
  clients: number;
  round: number;
  connect_per_tx: boolean; // pgbench -C (the connection storm)
  rate_tps: number | null; // pgbench --rate (a fixed offered load); null: as fast as it goes
  ok: boolean;
  error: string | null;
  tps: number | null; // pgbench's figure for the whole run
  transactions: number; // pgbench's count for the whole run
  failed: number;
  latency_avg_ms: number | null;
  window_s: number | null; // the measured steady-state window
  window_transactions: number | null;
  window_tps: number | null;
  latency_p50_ms: number | null; // from the per-transaction log, window only
  latency_p99_ms: number | null;
  // --rate only: how late transactions started against their schedule (window only);
  // the latency above includes it (pgbench counts from the scheduled start).
  lag_p50_ms: number | null;
  lag_p99_ms: number | null;
  kept_up: boolean | null; // --rate only: window tps >= KEPT_UP_SHARE x rate
  cpu_s: CpuPerTx; // CPU seconds in the window (same keys, seconds)
  cpu_us_per_tx: CpuPerTx;
  proxy_peak_rss_kib: number | null;
  // pgsplice with the kernel path loaded: growth of SHOW BYPASS's kernel_transactions
  // over the run, and that as a share of the transactions pgbench completed.
  kernel_transactions: number | null;
  kernel_share: number | null;
  // Growth of SHOW BYPASS's fallback_* counters (requests the kernel passed to user space:
  // waits for a server, named statements, ...) over the run, and per transaction.
  kernel_handbacks: number | null;
  handbacks_per_tx: number | null;
  // The mirror rows only (absent or null elsewhere): what the mirror got of this run.
  mirror?: MirrorRunStats | null;
}

// SHOW MIRRORS read before the run and again once the mirror answered everything queued
// (or the wait ended), so a mirror that dropped or fell behind shows as such.
export interface MirrorRunStats {
  priority: 'normal' | 'idle'; // the mirror PostgreSQL's CPU scheduling (idle: SCHED_IDLE)
  transactions: number; // growth of SHOW MIRRORS' transactions (answered by the mirror)
  dropped: number;
  diverged: number;
  // transactions / pgbench's transactions of the run (the whole run, like the counters)
  mirrored_share: number | null;
  // seconds from pgbench's end until nothing was queued for the mirror; null: still
  // queued when the wait ended (then transactions may grow later, outside the run)
  drain_s: number | null;
  queued_bytes_after: number; // at the last reading
  peak_queued_bytes: number; // SHOW MIRRORS' peak since the proxy started
  clients_skipped: number; // growth: clients not mirrored because pool_size was in use
  state_after: string; // SHOW MIRRORS' state at the last reading (up, down, ...)
  last_error: string; // SHOW MIRRORS' last_error then ('' if none)
  // The mirror PostgreSQL's processes seen during the run, and how many at SCHED_IDLE
  // (read from /proc/<pid>/sched at each progress line; the largest tree seen).
  server_processes: number | null;
  server_processes_idle: number | null;
  // the mirror PostgreSQL's CPU over the measured window, per primary transaction
  postgres_cpu_us_per_tx: number | null;
}

// A mirror cell's rounds together: sums of the counters, medians of the rest.
export interface MirrorCellStats {
  priority: 'normal' | 'idle';
  rounds: number;
  pgbench_transactions: number; // sum over the rounds with mirror counters
  transactions: number;
  dropped: number;
  diverged: number;
  mirrored_share: number | null; // transactions / pgbench_transactions
  undrained_rounds: number; // rounds whose queue had not emptied when the wait ended
  idle_verified: boolean | null; // idle rows: every process seen was at SCHED_IDLE in every round
  postgres_cpu_us_per_tx: number | null; // median
}

export interface CellSummary {
  target: string;
  workload: string;
  mode: string;
  clients: number;
  connect_per_tx: boolean;
  rate_tps: number | null;
  rounds_ok: number;
  error: string | null; // when no round succeeded: the first round's error
  tps: number | null; // median over rounds
  latency_p50_ms: number | null;
  latency_p99_ms: number | null;
  lag_p50_ms: number | null;
  lag_p99_ms: number | null;
  kept_up: boolean | null; // --rate only: every successful round kept up
  kernel_share: number | null; // median
  handbacks_per_tx: number | null; // median
  cpu_us_per_tx: CpuPerTx; // medians
  // machine CPU per transaction minus direct PostgreSQL's in the same cell
  proxy_attributable_us_per_tx: number | null;
  // the same from `ours` (immune to other work on the machine)
  proxy_attributable_ours_us_per_tx: number | null;
  mirror?: MirrorCellStats | null; // the mirror rows only
}

export interface TargetRecord {
  label: string;
  kind: string;
  status: 'ok' | 'failed';
  reason: string | null;
  host: string | null;
  port: number | null;
  pid: number | null;
  note: string | null;
  peak_rss_kib: number | null;
  // pgsplice only: SHOW BYPASS at the end of the runs (which path carried the load)
  bypass_after: Record<string, string> | null;
}

export interface IdleRecord extends IdleResult {
  target: string;
}

export interface GoalRecord {
  issue: number; // the issue that set the goal
  id: string;
  description: string;
  threshold: string;
  measured: number | null;
  met: boolean | null; // null: could not be measured
  detail: string;
}

export interface BenchResult {
  schema: typeof SCHEMA_ID | typeof SCHEMA_ID_V1;
  started_at: string;
  finished_at: string;
  command: string;
  machine: {
    hostname: string;
    kernel: string;
    cpus: number;
    cpu_model: string;
    mem_gib: number;
    node: string;
    background_busy_cpus: number; // CPUs busy with other work during 2 s before the runs
    pgbench: string | null;
    pgbouncer: string | null;
    postgres: string | null;
  };
  options: {
    quick: boolean;
    rows: number;
    rounds: number;
    duration_s: number;
    clients: number[];
    workloads: string[];
    modes: string[];
    pool_size: number;
    targets: string[];
    zipf_theta: number;
    storm_clients: number;
    storm_duration_s: number;
    idle_clients: number;
    pg_reused: boolean;
    rate_tps: number[]; // the fixed offered loads (YCSB C, extended, rate_clients)
    rate_clients: number;
    mirror: boolean; // --mirror: pgsplice-on with one mirror PostgreSQL was asked for
  };
  targets: TargetRecord[];
  runs: RunRecord[];
  cells: CellSummary[];
  idle: IdleRecord[];
  goals: GoalRecord[];
}

type Check = (v: unknown, at: string, errs: string[]) => void;
const isNum = (v: unknown) => typeof v === 'number' && Number.isFinite(v);
const num: Check = (v, at, e) => void (isNum(v) || e.push(`${at}: expected a number`));
const numOrNull: Check = (v, at, e) => void (v === null || isNum(v) || e.push(`${at}: expected a number or null`));
const str: Check = (v, at, e) => void (typeof v === 'string' || e.push(`${at}: expected a string`));
const strOrNull: Check = (v, at, e) => void (v === null || typeof v === 'string' || e.push(`${at}: expected a string or null`));
const bool: Check = (v, at, e) => void (typeof v === 'boolean' || e.push(`${at}: expected a boolean`));
const boolOrNull: Check = (v, at, e) => void (v === null || typeof v === 'boolean' || e.push(`${at}: expected a boolean or null`));
const oneOf = (...vals: unknown[]): Check => (v, at, e) => void (vals.includes(v) || e.push(`${at}: expected one of ${vals.join(', ')}`));
const arrayOf = (c: Check): Check => (v, at, e) => {
  if (!Array.isArray(v)) return void e.push(`${at}: expected an array`);
  v.forEach((x, i) => c(x, `${at}[${i}]`, e));
};
const obj = (shape: Record<string, Check>): Check => (v, at, e) => {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return void e.push(`${at}: expected an object`);
  const o = v as Record<string, unknown>;
  for (const [k, c] of Object.entries(shape)) {
    if (!(k in o)) e.push(`${at}.${k}: missing`);
    else c(o[k], `${at}.${k}`, e);
  }
};

const strMapOrNull: Check = (v, at, e) => {
  if (v === null) return;
  if (typeof v !== 'object' || Array.isArray(v)) return void e.push(`${at}: expected an object of strings or null`);
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) if (typeof x !== 'string') e.push(`${at}.${k}: expected a string`);
};
const cpu = obj({ proxy: numOrNull, postgres: numOrNull, pgbench: numOrNull, kernel: numOrNull, ours: numOrNull, machine: numOrNull });

const resultCheck = obj({
  schema: oneOf(SCHEMA_ID, SCHEMA_ID_V1),
  started_at: str,
  finished_at: str,
  command: str,
  machine: obj({ hostname: str, kernel: str, cpus: num, cpu_model: str, mem_gib: num, node: str, background_busy_cpus: num, pgbench: strOrNull, pgbouncer: strOrNull, postgres: strOrNull }),
  options: obj({
    quick: bool, rows: num, rounds: num, duration_s: num, clients: arrayOf(num), workloads: arrayOf(str), modes: arrayOf(str),
    pool_size: num, targets: arrayOf(str), zipf_theta: num, storm_clients: num, storm_duration_s: num, idle_clients: num, pg_reused: bool,
  }),
  targets: arrayOf(obj({ label: str, kind: str, status: oneOf('ok', 'failed'), reason: strOrNull, host: strOrNull, port: numOrNull, pid: numOrNull, note: strOrNull, peak_rss_kib: numOrNull, bypass_after: strMapOrNull })),
  runs: arrayOf(obj({
    target: str, workload: str, mode: str, clients: num, round: num, connect_per_tx: bool, ok: bool, error: strOrNull,
    tps: numOrNull, transactions: num, failed: num, latency_avg_ms: numOrNull, window_s: numOrNull, window_transactions: numOrNull,
    window_tps: numOrNull, latency_p50_ms: numOrNull, latency_p99_ms: numOrNull, cpu_s: cpu, cpu_us_per_tx: cpu, proxy_peak_rss_kib: numOrNull,
  })),
  cells: arrayOf(obj({
    target: str, workload: str, mode: str, clients: num, connect_per_tx: bool, rounds_ok: num, tps: numOrNull,
    latency_p50_ms: numOrNull, latency_p99_ms: numOrNull, cpu_us_per_tx: cpu, proxy_attributable_us_per_tx: numOrNull, proxy_attributable_ours_us_per_tx: numOrNull,
  })),
  idle: arrayOf(obj({
    target: str, clients_requested: num, clients_opened: num, open_seconds: num, opens_per_second: num,
    rss_before_kib: numOrNull, rss_after_kib: numOrNull, bytes_per_client: numOrNull, error: strOrNull,
  })),
  goals: arrayOf(obj({ id: str, description: str, threshold: str, measured: numOrNull, met: boolOrNull, detail: str })),
});

// What version 2 added (fixed-rate rows, kernel shares, goal issues, mirror).
const v2Check = obj({
  options: obj({ rate_tps: arrayOf(num), rate_clients: num, mirror: bool }),
  runs: arrayOf(obj({ rate_tps: numOrNull, lag_p50_ms: numOrNull, lag_p99_ms: numOrNull, kept_up: boolOrNull, kernel_transactions: numOrNull, kernel_share: numOrNull, kernel_handbacks: numOrNull, handbacks_per_tx: numOrNull })),
  cells: arrayOf(obj({ rate_tps: numOrNull, error: strOrNull, lag_p50_ms: numOrNull, lag_p99_ms: numOrNull, kept_up: boolOrNull, kernel_share: numOrNull, handbacks_per_tx: numOrNull })),
  goals: arrayOf(obj({ issue: num })),
});

// The mirror rows' fields (optional: results from before them have none).
const mirrorRunCheck = obj({
  priority: oneOf('normal', 'idle'), transactions: num, dropped: num, diverged: num, mirrored_share: numOrNull, drain_s: numOrNull,
  queued_bytes_after: num, peak_queued_bytes: num, clients_skipped: num, state_after: str, last_error: str, server_processes: numOrNull, server_processes_idle: numOrNull, postgres_cpu_us_per_tx: numOrNull,
});
const mirrorCellCheck = obj({
  priority: oneOf('normal', 'idle'), rounds: num, pgbench_transactions: num, transactions: num, dropped: num, diverged: num, mirrored_share: numOrNull,
  undrained_rounds: num, idle_verified: boolOrNull, postgres_cpu_us_per_tx: numOrNull,
});
const optional = (k: string, c: Check): Check => (v, at, e) => {
  const o = v as Record<string, unknown>;
  if (o[k] !== undefined && o[k] !== null) c(o[k], `${at}.${k}`, e);
};

// Returns the list of problems; empty when the value is a valid result.
export function validateResult(v: unknown): string[] {
  const errs: string[] = [];
  resultCheck(v, '$', errs);
  if (errs.length === 0 && (v as BenchResult).schema === SCHEMA_ID) v2Check(v, '$', errs);
  if (errs.length === 0) {
    const r = v as BenchResult;
    r.runs.forEach((x, i) => optional('mirror', mirrorRunCheck)(x, `$.runs[${i}]`, errs));
    r.cells.forEach((x, i) => optional('mirror', mirrorCellCheck)(x, `$.cells[${i}]`, errs));
  }
  if (errs.length === 0) {
    const r = v as BenchResult;
    const labels = new Set(r.targets.map((t) => t.label));
    for (const [i, run] of r.runs.entries()) if (!labels.has(run.target)) errs.push(`$.runs[${i}].target: '${run.target}' is not in $.targets`);
    for (const [i, c] of r.cells.entries()) if (!labels.has(c.target)) errs.push(`$.cells[${i}].target: '${c.target}' is not in $.targets`);
  }
  return errs;
}

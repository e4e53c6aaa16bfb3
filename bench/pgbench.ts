// Running pgbench and reading what it says: the summary on stdout, the progress
// lines on stderr (-P), and the per-transaction logs (-l) from which the latency
// percentiles are computed (pgbench itself only reports averages).
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface PgbenchScriptSummary {
  name: string;
  weight: number | null;
  transactions: number;
  failed: number;
  latencyAvgMs: number | null;
}

export interface PgbenchSummary {
  queryMode: string | null;
  clients: number | null;
  threads: number | null;
  durationS: number | null;
  transactions: number;
  failed: number;
  latencyAvgMs: number | null; // with --rate: from the scheduled start, schedule lag included
  // With --rate: "rate limit schedule lag: avg X (max Y) ms", how late transactions
  // started against their schedule (grows without bound when the target cannot keep up).
  rateLagAvgMs: number | null;
  rateLagMaxMs: number | null;
  initialConnectionMs: number | null; // without -C
  averageConnectionMs: number | null; // with -C
  tps: number | null;
  tpsIncludesConnections: boolean;
  aborted: boolean;
  errors: string[]; // "pgbench: error: ..." lines, deduplicated, at most 10
  scripts: PgbenchScriptSummary[];
}

function num(re: RegExp, text: string): number | null {
  const m = re.exec(text);
  return m ? Number(m[1]) : null;
}

export function parsePgbenchOutput(text: string): PgbenchSummary {
  const errors: string[] = [];
  for (const line of text.split('\n')) {
    const m = /^pgbench: (?:error|fatal): (.*)$/.exec(line.trim());
    if (m && !errors.includes(m[1]) && errors.length < 10) errors.push(m[1]);
  }
  const scripts: PgbenchScriptSummary[] = [];
  const scriptRe = /^SQL script \d+: (.+)$/gm;
  const starts: Array<{ name: string; index: number }> = [];
  for (let m = scriptRe.exec(text); m; m = scriptRe.exec(text)) starts.push({ name: m[1].trim(), index: m.index });
  starts.forEach((s, i) => {
    const block = text.slice(s.index, i + 1 < starts.length ? starts[i + 1].index : undefined);
    scripts.push({
      name: s.name,
      weight: num(/- weight: (\d+)/, block),
      transactions: num(/- (\d+) transactions/, block) ?? 0,
      failed: num(/- number of failed transactions: (\d+)/, block) ?? 0,
      latencyAvgMs: num(/- latency average = ([\d.]+) ms/, block),
    });
  });
  const head = starts.length ? text.slice(0, starts[0].index) : text;
  const tpsLine = /^tps = ([\d.]+) \(([^)]*)\)/m.exec(head);
  return {
    queryMode: /^query mode: (\S+)/m.exec(head)?.[1] ?? null,
    clients: num(/^number of clients: (\d+)/m, head),
    threads: num(/^number of threads: (\d+)/m, head),
    durationS: num(/^duration: (\d+) s/m, head),
    transactions: num(/^number of transactions actually processed: (\d+)/m, head) ?? 0,
    failed: num(/^number of failed transactions: (\d+)/m, head) ?? 0,
    latencyAvgMs: num(/^latency average = ([\d.]+) ms/m, head),
    rateLagAvgMs: num(/^rate limit schedule lag: avg ([\d.]+) /m, head),
    rateLagMaxMs: num(/^rate limit schedule lag: avg [\d.]+ \(max ([\d.]+)\) ms/m, head),
    initialConnectionMs: num(/^initial connection time = ([\d.]+) ms/m, head),
    averageConnectionMs: num(/^average connection time = ([\d.]+) ms/m, head),
    tps: tpsLine ? Number(tpsLine[1]) : null,
    tpsIncludesConnections: tpsLine ? /including/.test(tpsLine[2]) : false,
    aborted: /Run was aborted|aborted in command/.test(text),
    errors,
    scripts,
  };
}

// One line of a pgbench -l log: client_id transaction_no time script_no time_epoch time_us [lag]
// where time is the transaction's latency in µs and time_epoch/time_us when it ended.
// With --rate, time counts from the transaction's scheduled start (so it includes the
// schedule lag) and lag is how late it actually started, in µs.
export interface TxLogStats {
  count: number;
  latenciesUs: Float64Array; // sorted ascending
  lagsUs: Float64Array | null; // sorted ascending; null when the log has no lag column (no --rate)
  // When every client had finished its first transaction (all connected and running),
  // over the whole log (not only the window); null for an empty log.
  allClientsStartedMs: number | null;
  // When the load began: the earliest transaction start in the whole log (end minus
  // latency; with --rate the latency counts from the scheduled start, so this is the
  // first scheduled start). null for an empty log.
  loadStartedMs: number | null;
}

// Reads the per-transaction logs, keeping transactions that completed in (fromMs, toMs].
export function readTxLogs(files: string[], fromMs = -Infinity, toMs = Infinity): TxLogStats {
  let lat = new Float64Array(1 << 16);
  let lag = new Float64Array(1 << 16);
  let n = 0;
  let lagged = 0;
  const firstEnd = new Map<string, number>();
  let loadStarted = Infinity;
  for (const f of files) {
    const text = fs.readFileSync(f, 'utf8');
    let pos = 0;
    while (pos < text.length) {
      let eol = text.indexOf('\n', pos);
      if (eol < 0) eol = text.length;
      const line = text.slice(pos, eol);
      pos = eol + 1;
      if (!line) continue;
      const parts = line.split(' ');
      if (parts.length < 6) continue;
      const latency = Number(parts[2]);
      const endMs = Number(parts[4]) * 1000 + Number(parts[5]) / 1000;
      const prev = firstEnd.get(parts[0]);
      if (prev === undefined || endMs < prev) firstEnd.set(parts[0], endMs);
      if (Number.isFinite(latency) && endMs - latency / 1000 < loadStarted) loadStarted = endMs - latency / 1000;
      if (!Number.isFinite(latency) || endMs <= fromMs || endMs > toMs) continue;
      if (n === lat.length) {
        const bigger = new Float64Array(lat.length * 2);
        bigger.set(lat);
        lat = bigger;
        const biggerLag = new Float64Array(lag.length * 2);
        biggerLag.set(lag);
        lag = biggerLag;
      }
      if (parts.length >= 7 && parts[6] !== '') {
        lag[n] = Number(parts[6]);
        lagged++;
      }
      lat[n++] = latency;
    }
  }
  const out = lat.slice(0, n).sort();
  // All lines of one run have the lag column or none do.
  const lags = lagged > 0 && lagged === n ? lag.slice(0, n).sort() : null;
  return {
    count: n, latenciesUs: out, lagsUs: lags,
    allClientsStartedMs: firstEnd.size ? Math.max(...firstEnd.values()) : null,
    loadStartedMs: Number.isFinite(loadStarted) ? loadStarted : null,
  };
}

// Nearest-rank percentile of sorted values; p in [0, 100].
export function percentile(sorted: ArrayLike<number>, p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

export function median(values: number[]): number | null {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

export interface PgbenchRunOptions {
  host: string;
  port: number;
  user: string;
  password: string;
  db: string;
  scriptArgs: string[]; // -f file@weight ...
  defines: Record<string, string | number>;
  mode: 'simple' | 'extended' | 'prepared';
  clients: number;
  threads: number;
  durationS: number;
  rateTps?: number | null; // --rate: a fixed offered load (Poisson arrivals), all clients together
  connectPerTx?: boolean; // -C
  logDir: string; // per-transaction logs go here (deleted by the caller)
  pgbench?: string;
  // Called when each progress line (-P 1) arrives, with its wall-clock time.
  onProgress?: (atMs: number, line: string) => void;
  onStart?: (pid: number) => void;
}

export interface PgbenchRun {
  code: number;
  stdout: string;
  stderr: string;
  summary: PgbenchSummary;
  logFiles: string[];
}

export function runPgbench(o: PgbenchRunOptions): Promise<PgbenchRun> {
  fs.mkdirSync(o.logDir, { recursive: true });
  const prefix = path.join(o.logDir, 'tx');
  const args = [
    '-n', '-h', o.host, '-p', String(o.port), '-U', o.user,
    ...Object.entries(o.defines).flatMap(([k, v]) => ['-D', `${k}=${v}`]),
    ...o.scriptArgs,
    '-M', o.mode, '-c', String(o.clients), '-j', String(Math.min(o.threads, o.clients)),
    '-T', String(o.durationS), '-P', '1', '-l', `--log-prefix=${prefix}`,
    ...(o.connectPerTx ? ['-C'] : []),
    ...(o.rateTps ? ['-R', String(o.rateTps)] : []),
    o.db,
  ];
  return new Promise((resolve) => {
    const p = spawn(o.pgbench ?? 'pgbench', args, {
      env: { ...process.env, PGPASSWORD: o.password, PGAPPNAME: 'pgsplice-bench', PGCONNECT_TIMEOUT: '20' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    if (p.pid !== undefined) o.onStart?.(p.pid);
    let stdout = '';
    let stderr = '';
    let partial = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d: Buffer) => {
      const s = d.toString();
      stderr += s;
      partial += s;
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      const now = Date.now();
      for (const l of lines) if (l.startsWith('progress:')) o.onProgress?.(now, l);
    });
    p.on('error', (e) => {
      stderr += `\nspawn error: ${e.message}`;
    });
    p.on('close', (code) => {
      const logFiles = fs.readdirSync(o.logDir).filter((f) => f.startsWith('tx.')).map((f) => path.join(o.logDir, f));
      // Progress lines are on stderr; pgbench prints errors there too.
      resolve({ code: code ?? -1, stdout, stderr, summary: parsePgbenchOutput(stdout + '\n' + stderr), logFiles });
    });
  });
}

export async function pgbenchVersion(pgbench = 'pgbench'): Promise<string | null> {
  return new Promise((resolve) => {
    const p = spawn(pgbench, ['--version'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.on('error', () => resolve(null));
    p.on('close', () => resolve(out.trim() || null));
  });
}

// A target kept up with a fixed offered load when it completed at least this share of
// the scheduled transactions in the measurement window. pgbench's arrivals are Poisson,
// so a few thousand transactions per second land within ~2% of the rate; a target that
// cannot keep up falls behind by more and its schedule lag grows for the whole run.
export const KEPT_UP_SHARE = 0.95;

// A fixed-rate run's measurement window starts this long after its load began (pgbench's
// first scheduled transaction), for every target alike. pgbench's -T and progress clock
// start before its clients connect, so "the first reading after every client ran" came
// sooner after the load began for a target whose logins took longer, and its window held
// more of the start-up (the first transactions of 64 clients, a backlog then drained):
// through pgsplice the logins took 0.3-0.6 s, through PgBouncer 0.25-0.3 s.
export const RATE_SETTLE_MS = 1000;

// Where a run's measurement window may start: once every client has run a transaction
// and, at a fixed rate, RATE_SETTLE_MS after the load began.
export function windowStartMs(log: Pick<TxLogStats, 'allClientsStartedMs' | 'loadStartedMs'>, fixedRate: boolean): number | null {
  if (log.allClientsStartedMs === null) return null;
  if (!fixedRate || log.loadStartedMs === null) return log.allClientsStartedMs;
  return Math.max(log.allClientsStartedMs, log.loadStartedMs + RATE_SETTLE_MS);
}
export function keptUpWithRate(rateTps: number, achievedTps: number | null): boolean | null {
  if (achievedTps === null || !(rateTps > 0)) return null;
  return achievedTps >= KEPT_UP_SHARE * rateTps;
}

// npm run bench [-- --quick] : YCSB through pgbench against PostgreSQL directly,
// PgBouncer, and pgsplice with the kernel path off, on and auto, interleaved over
// rounds, saturated and at a fixed offered load (pgbench --rate);
// writes bench/results/<timestamp>.{json,md,svg} and latest.{md,svg}.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { ScratchPostgres, freePort } from '../scripts/scratch-postgres';
import { WORKLOADS, ZIPF_THETA, pgbenchScriptArgs, setupStatements } from '../scripts/ycsb';
import { idleRun } from './idle';
import { Inspector } from './inspector';
import { MirrorPriority, MirrorServer, PolicyCount, policyCount, startMirrorServer } from './mirror-server';
import { RATE_SETTLE_MS, keptUpWithRate, median, pgbenchVersion, percentile, readTxLogs, runPgbench, windowStartMs } from './pgbench';
import { CpuSnapshot, ProcTable, peakRssKiB, pidAlive, postmasterPid, snapshot } from './proc';
import { evaluateGoals, markdownReport, svgChart } from './report';
import { BenchResult, CellSummary, CpuPerTx, MirrorCellStats, MirrorRunStats, RunRecord, SCHEMA_ID, TargetRecord, validateResult } from './schema';
import {
  Backend, BUILTIN_TARGETS, MIRROR_KINDS, MirrorCounters, RunningTarget, TargetKind, directTarget, kernelCounts, parseExtraTarget, pgbouncerVersion, pgspliceBypassInfo,
  pgspliceMirrorCounters, startPgbouncer, startPgsplice,
} from './targets';

const REPO = path.resolve(__dirname, '..', '..');

// PostgreSQL tuned for measuring proxy overhead: everything in memory, no durability.
export const PG_BENCH_SETTINGS: Record<string, string | number> = {
  max_connections: 1200,
  shared_buffers: "'512MB'",
  fsync: 'off',
  synchronous_commit: 'off',
  full_page_writes: 'off',
  max_wal_size: "'8GB'",
  checkpoint_timeout: "'1h'",
  jit: 'off',
  autovacuum_naptime: "'10min'",
  log_min_messages: 'warning',
};

function list(s: string): string[] {
  return s.split(',').map((x) => x.trim()).filter(Boolean);
}

async function main(): Promise<void> {
  const argv = await yargs(hideBin(process.argv))
    .scriptName('npm run bench --')
    .usage('$0 [options]\n\nYCSB via pgbench: direct PostgreSQL vs PgBouncer vs pgsplice (bypass off/on/auto).')
    .option('quick', { type: 'boolean', default: false, describe: 'short run (~7 min on a quiet 2-CPU machine): 10k rows, YCSB C and A, simple and extended, 64 clients; prepared on C; the fixed-rate row; 2 rounds; no storm; 10000 idle clients' })
    .option('rows', { type: 'number', describe: 'usertable rows (default 100000; quick 10000)' })
    .option('rounds', { type: 'number', describe: 'interleaved rounds per cell (default 3; quick 2)' })
    .option('rate-tps', { type: 'string', describe: "fixed offered loads for pgbench --rate on YCSB C, extended, --rate-clients clients: a list, or 'none' (default 5000)" })
    .option('rate-clients', { type: 'number', default: 64, describe: 'clients of the fixed-rate rows' })
    .option('prepared-workloads', { type: 'string', describe: 'workloads that get the -M prepared row (default all of --workloads; quick c)' })
    .option('mirror', { type: 'boolean', default: false, describe: "also run pgsplice-on with one mirror PostgreSQL (config 'mirrors:') on YCSB C, extended; 'not available' if the proxy rejects the key" })
    .option('duration', { type: 'number', describe: 'seconds of load per pgbench run, >= 3 (default 4); each run gets 1 s more per 64 clients for connecting' })
    .option('clients', { type: 'string', describe: 'client counts (default 16,64,256; quick 64)' })
    .option('workloads', { type: 'string', describe: `workloads of ${Object.keys(WORKLOADS).join(',')} (default a,b,c,rmw; quick c,a)` })
    .option('clients-simple', { type: 'string', describe: "client counts for the simple and prepared protocols ('all' = --clients; default 64, so the client sweep runs on the extended protocol the goals use)" })
    .option('modes', { type: 'string', describe: 'pgbench protocols simple,extended,prepared (default all three)' })
    .option('targets', { type: 'string', describe: `built-in targets to run (default ${BUILTIN_TARGETS.join(',')}; quick: all but direct)` })
    .option('extra', { type: 'string', array: true, default: [] as string[], describe: 'another pooler: host:port:label[:pid] (routes database/user of the backend)' })
    .option('pg-url', { type: 'string', describe: 'reuse this PostgreSQL (postgres://user:pw@host:port/db) instead of a scratch one; its usertable is dropped and reloaded unless it has --rows rows' })
    .option('pool-size', { type: 'number', default: 16 })
    .option('threads', { type: 'number', default: 2, describe: 'pgbench -j' })
    .option('storm', { type: 'boolean', describe: 'run the connection storm (pgbench -C; default yes, quick no); --no-storm skips it' })
    .option('storm-clients', { type: 'number', default: 16 })
    .option('storm-duration', { type: 'number', describe: 'seconds (default 4)' })
    .option('idle', { type: 'boolean', default: true, describe: 'run the idle-connections test; --no-idle skips it' })
    .option('idle-clients', { type: 'number', describe: 'idle clients to open (default 10000, quick too)' })
    .option('quiet-wait', { type: 'number', describe: 'seconds to wait for other load on the machine to stop before starting (default 20; quick 3)' })
    .option('out', { type: 'string', default: path.join(REPO, 'bench', 'results'), describe: 'directory for the results' })
    .option('keep-tmp', { type: 'boolean', default: false })
    .strict()
    .help()
    .parse();

  const quick = argv.quick;
  const rows = argv.rows ?? (quick ? 10_000 : 100_000);
  const rounds = argv.rounds ?? (quick ? 2 : 3);
  const duration = Math.max(3, argv.duration ?? 4);
  const clients = list(argv.clients ?? (quick ? '64' : '16,64,256')).map(Number);
  const workloads = list(argv.workloads ?? (quick ? 'c,a' : 'a,b,c,rmw'));
  const modes = list(argv.modes ?? 'simple,extended,prepared');
  const preparedWorkloads = list(argv['prepared-workloads'] ?? (quick ? 'c' : workloads.join(',')));
  const rateTps = argv['rate-tps'] === 'none' ? [] : list(argv['rate-tps'] ?? '5000').map(Number);
  const rateClients = argv['rate-clients'];
  const storm = argv.storm ?? !quick;
  // Quick mode leaves out direct PostgreSQL: no goal reads it (--targets brings it back).
  const wanted = list(argv.targets ?? (quick ? BUILTIN_TARGETS.filter((t) => t !== 'direct') : BUILTIN_TARGETS).join(','));
  const stormDuration = Math.max(3, argv['storm-duration'] ?? 4);
  const idleClients = argv['idle-clients'] ?? 10_000;
  const poolSize = argv['pool-size'];
  for (const w of workloads) if (!WORKLOADS[w]) throw new Error(`unknown workload '${w}'`);
  for (const t of wanted) if (!BUILTIN_TARGETS.includes(t as TargetKind)) throw new Error(`unknown target '${t}' (use --extra for others)`);
  for (const m of modes) if (!['simple', 'extended', 'prepared'].includes(m)) throw new Error(`unknown mode '${m}'`);
  for (const r of rateTps) if (!(Number.isInteger(r) && r > 0)) throw new Error(`--rate-tps: '${r}' is not a positive whole number of transactions per second`);

  const startedAt = new Date();
  const log = (s: string) => process.stdout.write(s + '\n');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-bench-'));
  fs.chmodSync(tmp, 0o755);
  const running: RunningTarget[] = [];
  let scratch: ScratchPostgres | null = null;
  const mirrorServers = new Map<string, MirrorServer>(); // by target label
  let cleaning: Promise<void> | null = null;
  const cleanup = () =>
    (cleaning ??= (async () => {
      for (const t of running) await t.stop().catch(() => undefined);
      if (scratch) await scratch.destroy().catch(() => undefined);
      for (const m of mirrorServers.values()) await m.destroy().catch(() => undefined);
      if (!argv['keep-tmp']) fs.rmSync(tmp, { recursive: true, force: true });
    })());
  let aborting = false;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      aborting = true;
      log(`\n${sig}: stopping everything`);
      void cleanup().then(() => process.exit(130));
    });
  }

  try {
    // --- PostgreSQL ---
    let backend: Backend;
    let pmPid: number | null = null;
    let psql: (sql: string) => string;
    if (argv['pg-url']) {
      const u = new URL(argv['pg-url']);
      backend = {
        host: u.hostname || '127.0.0.1', port: Number(u.port || 5432), user: decodeURIComponent(u.username || 'postgres'),
        password: decodeURIComponent(u.password), db: decodeURIComponent(u.pathname.replace(/^\//, '') || 'postgres'),
      };
      psql = (sql) => execFileSync('psql', ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', backend.host, '-p', String(backend.port), '-U', backend.user, '-d', backend.db, '-c', sql], {
        encoding: 'utf8', env: { ...process.env, PGPASSWORD: backend.password }, stdio: ['ignore', 'pipe', 'pipe'],
      }).trim();
      try {
        pmPid = postmasterPid(psql('SHOW data_directory'));
      } catch {
        pmPid = null;
      }
      log(`PostgreSQL: reusing ${backend.host}:${backend.port}/${backend.db}${pmPid ? ` (postmaster ${pmPid})` : ' (its CPU is not measured: data_directory not readable)'}`);
    } else {
      log('PostgreSQL: starting a scratch cluster');
      scratch = await ScratchPostgres.create({ settings: PG_BENCH_SETTINGS });
      scratch.createUserAndDb('bench', 'bench', 'bench');
      backend = { host: '127.0.0.1', port: scratch.port, user: 'bench', password: 'bench', db: 'bench' };
      const s = scratch;
      psql = (sql) => s.psql(sql, 'bench');
      pmPid = postmasterPid(scratch.dataDir);
    }
    const pgVersion = psql('SELECT version()').split(' on ')[0];
    let verifier: string | null = null;
    try {
      verifier = (scratch ? scratch.psql(`SELECT rolpassword FROM pg_authid WHERE rolname = '${backend.user.replace(/'/g, "''")}'`) : psql(`SELECT rolpassword FROM pg_authid WHERE rolname = current_user`)) || null;
    } catch {
      verifier = null; // not a superuser: PgBouncer gets the plain-text password
    }
    let have = -1;
    try {
      have = Number(psql('SELECT count(*) FROM usertable'));
    } catch {
      /* no table */
    }
    if (have !== rows) {
      log(`YCSB usertable: loading ${rows} rows`);
      const t0 = Date.now();
      for (const st of setupStatements(rows)) psql(st);
      if (scratch) psql('ALTER TABLE usertable OWNER TO bench');
      log(`  loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    } else log(`YCSB usertable: ${rows} rows present`);

    // --- targets ---
    const targetRecords: TargetRecord[] = [];
    const maxClientConn = Math.max(5000, idleClients + Math.max(...clients, rateClients, argv['storm-clients']) + 500);
    const starters = new Map<string, () => Promise<RunningTarget>>();
    for (const kind of wanted as TargetKind[]) {
      try {
        const start = async (): Promise<RunningTarget> => {
          if (kind === 'direct') return directTarget(backend);
          if (kind === 'pgbouncer') return startPgbouncer({ dir: path.join(tmp, 'pgbouncer'), port: await freePort(), backend, poolSize, maxClientConn, scramVerifier: verifier });
          const bypass = kind === 'pgsplice-on' ? 'on' : kind === 'pgsplice-auto' ? 'auto' : 'off';
          return startPgsplice({ dir: path.join(tmp, kind), port: await freePort(), backend, poolSize, maxClientConn, bypass });
        };
        const t = await start();
        starters.set(t.label, start);
        running.push(t);
        targetRecords.push({ label: t.label, kind, status: 'ok', reason: null, host: t.host, port: t.port, pid: t.pid, note: t.note, peak_rss_kib: null, bypass_after: null });
        log(`target ${t.label}: ${t.host}:${t.port}${t.pid ? ` pid ${t.pid}` : ''}${t.note ? ` (${t.note})` : ''}`);
      } catch (e) {
        const reason = (e as Error).message;
        targetRecords.push({ label: kind, kind, status: 'failed', reason, host: null, port: null, pid: null, note: null, peak_rss_kib: null, bypass_after: null });
        log(`target ${kind}: FAILED: ${reason}`);
      }
    }
    // The mirror rows (issue 15): pgsplice-on whose database names a second scratch
    // PostgreSQL (same usertable) as its mirror. pgsplice-mirror: that PostgreSQL on the
    // same cores at equal priority (the goal's row); pgsplice-mirror-idle: at SCHED_IDLE,
    // standing in for a mirror on another host (bench/mirror-server.ts). A proxy that does
    // not know `mirrors:` refuses the config; the row then says so with the proxy's words.
    if (argv.mirror) {
      const rowsOf: Array<[string, TargetKind, MirrorPriority]> = [['pgsplice-mirror', 'pgsplice-mirror', 'normal'], ['pgsplice-mirror-idle', 'pgsplice-mirror-idle', 'idle']];
      for (const [label, kind, priority] of rowsOf) {
        try {
          log(`${label}: starting a mirror PostgreSQL (${priority === 'idle' ? 'SCHED_IDLE' : 'normal'} CPU priority)`);
          const m = await startMirrorServer({ settings: PG_BENCH_SETTINGS, rows, priority });
          mirrorServers.set(label, m);
          // pool_size: every client of the largest cell is mirrored (the default 20 would skip most)
          const mirrors = [{ host: '127.0.0.1', port: m.pg.port, dbname: 'bench', user: 'bench', password: 'bench', pool_size: Math.max(64, ...clients) }];
          const start = async () => startPgsplice({ dir: path.join(tmp, label), port: await freePort(), backend, poolSize, maxClientConn, bypass: 'on', mirrors, label, kind });
          const t = await start();
          starters.set(label, start);
          running.push(t);
          const note = priority === 'idle'
            ? `mirror PostgreSQL at idle CPU priority (SCHED_IDLE${m.idleGroup ? `, in a CPU cgroup with ${m.idleGroup.knob}` : ''}), standing in for a mirror on another host`
            : 'mirror PostgreSQL on the same cores at equal CPU priority';
          targetRecords.push({ label, kind, status: 'ok', reason: null, host: t.host, port: t.port, pid: t.pid, note: t.note ? `${note}; ${t.note}` : note, peak_rss_kib: null, bypass_after: null });
          log(`target ${label}: ${t.host}:${t.port} pid ${t.pid}, mirror PostgreSQL on port ${m.pg.port} (postmaster ${m.pmPid}, ${priority} priority${m.idleGroup ? `, cgroup ${m.idleGroup.dir} with ${m.idleGroup.knob}` : ''})`);
        } catch (e) {
          const reason = `not available: ${(e as Error).message}`;
          targetRecords.push({ label, kind, status: 'failed', reason, host: null, port: null, pid: null, note: null, peak_rss_kib: null, bypass_after: null });
          log(`target ${label}: ${reason}`);
        }
      }
    }
    for (const spec of argv.extra) {
      const t = parseExtraTarget(spec);
      running.push(t);
      targetRecords.push({ label: t.label, kind: 'extra', status: 'ok', reason: null, host: t.host, port: t.port, pid: t.pid, note: null, peak_rss_kib: null, bypass_after: null });
    }

    // --- the matrix, interleaved ---
    type Cell = { workload: string; mode: string; clients: number; connectPerTx: boolean; rateTps: number | null; duration: number; rounds: number };
    const cells: Cell[] = [];
    // The client sweep runs on the extended protocol; simple and prepared run at
    // --clients-simple (default: 64, or the first count) unless that says 'all'.
    let simpleClients: number[] = clients;
    if (argv['clients-simple'] && argv['clients-simple'] !== 'all') simpleClients = list(argv['clients-simple']).map(Number);
    else if (!argv['clients-simple'] && !quick) simpleClients = clients.includes(64) ? [64] : [clients[0]];
    for (const workload of workloads) {
      for (const mode of modes) {
        if (mode === 'prepared' && !preparedWorkloads.includes(workload)) continue;
        for (const c of mode === 'extended' ? clients : simpleClients) cells.push({ workload, mode, clients: c, connectPerTx: false, rateTps: null, duration, rounds });
      }
    }
    // Fixed offered load: the same work for every target, so CPU per transaction and
    // latency compare at equal throughput (as long as the target keeps up).
    for (const r of rateTps) cells.push({ workload: 'c', mode: 'extended', clients: rateClients, connectPerTx: false, rateTps: r, duration, rounds });
    if (storm) {
      const stormMode = modes.includes('extended') ? 'extended' : modes[0];
      cells.push({ workload: 'c', mode: stormMode, clients: argv['storm-clients'], connectPerTx: true, rateTps: null, duration: stormDuration, rounds });
    }
    // The mirror targets run the cell their goals compare with pgsplice-on: YCSB C,
    // extended, 64 clients (or the first client count), saturated.
    const mirrorClients = clients.includes(64) ? 64 : clients[0];
    const runsCell = (label: string, c: Cell) =>
      !mirrorServers.has(label) || (c.workload === 'c' && c.mode === 'extended' && c.clients === mirrorClients && c.rateTps === null && !c.connectPerTx);
    const scriptDirs = new Map<string, string[]>();
    for (const w of new Set(cells.map((c) => c.workload))) scriptDirs.set(w, pgbenchScriptArgs(path.join(tmp, 'scripts', w), w));
    const pairs = cells.flatMap((c) => running.filter((t) => runsCell(t.label, c)).map(() => c));
    const totalRuns = pairs.reduce((n, c) => n + c.rounds, 0);
    const estimate = pairs.reduce((s, c) => s + c.rounds * (c.duration + (c.connectPerTx ? 0 : Math.ceil(c.clients / 64)) + (c.rateTps ? RATE_SETTLE_MS / 1000 : 0) + 1.5), 0);
    log(`\n${cells.length} cells x ${running.length} targets, ${rounds} rounds = ${totalRuns} runs, about ${Math.ceil(estimate / 60)} min`);

    // Polls SHOW MIRRORS until nothing is queued and the counters stood still for one poll
    // (records still in the kernel's ring are not in queued_bytes yet), or the wait ends.
    const drainMirror = async (admin: { host: string; port: number; user: string; password: string }): Promise<{ counters: MirrorCounters | null; drainS: number | null }> => {
      const t0 = Date.now();
      let prev: MirrorCounters | null = null;
      for (;;) {
        const c = await pgspliceMirrorCounters(admin);
        if (!c) return { counters: prev, drainS: null };
        if (c.queued_bytes === 0 && prev && prev.queued_bytes === 0 && c.transactions === prev.transactions && c.dropped === prev.dropped) return { counters: c, drainS: (Date.now() - t0) / 1000 };
        if (Date.now() - t0 > MIRROR_DRAIN_WAIT_MS) return { counters: c, drainS: null };
        prev = c;
        await new Promise((r) => setTimeout(r, 200));
      }
    };

    let runNo = 0;
    const runs: RunRecord[] = [];
    const measure = async (t: RunningTarget, c: Cell, round: number, warmup = false, extraSeconds = 0): Promise<RunRecord> => {
      const startedAtMs = Date.now();
      const logDir = path.join(tmp, `run-${++runNo}`);
      let pgbenchPid: number | null = null;
      const snaps: CpuSnapshot[] = [];
      // pgbench's -T clock includes connecting its clients (a SCRAM login each, ~20 ms of
      // client CPU here), so runs get an allowance for that.
      // Fixed-rate runs get RATE_SETTLE_MS more: their window starts that long after the load began.
      const runSeconds = (warmup ? (quick ? 1 : 2) : c.duration) + (c.connectPerTx ? 0 : Math.ceil(c.clients / 64)) + (c.rateTps && !warmup ? RATE_SETTLE_MS / 1000 : 0) + extraSeconds;
      // pgsplice's own count of what the kernel carried, before and after the run, so
      // the kernel's share is this cell's, not everything since the proxy started.
      const kernelCount = async () => {
        if (warmup || !t.kind.startsWith('pgsplice')) return null;
        try {
          return kernelCounts(await pgspliceBypassInfo({ host: t.host, port: t.port, user: backend.user, password: backend.password }));
        } catch {
          return null;
        }
      };
      const kernelBefore = await kernelCount();
      // The mirror rows: SHOW MIRRORS before and after (bench/mirror-server.ts), the mirror
      // PostgreSQL's CPU, and its processes' scheduling policy during the run.
      const mirrorServer = mirrorServers.get(t.label) ?? null;
      const admin = { host: t.host, port: t.port, user: backend.user, password: backend.password };
      const mirrorBefore = mirrorServer && !warmup ? await pgspliceMirrorCounters(admin) : null;
      let policies: PolicyCount | null = null;
      const readPolicies = mirrorServer
        ? (table: ProcTable) => {
            const n = policyCount(mirrorServer.pmPid, table, mirrorServer.idleGroup);
            if (!policies || n.processes > policies.processes) policies = n;
          }
        : undefined;
      const run = await runPgbench({
        host: t.host, port: t.port, user: backend.user, password: backend.password, db: backend.db,
        scriptArgs: scriptDirs.get(c.workload)!, defines: { rows }, mode: c.mode as 'simple', clients: c.clients,
        threads: argv.threads, durationS: runSeconds, connectPerTx: c.connectPerTx, rateTps: c.rateTps, logDir,
        onStart: (pid) => (pgbenchPid = pid),
        // Counters are read at each progress line (every second) up to second T-1: at the
        // end pgbench disconnects, and exiting backends' CPU (exit work included) lands in
        // the postmaster's cutime as they are reaped.
        onProgress: (_at, line) => {
          const sec = Number(/^progress: ([\d.]+) s/.exec(line)?.[1] ?? NaN);
          if (warmup || !(sec < runSeconds - 0.5)) return;
          snaps.push(snapshot({ proxy: t.pid, postgres: pmPid, pgbench: pgbenchPid, mirrorPostgres: mirrorServer?.pmPid }, readPolicies));
        },
      });
      const sm = run.summary;
      // Before anything else runs: wait for the mirror to answer what was queued, so its
      // counters are this run's and its replay does not run into the next measurement.
      const mirrorAfter = mirrorServer ? await drainMirror(admin) : null;
      const kernelAfter = await kernelCount();
      // (A proxy restarted in between has smaller counters: no figure then.)
      const counted = kernelBefore && kernelAfter && kernelAfter.transactions >= kernelBefore.transactions && kernelAfter.handbacks >= kernelBefore.handbacks;
      const kernelTx = counted ? kernelAfter.transactions - kernelBefore.transactions : null;
      const handbacks = counted ? kernelAfter.handbacks - kernelBefore.handbacks : null;
      let windowS: number | null = null;
      let windowTx: number | null = null;
      let p50: number | null = null;
      let p99: number | null = null;
      let lag50: number | null = null;
      let lag99: number | null = null;
      let mirrorCpuUsPerTx: number | null = null;
      const cpuS: CpuPerTx = { proxy: null, postgres: null, pgbench: null, kernel: null, ours: null, machine: null };
      const perTx: CpuPerTx = { proxy: null, postgres: null, pgbench: null, kernel: null, ours: null, machine: null };
      // The window starts at the first reading after every client ran a transaction
      // (all connected: steady state) and, at a fixed rate, RATE_SETTLE_MS after the load
      // began (the same start-up left out for every target); it ends at the last reading.
      const started = run.logFiles.length ? windowStartMs(readTxLogs(run.logFiles, Infinity, Infinity), !!c.rateTps) : null;
      // (In the storm every transaction connects anew: no set-up phase to skip.)
      const f = c.connectPerTx ? snaps[0] ?? null : snaps.find((x) => started !== null && x.atMs >= started) ?? null;
      const l = snaps.length ? snaps[snaps.length - 1] : null;
      if (f && l && l !== f && l.atMs - f.atMs >= 900) {
        const tx = readTxLogs(run.logFiles, f.atMs, l.atMs);
        windowS = (l.atMs - f.atMs) / 1000;
        windowTx = tx.count;
        p50 = (percentile(tx.latenciesUs, 50) ?? NaN) / 1000;
        p99 = (percentile(tx.latenciesUs, 99) ?? NaN) / 1000;
        if (tx.lagsUs) {
          lag50 = (percentile(tx.lagsUs, 50) ?? NaN) / 1000;
          lag99 = (percentile(tx.lagsUs, 99) ?? NaN) / 1000;
        }
        const d = (a: number | null, b: number | null) => (a === null || b === null ? null : Math.max(0, b - a));
        cpuS.machine = l.machine.busy - f.machine.busy;
        cpuS.proxy = d(f.proxy, l.proxy);
        cpuS.postgres = d(f.postgres, l.postgres);
        cpuS.pgbench = d(f.pgbench, l.pgbench);
        // irq/softirq time is not added: with tick-based accounting (no IRQ_TIME_ACCOUNTING)
        // it is already charged to whichever task was running.
        cpuS.kernel = Math.max(0, l.kernelThreads - f.kernelThreads);
        cpuS.ours = (cpuS.proxy ?? 0) + (cpuS.postgres ?? 0) + (cpuS.pgbench ?? 0) + cpuS.kernel;
        // (Not in `ours`: the rows compare the primary side; the mirror's CPU is shown apart.)
        const mirrorCpu = d(f.mirrorPostgres, l.mirrorPostgres);
        if (mirrorCpu !== null && tx.count > 0) mirrorCpuUsPerTx = r1((mirrorCpu * 1e6) / tx.count);
        for (const k of Object.keys(cpuS) as Array<keyof CpuPerTx>) {
          const v = cpuS[k];
          perTx[k] = v !== null && tx.count > 0 ? r1((v * 1e6) / tx.count) : null;
          cpuS[k] = v === null ? null : r3(v);
        }
      }
      if (!argv['keep-tmp']) fs.rmSync(logDir, { recursive: true, force: true });
      const problems: string[] = [];
      if (run.code !== 0) problems.push(`pgbench exit code ${run.code}`);
      if (sm.aborted) problems.push('run aborted');
      if (sm.errors.length) problems.push(sm.errors.slice(0, 3).join('; '));
      if (!sm.tps) problems.push('no tps reported');
      // (A run pgbench aborted has no window either; its own error says why.)
      if (windowTx === null && !warmup && run.code === 0 && !sm.aborted) problems.push(`no steady-state window of 1 s or more (clients all running after ${started === null ? '?' : ((started - (snaps[0]?.atMs ?? started)) / 1000).toFixed(1) + ' s past the first progress report'}; raise --duration)`);
      const ok = run.code === 0 && !sm.aborted && !!sm.tps && (warmup || (windowTx !== null && windowTx > 0));
      // Connecting took longer than the allowance (a busy machine, many clients): run
      // again once, longer by what connecting took.
      if (!ok && !warmup && !c.connectPerTx && extraSeconds === 0 && run.code === 0 && !sm.aborted && started !== null) {
        const connectS = Math.ceil((started - startedAtMs) / 1000);
        log(`  (${t.label}: clients took ${connectS} s to connect; running again ${connectS + 1} s longer)`);
        return measure(t, c, round, warmup, connectS + 1);
      }
      const ms = (x: number | null) => (x === null || Number.isNaN(x) ? null : r3(x));
      const windowTps = windowS && windowTx !== null ? r1(windowTx / windowS) : null;
      let mirror: MirrorRunStats | null = null;
      if (mirrorServer && !warmup && mirrorBefore && mirrorAfter?.counters) {
        const a = mirrorAfter.counters;
        const p = policies as PolicyCount | null;
        const grew = (k: 'transactions' | 'dropped' | 'diverged' | 'clients_skipped') => Math.max(0, a[k] - mirrorBefore[k]);
        mirror = {
          priority: mirrorServer.priority, transactions: grew('transactions'), dropped: grew('dropped'), diverged: grew('diverged'),
          mirrored_share: sm.transactions > 0 ? r3(grew('transactions') / sm.transactions) : null,
          drain_s: mirrorAfter.drainS === null ? null : r1(mirrorAfter.drainS), queued_bytes_after: a.queued_bytes, peak_queued_bytes: a.peak_queued_bytes,
          clients_skipped: grew('clients_skipped'), state_after: a.states, last_error: a.last_error.slice(0, 300), server_processes: p?.processes ?? null, server_processes_idle: p?.idle ?? null, postgres_cpu_us_per_tx: mirrorCpuUsPerTx,
        };
      }
      return {
        target: t.label, workload: c.workload, mode: c.mode, clients: c.clients, round, connect_per_tx: c.connectPerTx, rate_tps: c.rateTps, ok,
        error: ok ? null : (problems.join('; ') || 'failed') + (t.pid ? ` [${t.label}${t.exitInfo() ? ` ${t.exitInfo()}` : ''} log: ${t.logTail().slice(-400)}]` : ''),
        tps: sm.tps === null ? null : r1(sm.tps), transactions: sm.transactions, failed: sm.failed, latency_avg_ms: sm.latencyAvgMs,
        window_s: windowS === null ? null : r3(windowS), window_transactions: windowTx,
        window_tps: windowTps, latency_p50_ms: ms(p50), latency_p99_ms: ms(p99), lag_p50_ms: ms(lag50), lag_p99_ms: ms(lag99),
        kept_up: c.rateTps && ok ? keptUpWithRate(c.rateTps, windowTps) : null,
        cpu_s: cpuS, cpu_us_per_tx: perTx, proxy_peak_rss_kib: t.pid ? peakRssKiB(t.pid) : null,
        kernel_transactions: kernelTx,
        // The share of what pgbench completed (its own count over the whole run); the
        // kernel counts a transaction when it sees the server's ReadyForQuery.
        kernel_share: kernelTx !== null && sm.transactions > 0 ? r3(Math.min(1, kernelTx / sm.transactions)) : null,
        kernel_handbacks: handbacks,
        handbacks_per_tx: handbacks !== null && sm.transactions > 0 ? r3(handbacks / sm.transactions) : null,
        ...(mirrorServer && !warmup ? { mirror } : {}),
      };
    };

    // What the machine does without us (other users' work shows up in machine CPU):
    // wait a little for it to go quiet, then record it.
    const busyOver = async (ms: number) => {
      const a = snapshot({});
      await new Promise((r) => setTimeout(r, ms));
      const b = snapshot({});
      return r3((b.machine.busy - a.machine.busy) / ((b.atMs - a.atMs) / 1000));
    };
    let backgroundCores = await busyOver(1000);
    const quietUntil = Date.now() + (argv['quiet-wait'] ?? (quick ? 3 : 20)) * 1000;
    while (backgroundCores > 0.25 && Date.now() < quietUntil) backgroundCores = await busyOver(1000);
    log(`background load before the runs: ${backgroundCores} busy CPUs${backgroundCores > 0.25 ? ' (the machine is not idle: machine CPU figures include that work)' : ''}`);

    // Warm up every target once (pools filled, caches hot); not recorded.
    const warmCell = cells.find((c) => !c.connectPerTx && c.rateTps === null) ?? cells[0];
    for (const t of running) {
      const w = await measure(t, { ...warmCell, clients: Math.min(64, Math.max(...clients)) }, 0, true);
      log(`warm-up ${t.label}: ${w.tps ? `${Math.round(w.tps)} tps` : `FAILED: ${w.error}`}`);
    }
    const dead = new Set<string>();
    // A proxy found stopped before a run (on a shared machine, something outside
    // may stop it) is started again, at most 3 times, and the result says so.
    const restarts = new Map<string, string[]>();
    const ensureAlive = async (label: string): Promise<RunningTarget | null> => {
      const i = running.findIndex((x) => x.label === label);
      const t = running[i];
      if (!t.pid || pidAlive(t.pid)) return t;
      const why = t.exitInfo() ?? 'not running';
      const list = restarts.get(label) ?? [];
      restarts.set(label, list);
      const tr = targetRecords.find((x) => x.label === label)!;
      if (list.length >= 3 || !starters.has(label)) {
        dead.add(label);
        tr.status = 'failed';
        tr.reason = `stopped during the runs (${why}); restarted ${list.length} time(s)`;
        return null;
      }
      list.push(why);
      log(`${label} ${why}; starting it again`);
      try {
        const n = await starters.get(label)!();
        running[i] = n;
        tr.pid = n.pid;
        tr.port = n.port;
        tr.note = `${tr.note ? tr.note + '; ' : ''}restarted after: ${why}`;
        return n;
      } catch (e) {
        dead.add(label);
        tr.status = 'failed';
        tr.reason = `stopped during the runs (${why}) and could not be restarted: ${(e as Error).message}`;
        return null;
      }
    };
    let done = 0;
    for (let round = 1; round <= rounds; round++) {
      const labels = running.map((x) => x.label);
      const order = labels.slice((round - 1) % labels.length).concat(labels.slice(0, (round - 1) % labels.length));
      for (const c of cells) {
        if (round > c.rounds) continue;
        for (const label of order) {
          if (!runsCell(label, c)) continue;
          done++;
          if (aborting) return;
          if (dead.has(label)) continue;
          const t = await ensureAlive(label);
          if (!t) continue;
          const rec = await measure(t, c, round);
          runs.push(rec);
          const name = `${c.workload.toUpperCase()} ${c.mode} ${c.clients}c${c.connectPerTx ? ' -C' : ''}${c.rateTps ? ` @${c.rateTps}` : ''}`;
          log(`[${done}/${totalRuns}] r${round} ${name.padEnd(24)} ${t.label.padEnd(15)} ` +
            (rec.ok
              ? `${String(Math.round(rec.tps!)).padStart(6)} tps  p50 ${rec.latency_p50_ms?.toFixed(2)} p99 ${rec.latency_p99_ms?.toFixed(2)} ms  machine ${rec.cpu_us_per_tx.machine} ours ${rec.cpu_us_per_tx.ours} µs/tx` +
                (rec.cpu_us_per_tx.proxy !== null ? `, proxy ${rec.cpu_us_per_tx.proxy}` : '') +
                (rec.lag_p99_ms !== null ? `, lag p99 ${rec.lag_p99_ms.toFixed(2)} ms${rec.kept_up ? '' : ' (did not keep up)'}` : '') +
                (rec.kernel_share !== null ? `, kernel ${(rec.kernel_share * 100).toFixed(1)}%, hand-backs ${rec.handbacks_per_tx}/tx` : '') +
                (rec.mirror ? `; mirror (${rec.mirror.priority}): ${rec.mirror.transactions} mirrored (${rec.mirror.mirrored_share === null ? '?' : (rec.mirror.mirrored_share * 100).toFixed(1) + '%'}), ${rec.mirror.dropped} dropped, ${rec.mirror.diverged} diverged, drained in ${rec.mirror.drain_s ?? 'not'} s, ${rec.mirror.server_processes_idle}/${rec.mirror.server_processes} processes at SCHED_IDLE, mirror PostgreSQL ${rec.mirror.postgres_cpu_us_per_tx} µs/tx, state ${rec.mirror.state_after}${rec.mirror.last_error ? `, last error: ${rec.mirror.last_error}` : ''}` : '') +
                (mirrorServers.has(t.label) && !rec.mirror ? '; mirror: SHOW MIRRORS not read' : '')
              : `FAILED: ${rec.error}`));
        }
      }
    }
    for (const tr of targetRecords) {
      const t = running.find((x) => x.label === tr.label);
      const peaks = runs.filter((r) => r.target === tr.label && r.proxy_peak_rss_kib !== null).map((r) => r.proxy_peak_rss_kib!);
      tr.peak_rss_kib = t?.pid ? peakRssKiB(t.pid) ?? (peaks.length ? Math.max(...peaks) : null) : null;
      if (t && t.kind.startsWith('pgsplice') && !dead.has(t.label)) {
        try {
          tr.bypass_after = await pgspliceBypassInfo({ host: t.host, port: t.port, user: backend.user, password: backend.password });
          log(`${t.label} SHOW BYPASS: ${Object.entries(tr.bypass_after).map(([k, v]) => `${k}=${v}`).join(' ')}`);
        } catch (e) {
          tr.note = `${tr.note ? tr.note + '; ' : ''}SHOW BYPASS failed: ${(e as Error).message}`;
        }
      }
    }

    // --- medians per cell ---
    const summaries: CellSummary[] = [];
    for (const c of cells) {
      for (const t of running) {
        const all = runs.filter((r) => r.target === t.label && r.workload === c.workload && r.mode === c.mode && r.clients === c.clients && r.connect_per_tx === c.connectPerTx && r.rate_tps === c.rateTps);
        const rs = all.filter((r) => r.ok);
        if (all.length === 0) continue;
        const med = (f: (r: RunRecord) => number | null) => {
          const m = median(rs.map(f).filter((x): x is number => x !== null));
          return m === null ? null : r3(m);
        };
        summaries.push({
          target: t.label, workload: c.workload, mode: c.mode, clients: c.clients, connect_per_tx: c.connectPerTx, rate_tps: c.rateTps, rounds_ok: rs.length,
          // (without the proxy's log tail the run record keeps)
          error: rs.length ? null : all.find((r) => r.error)?.error?.split(' [')[0] ?? null,
          tps: med((r) => r.tps), latency_p50_ms: med((r) => r.latency_p50_ms), latency_p99_ms: med((r) => r.latency_p99_ms),
          lag_p50_ms: med((r) => r.lag_p50_ms), lag_p99_ms: med((r) => r.lag_p99_ms),
          kept_up: c.rateTps && rs.length ? rs.every((r) => r.kept_up === true) : null,
          kernel_share: med((r) => r.kernel_share),
          handbacks_per_tx: med((r) => r.handbacks_per_tx),
          cpu_us_per_tx: {
            proxy: med((r) => r.cpu_us_per_tx.proxy), postgres: med((r) => r.cpu_us_per_tx.postgres),
            pgbench: med((r) => r.cpu_us_per_tx.pgbench), kernel: med((r) => r.cpu_us_per_tx.kernel),
            ours: med((r) => r.cpu_us_per_tx.ours), machine: med((r) => r.cpu_us_per_tx.machine),
          },
          proxy_attributable_us_per_tx: null,
          proxy_attributable_ours_us_per_tx: null,
          ...(mirrorServers.has(t.label) ? { mirror: mirrorCell(mirrorServers.get(t.label)!.priority, rs) } : {}),
        });
      }
    }
    for (const s of summaries) {
      const d = summaries.find((x) => x.target === 'direct' && x.workload === s.workload && x.mode === s.mode && x.clients === s.clients && x.connect_per_tx === s.connect_per_tx && x.rate_tps === s.rate_tps);
      if (d?.cpu_us_per_tx.machine != null && s.cpu_us_per_tx.machine != null) s.proxy_attributable_us_per_tx = r1(s.cpu_us_per_tx.machine - d.cpu_us_per_tx.machine);
      if (d?.cpu_us_per_tx.ours != null && s.cpu_us_per_tx.ours != null) s.proxy_attributable_ours_us_per_tx = r1(s.cpu_us_per_tx.ours - d.cpu_us_per_tx.ours);
    }

    // --- idle connections ---
    const idle: BenchResult['idle'] = [];
    if (argv.idle) {
      for (const label of running.map((x) => x.label)) {
        if (dead.has(label)) continue;
        const t = await ensureAlive(label);
        if (!t || t.kind === 'direct' || MIRROR_KINDS.includes(t.kind)) continue;
        log(`idle: opening ${idleClients} clients to ${t.label}`);
        // pgsplice: read after a full collection in the proxy (through its inspector), so
        // the figure is what the clients hold, not garbage or the young generation V8 grew
        // during the logins and keeps (a constant, not a cost per client).
        const insp = t.inspectPort ? await Inspector.connect(t.inspectPort).catch(() => null) : null;
        try {
          const r = await idleRun({ host: t.host, port: t.port, user: backend.user, password: backend.password, db: backend.db, clients: idleClients, proxyPid: t.pid, probe: insp ? () => insp.memory() : undefined });
          idle.push({ target: t.label, ...r });
          const gc = r.after_gc ? `; after a collection: RSS ${r.after_gc.rss_bytes_per_client} B/client, JS heap ${r.after_gc.heap_used_bytes_per_client} B/client` : '';
          log(`  ${t.label}: ${r.clients_opened} opened in ${r.open_seconds} s, RSS while opening ${r.bytes_per_client ?? '?'} B/client${gc}${r.error ? `, error: ${r.error}` : ''}`);
        } finally {
          insp?.close();
        }
      }
    }

    const cpus = os.cpus();
    const result: BenchResult = {
      schema: SCHEMA_ID,
      started_at: startedAt.toISOString(),
      finished_at: new Date().toISOString(),
      command: `npm run bench${process.argv.length > 2 ? ' -- ' + process.argv.slice(2).join(' ') : ''}`,
      machine: {
        hostname: os.hostname(), kernel: os.release(), cpus: cpus.length, cpu_model: cpus[0]?.model.trim() ?? 'unknown',
        mem_gib: Math.round(os.totalmem() / 2 ** 30), node: process.version, background_busy_cpus: backgroundCores, pgbench: await pgbenchVersion(), pgbouncer: pgbouncerVersion(), postgres: pgVersion,
      },
      options: {
        quick, rows, rounds, duration_s: duration, clients, workloads, modes, pool_size: poolSize, targets: running.map((t) => t.label).concat(targetRecords.filter((t) => t.status === 'failed' && !running.find((r) => r.label === t.label)).map((t) => t.label)),
        zipf_theta: ZIPF_THETA, storm_clients: argv['storm-clients'], storm_duration_s: stormDuration, idle_clients: argv.idle ? idleClients : 0, pg_reused: !!argv['pg-url'],
        rate_tps: rateTps, rate_clients: rateClients, mirror: argv.mirror,
      },
      targets: targetRecords, runs, cells: summaries, idle, goals: [],
    };
    result.goals = evaluateGoals(result);
    const problems = validateResult(result);
    if (problems.length) log(`warning: the result does not match its schema: ${problems.slice(0, 5).join('; ')}`);

    fs.mkdirSync(argv.out, { recursive: true });
    const stamp = startedAt.toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-');
    const base = path.join(argv.out, stamp);
    fs.writeFileSync(`${base}.json`, JSON.stringify(result, null, 1) + '\n');
    const svg = svgChart(result);
    fs.writeFileSync(`${base}.svg`, svg);
    fs.writeFileSync(`${base}.md`, markdownReport(result, `${stamp}.svg`));
    fs.writeFileSync(path.join(argv.out, 'latest.svg'), svg);
    fs.writeFileSync(path.join(argv.out, 'latest.md'), markdownReport(result, 'latest.svg'));
    log('\n' + markdownReport(result));
    log(`results: ${base}.json, .md, .svg (and latest.md, latest.svg)`);
  } finally {
    await cleanup();
  }
}

// How long a mirror row waits after a run for the mirror to answer what was queued.
const MIRROR_DRAIN_WAIT_MS = 30_000;
const r1 = (x: number) => Math.round(x * 10) / 10;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

// A mirror cell's rounds together (schema.ts MirrorCellStats): counters summed over the
// rounds that read them, so a mirror that dropped most of the cell shows it.
export function mirrorCell(priority: 'normal' | 'idle', rounds: RunRecord[]): MirrorCellStats | null {
  const rs = rounds.filter((r) => r.mirror);
  if (rs.length === 0) return null;
  const sum = (f: (m: MirrorRunStats) => number) => rs.reduce((n, r) => n + f(r.mirror!), 0);
  const pgbenchTx = rs.reduce((n, r) => n + r.transactions, 0);
  const cpu = median(rs.map((r) => r.mirror!.postgres_cpu_us_per_tx).filter((x): x is number => x !== null));
  const seen = rs.filter((r) => r.mirror!.server_processes);
  return {
    priority, rounds: rs.length, pgbench_transactions: pgbenchTx, transactions: sum((m) => m.transactions), dropped: sum((m) => m.dropped), diverged: sum((m) => m.diverged),
    mirrored_share: pgbenchTx > 0 ? r3(sum((m) => m.transactions) / pgbenchTx) : null,
    undrained_rounds: rs.filter((r) => r.mirror!.drain_s === null).length,
    idle_verified: priority !== 'idle' ? null : seen.length === rs.length && seen.every((r) => r.mirror!.server_processes_idle === r.mirror!.server_processes),
    postgres_cpu_us_per_tx: cpu === null ? null : r1(cpu),
  };
}

if (require.main === module) {
  main().then(
    () => process.exit(0),
    (e) => {
      console.error(`bench: ${(e as Error).stack ?? e}`);
      process.exit(1);
    },
  );
}

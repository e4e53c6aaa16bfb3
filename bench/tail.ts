// Where the saturated latency tail comes from: pgbench YCSB C (64 clients, pool 16) against
// pgsplice `bypass: on` (one or two builds) and PgBouncer, interleaved, and for each run
// the decomposition of its slowest 1% of transactions from pgbench's per-transaction log:
// * spread over clients: how many clients own half of the slow transactions, and the
//   transactions per client (max/min);
// * spread over time: the share of the slow transactions in the busiest 5% of 100 ms
//   windows (5% if they are spread evenly, near 100% if they are stalls);
// and for pgsplice, read in the proxy through its inspector without changing it: the
// user-space waits for a server (Pool.giveToWaiter: how many, their percentiles), the
// event-loop delay (a 1 ms timer) and the main thread's run-queue wait per wake-up
// (/proc/<pid>/task/<pid>/schedstat), the hand-backs (SHOW BYPASS) per transaction, and
// per request passed up: main-thread CPU and the control operations by op.
// Not part of `npm run bench`.
//   node dist/bench/tail.js [--a tmp/base/dist/src/cli.js] [--no-pgbouncer] [--rounds 2]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { ScratchPostgres, freePort } from '../scripts/scratch-postgres';
import { pgbenchScriptArgs, loadBenchDatabase } from '../scripts/ycsb';
import { median, percentile, runPgbench } from './pgbench';
import { startPgbouncer, startPgsplice, pgspliceBypassInfo, RunningTarget, PGSPLICE_CLI } from './targets';
import { Inspector } from './inspector';
import { PG_BENCH_SETTINGS } from './run';

interface Tx {
  client: number;
  endMs: number;
  latUs: number;
}

function readLog(files: string[]): Tx[] {
  const out: Tx[] = [];
  for (const f of files) {
    for (const line of fs.readFileSync(f, 'utf8').split('\n')) {
      const p = line.split(' ');
      if (p.length < 6) continue;
      out.push({ client: Number(p[0]), latUs: Number(p[2]), endMs: Number(p[4]) * 1000 + Number(p[5]) / 1000 });
    }
  }
  return out;
}

export interface TailShape {
  tps: number;
  p50: number;
  p99: number;
  meanMs: number;
  perClientMaxMin: number;
  clientsForHalfOfSlow: number;
  slowInBusiest5pct: number; // share of the slow 1% in the busiest 5% of 100 ms windows
}

// The steady window: from when every client has finished a transaction to the last end.
export function tailShape(all: Tx[]): TailShape {
  const firstEnd = new Map<number, number>();
  for (const t of all) if (!firstEnd.has(t.client) || t.endMs < firstEnd.get(t.client)!) firstEnd.set(t.client, t.endMs);
  const from = Math.max(...firstEnd.values());
  const txs = all.filter((t) => t.endMs > from);
  const to = txs.reduce((m, t) => Math.max(m, t.endMs), -Infinity); // (a spread of ~10^5 values overflows the stack)
  const lat = Float64Array.from(txs.map((t) => t.latUs)).sort();
  const p99 = percentile(lat, 99)!;
  const slow = txs.filter((t) => t.latUs >= p99);
  const byClient = new Map<number, number>();
  const slowByClient = new Map<number, number>();
  for (const t of txs) byClient.set(t.client, (byClient.get(t.client) ?? 0) + 1);
  for (const t of slow) slowByClient.set(t.client, (slowByClient.get(t.client) ?? 0) + 1);
  const counts = [...slowByClient.values()].sort((a, b) => b - a);
  let acc = 0;
  let k = 0;
  while (acc * 2 < slow.length) acc += counts[k++];
  const bins = new Map<number, number>();
  for (const t of slow) bins.set(Math.floor((t.endMs - from) / 100), (bins.get(Math.floor((t.endMs - from) / 100)) ?? 0) + 1);
  const nBins = Math.max(1, Math.ceil((to - from) / 100));
  const top = [...bins.values()].sort((a, b) => b - a).slice(0, Math.max(1, Math.round(nBins * 0.05)));
  const per = [...byClient.values()];
  return {
    tps: txs.length / ((to - from) / 1000),
    p50: percentile(lat, 50)! / 1000,
    p99: p99 / 1000,
    meanMs: lat.reduce((a, b) => a + b, 0) / lat.length / 1000,
    perClientMaxMin: Math.max(...per) / Math.min(...per),
    clientsForHalfOfSlow: k,
    slowInBusiest5pct: top.reduce((a, b) => a + b, 0) / slow.length,
  };
}

// Installed in the proxy through the inspector: a histogram of user-space waits for a
// server, and the event-loop delay. Reset with each install; read with READ_PROBE.
const INSTALL_PROBE = `(() => {
  const req = process.mainModule.require;
  const { monitorEventLoopDelay } = req('node:perf_hooks');
  const { Pool } = req(req('node:path').join(req('node:path').dirname(process.mainModule.filename), 'pooling', 'pool.js'));
  const g = globalThis.__tailProbe ??= {};
  g.waits = [];
  g.eld?.disable();
  g.eld = monitorEventLoopDelay({ resolution: 1 });
  g.eld.enable();
  g.ops = {};
  if (!g.wrapped) {
    const orig = Pool.prototype.giveToWaiter;
    Pool.prototype.giveToWaiter = function (w, s, c) { globalThis.__tailProbe.waits.push(Date.now() - w.since); return orig.call(this, w, s, c); };
    // control operations by op (the ctl/ctlRet of a build that has them), and map writes
    const { KernelPath } = req(req('node:path').join(req('node:path').dirname(process.mainModule.filename), 'kernel', 'kernel-path.js'));
    const { Op } = req(req('node:path').join(req('node:path').dirname(process.mainModule.filename), 'kernel', 'kernel-abi.js'));
    const names = Object.fromEntries(Object.entries(Op).map(([k, v]) => [v, k]));
    for (const m of ['ctl', 'ctlRet']) {
      const f = KernelPath.prototype[m];
      if (!f) continue;
      KernelPath.prototype[m] = function (a) { const o = globalThis.__tailProbe.ops; const n = names[a.op] ?? a.op; o[n] = (o[n] ?? 0) + 1; return f.call(this, a); };
    }
    const sw = Pool.prototype.serviceWaiters;
    Pool.prototype.serviceWaiters = function () { const o = globalThis.__tailProbe.ops; o.serviceWaiters = (o.serviceWaiters ?? 0) + 1; return sw.call(this); };
    const sp = KernelPath.prototype.setPoolWaiters;
    KernelPath.prototype.setPoolWaiters = function (kid, w) { const o = globalThis.__tailProbe.ops; o.setPoolWaiters = (o.setPoolWaiters ?? 0) + 1; return sp.call(this, kid, w); };
    g.wrapped = true;
  }
  return 'ok';
})()`;
const READ_PROBE = `(() => {
  const g = globalThis.__tailProbe;
  const w = g.waits.sort((a, b) => a - b);
  const q = (p) => w.length ? w[Math.min(w.length - 1, Math.ceil(p / 100 * w.length) - 1)] : 0;
  const r = { waits: w.length, waitMean: w.length ? w.reduce((a, b) => a + b, 0) / w.length : 0, waitP50: q(50), waitP90: q(90), waitP99: q(99),
    eldP50: g.eld.percentile(50) / 1e6, eldP99: g.eld.percentile(99) / 1e6, ops: g.ops };
  g.eld.disable();
  return JSON.stringify(r);
})()`;

function schedstat(pid: number): [number, number, number] {
  const [run, wait, slices] = fs.readFileSync(`/proc/${pid}/task/${pid}/schedstat`, 'utf8').trim().split(' ').map(Number);
  return [run, wait, slices];
}

async function main(): Promise<void> {
  const argv = await yargs(hideBin(process.argv))
    .option('a', { type: 'string', describe: "another build's dist/src/cli.js, run beside this one" })
    .option('pgbouncer', { type: 'boolean', default: true })
    .option('rounds', { type: 'number', default: 2 })
    .option('duration', { type: 'number', default: 10 })
    .option('clients', { type: 'number', default: 64 })
    .option('pool', { type: 'number', default: 16 })
    .option('mode', { choices: ['extended', 'simple'] as const, default: 'extended' as const })
    .option('rows', { type: 'number', default: 10_000 })
    .strict().parse();
  const pg = await ScratchPostgres.create({ settings: PG_BENCH_SETTINGS });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-tail-'));
  fs.chmodSync(tmp, 0o755); // PgBouncer runs as postgres
  const targets: RunningTarget[] = [];
  try {
    const backend = loadBenchDatabase(pg, argv.rows);
    const builds: Array<[string, string]> = [['on', PGSPLICE_CLI]];
    if (argv.a) builds.unshift(['A', path.resolve(argv.a)]);
    for (const [label, cli] of builds) {
      targets.push(await startPgsplice({ dir: path.join(tmp, label), port: await freePort(), backend, poolSize: argv.pool, maxClientConn: 1000, bypass: 'on', label, cli }));
    }
    if (argv.pgbouncer) {
      const verifier = pg.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'bench'") || null;
      targets.push(await startPgbouncer({ dir: path.join(tmp, 'pgbouncer'), port: await freePort(), backend, poolSize: argv.pool, maxClientConn: 1000, scramVerifier: verifier }));
    }
    const scriptArgs = pgbenchScriptArgs(path.join(tmp, 'scripts'), 'c');
    let n = 0;
    const run = (t: RunningTarget, durationS: number) =>
      runPgbench({ ...backend, port: t.port, scriptArgs, defines: { rows: argv.rows }, mode: argv.mode, clients: argv.clients, threads: 2, durationS, logDir: path.join(tmp, `log${n++}`) });
    for (const t of targets) await run(t, 3); // warm-up: servers opened, caches warm
    const rows = new Map<string, TailShape[]>(targets.map((t) => [t.label, []]));
    for (let r = 0; r < argv.rounds; r++) {
      for (const t of r % 2 === 0 ? targets : [...targets].reverse()) {
        const isSplice = t.inspectPort !== undefined;
        const insp = isSplice ? await Inspector.connect(t.inspectPort!) : null;
        const adm = { host: t.host, port: t.port, user: 'bench', password: 'bench' };
        if (insp) await insp.call('Runtime.evaluate', { expression: INSTALL_PROBE, includeCommandLineAPI: true, returnByValue: true });
        const b0 = isSplice ? await pgspliceBypassInfo(adm) : null;
        const s0 = t.pid ? schedstat(t.pid) : null;
        const load = os.loadavg()[0];
        const out = await run(t, argv.duration);
        const s1 = t.pid ? schedstat(t.pid) : null;
        const shape = tailShape(readLog(out.logFiles));
        rows.get(t.label)!.push(shape);
        let extra = '';
        if (s0 && s1) extra += `; main thread ${((s1[0] - s0[0]) / 1e9).toFixed(1)} s CPU, ${((s1[1] - s0[1]) / 1e9).toFixed(1)} s runnable waiting, ${(((s1[1] - s0[1]) / (s1[2] - s0[2])) / 1e6).toFixed(2)} ms/slice over ${s1[2] - s0[2]} slices`;
        if (insp) {
          const p = JSON.parse((await insp.call('Runtime.evaluate', { expression: READ_PROBE, returnByValue: true })).result.value);
          insp.close();
          const b1 = await pgspliceBypassInfo(adm);
          const d = (k: string) => Number(b1[k] ?? 0) - Number(b0![k] ?? 0);
          const tx = out.summary.transactions;
          extra += `\n    waits ${p.waits} (${(p.waits / tx).toFixed(3)}/tx), wait ms mean ${p.waitMean.toFixed(1)} p50 ${p.waitP50} p90 ${p.waitP90} p99 ${p.waitP99}; event-loop delay p50 ${p.eldP50.toFixed(1)} p99 ${p.eldP99.toFixed(1)} ms; no_idle_server ${(d('fallback_no_idle_server') / tx).toFixed(3)}/tx, held_for_waiters ${(d('kernel_held_for_waiters') / tx).toFixed(3)}/tx`;
          const passed = d('fallback_no_idle_server');
          if (passed > 0) extra += `\n    per request passed up: main-thread CPU ${(((s1![0] - s0![0]) / 1e3) / passed).toFixed(0)} µs; control ops ${Object.entries(p.ops as Record<string, number>).sort((x, y) => y[1] - x[1]).map(([k, v]) => `${k} ${(v / passed).toFixed(2)}`).join(', ')}`;
        }
        console.log(`round ${r + 1} ${t.label} (load ${load.toFixed(1)}): ${Math.round(shape.tps)} tps, p50 ${shape.p50.toFixed(2)} p99 ${shape.p99.toFixed(2)} mean ${shape.meanMs.toFixed(2)} ms, per client max/min ${shape.perClientMaxMin.toFixed(2)}; slow 1%: half on ${shape.clientsForHalfOfSlow} clients, ${(shape.slowInBusiest5pct * 100).toFixed(0)}% in the busiest 5% of 100 ms windows${extra}`);
      }
    }
    for (const [label, s] of rows) {
      const m = (f: (x: TailShape) => number) => median(s.map(f))!;
      console.log(`${label}: median ${Math.round(m((x) => x.tps))} tps, p50 ${m((x) => x.p50).toFixed(2)} ms, p99 ${m((x) => x.p99).toFixed(2)} ms, max/min ${m((x) => x.perClientMaxMin).toFixed(2)} (${argv.rounds} x ${argv.duration} s, ${argv.mode}, ${argv.clients} clients, pool ${argv.pool})`);
    }
  } finally {
    for (const t of targets) await t.stop().catch(() => undefined);
    await pg.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}

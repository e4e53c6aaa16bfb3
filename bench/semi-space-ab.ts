// What a smaller young generation costs under load: pgbench YCSB C (extended, 64 clients)
// against two pgsplice processes, `bypass: off`, one with node's default semi-space and
// one with --max-semi-space-size=N, interleaved A B B A A B ... Reports tps and proxy CPU
// µs per transaction per side (medians), and the young-generation collections per 1,000
// transactions (the proxy's own count, read through its inspector). For the launcher's
// choice in docs/architecture.md; not part of `npm run bench`.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { ScratchPostgres, freePort } from '../scripts/scratch-postgres';
import { pgbenchScriptArgs, loadBenchDatabase } from '../scripts/ycsb';
import { median, runPgbench } from './pgbench';
import { snapshot } from './proc';
import { startPgsplice, RunningTarget } from './targets';
import { Inspector } from './inspector';

async function main(): Promise<void> {
  const argv = await yargs(hideBin(process.argv))
    .option('semi', { type: 'number', default: 1, describe: '--max-semi-space-size (MiB) of side B' })
    .option('rounds', { type: 'number', default: 3 })
    .option('duration', { type: 'number', default: 5 })
    .option('clients', { type: 'number', default: 64 })
    .option('rows', { type: 'number', default: 10_000 })
    .strict().parse();
  const pg = await ScratchPostgres.create({ settings: { max_connections: 300, jit: 'off' } });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-semi-ab-'));
  const targets: RunningTarget[] = [];
  try {
    const backend = loadBenchDatabase(pg, argv.rows);
    const sides: Array<{ label: string; args: string[] }> = [
      { label: 'default', args: [] },
      { label: `semi-${argv.semi}`, args: [`--max-semi-space-size=${argv.semi}`] },
    ];
    for (const s of sides) {
      targets.push(await startPgsplice({ dir: path.join(tmp, s.label), port: await freePort(), backend, poolSize: 16, maxClientConn: 1000, bypass: 'off', label: s.label, extraNodeArgs: s.args }));
    }
    const scriptArgs = pgbenchScriptArgs(path.join(tmp, 'scripts'), 'c');
    const scavenges = async (t: RunningTarget): Promise<number> => {
      const insp = await Inspector.connect(t.inspectPort!);
      try {
        const r = await insp.call('Runtime.evaluate', { expression: 'globalThis.__scavenges ?? -1', returnByValue: true });
        return Number(r.result.value);
      } finally {
        insp.close();
      }
    };
    // Count the proxies' young-generation collections (a PerformanceObserver installed
    // through the inspector: the proxy itself does not count them).
    for (const t of targets) {
      const insp = await Inspector.connect(t.inspectPort!);
      await insp.call('Runtime.evaluate', { expression: `(() => { globalThis.__scavenges = 0; const { PerformanceObserver, constants } = process.mainModule.require('perf_hooks'); new PerformanceObserver((l) => { for (const e of l.getEntries()) if (e.detail?.kind === constants.NODE_PERFORMANCE_GC_MINOR) globalThis.__scavenges++; }).observe({ entryTypes: ['gc'] }); return 1; })()` });
      insp.close();
    }
    const res = new Map<string, { tps: number[]; cpu: number[]; scav: number[] }>(sides.map((s) => [s.label, { tps: [], cpu: [], scav: [] }]));
    // Warm-up, then interleaved rounds.
    for (const t of targets) await runPgbench({ ...backend, port: t.port, scriptArgs, defines: { rows: argv.rows }, mode: 'extended', clients: argv.clients, threads: 2, durationS: 3, logDir: path.join(tmp, 'log') });
    for (let r = 0; r < argv.rounds; r++) {
      const order = r % 2 === 0 ? targets : [...targets].reverse();
      for (const t of order) {
        const s0 = snapshot({ proxy: t.pid });
        const g0 = await scavenges(t);
        const run = await runPgbench({ ...backend, port: t.port, scriptArgs, defines: { rows: argv.rows }, mode: 'extended', clients: argv.clients, threads: 2, durationS: argv.duration, logDir: path.join(tmp, 'log') });
        const s1 = snapshot({ proxy: t.pid });
        const g1 = await scavenges(t);
        const tx = run.summary.transactions;
        const e = res.get(t.label)!;
        e.tps.push(run.summary.tps ?? 0);
        e.cpu.push(((s1.proxy! - s0.proxy!) * 1e6) / tx);
        e.scav.push(((g1 - g0) * 1000) / tx);
        console.log(`round ${r + 1} ${t.label}: ${Math.round(run.summary.tps ?? 0)} tps, proxy ${(((s1.proxy! - s0.proxy!) * 1e6) / tx).toFixed(1)} µs/tx, ${(((g1 - g0) * 1000) / tx).toFixed(2)} scavenges per 1000 tx`);
      }
    }
    for (const [label, e] of res) console.log(`${label}: median ${Math.round(median(e.tps)!)} tps, proxy ${median(e.cpu)!.toFixed(1)} µs/tx, ${median(e.scav)!.toFixed(2)} scavenges / 1000 tx (${argv.rounds} x ${argv.duration} s)`);
  } finally {
    for (const t of targets) await t.stop().catch(() => undefined);
    await pg.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});

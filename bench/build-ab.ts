// Two builds of pgsplice side by side under the same load: pgbench YCSB C (extended, 64
// clients, pool 16, `bypass: off`) against each, interleaved A B B A A B ... Reports tps
// and proxy CPU µs per transaction (utime + stime from /proc) per side, each round and
// the medians. For measuring a change to the user-space path before keeping it: build A
// is a copy of dist/ from before the change (keep it under the worktree, e.g.
// tmp/base/dist, so that it finds node_modules), B this build. Not part of `npm run bench`.
//   node dist/bench/build-ab.js --a tmp/base/dist/src/cli.js [--b dist/src/cli.js]
// --bypass on --mirror idle: both builds with the kernel path and every client mirrored to
// one mirror PostgreSQL at idle CPU priority (bench/mirror-server.ts, the
// pgsplice-mirror-idle row), plus a third target `on` (build B, no mirror) for the cost
// of mirroring itself; after each mirrored run the mirror catches up before the next.
// --profile S: then S seconds of B under the same load with the inspector's CPU profiler,
// the top functions by self time.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { ScratchPostgres, freePort } from '../scripts/scratch-postgres';
import { pgbenchScriptArgs, loadBenchDatabase } from '../scripts/ycsb';
import { median, runPgbench } from './pgbench';
import { snapshot } from './proc';
import { startPgsplice, RunningTarget, PGSPLICE_CLI, pgspliceMirrorCounters, type MirrorCounters } from './targets';
import { startMirrorServer, type MirrorServer } from './mirror-server';
import { Inspector } from './inspector';
import { PG_BENCH_SETTINGS } from './run';

async function main(): Promise<void> {
  const argv = await yargs(hideBin(process.argv))
    .option('a', { type: 'string', demandOption: true, describe: "build A's dist/src/cli.js" })
    .option('b', { type: 'string', default: PGSPLICE_CLI, describe: "build B's dist/src/cli.js" })
    .option('rounds', { type: 'number', default: 3 })
    .option('duration', { type: 'number', default: 8 })
    .option('clients', { type: 'number', default: 64 })
    .option('mode', { choices: ['extended', 'simple'] as const, default: 'extended' as const })
    .option('rows', { type: 'number', default: 10_000 })
    .option('rate', { type: 'number', describe: 'pgbench --rate (tps): a fixed offered load instead of saturation' })
    .option('bypass', { choices: ['off', 'on'] as const, default: 'off' as const })
    .option('mirror', { choices: ['none', 'idle', 'normal'] as const, default: 'none' as const, describe: 'every client mirrored to a mirror PostgreSQL at this CPU priority' })
    .option('profile', { type: 'number', default: 0, describe: "seconds of B's CPU profile after the rounds" })
    .strict().parse();
  const pg = await ScratchPostgres.create({ settings: { max_connections: 300, jit: 'off' } });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-build-ab-'));
  const targets: RunningTarget[] = [];
  let mirror: MirrorServer | null = null;
  try {
    const backend = loadBenchDatabase(pg, argv.rows);
    if (argv.mirror !== 'none') mirror = await startMirrorServer({ settings: PG_BENCH_SETTINGS, rows: argv.rows, priority: argv.mirror });
    const mirrors = mirror ? [{ host: '127.0.0.1', port: mirror.pg.port, dbname: 'bench', user: 'bench', password: 'bench', pool_size: Math.max(64, argv.clients) }] : undefined;
    for (const [label, cli] of [['A', path.resolve(argv.a)], ['B', path.resolve(argv.b)]]) {
      targets.push(await startPgsplice({ dir: path.join(tmp, label), port: await freePort(), backend, poolSize: 16, maxClientConn: 1000, bypass: argv.bypass, mirrors, label, cli }));
    }
    if (mirror) targets.push(await startPgsplice({ dir: path.join(tmp, 'on'), port: await freePort(), backend, poolSize: 16, maxClientConn: 1000, bypass: argv.bypass, label: argv.bypass }));
    const admin = (t: RunningTarget) => ({ host: t.host, port: t.port, user: 'bench', password: 'bench' });
    // Waits until the mirror answered what a run queued (at most 30 s): a build still
    // feeding its mirror would take CPU from the next run.
    const catchUp = async (t: RunningTarget): Promise<MirrorCounters | null> => {
      let prev: MirrorCounters | null = null;
      for (const t0 = Date.now(); Date.now() - t0 < 30_000; ) {
        const c = await pgspliceMirrorCounters(admin(t));
        if (!c) return prev;
        if (prev && c.queued_bytes === 0 && prev.queued_bytes === 0 && c.transactions === prev.transactions && c.dropped === prev.dropped) return c;
        prev = c;
        await new Promise((r) => setTimeout(r, 200));
      }
      return prev;
    };
    const scriptArgs = pgbenchScriptArgs(path.join(tmp, 'scripts'), 'c');
    const run = (t: RunningTarget, durationS: number) =>
      runPgbench({ ...backend, port: t.port, scriptArgs, defines: { rows: argv.rows }, mode: argv.mode, clients: argv.clients, threads: 2, durationS, rateTps: argv.rate, logDir: path.join(tmp, 'log') });
    const mirrored = (t: RunningTarget) => mirror !== null && t.label !== argv.bypass;
    for (const t of targets) {
      await run(t, 3); // warm-up
      if (mirrored(t)) await catchUp(t);
    }
    const res = new Map<string, { tps: number[]; cpu: number[] }>(targets.map((t) => [t.label, { tps: [], cpu: [] }]));
    for (let r = 0; r < argv.rounds; r++) {
      for (const t of r % 2 === 0 ? targets : [...targets].reverse()) {
        const m0 = mirrored(t) ? await pgspliceMirrorCounters(admin(t)) : null;
        const s0 = snapshot({ proxy: t.pid });
        const out = await run(t, argv.duration);
        const s1 = snapshot({ proxy: t.pid });
        const tx = out.summary.transactions;
        const cpu = ((s1.proxy! - s0.proxy!) * 1e6) / tx;
        res.get(t.label)!.tps.push(out.summary.tps ?? 0);
        res.get(t.label)!.cpu.push(cpu);
        let mirrorNote = '';
        if (m0) {
          const m1 = await catchUp(t);
          if (m1) mirrorNote = `; mirrored ${m1.transactions - m0.transactions} (${(((m1.transactions - m0.transactions) / tx) * 100).toFixed(0)}%), dropped ${m1.dropped - m0.dropped}, diverged ${m1.diverged - m0.diverged}`;
        }
        console.log(`round ${r + 1} ${t.label}: ${Math.round(out.summary.tps ?? 0)} tps, proxy ${cpu.toFixed(1)} µs/tx${mirrorNote}`);
      }
    }
    // The machine is shared: each round's pair ran at about the same time, so the
    // difference within a pair is steadier than either side's numbers.
    const a = res.get('A')!;
    const b = res.get('B')!;
    const diffs = a.cpu.map((x, i) => b.cpu[i]! - x);
    console.log(`B - A per round: ${diffs.map((d) => d.toFixed(1)).join(' ')} µs/tx; median ${median(diffs)!.toFixed(1)}`);
    for (const [label, e] of res) console.log(`${label}: median ${Math.round(median(e.tps)!)} tps, proxy ${median(e.cpu)!.toFixed(1)} µs/tx (${argv.rounds} x ${argv.duration} s, ${argv.mode}, ${argv.clients} clients, bypass ${argv.bypass}${mirror ? `, mirror at ${argv.mirror} priority` : ''}${argv.rate ? `, --rate ${argv.rate}` : ''})`);
    if (argv.profile > 0) {
      const b = targets[1];
      const insp = await Inspector.connect(b.inspectPort!);
      try {
        const [, top] = await Promise.all([run(b, argv.profile + 2), new Promise((r) => setTimeout(r, 1500)).then(() => insp.cpuProfileSummary(argv.profile * 1000))]);
        console.log(`B's CPU profile, ${argv.profile} s, self time:`);
        for (const e of top.slice(0, 45)) console.log(`${(e.share * 100).toFixed(1).padStart(5)}%  ${e.what}`);
      } finally {
        insp.close();
      }
    }
  } finally {
    for (const t of targets) await t.stop().catch(() => undefined);
    await mirror?.destroy();
    await pg.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});

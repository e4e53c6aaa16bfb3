// npm run demo: a scratch PostgreSQL, a small YCSB table, pgsplice (bypass: auto) in
// front of it, and a short YCSB load (A, then C) through the proxy; then plain words
// about what happened and which data path carried it. Everything is stopped at the
// end, and on Ctrl-C.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { percentile, readTxLogs, runPgbench } from '../bench/pgbench';
import { RunningTarget, pgspliceBypassInfo, pgspliceCounters, startPgsplice } from '../bench/targets';
import { ScratchPostgres, freePort } from './scratch-postgres';
import { WORKLOADS, pgbenchScriptArgs, loadBenchDatabase } from './ycsb';

const ROWS = 10_000;
const CLIENTS = 32;
const POOL = 8;
const SECONDS_PER_WORKLOAD = 8;

const say = (s = '') => process.stdout.write(s + '\n');

export type BypassRows = Record<string, string>;

// Which data path carried the load, in words, from SHOW BYPASS before and after the
// load and from the admin console's SHOW SUMMARY. The kernel path's counters are
// reported as kernel_<name> rows; this reads the ones it knows and lists the rest.
export function describeDataPath(before: BypassRows | null, during: BypassRows | null, after: BypassRows | null, summary: string | null): string {
  if (!after) return `The proxy's admin console did not answer SHOW BYPASS, so the data path is unknown.${summary ? ` SHOW SUMMARY: ${summary}` : ''}`;
  const n = (r: BypassRows | null, k: string) => Number(r?.[k] ?? 0) || 0;
  const lines: string[] = [];
  const loaded = /^(yes|true|on|1)$/i.test(after.loaded ?? '');
  const txUser = n(after, 'transactions_total') - n(before, 'transactions_total');
  if (!loaded) {
    lines.push(`The kernel path was not loaded (${after.reason ?? 'no reason given'}), so user space (Node.js) carried every byte: ${txUser.toLocaleString('en-US')} transactions through the proxy.`);
  } else {
    const kTxKey = Object.keys(after).find((k) => /^kernel_(transactions|tx|xacts)(_total)?$/.test(k));
    const kTx = kTxKey ? n(after, kTxKey) - n(before, kTxKey) : null;
    lines.push(kTx === null
      ? `The kernel path was loaded (mode ${after.mode ?? '?'}); the proxy counted ${txUser.toLocaleString('en-US')} transactions.`
      : txUser >= kTx && txUser > 0
        ? `The kernel path was loaded and carried ${kTx.toLocaleString('en-US')} of the ${txUser.toLocaleString('en-US')} transactions (${((kTx / txUser) * 100).toFixed(0)}%).`
        : `The kernel path was loaded and carried ${kTx.toLocaleString('en-US')} transactions; user space counted ${txUser.toLocaleString('en-US')} of its own.`);
    if (during) lines.push(`Mid-load, ${during.clients_kernel ?? '?'} clients were in the kernel path and ${during.clients_user ?? '?'} in user space; servers: ${during.servers_kernel ?? '?'} kernel, ${during.servers_user ?? '?'} user space.`);
    const moved = Object.entries(after).filter(([k, v]) => k.startsWith('kernel_') && k !== kTxKey && Number(v) - n(before, k) !== 0);
    if (moved.length) lines.push(`Kernel counters that moved: ${moved.map(([k, v]) => `${k.slice(7)} +${Number(v) - n(before, k)}`).join(', ')}.`);
  }
  if (summary) lines.push(`SHOW SUMMARY: ${summary}`);
  return lines.join('\n  ');
}

async function main(): Promise<void> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-demo-'));
  fs.chmodSync(tmp, 0o755);
  let pg: ScratchPostgres | null = null;
  let proxy: RunningTarget | null = null;
  let stopping: Promise<void> | null = null;
  const stopAll = () =>
    (stopping ??= (async () => {
      if (proxy) await proxy.stop().catch(() => undefined);
      if (pg) await pg.destroy().catch(() => undefined);
      fs.rmSync(tmp, { recursive: true, force: true });
    })());
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      say(`\n${sig}: stopping pgsplice and PostgreSQL...`);
      void stopAll().then(() => process.exit(130));
    });
  }
  try {
    say('Starting a scratch PostgreSQL 15...');
    pg = await ScratchPostgres.create({ settings: { fsync: 'off', synchronous_commit: 'off', jit: 'off' } });
    const backend = loadBenchDatabase(pg, ROWS);
    say(`  PostgreSQL on 127.0.0.1:${pg.port}, YCSB usertable with ${ROWS.toLocaleString('en-US')} rows of 10 x 100-character fields.`);

    say(`Starting pgsplice (transaction pooling, pool of ${POOL} server connections, bypass: auto)...`);
    proxy = await startPgsplice({ dir: tmp, port: await freePort(), backend, poolSize: POOL, maxClientConn: 1000, bypass: 'auto', label: 'pgsplice', logLevel: 'info' });
    const bypass = () => pgspliceBypassInfo({ host: proxy!.host, port: proxy!.port, user: 'bench', password: 'bench' }).catch(() => null);
    const before = await bypass();
    say(`  pgsplice on ${proxy.host}:${proxy.port} (pid ${proxy.pid}); kernel path: ${before ? `${before.loaded ?? '?'}${before.reason ? ` (${before.reason})` : ''}` : 'unknown (SHOW BYPASS failed)'}`);

    let during: Awaited<ReturnType<typeof bypass>> = null;
    for (const w of ['a', 'c']) {
      say(`\nRunning ${WORKLOADS[w].description}: ${CLIENTS} pgbench clients, extended protocol, ${SECONDS_PER_WORKLOAD} s...`);
      const logDir = path.join(tmp, `run-${w}`);
      let progress = 0;
      const run = await runPgbench({
        ...backend, host: proxy.host, port: proxy.port, scriptArgs: pgbenchScriptArgs(path.join(tmp, 'scripts', w), w), defines: { rows: ROWS },
        mode: 'extended', clients: CLIENTS, threads: 2, durationS: SECONDS_PER_WORKLOAD, logDir,
        onProgress: (_at, line) => {
          if (++progress === Math.floor(SECONDS_PER_WORKLOAD / 2)) void bypass().then((r) => (during = r ?? during));
          const m = /progress: ([\d.]+) s, ([\d.]+) tps/.exec(line);
          if (m) process.stdout.write(`\r  ${m[1]} s: ${Math.round(Number(m[2]))} tps    `);
        },
      });
      process.stdout.write('\r' + ' '.repeat(40) + '\r');
      const s = run.summary;
      const tx = readTxLogs(run.logFiles);
      if (run.code !== 0 || s.aborted || !s.tps) {
        say(`  pgbench failed (exit ${run.code}): ${s.errors.slice(0, 3).join('; ') || run.stderr.trim().split('\n').slice(-3).join(' | ')}`);
        say(`  pgsplice said: ${proxy.logTail()}`);
        continue;
      }
      const p = (q: number) => ((percentile(tx.latenciesUs, q) ?? NaN) / 1000).toFixed(2);
      say(`  ${s.transactions.toLocaleString('en-US')} transactions, ${Math.round(s.tps).toLocaleString('en-US')} per second; ` +
        `latency average ${s.latencyAvgMs} ms, median ${p(50)} ms, 99th percentile ${p(99)} ms; ` +
        `${s.failed === 0 ? 'no failed transactions' : `${s.failed} failed transactions`}.`);
      for (const sc of s.scripts) say(`    ${sc.name.replace(/^.*ycsb-/, '').replace(/\.sql.*$/, '')}: ${sc.transactions.toLocaleString('en-US')} transactions, ${sc.latencyAvgMs} ms average`);
    }
    const after = await bypass();
    const summary = await pgspliceCounters({ host: proxy!.host, port: proxy!.port, user: 'bench', password: 'bench' });
    say('\nWhich data path carried the load:');
    say('  ' + describeDataPath(before, during, after, summary));
    const warnings = proxy.output().split('\n').filter((l) => /\b(warn|error)\b/i.test(l)).slice(0, 5);
    if (warnings.length) say(`\npgsplice warnings/errors during the demo:\n  ${warnings.join('\n  ')}`);
    say('\nStopping pgsplice and PostgreSQL.');
  } finally {
    await stopAll();
  }
}

if (require.main === module) {
  main().then(
    () => process.exit(0),
    (e) => {
      process.stderr.write(`demo: ${(e as Error).message}\n`);
      process.exit(1);
    },
  );
}

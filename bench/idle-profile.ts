// Where an idle client's memory goes: a scratch PostgreSQL, one pgsplice (--bypass off|on)
// started with the inspector on a loopback port, N idle clients (bench/idle.ts's logins).
// Before and after: a full collection through the inspector, then RSS, the V8 heap spaces
// and (--snapshot) a heap snapshot summarised per constructor. For finding what to cut;
// `npm run bench` reports the figure the goal reads.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { ScratchPostgres, freePort } from '../scripts/scratch-postgres';
import { startPgsplice } from './targets';
import { idleRun } from './idle';
import { Inspector } from './inspector';

async function main(): Promise<void> {
  const argv = await yargs(hideBin(process.argv))
    .option('bypass', { type: 'string', default: 'off' })
    .option('clients', { type: 'number', default: 10_000 })
    .option('settle', { type: 'number', default: 0 })
    .option('snapshot', { type: 'boolean', default: false })
    .option('node-arg', { type: 'string', array: true, default: [] as string[] })
    .strict().parse();
  const pg = await ScratchPostgres.create({ settings: { max_connections: 200 } });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-idleprof-'));
  try {
    pg.createUserAndDb('bench', 'bench', 'bench');
    const backend = { host: '127.0.0.1', port: pg.port, user: 'bench', password: 'bench', db: 'bench' };
    const t = await startPgsplice({
      dir: tmp, port: await freePort(), backend, poolSize: 16, maxClientConn: argv.clients + 1000,
      bypass: argv.bypass as 'on' | 'off', extraNodeArgs: argv['node-arg'],
    });
    let insp: Inspector | null = null;
    try {
      insp = await Inspector.connect(t.inspectPort!);
      const i = insp;
      const r = await idleRun({ ...backend, port: t.port, clients: argv.clients, proxyPid: t.pid, settleSeconds: argv.settle, log: (s) => console.log(s), probe: () => i.memory(), snapshot: argv.snapshot ? (label: string) => i.snapshotSummary(path.join(tmp, `${label}.heapsnapshot`)) : undefined });
      console.log(JSON.stringify(r, null, 1));
    } finally {
      insp?.close();
      await t.stop();
    }
  } finally {
    await pg.destroy();
    if (!argv.snapshot) fs.rmSync(tmp, { recursive: true, force: true });
  }
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});

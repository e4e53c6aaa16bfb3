// The per-core cost model of docs/workers.md: pgbench through pgsplice with workers 1 and
// 2, bypass off and on, interleaved rounds; per run the CPU time of the pgsplice process
// tree (primary + workers, /proc/<pid>/stat utime+stime) and of PostgreSQL's backends per
// transaction, the transactions per second and the server connections opened.
// Run: npx tsc -p tsconfig.json && node dist/scripts/workers-cost.js [seconds] [rounds]
import { spawn, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ScratchPostgres, freePort } from './scratch-postgres';

const SECONDS = Number(process.argv[2] ?? 10);
const ROUNDS = Number(process.argv[3] ?? 2);
const MODES = (process.env.WORKERS_COST_MODES ?? 'off,on').split(',');
const CLK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());
const CLI = path.resolve(__dirname, '..', 'src', 'cli.js');

// CPU seconds of a process and all its descendants (children of exited ones are not counted).
function treeCpu(root: number): number {
  const kids = new Map<number, number[]>();
  let total = 0;
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      const ppid = Number(f[1]);
      (kids.get(ppid) ?? kids.set(ppid, []).get(ppid)!).push(Number(d));
    } catch {
      /* exited */
    }
  }
  const walk = (pid: number) => {
    try {
      const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      total += (Number(f[11]) + Number(f[12])) / CLK;
    } catch {
      /* exited */
    }
    for (const k of kids.get(pid) ?? []) walk(k);
  };
  walk(root);
  return total;
}

async function main(): Promise<void> {
  const pg = await ScratchPostgres.create({ settings: { max_connections: 200 } });
  try {
    pg.createUserAndDb('app', 'app-pw', 'app');
    execFileSync('pgbench', ['-i', '-q', '-s', '1', '-h', pg.socketDir, '-p', String(pg.port), '-U', 'app', 'app'], { stdio: 'ignore', env: { ...process.env, PGPASSWORD: 'app-pw' } });
    const pgPid = Number(fs.readFileSync(path.join(pg.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    const rows: string[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      for (const bypass of MODES) {
        for (const variant of (process.env.WORKERS_COST_VARIANTS ?? '1,2').split(',')) {
          // N: workers: N; Nr: the same with so_reuseport (for workers: 1, the shared-port listener alone)
          const workers = parseInt(variant, 10);
          const reuse = variant.endsWith('r');
          const port = await freePort();
          const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-cost-'));
          const cfg = path.join(dir, 'pgsplice.yaml');
          fs.writeFileSync(cfg, [
            `listen: { host: 127.0.0.1, port: ${port} }`, `bypass: ${bypass}`, `workers: ${workers}`, `so_reuseport: ${reuse}`, 'pool_mode: transaction',
            'default_pool_size: 8', 'log_level: info',
            `databases: { app: { host: 127.0.0.1, port: ${pg.port}, dbname: app } }`, 'users: { app: { password: app-pw } }',
          ].join('\n'));
          const proxy = spawn(process.execPath, [CLI, '-c', cfg], { stdio: ['ignore', 'ignore', 'pipe'] });
          // Measured from the moment every worker listens (start-up CPU is not per transaction).
          const ready = workers > 1 ? new RegExp(`${workers} workers listening`) : /started \(/;
          let log = '';
          await new Promise<void>((resolve) => {
            proxy.stderr!.on('data', (d) => {
              log += d;
              if (ready.test(log)) resolve();
            });
          });
          await new Promise((r) => setTimeout(r, 1000));
          const logAt = log.length;
          const cpu0 = treeCpu(proxy.pid!);
          const pg0 = treeCpu(pgPid);
          const out = execFileSync('pgbench', ['-n', '-S', '-M', 'extended', '-c', '32', '-j', '2', '-T', String(SECONDS), '-h', '127.0.0.1', '-p', String(port), '-U', 'app', 'app'], { encoding: 'utf8', env: { ...process.env, PGPASSWORD: 'app-pw' } });
          const cpu = treeCpu(proxy.pid!) - cpu0;
          const pgCpu = treeCpu(pgPid) - pg0;
          const servers = Number(pg.psql(`SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'`, 'app').trim());
          const opened = (log.slice(logAt).match(/new server connection/g) ?? []).length;
          if (process.env.WORKERS_COST_LOG) fs.writeFileSync(`${process.env.WORKERS_COST_LOG}-${bypass}-${workers}.log`, log.slice(logAt));
          const tx = Number(/actually processed: (\d+)/.exec(out)![1]);
          const failed = Number(/failed transactions: (\d+)/.exec(out)?.[1] ?? 0);
          rows.push(`| ${round} | ${bypass} | ${variant} | ${(tx / SECONDS).toFixed(0)} | ${((cpu / tx) * 1e6).toFixed(1)} | ${((pgCpu / tx) * 1e6).toFixed(1)} | ${servers} | ${opened} | ${failed} |`);
          console.log(rows[rows.length - 1]);
          proxy.kill('SIGINT');
          await new Promise((r) => proxy.once('exit', r));
        }
      }
    }
    console.log('| round | bypass | workers | tps | pgsplice CPU µs/tx | PostgreSQL CPU µs/tx | server conns | servers opened | failed |');
    console.log(rows.join('\n'));
  } finally {
    await pg.destroy();
  }
}

void main();

// The mirror PostgreSQL of the bench's mirror rows: a second scratch cluster with the
// same usertable, at equal CPU priority (pgsplice-mirror) or at SCHED_IDLE
// (pgsplice-mirror-idle). On one machine the mirror replays every statement on the
// primary's cores; at idle priority it only gets the CPU the primary side leaves, which
// separates what mirroring costs the proxy from what the co-located mirror takes.
import { execFileSync } from 'node:child_process';
import { ScratchPostgres } from '../scripts/scratch-postgres';
import { setupStatements } from '../scripts/ycsb';
import { SCHED_IDLE, postmasterPid, readProcTable, schedPolicy, treePids } from './proc';

export type MirrorPriority = 'normal' | 'idle';

export interface MirrorServer {
  pg: ScratchPostgres;
  pmPid: number;
  priority: MirrorPriority;
}

// Processes of a cluster and how many of them run at SCHED_IDLE.
export interface PolicyCount {
  processes: number;
  idle: number;
}

export function policyCount(pmPid: number, table = readProcTable()): PolicyCount {
  let processes = 0;
  let idle = 0;
  for (const pid of treePids(pmPid, table)) {
    const p = schedPolicy(pid);
    if (p === null) continue; // exited meanwhile
    processes++;
    if (p === SCHED_IDLE) idle++;
  }
  return { processes, idle };
}

// SCHED_IDLE for the postmaster and the processes it already forked (checkpointer,
// walwriter, ...); backends forked later inherit it from the postmaster (chrt does not set
// SCHED_RESET_ON_FORK). Throws with the tree's count if any process kept another policy.
export function setIdlePriority(pmPid: number): PolicyCount {
  for (const pid of treePids(pmPid)) {
    try {
      execFileSync('chrt', ['--idle', '-p', '0', String(pid)], { stdio: 'pipe' });
    } catch (e) {
      if (schedPolicy(pid) !== null) throw new Error(`chrt --idle -p 0 ${pid}: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  const n = policyCount(pmPid);
  if (n.idle !== n.processes) throw new Error(`mirror PostgreSQL: ${n.idle} of ${n.processes} processes at SCHED_IDLE after chrt`);
  return n;
}

export async function startMirrorServer(o: { settings: Record<string, string | number>; rows: number; priority: MirrorPriority }): Promise<MirrorServer> {
  const pg = await ScratchPostgres.create({ settings: o.settings });
  try {
    pg.createUserAndDb('bench', 'bench', 'bench');
    for (const st of setupStatements(o.rows)) pg.psql(st, 'bench');
    pg.psql('ALTER TABLE usertable OWNER TO bench', 'bench');
    const pmPid = postmasterPid(pg.dataDir);
    if (!pmPid) throw new Error('mirror PostgreSQL: no postmaster.pid');
    // After loading: the load runs at normal priority and is not measured.
    if (o.priority === 'idle') setIdlePriority(pmPid);
    return { pg, pmPid, priority: o.priority };
  } catch (e) {
    await pg.destroy().catch(() => undefined);
    throw e;
  }
}

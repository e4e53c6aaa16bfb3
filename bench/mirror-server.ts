// The mirror PostgreSQL of the bench's mirror rows: a second scratch cluster with the
// same usertable, at equal CPU priority (pgsplice-mirror) or at idle priority
// (pgsplice-mirror-idle). On one machine the mirror replays every statement on the
// primary's cores; at idle priority it only gets the CPU the primary side leaves, which
// separates what mirroring costs the proxy from what the co-located mirror takes.
//
// Idle priority is two things here. SCHED_IDLE (chrt) alone does nothing measurable on a
// kernel with autogroups (sched_autogroup_enabled): every PostgreSQL backend calls
// setsid(), so each is alone in its own autogroup, which competes at nice 0 whatever its
// task's policy (measured: an idle-policy busy loop in its own session got the same CPU as
// a normal one). So the cluster also goes into a CPU cgroup of its own with cpu.idle = 1
// (or the smallest weight): tasks outside the root group get no autogroup, and the group
// as a whole yields to everything else. Processes forked later inherit both.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ScratchPostgres } from '../scripts/scratch-postgres';
import { loadBenchDatabase } from '../scripts/ycsb';
import { SCHED_IDLE, postmasterPid, readProcStat, readProcTable, schedPolicy, treePids } from './proc';

export type MirrorPriority = 'normal' | 'idle';

export interface MirrorServer {
  pg: ScratchPostgres;
  pmPid: number;
  priority: MirrorPriority;
  idleGroup: IdleCpuGroup | null; // idle priority: the CPU cgroup it runs in
  destroy(): Promise<void>;
}

// A CPU cgroup of the bench's own, made to yield to everything else.
export interface IdleCpuGroup {
  dir: string;
  relPath: string; // as /proc/<pid>/cgroup shows it
  knob: string; // what was set: 'cpu.idle=1', 'cpu.shares=2' or 'cpu.weight=1'
}

// Processes of a tree and how many of them run at idle priority: SCHED_IDLE and, when a
// group is given, in it. Exiting processes are left out: the cgroup v1 hierarchy shows an
// exited backend (a zombie until the postmaster reaps it) in the root group.
export interface PolicyCount {
  processes: number;
  idle: number;
}

export function policyCount(rootPid: number, table = readProcTable(), group: IdleCpuGroup | null = null): PolicyCount {
  let processes = 0;
  let idle = 0;
  for (const pid of treePids(rootPid, table)) {
    const st = readProcStat(pid);
    if (!st || st.state === 'Z' || st.state === 'X') continue;
    const p = schedPolicy(pid);
    if (p === null) continue; // exited meanwhile
    const inGroup = group === null || cpuCgroupOf(pid) === group.relPath;
    processes++;
    if (p === SCHED_IDLE && inGroup) idle++;
  }
  return { processes, idle };
}

// The cgroup path of a process in the hierarchy that has the cpu controller (v1), or its
// v2 path when no v1 hierarchy has it. null if the process is gone.
export function cpuCgroupOf(pid: number): string | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8');
  } catch {
    return null;
  }
  return parseCpuCgroup(text);
}
export function parseCpuCgroup(text: string): string | null {
  const lines = text.trim().split('\n').map((l) => l.split(':'));
  const v1 = lines.find((f) => f.length >= 3 && f[1].split(',').includes('cpu'));
  if (v1) return v1.slice(2).join(':');
  const v2 = lines.find((f) => f.length >= 3 && f[0] === '0' && f[1] === '');
  return v2 ? v2.slice(2).join(':') : null;
}

// Where the cpu controller is mounted: a v1 hierarchy with 'cpu' among its options, or a
// cgroup2 mount that offers 'cpu'. null when neither.
export function cpuControllerMount(mounts = fs.readFileSync('/proc/mounts', 'utf8')): { dir: string; version: 1 | 2 } | null {
  let v2: string | null = null;
  for (const line of mounts.split('\n')) {
    const [, dir, type, opts] = line.split(' ');
    if (type === 'cgroup' && opts?.split(',').includes('cpu')) return { dir, version: 1 };
    if (type === 'cgroup2' && !v2) v2 = dir;
  }
  if (v2) {
    try {
      if (fs.readFileSync(path.join(v2, 'cgroup.controllers'), 'utf8').split(/\s+/).includes('cpu')) return { dir: v2, version: 2 };
    } catch {
      /* not readable */
    }
  }
  return null;
}

export function autogroupsEnabled(): boolean {
  try {
    return fs.readFileSync('/proc/sys/kernel/sched_autogroup_enabled', 'utf8').trim() === '1';
  } catch {
    return false;
  }
}

export function makeIdleCpuGroup(name: string): IdleCpuGroup {
  const m = cpuControllerMount();
  if (!m) throw new Error('no cgroup hierarchy with the cpu controller is mounted');
  const dir = path.join(m.dir, name);
  fs.mkdirSync(dir);
  try {
    const has = (f: string) => fs.existsSync(path.join(dir, f));
    const knob = has('cpu.idle') ? ['cpu.idle', '1'] : m.version === 1 ? ['cpu.shares', '2'] : ['cpu.weight', '1'];
    fs.writeFileSync(path.join(dir, knob[0]), knob[1]);
    return { dir, relPath: `/${name}`, knob: knob.join('=') };
  } catch (e) {
    fs.rmdirSync(dir);
    throw e;
  }
}

// Removes the group once its processes have exited (a stopped cluster's last ones may
// take a moment to be reaped).
export async function removeIdleCpuGroup(g: IdleCpuGroup): Promise<void> {
  for (let i = 0; i < 50; i++) {
    try {
      fs.rmdirSync(g.dir);
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

// Idle priority for a process and the processes it already forked (the postmaster's
// checkpointer, walwriter, ...); what it forks later (backends) inherits it. Throws with the
// tree's count if any process is not at idle priority afterwards.
export function setIdlePriority(rootPid: number, group: IdleCpuGroup | null): PolicyCount {
  for (const pid of treePids(rootPid)) {
    try {
      if (group) fs.writeFileSync(path.join(group.dir, 'cgroup.procs'), String(pid));
      // (chrt does not set SCHED_RESET_ON_FORK: children keep the policy)
      execFileSync('chrt', ['--idle', '-p', '0', String(pid)], { stdio: 'pipe' });
    } catch (e) {
      if (schedPolicy(pid) !== null) throw new Error(`idle priority for pid ${pid}: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  const n = policyCount(rootPid, undefined, group);
  if (n.idle !== n.processes) throw new Error(`${n.idle} of ${n.processes} processes at idle priority (SCHED_IDLE${group ? `, in ${group.dir}` : ''}) after setting it`);
  return n;
}

export async function startMirrorServer(o: { settings: Record<string, string | number>; rows: number; priority: MirrorPriority }): Promise<MirrorServer> {
  const pg = await ScratchPostgres.create({ settings: o.settings });
  let group: IdleCpuGroup | null = null;
  try {
    loadBenchDatabase(pg, o.rows);
    const pmPid = postmasterPid(pg.dataDir);
    if (!pmPid) throw new Error('mirror PostgreSQL: no postmaster.pid');
    // After loading: the load runs at normal priority and is not measured.
    if (o.priority === 'idle') {
      try {
        group = makeIdleCpuGroup(`pgsplice-bench-mirror-${process.pid}-${pg.port}`);
      } catch (e) {
        // Without autogroups SCHED_IDLE alone does what is wanted.
        if (autogroupsEnabled()) throw new Error(`mirror PostgreSQL at idle priority needs a CPU cgroup here (autogroups are on, and SCHED_IDLE alone does nothing for PostgreSQL's backends, each in its own session): ${(e as Error).message}`);
      }
      setIdlePriority(pmPid, group);
    }
    const g = group;
    return {
      pg, pmPid, priority: o.priority, idleGroup: g,
      destroy: async () => {
        await pg.destroy().catch(() => undefined);
        if (g) await removeIdleCpuGroup(g);
      },
    };
  } catch (e) {
    await pg.destroy().catch(() => undefined);
    if (group) await removeIdleCpuGroup(group);
    throw e;
  }
}

// CPU and memory accounting from /proc. All CPU figures are seconds of CPU time.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

let tck: number | null = null;
export function clockTicks(): number {
  if (tck === null) {
    try {
      tck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      tck = 100;
    }
  }
  return tck;
}

export interface ProcStat {
  pid: number;
  comm: string;
  state: string; // R, S, D, Z (zombie), X (dead), ...
  ppid: number;
  utime: number; // ticks
  stime: number;
  cutime: number; // waited-for children
  cstime: number;
}

export function readProcStat(pid: number): ProcStat | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  return parseProcStat(text);
}

// The comm field is in parentheses and may itself contain spaces and ')'.
export function parseProcStat(text: string): ProcStat | null {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < 0) return null;
  const rest = text.slice(close + 2).split(' ');
  // rest[0] is field 3 (state); utime is field 14 -> rest[11].
  return {
    pid: Number(text.slice(0, open).trim()),
    comm: text.slice(open + 1, close),
    state: rest[0],
    ppid: Number(rest[1]),
    utime: Number(rest[11]),
    stime: Number(rest[12]),
    cutime: Number(rest[13]),
    cstime: Number(rest[14]),
  };
}

function allPids(): number[] {
  return fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number);
}

export type ProcTable = Map<number, ProcStat[]>; // children by parent pid

// One pass over /proc: every process, grouped by parent.
export function readProcTable(): ProcTable {
  const byParent: ProcTable = new Map();
  for (const pid of allPids()) {
    const st = readProcStat(pid);
    if (!st) continue;
    const list = byParent.get(st.ppid) ?? [];
    list.push(st);
    byParent.set(st.ppid, list);
  }
  return byParent;
}

// CPU seconds a live process has run, all its threads, from /proc/<pid>/task/*/schedstat
// (nanoseconds on CPU, exact). /proc/<pid>/stat's utime+stime is not used for live
// processes: with tick-based accounting it lags by up to seconds for processes that run
// in short bursts (PostgreSQL backends: 0.9 s of schedstat time with 1 tick of stat time
// was measured here), and catches up later.
export function runtimeSeconds(pid: number): number | null {
  let tasks: string[];
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return null;
  }
  let ns = 0;
  for (const t of tasks) {
    try {
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]) || 0;
    } catch {
      /* thread gone */
    }
  }
  return ns / 1e9;
}

// CPU seconds of a process, its live descendants, and the children already reaped
// (cutime/cstime, whose total is exact once a child has exited). Differences of two
// readings give the CPU used in between, including that of children that started or
// exited in between (PostgreSQL backends).
export function treeCpuSeconds(rootPid: number, table: ProcTable = readProcTable()): number | null {
  const root = readProcStat(rootPid);
  const rootRun = runtimeSeconds(rootPid);
  if (!root || rootRun === null) return null;
  let seconds = rootRun + (root.cutime + root.cstime) / clockTicks();
  const stack = [rootPid];
  const seen = new Set<number>([rootPid]);
  while (stack.length) {
    const p = stack.pop()!;
    for (const c of table.get(p) ?? []) {
      if (seen.has(c.pid)) continue;
      seen.add(c.pid);
      // A live child's own time; its reaped children are in its cutime.
      seconds += (runtimeSeconds(c.pid) ?? (c.utime + c.stime) / clockTicks()) + (c.cutime + c.cstime) / clockTicks();
      stack.push(c.pid);
    }
  }
  return seconds;
}

// CPU seconds of one process (all threads), without children.
export function processCpuSeconds(pid: number): number | null {
  return runtimeSeconds(pid);
}

export interface MachineCpu {
  busy: number; // seconds, summed over CPUs: user nice system irq softirq steal
  total: number; // busy + idle + iowait
  irq: number; // irq + softirq seconds (not charged to any process with IRQ time accounting)
}

export function machineCpu(): MachineCpu {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n').find((l) => l.startsWith('cpu '))!;
  return parseMachineCpuLine(line);
}

export function parseMachineCpuLine(line: string): MachineCpu {
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = f.map((x) => x || 0);
  // guest and guest_nice are already counted in user and nice.
  const busy = user + nice + system + irq + softirq + steal;
  return { busy: busy / clockTicks(), total: (busy + idle + iowait) / clockTicks(), irq: (irq + softirq) / clockTicks() };
}

function statusKiB(pid: number, key: string): number | null {
  try {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}
export const peakRssKiB = (pid: number) => statusKiB(pid, 'VmHWM');
export const rssKiB = (pid: number) => statusKiB(pid, 'VmRSS');

export function postmasterPid(dataDir: string): number | null {
  try {
    const pid = Number(fs.readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    return Number.isFinite(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

// One reading of every counter a run needs.
export interface CpuSnapshot {
  atMs: number;
  machine: MachineCpu;
  proxy: number | null;
  postgres: number | null;
  pgbench: number | null;
  mirrorPostgres: number | null; // the mirror rows' mirror PostgreSQL (its tree), else null
  kernelThreads: number; // all kernel threads (children of kthreadd): kworkers, ksoftirqd, ...
}

// CPU seconds of all kernel threads. The sockmap path's redirects run in kworkers.
export function kernelThreadsCpuSeconds(table: ProcTable): number {
  let seconds = 0;
  for (const k of table.get(2) ?? []) seconds += runtimeSeconds(k.pid) ?? (k.utime + k.stime) / clockTicks();
  return seconds;
}

// withTable: for a caller that reads more from the same /proc pass (no second scan).
export function snapshot(
  pids: { proxy?: number | null; postgres?: number | null; pgbench?: number | null; mirrorPostgres?: number | null },
  withTable?: (table: ProcTable) => void,
): CpuSnapshot {
  const table = readProcTable();
  withTable?.(table);
  return {
    atMs: Date.now(),
    kernelThreads: kernelThreadsCpuSeconds(table),
    machine: machineCpu(),
    proxy: pids.proxy ? treeCpuSeconds(pids.proxy, table) : null,
    postgres: pids.postgres ? treeCpuSeconds(pids.postgres, table) : null,
    pgbench: pids.pgbench ? processCpuSeconds(pids.pgbench) : null,
    mirrorPostgres: pids.mirrorPostgres ? treeCpuSeconds(pids.mirrorPostgres, table) : null,
  };
}

// A process and its live descendants, from one /proc pass.
export function treePids(rootPid: number, table: ProcTable = readProcTable()): number[] {
  const out = [rootPid];
  for (let i = 0; i < out.length; i++) for (const c of table.get(out[i]) ?? []) if (!out.includes(c.pid)) out.push(c.pid);
  return out;
}

// Linux scheduling policies by number (sched(7)), as /proc/<pid>/sched shows them.
export const SCHED_POLICY_NAMES: Record<number, string> = { 0: 'normal', 1: 'fifo', 2: 'rr', 3: 'batch', 5: 'idle', 6: 'deadline' };
export const SCHED_IDLE = 5;

// The scheduling policy of a process ("policy : N" in /proc/<pid>/sched); null if gone.
export function schedPolicy(pid: number): number | null {
  try {
    return parseSchedPolicy(fs.readFileSync(`/proc/${pid}/sched`, 'utf8'));
  } catch {
    return null;
  }
}
export function parseSchedPolicy(text: string): number | null {
  const m = /^policy\s*:\s*(\d+)\s*$/m.exec(text);
  return m ? Number(m[1]) : null;
}

// Turning a result into words and pictures: the goals of the current issues (met or
// missed and by how much), the Markdown tables, and a hand-written SVG chart.
import { BenchResult, CellSummary, GoalRecord, SCHEMA_ID } from './schema';

// The cells the goals read: YCSB C at 64 clients on a pool of 16 (the pool is the run's).
export interface CellKey {
  workload: string;
  mode: string;
  clients: number;
  rate: number | null; // pgbench --rate, null: saturated
}
export const GOAL_CLIENTS = 64;
export const GOAL_RATE = 5000;
const EXT: CellKey = { workload: 'c', mode: 'extended', clients: GOAL_CLIENTS, rate: null };
const PREP: CellKey = { workload: 'c', mode: 'prepared', clients: GOAL_CLIENTS, rate: null };
const RATE: CellKey = { workload: 'c', mode: 'extended', clients: GOAL_CLIENTS, rate: GOAL_RATE };

export function findCell(r: BenchResult, target: string, k: CellKey): CellSummary | undefined {
  return r.cells.find((c) => c.target === target && c.workload === k.workload && c.clients === k.clients && c.mode === k.mode && !c.connect_per_tx && (c.rate_tps ?? null) === k.rate);
}

const cellName = (k: CellKey) => `YCSB ${k.workload.toUpperCase()} ${k.mode} ${k.clients} clients${k.rate ? ` at ${k.rate.toLocaleString('en-US')} tps` : ''}`;

type Op = '>=' | '<=' | 'within';

// Evaluates "num op threshold x den" literally (so a negative figure still compares
// correctly); 'within' means |num/den - 1| <= threshold.
function ratioGoal(
  issue: number, id: string, description: string, num: number | null | undefined, den: number | null | undefined,
  op: Op, threshold: number, unit: (x: number) => string, missing: string,
): GoalRecord {
  const thr = op === 'within' ? `within ${(threshold * 100).toFixed(0)}%` : `${op} ${threshold.toFixed(2)}x`;
  if (num == null || den == null) return { issue, id, description, threshold: thr, measured: null, met: null, detail: `not measured: ${missing}` };
  const ratio = den > 0 ? num / den : null;
  const shown = ratio === null ? '' : `${ratio.toFixed(2)}x: `;
  if (op === 'within') {
    const met = ratio !== null && Math.abs(ratio - 1) <= threshold;
    const detail = `${met ? 'met' : 'MISSED'}: ${shown}${unit(num)} vs ${unit(den)}; allowed ${unit(den * (1 - threshold))} to ${unit(den * (1 + threshold))}`;
    return { issue, id, description, threshold: thr, measured: ratio === null ? null : round(ratio, 3), met, detail };
  }
  const bound = threshold * den;
  const met = op === '>=' ? num >= bound : num <= bound;
  const gap = Math.abs(num - bound);
  const rel = bound !== 0 ? ` (${((gap / Math.abs(bound)) * 100).toFixed(0)}%)` : '';
  const detail = met
    ? `met: ${shown}${unit(num)} vs ${unit(den)}; bound ${unit(bound)}`
    : `MISSED: ${shown}${unit(num)} vs ${unit(den)}; bound ${unit(bound)}, ${op === '>=' ? 'short' : 'over'} by ${unit(gap)}${rel}`;
  return { issue, id, description, threshold: thr, measured: ratio === null ? null : round(ratio, 3), met, detail };
}

const tps = (x: number) => `${Math.round(x)} tps`;
const us = (x: number) => `${x.toFixed(1)} µs/tx`;
const msU = (x: number) => `${x.toFixed(2)} ms`;

export function evaluateGoals(r: BenchResult): GoalRecord[] {
  // Why a figure is missing: the target did not run, its runs failed, or no such cell.
  const why = (t: string, k: CellKey) => {
    const c = findCell(r, t, k);
    const tr = r.targets.find((x) => x.label === t);
    if (tr?.status === 'failed') return `${t}: ${tr.reason}`;
    if (c && c.rounds_ok === 0) return `${t} failed every round of ${cellName(k)}${c.error ? `: ${c.error.slice(0, 300)}` : ''}`;
    return c ? `${t} has no such figure in ${cellName(k)}` : `no ${t} run of ${cellName(k)}`;
  };
  const g = (issue: number, id: string, description: string, a: [string, CellKey], b: [string, CellKey], pick: (c: CellSummary) => number | null,
    op: Op, threshold: number, unit: (x: number) => string): GoalRecord => {
    const ca = findCell(r, a[0], a[1]);
    const cb = findCell(r, b[0], b[1]);
    const na = ca && ca.rounds_ok > 0 ? pick(ca) : null;
    const nb = cb && cb.rounds_ok > 0 ? pick(cb) : null;
    return ratioGoal(issue, id, description, na, nb, op, threshold, unit, na == null ? why(a[0], a[1]) : why(b[0], b[1]));
  };
  const goals: GoalRecord[] = [];

  // --- issue 13: the kernel path for named statements, waits, pipelining; auto never worse than off ---
  const onPrep = findCell(r, 'pgsplice-on', PREP);
  const autoPrep = findCell(r, 'pgsplice-auto', PREP);
  const share = onPrep && onPrep.rounds_ok > 0 ? onPrep.kernel_share ?? null : null;
  const autoShare = autoPrep?.kernel_share;
  goals.push({
    issue: 13, id: 'i13-prepared-kernel-share', description: `-M prepared, ${GOAL_CLIENTS} clients: the kernel carries >= 90% of bypass: on's transactions`,
    threshold: '>= 90%', measured: share, met: share === null ? null : share >= 0.9,
    detail: share === null
      ? `not measured: ${onPrep && onPrep.rounds_ok > 0 ? 'no kernel transaction count (kernel path not loaded?)' : why('pgsplice-on', PREP)}`
      : `${share >= 0.9 ? 'met' : 'MISSED'}: ${(share * 100).toFixed(1)}% (SHOW BYPASS kernel_transactions over the cell / pgbench's transactions, median of rounds)` +
        (onPrep!.handbacks_per_tx != null ? `, ${onPrep!.handbacks_per_tx.toFixed(3)} hand-backs to user space per transaction` : '') +
        (autoShare != null ? `; bypass: auto ${(autoShare * 100).toFixed(1)}%` : ''),
  });
  for (const t of ['pgsplice-on', 'pgsplice-auto']) {
    const m = t.slice('pgsplice-'.length);
    goals.push(g(13, `i13-prepared-${m}-vs-off`, `-M prepared, ${GOAL_CLIENTS} clients: bypass: ${m} throughput >= 1.1x bypass: off`, [t, PREP], ['pgsplice-off', PREP], (c) => c.tps, '>=', 1.1, tps));
    goals.push(g(13, `i13-prepared-${m}-vs-pgbouncer`, `-M prepared, ${GOAL_CLIENTS} clients: bypass: ${m} throughput >= PgBouncer's extended-protocol row`, [t, PREP], ['pgbouncer', EXT], (c) => c.tps, '>=', 1.0, tps));
  }
  goals.push(g(13, 'i13-ext-on-tps', `extended, ${GOAL_CLIENTS} clients: bypass: on throughput >= 1.1x PgBouncer`, ['pgsplice-on', EXT], ['pgbouncer', EXT], (c) => c.tps, '>=', 1.1, tps));
  goals.push(g(13, 'i13-ext-on-p99', `extended, ${GOAL_CLIENTS} clients: bypass: on p99 latency <= PgBouncer's`, ['pgsplice-on', EXT], ['pgbouncer', EXT], (c) => c.latency_p99_ms, '<=', 1.0, msU));
  // Machine CPU carries other users' work; on a busy machine judge on `ours` (proxy +
  // PostgreSQL + pgbench + kernel threads) and say so.
  const busy = r.machine.background_busy_cpus > 0.25;
  const cpuGoal = g(13, 'i13-rate-on-cpu', `fixed ${GOAL_RATE.toLocaleString('en-US')} tps: bypass: on machine CPU/tx <= 0.75x PgBouncer's`, ['pgsplice-on', RATE], ['pgbouncer', RATE],
    (c) => (busy ? c.cpu_us_per_tx.ours : c.cpu_us_per_tx.machine), '<=', 0.75, us);
  const other = (t: string) => {
    const c = findCell(r, t, RATE);
    return f1(busy ? c?.cpu_us_per_tx.machine : c?.cpu_us_per_tx.ours);
  };
  cpuGoal.detail += busy
    ? ` [basis: ours, the machine was busy with other work (${r.machine.background_busy_cpus} CPUs); machine basis: ${other('pgsplice-on')} vs ${other('pgbouncer')} µs/tx]`
    : ` [basis: machine CPU; ours basis: ${other('pgsplice-on')} vs ${other('pgbouncer')} µs/tx]`;
  goals.push(keptUpNote(r, cpuGoal, ['pgsplice-on', 'pgbouncer']));
  goals.push(keptUpNote(r, g(13, 'i13-rate-on-p99', `fixed ${GOAL_RATE.toLocaleString('en-US')} tps: bypass: on p99 latency <= PgBouncer's`, ['pgsplice-on', RATE], ['pgbouncer', RATE], (c) => c.latency_p99_ms, '<=', 1.0, msU), ['pgsplice-on', 'pgbouncer']));
  goals.push(autoNeverBelowOff(r));

  // --- issue 14: the user-space path at PgBouncer's cost ---
  for (const w of ['c', 'a']) {
    for (const mode of ['extended', 'simple']) {
      const k: CellKey = { workload: w, mode, clients: GOAL_CLIENTS, rate: null };
      goals.push(g(14, `i14-off-tps-${w}-${mode}`, `YCSB ${w.toUpperCase()} ${mode}, ${GOAL_CLIENTS} clients: bypass: off throughput >= 0.9x PgBouncer`, ['pgsplice-off', k], ['pgbouncer', k], (c) => c.tps, '>=', 0.9, tps));
    }
  }
  goals.push(g(14, 'i14-off-proxy-cpu', `extended, ${GOAL_CLIENTS} clients: bypass: off proxy CPU/tx <= 1.5x PgBouncer's`, ['pgsplice-off', EXT], ['pgbouncer', EXT], (c) => c.cpu_us_per_tx.proxy, '<=', 1.5, us));
  goals.push(g(14, 'i14-off-postgres-cpu', `extended, ${GOAL_CLIENTS} clients: PostgreSQL CPU/tx through bypass: off within 10% of through PgBouncer`, ['pgsplice-off', EXT], ['pgbouncer', EXT], (c) => c.cpu_us_per_tx.postgres, 'within', 0.1, us));
  goals.push(g(14, 'i14-off-pgbench-cpu', `extended, ${GOAL_CLIENTS} clients: pgbench CPU/tx through bypass: off within 10% of through PgBouncer`, ['pgsplice-off', EXT], ['pgbouncer', EXT], (c) => c.cpu_us_per_tx.pgbench, 'within', 0.1, us));
  goals.push(keptUpNote(r, g(14, 'i14-rate-off-p50', `fixed ${GOAL_RATE.toLocaleString('en-US')} tps: bypass: off p50 latency <= 1.2x PgBouncer's`, ['pgsplice-off', RATE], ['pgbouncer', RATE], (c) => c.latency_p50_ms, '<=', 1.2, msU), ['pgsplice-off', 'pgbouncer']));
  goals.push(keptUpNote(r, g(14, 'i14-rate-off-p99', `fixed ${GOAL_RATE.toLocaleString('en-US')} tps: bypass: off p99 latency <= 1.2x PgBouncer's`, ['pgsplice-off', RATE], ['pgbouncer', RATE], (c) => c.latency_p99_ms, '<=', 1.2, msU), ['pgsplice-off', 'pgbouncer']));
  for (const t of ['pgsplice-off', 'pgsplice-on']) {
    const idle = r.idle.find((i) => i.target === t);
    // After a full collection in the proxy when the run could ask for one (the young
    // generation V8 keeps after a burst of logins is not a cost per client); else the slope.
    const gc = idle?.after_gc ?? null;
    const b = gc ? gc.rss_bytes_per_client : (idle?.bytes_per_client ?? null);
    const m = t.slice('pgsplice-'.length);
    // A slope at or below zero means RSS shrank while clients were opened (a garbage
    // collection returned more than they took): no figure, not a met goal.
    const shrank = b !== null && b <= 0;
    goals.push({
      issue: 14, id: `i14-idle-memory-${m}`, description: `bypass: ${m} proxy memory per idle client <= 4 KiB`, threshold: '<= 4096 B',
      measured: shrank ? null : b, met: b === null || shrank ? null : b <= 4096,
      detail: shrank
        ? `not measured: the proxy's RSS shrank while ${idle!.clients_opened.toLocaleString('en-US')} clients were opened (slope ${b} B per client: a garbage collection returned more than they took); open more clients (--idle-clients)`
        : b === null
        ? `not measured: ${idle?.error ?? r.targets.find((x) => x.label === t)?.reason ?? `no idle run for ${t}`}`
        : `${b <= 4096 ? 'met' : 'MISSED'}: ${b} B per client${b > 4096 ? ` (${((b / 4096 - 1) * 100).toFixed(0)}% over 4096 B)` : ''}, ${idle!.clients_opened.toLocaleString('en-US')} clients${gc ? `, RSS after a full collection (JS heap ${gc.heap_used_bytes_per_client} B of it; RSS while opening, young generation included: ${idle!.bytes_per_client ?? '?'} B)` : ''}`,
    });
  }

  // --- issue 15: mirroring (only when the run asked for the mirror rows) ---
  if (r.options.mirror) {
    // The mirror PostgreSQL on the same two cores at equal priority: its replay takes the
    // primary's CPU whatever the proxy does.
    const co = g(15, 'i15-mirror-tps', `extended, ${GOAL_CLIENTS} clients, bypass: on: primary throughput with one mirror >= 0.9x without`, ['pgsplice-mirror', EXT], ['pgsplice-on', EXT], (c) => c.tps, '>=', 0.9, tps);
    co.detail += mirrorDetail(r, 'pgsplice-mirror');
    goals.push(co);
    // The same with the mirror PostgreSQL at SCHED_IDLE: what mirroring costs the primary
    // side (the proxy's copies, framing, comparing) when the mirror has CPU of its own. Met
    // only if the mirror answered >= 90% of the transactions: dropping is not mirroring.
    const idle = g(15, 'i15-mirror-idle-tps', `extended, ${GOAL_CLIENTS} clients, bypass: on, one mirror whose PostgreSQL runs at idle CPU priority (standing in for a mirror on another host) answering >= ${MIRRORED_SHARE_GOAL * 100}% of the transactions: primary throughput >= 0.9x without`,
      ['pgsplice-mirror-idle', EXT], ['pgsplice-on', EXT], (c) => c.tps, '>=', 0.9, tps);
    const m = findCell(r, 'pgsplice-mirror-idle', EXT)?.mirror ?? null;
    if (idle.met !== null) {
      if (!m || m.idle_verified !== true) {
        idle.met = null;
        idle.detail = `not measured: ${!m ? 'no SHOW MIRRORS counters for the cell' : "the mirror PostgreSQL's processes were not all seen at SCHED_IDLE"}; ${idle.detail}`;
      } else if (m.mirrored_share === null || m.mirrored_share < MIRRORED_SHARE_GOAL) {
        const throughputMet = idle.met;
        idle.met = false;
        idle.detail = `MISSED: the mirror answered ${m.mirrored_share === null ? '?' : `${(m.mirrored_share * 100).toFixed(1)}%`} of the transactions (< ${MIRRORED_SHARE_GOAL * 100}%); throughput ${throughputMet ? 'within' : 'below'} the bound: ${idle.detail.replace(/^(met|MISSED): /, '')}`;
      }
    }
    idle.detail += mirrorDetail(r, 'pgsplice-mirror-idle');
    goals.push(idle);
  }
  return goals;
}

// The idle-priority mirror row counts as mirroring only when the mirror answered this much.
export const MIRRORED_SHARE_GOAL = 0.9;

// What a mirror row's mirror got over the cell, and the proxy's CPU beside pgsplice-on's.
function mirrorDetail(r: BenchResult, target: string): string {
  const c = findCell(r, target, EXT);
  const on = findCell(r, 'pgsplice-on', EXT);
  if (!c || c.rounds_ok === 0) return '';
  const parts: string[] = [];
  const p = c.cpu_us_per_tx.proxy;
  const po = on && on.rounds_ok > 0 ? on.cpu_us_per_tx.proxy : null;
  if (p != null && po != null && po > 0) parts.push(`proxy CPU ${us(p)} vs ${us(po)} (${((p / po - 1) * 100).toFixed(0)}%)`);
  // Proxy + primary PostgreSQL + pgbench + kernel threads: the primary side's CPU, the
  // mirror PostgreSQL not included (steadier than throughput on a shared machine).
  const o = c.cpu_us_per_tx.ours;
  const oo = on && on.rounds_ok > 0 ? on.cpu_us_per_tx.ours : null;
  if (o != null && oo != null && oo > 0) parts.push(`primary-side CPU (ours) ${us(o)} vs ${us(oo)} (${((o / oo - 1) * 100).toFixed(0)}%)`);
  const m = c.mirror;
  if (m) {
    parts.push(`SHOW MIRRORS over ${m.rounds} round(s): ${m.transactions.toLocaleString('en-US')} of ${m.pgbench_transactions.toLocaleString('en-US')} transactions mirrored (${m.mirrored_share === null ? '?' : `${(m.mirrored_share * 100).toFixed(1)}%`}), ${m.dropped.toLocaleString('en-US')} dropped, ${m.diverged.toLocaleString('en-US')} diverged` +
      (m.undrained_rounds ? `, ${m.undrained_rounds} round(s) still queued when the wait ended` : ''));
    if (m.postgres_cpu_us_per_tx != null) parts.push(`mirror PostgreSQL ${us(m.postgres_cpu_us_per_tx)}`);
  } else parts.push('no SHOW MIRRORS counters');
  return ` [${parts.join('; ')}]`;
}

// At a fixed rate the comparison means something only if both targets kept up.
function keptUpNote(r: BenchResult, goal: GoalRecord, targets: string[]): GoalRecord {
  const behind = targets.filter((t) => findCell(r, t, RATE)?.kept_up === false);
  if (behind.length) goal.detail += ` (did not keep up with the rate: ${behind.join(', ')})`;
  return goal;
}

// "No row has auto below off": saturated rows compare throughput; fixed-rate rows
// compare keeping up (both did: equal work, not below).
function autoNeverBelowOff(r: BenchResult): GoalRecord {
  const rows: Array<{ name: string; ratio: number | null; below: boolean }> = [];
  for (const a of r.cells.filter((c) => c.target === 'pgsplice-auto' && !c.connect_per_tx)) {
    const o = r.cells.find((c) => c.target === 'pgsplice-off' && c.workload === a.workload && c.mode === a.mode && c.clients === a.clients && !c.connect_per_tx && (c.rate_tps ?? null) === (a.rate_tps ?? null));
    if (!o || o.rounds_ok === 0) continue;
    const name = cellName({ workload: a.workload, mode: a.mode, clients: a.clients, rate: a.rate_tps ?? null });
    if (a.rounds_ok === 0) rows.push({ name, ratio: 0, below: true });
    else if (a.rate_tps) rows.push({ name, ratio: null, below: o.kept_up === true && a.kept_up === false });
    else if (a.tps != null && o.tps != null && o.tps > 0) rows.push({ name, ratio: a.tps / o.tps, below: a.tps < o.tps });
  }
  const base = { issue: 13, id: 'i13-auto-never-below-off', description: 'no row has bypass: auto below bypass: off (throughput; at a fixed rate: keeping up)', threshold: '>= 1.00x in every row' };
  if (rows.length === 0) return { ...base, measured: null, met: null, detail: `not measured: ${r.targets.find((t) => t.label === 'pgsplice-auto')?.reason ?? 'no row with both pgsplice-auto and pgsplice-off'}` };
  const ratios = rows.filter((x) => x.ratio !== null).map((x) => x.ratio!);
  const worst = ratios.length ? Math.min(...ratios) : null;
  const below = rows.filter((x) => x.below);
  const list = (xs: typeof rows) => xs.map((x) => `${x.name} ${x.ratio === null ? 'did not keep up' : `${x.ratio.toFixed(2)}x`}`).join('; ');
  return {
    ...base, measured: worst === null ? null : round(worst, 3), met: below.length === 0,
    detail: below.length === 0
      ? `met: ${rows.length} rows, lowest auto/off ${worst === null ? '–' : `${worst.toFixed(2)}x`}`
      : `MISSED: ${below.length} of ${rows.length} rows below off: ${list(below)}`,
  };
}

function round(x: number, d: number): number {
  const f = 10 ** d;
  return Math.round(x * f) / f;
}

const f0 = (x: number | null | undefined) => (x == null ? '–' : Math.round(x).toLocaleString('en-US'));
const f1 = (x: number | null | undefined) => (x == null ? '–' : x.toFixed(1));
const f2 = (x: number | null | undefined) => (x == null ? '–' : x.toFixed(2));
const f3 = (x: number | null | undefined) => (x == null ? '–' : x.toFixed(3));

export function markdownReport(r: BenchResult, svgName?: string): string {
  const o = r.options;
  const L: string[] = [];
  L.push(`# pgsplice benchmark, ${r.started_at.slice(0, 16).replace('T', ' ')} UTC`, '');
  L.push(`Command: \`${r.command}\`  `);
  L.push(`Machine: ${r.machine.cpus} CPU (${r.machine.cpu_model}), ${r.machine.mem_gib} GiB, Linux ${r.machine.kernel}, ${r.machine.postgres ?? 'PostgreSQL ?'}, ${r.machine.pgbouncer ?? 'no PgBouncer'}, Node ${r.machine.node}; background load before the runs: ${r.machine.background_busy_cpus} busy CPUs  `);
  L.push(`YCSB usertable ${o.rows.toLocaleString('en-US')} rows, zipfian θ=${o.zipf_theta}; pool size ${o.pool_size}; ${o.rounds} interleaved round(s) of ${o.duration_s} s per cell; medians shown. CPU is µs per transaction over the steady-state window: machine = all non-idle CPU time in /proc/stat (kernel workers included, and anything else running); ours = proxy + PostgreSQL + pgbench + kernel threads (kworkers, ksoftirqd; with this kernel's tick-based accounting irq/softirq time is already charged to the running task); proxy-attr. = that figure minus direct PostgreSQL's in the same cell.`, '');
  if (svgName) L.push(`![throughput and CPU per transaction](${svgName})`, '');
  L.push(`## Goals (YCSB C unless named, pool ${o.pool_size}; medians of the interleaved rounds)`, '');
  const goalIssues = [...new Set(r.goals.map((g) => g.issue ?? 4))];
  for (const issue of goalIssues) {
    const gs = r.goals.filter((g) => (g.issue ?? 4) === issue);
    const met = gs.filter((g) => g.met === true).length;
    L.push(`### Issue ${issue}${ISSUE_TITLES[issue] ? `: ${ISSUE_TITLES[issue]}` : ''} (${met} of ${gs.length} met)`, '');
    L.push('| goal | result |', '|---|---|');
    for (const g of gs) L.push(`| ${g.description} | ${g.met === null ? '⚪' : g.met ? '✅' : '❌'} ${g.detail.replace(/\|/g, '\\|').replace(/\n/g, ' ')} |`);
    L.push('');
  }
  const failed = r.targets.filter((t) => t.status === 'failed');
  if (failed.length) {
    L.push('Targets that did not run:', '');
    for (const t of failed) L.push(`- **${t.label}**: ${t.reason}`);
    L.push('');
  }
  const paths = r.targets.filter((t) => t.bypass_after);
  if (paths.length) {
    L.push('## Which data path carried the load (SHOW BYPASS after the runs)', '');
    for (const t of paths) L.push(`- **${t.label}**: ${dataPathSummary(t.bypass_after!)}`);
    L.push('');
  }
  const notes = r.targets.filter((t) => t.note);
  for (const t of notes) L.push(`- ${t.label} said: ${t.note}`);
  if (notes.length) L.push('');
  const pct = (x: number | null | undefined) => (x == null ? '–' : `${(x * 100).toFixed(1)}%`);
  const runCells = r.cells.filter((c) => !c.connect_per_tx && !c.rate_tps);
  if (runCells.length) {
    L.push('## Saturated: throughput, latency, CPU per transaction', '');
    L.push('kernel % = the share of the cell\'s transactions the kernel carried to their end (pgsplice\'s SHOW BYPASS `kernel_transactions` read before and after each run, over pgbench\'s count); hand-backs/tx = requests the kernel passed to user space (the `fallback_*` counters: waits for a server, named statements, ...) per transaction, same cell.', '');
    L.push('| workload | mode | clients | target | tps | p50 ms | p99 ms | machine µs/tx | ours µs/tx | proxy | postgres | pgbench | kernel | proxy-attr. (machine) | proxy-attr. (ours) | kernel % | hand-backs/tx | peak RSS MiB | rounds |');
    L.push('|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const c of runCells) {
      const rss = r.targets.find((t) => t.label === c.target)?.peak_rss_kib;
      L.push(`| ${c.workload.toUpperCase()} | ${c.mode} | ${c.clients} | ${c.target} | ${c.rounds_ok ? f0(c.tps) : 'failed'} | ${f2(c.latency_p50_ms)} | ${f2(c.latency_p99_ms)} | ${f1(c.cpu_us_per_tx.machine)} | ${f1(c.cpu_us_per_tx.ours)} | ${f1(c.cpu_us_per_tx.proxy)} | ${f1(c.cpu_us_per_tx.postgres)} | ${f1(c.cpu_us_per_tx.pgbench)} | ${f1(c.cpu_us_per_tx.kernel)} | ${f1(c.proxy_attributable_us_per_tx)} | ${f1(c.proxy_attributable_ours_us_per_tx)} | ${pct(c.kernel_share)} | ${f3(c.handbacks_per_tx)} | ${rss == null ? '–' : (rss / 1024).toFixed(0)} | ${c.rounds_ok}/${o.rounds} |`);
    }
    L.push('');
  }
  const rateCells = r.cells.filter((c) => !c.connect_per_tx && c.rate_tps);
  if (rateCells.length) {
    L.push(`## Fixed offered load (pgbench --rate; YCSB C, extended, ${o.rate_clients ?? GOAL_CLIENTS} clients)`, '');
    L.push('Latency is pgbench\'s: from each transaction\'s scheduled start, so it includes the schedule lag (how late the transaction started, shown separately). Kept up = every round completed >= 95% of the rate in its window.', '');
    L.push('| rate tps | target | achieved tps | kept up | machine µs/tx | ours µs/tx | proxy | postgres | pgbench | kernel | p50 ms | p99 ms | lag p50 ms | lag p99 ms | kernel % | hand-backs/tx | rounds |');
    L.push('|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const c of rateCells) {
      L.push(`| ${f0(c.rate_tps)} | ${c.target} | ${c.rounds_ok ? f0(c.tps) : 'failed'} | ${c.kept_up === null ? '–' : c.kept_up ? 'yes' : '**no**'} | ${f1(c.cpu_us_per_tx.machine)} | ${f1(c.cpu_us_per_tx.ours)} | ${f1(c.cpu_us_per_tx.proxy)} | ${f1(c.cpu_us_per_tx.postgres)} | ${f1(c.cpu_us_per_tx.pgbench)} | ${f1(c.cpu_us_per_tx.kernel)} | ${f2(c.latency_p50_ms)} | ${f2(c.latency_p99_ms)} | ${f2(c.lag_p50_ms)} | ${f2(c.lag_p99_ms)} | ${pct(c.kernel_share)} | ${f3(c.handbacks_per_tx)} | ${c.rounds_ok}/${o.rounds} |`);
    }
    L.push('');
  }
  mirrorSection(r, L);
  const failedCells = r.cells.filter((c) => c.rounds_ok === 0);
  if (failedCells.length) {
    L.push('Cells in which every round failed:', '');
    for (const c of failedCells) {
      const name = `${c.workload.toUpperCase()} ${c.mode} ${c.clients} clients${c.rate_tps ? ` at ${c.rate_tps} tps` : ''}${c.connect_per_tx ? ' (storm)' : ''}`;
      L.push(`- **${c.target}**, ${name}: ${(c.error ?? 'failed').replace(/\s+/g, ' ').slice(0, 400)}`);
    }
    L.push('');
  }
  const storm = r.cells.filter((c) => c.connect_per_tx);
  if (storm.length) {
    L.push(`## Connection storm (pgbench -C: a new connection with SCRAM login per transaction, YCSB C read, ${o.storm_clients} clients)`, '');
    L.push('| mode | target | connections/s | p50 ms | p99 ms | machine µs/conn | ours µs/conn | proxy | postgres | pgbench | kernel |', '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const c of storm) L.push(`| ${c.mode} | ${c.target} | ${f0(c.tps)} | ${f2(c.latency_p50_ms)} | ${f2(c.latency_p99_ms)} | ${f0(c.cpu_us_per_tx.machine)} | ${f0(c.cpu_us_per_tx.ours)} | ${f0(c.cpu_us_per_tx.proxy)} | ${f0(c.cpu_us_per_tx.postgres)} | ${f0(c.cpu_us_per_tx.pgbench)} | ${f0(c.cpu_us_per_tx.kernel)} |`);
    L.push('');
  }
  if (r.idle.length) {
    L.push(`## Idle connections (${o.idle_clients.toLocaleString('en-US')} clients logged in with SCRAM and left idle)`, '');
    L.push('| target | opened | seconds | logins/s | proxy RSS before MiB | after MiB | RSS B/client while opening | RSS B/client after a collection | JS heap B/client after a collection | error |', '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|');
    for (const i of r.idle) {
      L.push(`| ${i.target} | ${i.clients_opened} | ${f1(i.open_seconds)} | ${f0(i.opens_per_second)} | ${i.rss_before_kib == null ? '–' : (i.rss_before_kib / 1024).toFixed(1)} | ${i.rss_after_kib == null ? '–' : (i.rss_after_kib / 1024).toFixed(1)} | ${f0(i.bytes_per_client)} | ${f0(i.after_gc?.rss_bytes_per_client ?? null)} | ${f0(i.after_gc?.heap_used_bytes_per_client ?? null)} | ${i.error ?? ''} |`);
    }
    L.push('', 'RSS while opening: slope of the proxy\'s RSS over the clients opened, as the process grows (V8 keeps the young generation it grew during the logins, up to 32 MiB). After a collection: pgsplice only, a full garbage collection in the proxy (through its loopback inspector) before the reading before the clients and the one after; the issue-14 goal reads this figure where there is one.');
    L.push('');
  }
  return L.join('\n');
}

// The mirror rows round by round beside pgsplice-on in the same round (same cell).
function mirrorSection(r: BenchResult, L: string[]): void {
  const rows = r.runs.filter((x) => x.mirror !== undefined && !x.connect_per_tx && !x.rate_tps);
  if (!rows.length) return;
  L.push(`## Mirroring (issue 15): YCSB C, extended, ${rows[0].clients} clients, bypass: on, one mirror, every client mirrored`, '');
  L.push('Two rows, both against `pgsplice-on` in the same round. `pgsplice-mirror`: the mirror PostgreSQL on the same cores at equal CPU priority; it replays every statement, and PostgreSQL is over half the CPU of a transaction, so it takes that share from the primary whatever the proxy does. `pgsplice-mirror-idle`: the mirror PostgreSQL at idle CPU priority (SCHED_IDLE and a CPU cgroup with cpu.idle, checked for each of its processes during the run), standing in for a mirror on another host: it gets only the CPU the primary side leaves, so the primary pays what mirroring costs the proxy; on a saturated machine that is little, and the mirror then falls behind and drops (share and dropped show how much was really mirrored). Mirrored/dropped/diverged: growth of SHOW MIRRORS over the run, read after the mirror answered what was queued (drained = seconds that took after pgbench ended). The mirror PostgreSQL\'s CPU is not in the CPU columns above.', '');
  L.push('| round | row | tps | pgsplice-on tps | ratio | proxy µs/tx | pgsplice-on proxy µs/tx | ratio | ours µs/tx | pgsplice-on ours µs/tx | ratio | mirrored | pgbench tx | share | dropped | diverged | drained s | processes at idle priority | mirror PostgreSQL µs/tx |');
  L.push('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  const x2 = (a: number | null | undefined, b: number | null | undefined) => (a == null || b == null || !(b > 0) ? '–' : `${(a / b).toFixed(2)}x`);
  for (const m of rows.sort((a, b) => a.round - b.round || a.target.localeCompare(b.target))) {
    const on = r.runs.find((x) => x.target === 'pgsplice-on' && x.round === m.round && x.workload === m.workload && x.mode === m.mode && x.clients === m.clients && !x.connect_per_tx && !x.rate_tps && x.ok);
    const s = m.mirror;
    const tpsOf = (x: typeof m | undefined) => (x?.ok ? x.tps : null);
    L.push(`| ${m.round} | ${m.target} | ${m.ok ? f0(m.tps) : 'failed'} | ${f0(tpsOf(on))} | ${x2(tpsOf(m), tpsOf(on))} | ${f1(m.cpu_us_per_tx.proxy)} | ${f1(on?.cpu_us_per_tx.proxy)} | ${x2(m.cpu_us_per_tx.proxy, on?.cpu_us_per_tx.proxy)} | ${f1(m.cpu_us_per_tx.ours)} | ${f1(on?.cpu_us_per_tx.ours)} | ${x2(m.cpu_us_per_tx.ours, on?.cpu_us_per_tx.ours)} | ` +
      (s ? `${f0(s.transactions)} | ${f0(m.transactions)} | ${s.mirrored_share == null ? '–' : `${(s.mirrored_share * 100).toFixed(1)}%`} | ${f0(s.dropped)} | ${f0(s.diverged)} | ${s.drain_s == null ? '**not drained**' : s.drain_s.toFixed(1)} | ${s.server_processes == null ? '–' : `${s.server_processes_idle}/${s.server_processes}`} | ${f1(s.postgres_cpu_us_per_tx)} |`
        : '– | – | – | – | – | – | – | – |'));
  }
  L.push('', 'ours = proxy + primary PostgreSQL + pgbench + kernel threads per transaction (the mirror PostgreSQL not included): where the primary is CPU-bound and the mirror has CPU of its own, throughput goes as its inverse.', '');
  const errs = rows.filter((m) => m.mirror?.last_error);
  for (const m of errs) L.push(`- round ${m.round}, ${m.target}: mirror ${m.mirror!.state_after || '?'}, last error: ${m.mirror!.last_error.replace(/\s+/g, ' ')}`);
  if (errs.length) L.push('');
}

const ISSUE_TITLES: Record<number, string> = {
  13: 'the kernel path for the traffic real applications send; auto never worse than off',
  14: 'the user-space path at PgBouncer\'s cost',
  15: 'workload replication (one mirror, kernel path on)',
};

const COLORS: Record<string, string> = {
  direct: '#6b7280', pgbouncer: '#d97706', 'pgsplice-off': '#2563eb', 'pgsplice-on': '#059669', 'pgsplice-auto': '#0d9488', 'pgsplice-mirror': '#7c3aed', 'pgsplice-mirror-idle': '#c4b5fd',
};
const EXTRA_COLORS = ['#9333ea', '#db2777', '#0891b2', '#65a30d'];
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

function niceMax(x: number): number {
  if (!(x > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

// Two panels over the same groups (workload/mode/clients): throughput bars, and
// stacked CPU-per-transaction bars (proxy, PostgreSQL, pgbench, everything else).
export function svgChart(r: BenchResult): string {
  const cells = r.cells.filter((c) => !c.connect_per_tx);
  const targets = [...new Set(cells.map((c) => c.target))];
  const color = (t: string) => COLORS[t] ?? EXTRA_COLORS[(targets.indexOf(t) + EXTRA_COLORS.length) % EXTRA_COLORS.length];
  const groups: Array<{ key: string; label: string; cells: Array<CellSummary | undefined> }> = [];
  for (const c of cells) {
    const keyOf = (x: CellSummary) => `${x.workload}/${x.mode}/${x.clients}/${x.rate_tps ?? ''}`;
    const key = keyOf(c);
    if (!groups.find((g) => g.key === key)) {
      groups.push({
        key, label: `${c.workload.toUpperCase()} ${c.mode === 'extended' ? 'ext' : c.mode === 'prepared' ? 'prep' : c.mode} ${c.clients}c${c.rate_tps ? ` @${c.rate_tps >= 1000 ? `${c.rate_tps / 1000}k` : c.rate_tps}` : ''}`,
        cells: targets.map((t) => cells.find((x) => x.target === t && keyOf(x) === key)),
      });
    }
  }
  const gap = 22, left = 70, right = 20, panelH = 220, top = 70;
  const legendW = left + right + targets.length * 130 + 20 + 5 * 130;
  const width = Math.max(1000, legendW, left + right + groups.length * (targets.length * 16 + gap));
  const groupW = (width - left - right) / Math.max(1, groups.length);
  const bw = Math.max(8, Math.min(56, Math.floor((groupW - gap) / Math.max(1, targets.length))));
  const height = top + panelH * 2 + 60 + 40 + r.goals.length * 15 + 10;
  const maxTps = niceMax(Math.max(0, ...cells.map((c) => c.tps ?? 0)));
  const maxCpu = niceMax(Math.max(0, ...cells.map((c) => c.cpu_us_per_tx.machine ?? 0)));
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="11">`);
  out.push(`<rect width="100%" height="100%" fill="#ffffff"/>`);
  out.push(`<text x="${left}" y="20" font-size="15" font-weight="bold">pgsplice benchmark: ${esc(r.started_at.slice(0, 16).replace('T', ' '))} UTC, ${r.machine.cpus} CPU, pool ${r.options.pool_size}, ${r.options.rows.toLocaleString('en-US')} rows, medians of ${r.options.rounds} round(s)</text>`);
  targets.forEach((t, i) => {
    const x = left + i * 130;
    out.push(`<rect x="${x}" y="32" width="12" height="12" fill="${color(t)}"/><text x="${x + 16}" y="42">${esc(t)}</text>`);
  });
  const stackKeys: Array<{ k: 'proxy' | 'postgres' | 'pgbench' | 'kernel' | 'other'; op: number; name: string }> = [
    { k: 'proxy', op: 1, name: 'proxy' }, { k: 'postgres', op: 0.65, name: 'PostgreSQL' },
    { k: 'pgbench', op: 0.4, name: 'pgbench' }, { k: 'kernel', op: 0.22, name: 'kernel threads' },
    { k: 'other', op: 0.08, name: 'other' },
  ];
  stackKeys.forEach((s, i) => {
    const x = left + targets.length * 130 + 20 + i * 130;
    out.push(`<rect x="${x}" y="32" width="12" height="12" fill="#374151" fill-opacity="${s.op}"/><text x="${x + 16}" y="42">${esc(s.name)}</text>`);
  });
  out.push(`<text x="${left + targets.length * 130 + 20}" y="58" fill="#555">(shading in the CPU panel)</text>`);
  const axis = (y0: number, max: number, title: string) => {
    for (let i = 0; i <= 4; i++) {
      const y = y0 + panelH - (panelH * i) / 4;
      const v = (max * i) / 4;
      out.push(`<line x1="${left}" x2="${width - right}" y1="${y}" y2="${y}" stroke="#e5e7eb"/>`);
      out.push(`<text x="${left - 6}" y="${y + 4}" text-anchor="end">${v >= 1000 ? `${(v / 1000).toFixed(v % 1000 ? 1 : 0)}k` : v.toFixed(v < 10 && v % 1 ? 1 : 0)}</text>`);
    }
    out.push(`<text transform="translate(16 ${y0 + panelH / 2}) rotate(-90)" text-anchor="middle" font-size="12">${esc(title)}</text>`);
  };
  const y1 = top, y2 = top + panelH + 60;
  axis(y1, maxTps, 'throughput (tps)');
  axis(y2, maxCpu, 'machine CPU µs / transaction');
  groups.forEach((g, gi) => {
    const gx = left + gap / 2 + gi * groupW;
    g.cells.forEach((c, ti) => {
      if (!c) return;
      const x = gx + ti * bw;
      const t = targets[ti];
      if (c.tps != null) {
        const h = (c.tps / maxTps) * panelH;
        out.push(`<rect x="${x}" y="${(y1 + panelH - h).toFixed(1)}" width="${bw - 2}" height="${h.toFixed(1)}" fill="${color(t)}"><title>${esc(`${t} ${g.label}: ${Math.round(c.tps)} tps, p50 ${f2(c.latency_p50_ms)} ms, p99 ${f2(c.latency_p99_ms)} ms`)}</title></rect>`);
        if (bw >= 30) out.push(`<text x="${x + (bw - 2) / 2}" y="${(y1 + panelH - h - 4).toFixed(1)}" text-anchor="middle" font-size="10">${c.tps >= 10000 ? `${(c.tps / 1000).toFixed(1)}k` : Math.round(c.tps)}</text>`);
      }
      const m = c.cpu_us_per_tx.machine;
      if (m != null) {
        const parts = { proxy: c.cpu_us_per_tx.proxy ?? 0, postgres: c.cpu_us_per_tx.postgres ?? 0, pgbench: c.cpu_us_per_tx.pgbench ?? 0, kernel: c.cpu_us_per_tx.kernel ?? 0, other: 0 };
        parts.other = Math.max(0, m - parts.proxy - parts.postgres - parts.pgbench - parts.kernel);
        let y = y2 + panelH;
        for (const s of stackKeys) {
          const h = (parts[s.k] / maxCpu) * panelH;
          if (h <= 0) continue;
          y -= h;
          out.push(`<rect x="${x}" y="${y.toFixed(1)}" width="${bw - 2}" height="${h.toFixed(1)}" fill="${color(t)}" fill-opacity="${s.op}"><title>${esc(`${t} ${g.label}: ${s.name} ${parts[s.k].toFixed(1)} µs/tx of ${m.toFixed(1)}`)}</title></rect>`);
        }
        if (bw >= 30) out.push(`<text x="${x + (bw - 2) / 2}" y="${(y - 4).toFixed(1)}" text-anchor="middle" font-size="10">${Math.round(m)}</text>`);
      }
    });
    const lx = gx + (targets.length * bw) / 2 - 1;
    for (const y of [y1 + panelH + 14, y2 + panelH + 14]) out.push(`<text x="${lx}" y="${y}" text-anchor="middle" font-size="10">${esc(g.label)}</text>`);
  });
  let gy = y2 + panelH + 40;
  for (const g of r.goals) {
    const line = `${g.met === null ? '○' : g.met ? '✔' : '✘'} ${g.description}: ${g.detail}`;
    const maxChars = Math.floor((width - left - right) / 6);
    out.push(`<text x="${left}" y="${gy}" fill="${g.met === null ? '#6b7280' : g.met ? '#047857' : '#b91c1c'}">${esc(line.length > maxChars ? line.slice(0, maxChars - 1) + '…' : line)}</text>`);
    gy += 15;
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}

// One sentence from pgsplice's SHOW BYPASS rows (counted since the proxy last started):
// what the kernel carried and the main reasons for handing back to user space.
export function dataPathSummary(b: Record<string, string>): string {
  const n = (k: string) => Number(b[k] ?? 0) || 0;
  const total = n('transactions_total');
  if (!/^(yes|true|on|1)$/i.test(b.loaded ?? '')) return `kernel path not loaded (${b.reason ?? '?'}); all ${total.toLocaleString('en-US')} transactions in user space`;
  const kTx = n('kernel_transactions');
  const fallbacks = Object.entries(b)
    .filter(([k, v]) => /^(kernel_)?fallback_/.test(k) && Number(v) > 0)
    .map(([k, v]) => [k.replace(/^kernel_/, '').replace(/^fallback_/, ''), Number(v)] as [string, number])
    .sort((a, c) => c[1] - a[1]);
  const seen = new Set<string>();
  const fb = fallbacks.filter(([k]) => (seen.has(k) ? false : (seen.add(k), true))).slice(0, 4);
  const share = total >= kTx && total > 0
    ? `the kernel carried ${kTx.toLocaleString('en-US')} of ${total.toLocaleString('en-US')} transactions (${((kTx / total) * 100).toFixed(1)}%)`
    : `the kernel counted ${kTx.toLocaleString('en-US')} transactions, user space ${total.toLocaleString('en-US')} (transactions_total)`;
  // bypass: auto says per pool which path it chose and why (rows named auto*).
  const auto = Object.entries(b).filter(([k]) => /^auto/.test(k)).slice(0, 6);
  return `kernel path loaded; ${share}` +
    (fb.length ? `; hand-backs to user space: ${fb.map(([k, v]) => `${k} ${v.toLocaleString('en-US')}`).join(', ')}` : '') +
    (auto.length ? `; ${auto.map(([k, v]) => `${k}: ${v}`).join(', ')}` : '') +
    ' (counters since the proxy last started)';
}

// node dist/bench/report.js FILE.json...: writes FILE.md and FILE.svg again from the
// JSON (after a change to the report), and latest.md/latest.svg for the newest file.
// Goals are derived from the cells: for results of the current schema they are
// evaluated again (and the JSON's goals[] rewritten); older results keep theirs.
if (require.main === module) {
  /* eslint-disable @typescript-eslint/no-var-requires */
  const fs = require('node:fs') as typeof import('node:fs');
  const path = require('node:path') as typeof import('node:path');
  const files = process.argv.slice(2).sort();
  for (const f of files) {
    const r = JSON.parse(fs.readFileSync(f, 'utf8')) as BenchResult;
    if (r.schema === SCHEMA_ID) {
      r.goals = evaluateGoals(r);
      fs.writeFileSync(f, JSON.stringify(r, null, 1) + '\n');
    }
    const base = f.replace(/\.json$/, '');
    const svg = svgChart(r);
    fs.writeFileSync(`${base}.svg`, svg);
    fs.writeFileSync(`${base}.md`, markdownReport(r, `${path.basename(base)}.svg`));
    if (f === files[files.length - 1]) {
      fs.writeFileSync(path.join(path.dirname(f), 'latest.svg'), svg);
      fs.writeFileSync(path.join(path.dirname(f), 'latest.md'), markdownReport(r, 'latest.svg'));
    }
    process.stdout.write(`${base}.md, .svg\n`);
  }
}

// Per-pool traffic of the kernel path. The kernel counts per kernel pool (the per-CPU
// `pool_stats` map: transactions, requests, bytes both ways, transaction and request
// time); the bypass controller samples it once a second and this folds the growth since
// the previous sample into the Pool that kernel pool belongs to. The result is added to
// the user-space totals in SHOW STATS / TOTALS and the Prometheus traffic counters.
import type { Pool } from '../pooling/pool';
import type { PoolStats } from './kernel-abi';
import { Totals, zeroTotals } from '../observe/stats';

const FIELDS = ['xacts', 'queries', 'clientBytes', 'serverBytes', 'xactNs', 'queryNs'] as const;

export class KernelPoolStats {
  private last = new Map<number, PoolStats>(); // kernel pool id -> its counters at the last sample
  private totals = new Map<Pool, Totals>();

  // The counters of kernel pool kid (of pool) now, summed over CPUs.
  add(pool: Pool, kid: number, now: PoolStats): void {
    const prev = this.last.get(kid);
    this.last.set(kid, now);
    const d = {} as PoolStats;
    for (const f of FIELDS) {
      const v = prev ? now[f] - prev[f] : now[f];
      d[f] = v < 0n ? now[f] : v; // counters only grow; a smaller value means a fresh map
    }
    if (FIELDS.every((f) => d[f] === 0n)) return;
    let t = this.totals.get(pool);
    if (!t) this.totals.set(pool, (t = zeroTotals()));
    t.xacts += d.xacts;
    t.queries += d.queries;
    t.bytesIn += d.clientBytes;
    t.bytesOut += d.serverBytes;
    t.xactUs += Number(d.xactNs) / 1000;
    t.queryUs += Number(d.queryNs) / 1000;
  }

  // Cumulative kernel traffic per Pool as of the last sample.
  byPool(): Map<Pool, Totals> {
    return this.totals;
  }
}

// `bypass: auto`, per pool: which data path serves a pool. The kernel path pays for itself
// only for the transactions it carries; a transaction it punts (named statements it cannot
// forward, session-state SQL, ...) goes through both paths and costs more than user space
// alone would. So a pool whose transactions the kernel mostly punts is served in user
// space, and probed again now and then: traffic changes. `bypass: on` never switches.
//
// The decision is made from two cumulative counters per pool, sampled by the bypass
// controller once a second: transactions the kernel carried whole (ended in the kernel,
// per-pool `pool_stats`, less those whose request waited in user space for a server and
// was bound in the kernel from there: they cost both paths too) and the others. Pure:
// the caller passes the clock.

export type PoolPath = 'kernel' | 'user';

export interface PathSample {
  kernelXacts: bigint; // cumulative, carried whole by the kernel
  userXacts: bigint; // cumulative, the others (ended in user space, or waited there)
}

export interface AutoTiming {
  windowMs: number; // how long a measurement runs before it decides
  minXacts: number; // fewer transactions than this in a window decide nothing
  minShare: number; // the kernel must carry at least this share of a window's transactions
  probeAfterMs: number; // a pool in user space tries the kernel again after this long...
  maxProbeAfterMs: number; // ...doubling after each failed probe, up to this
}

export const DEFAULT_AUTO_TIMING: AutoTiming = {
  windowMs: 5000, minXacts: 200, minShare: 0.5, probeAfterMs: 30_000, maxProbeAfterMs: 300_000,
};

// PGSPLICE_BYPASS_AUTO_TIMING="windowMs,minXacts,probeAfterMs": shorter cycles for tests.
export function autoTimingFromEnv(env: NodeJS.ProcessEnv = process.env): AutoTiming {
  const v = env.PGSPLICE_BYPASS_AUTO_TIMING;
  if (!v) return DEFAULT_AUTO_TIMING;
  const [windowMs, minXacts, probeAfterMs] = v.split(',').map(Number);
  const ok = (n: number) => Number.isFinite(n) && n > 0;
  if (!ok(windowMs) || !ok(minXacts) || !ok(probeAfterMs)) return DEFAULT_AUTO_TIMING;
  return { ...DEFAULT_AUTO_TIMING, windowMs, minXacts, probeAfterMs, maxProbeAfterMs: Math.max(probeAfterMs, 10 * probeAfterMs) };
}

export enum AutoState {
  Kernel = 'kernel', // served by the kernel path, measured
  User = 'user', // served in user space until the next probe
  Probe = 'probe', // back on the kernel path for one window, to measure again
}

export interface AutoVerdict {
  path: PoolPath;
  state: AutoState;
  reason: string; // for SHOW BYPASS
}

interface PoolAuto {
  state: AutoState;
  since: number; // when the state began
  windowStart: number;
  base: PathSample; // counters at windowStart
  probeAfterMs: number;
  reason: string;
}

const pct = (k: bigint, total: bigint): string => `${total > 0n ? Number((k * 1000n) / total) / 10 : 0}%`;

export class AutoBypass<K extends object> {
  private pools = new WeakMap<K, PoolAuto>();

  constructor(private readonly timing: AutoTiming = DEFAULT_AUTO_TIMING) {}

  // Feeds a pool's counters now; returns the path it is to be served by.
  update(pool: K, s: PathSample, now: number): AutoVerdict {
    const t = this.timing;
    let p = this.pools.get(pool);
    if (!p) {
      p = { state: AutoState.Kernel, since: now, windowStart: now, base: s, probeAfterMs: t.probeAfterMs, reason: 'measuring' };
      this.pools.set(pool, p);
    }
    if (p.state === AutoState.User) {
      if (now - p.since >= p.probeAfterMs) this.enter(p, AutoState.Probe, now, s, `probing: back on the kernel path for ${t.windowMs / 1000} s`);
      return this.verdict(p);
    }
    if (now - p.windowStart < t.windowMs) return this.verdict(p);
    const dk = s.kernelXacts - p.base.kernelXacts;
    const total = dk + (s.userXacts - p.base.userXacts);
    if (total < BigInt(t.minXacts)) {
      // too little traffic to judge: a probe that saw none goes back to waiting
      if (p.state === AutoState.Probe) this.enter(p, AutoState.User, now, s, `probe saw ${total} transactions: too few to judge; next probe later`);
      else this.restart(p, now, s);
      return this.verdict(p);
    }
    const share = Number(dk) / Number(total);
    const what = `the kernel carried ${pct(dk, total)} of ${total} transactions in ${Math.round((now - p.windowStart) / 100) / 10} s`;
    if (share < t.minShare) {
      if (p.state === AutoState.Probe) p.probeAfterMs = Math.min(p.probeAfterMs * 2, t.maxProbeAfterMs);
      this.enter(p, AutoState.User, now, s, `${what} (< ${t.minShare * 100}%): served in user space, next probe in ${p.probeAfterMs / 1000} s`);
    } else {
      p.probeAfterMs = t.probeAfterMs;
      this.enter(p, AutoState.Kernel, now, s, what);
    }
    return this.verdict(p);
  }

  private enter(p: PoolAuto, state: AutoState, now: number, s: PathSample, reason: string): void {
    if (state !== p.state) p.since = now;
    p.state = state;
    p.reason = reason;
    this.restart(p, now, s);
  }

  private restart(p: PoolAuto, now: number, s: PathSample): void {
    p.windowStart = now;
    p.base = s;
  }

  private verdict(p: PoolAuto): AutoVerdict {
    return { path: p.state === AutoState.User ? 'user' : 'kernel', state: p.state, reason: p.reason };
  }
}

// bypass: auto's per-pool decision (src/pooling/bypass-auto.ts) from fake counters and a
// fake clock: when a pool goes to user space, why, when it is probed, and when it returns.
import t from 'tap';
import { AutoBypass, AutoState, DEFAULT_AUTO_TIMING, autoTimingFromEnv } from '../src/pooling/bypass-auto';

const timing = { windowMs: 1000, minXacts: 100, minShare: 0.5, probeAfterMs: 10_000, maxProbeAfterMs: 40_000 };

t.test('a pool whose transactions the kernel carries stays on the kernel path', async (t) => {
  const a = new AutoBypass<object>(timing);
  const pool = {};
  t.equal(a.update(pool, { kernelXacts: 0n, userXacts: 0n }, 0).path, 'kernel', 'starts on the kernel path');
  const v = a.update(pool, { kernelXacts: 900n, userXacts: 100n }, 1000);
  t.equal(v.path, 'kernel');
  t.equal(v.state, AutoState.Kernel);
  t.match(v.reason, /carried 90% of 1000 transactions/);
});

t.test('mostly punted: user space, with the share in the reason; probes back off', async (t) => {
  const a = new AutoBypass<object>(timing);
  const pool = {};
  a.update(pool, { kernelXacts: 0n, userXacts: 0n }, 0);
  let v = a.update(pool, { kernelXacts: 10n, userXacts: 490n }, 1000);
  t.equal(v.path, 'user', 'switched to user space');
  t.match(v.reason, /carried 2% of 500 transactions in 1 s \(< 50%\): served in user space, next probe in 10 s/);
  t.equal(a.update(pool, { kernelXacts: 10n, userXacts: 5000n }, 9_999).path, 'user', 'no probe before probeAfterMs');
  v = a.update(pool, { kernelXacts: 10n, userXacts: 5000n }, 11_000);
  t.equal(v.state, AutoState.Probe, 'probes after probeAfterMs');
  t.equal(v.path, 'kernel', 'a probe runs on the kernel path');
  // still punted: back to user space, the next probe twice as late
  v = a.update(pool, { kernelXacts: 20n, userXacts: 5500n }, 12_000);
  t.equal(v.path, 'user');
  t.match(v.reason, /next probe in 20 s/);
  t.equal(a.update(pool, { kernelXacts: 20n, userXacts: 6000n }, 31_000).path, 'user', 'waits the longer interval');
  t.equal(a.update(pool, { kernelXacts: 20n, userXacts: 6000n }, 32_000).state, AutoState.Probe);
});

t.test('traffic changed: the probe brings the pool back, and the interval resets', async (t) => {
  const a = new AutoBypass<object>(timing);
  const pool = {};
  a.update(pool, { kernelXacts: 0n, userXacts: 0n }, 0);
  a.update(pool, { kernelXacts: 0n, userXacts: 500n }, 1000);
  t.equal(a.update(pool, { kernelXacts: 0n, userXacts: 600n }, 11_000).state, AutoState.Probe);
  const v = a.update(pool, { kernelXacts: 800n, userXacts: 650n }, 12_000);
  t.equal(v.path, 'kernel', 'back on the kernel path');
  t.equal(v.state, AutoState.Kernel);
  t.match(v.reason, /carried 94.1% of 850 transactions/);
  // a later relapse waits the base interval again
  const w = a.update(pool, { kernelXacts: 800n, userXacts: 1650n }, 13_000);
  t.match(w.reason, /next probe in 10 s/);
});

t.test('too little traffic decides nothing; a quiet probe goes back to waiting', async (t) => {
  const a = new AutoBypass<object>(timing);
  const pool = {};
  a.update(pool, { kernelXacts: 0n, userXacts: 0n }, 0);
  t.equal(a.update(pool, { kernelXacts: 0n, userXacts: 50n }, 1000).path, 'kernel', '50 punted transactions: too few');
  t.equal(a.update(pool, { kernelXacts: 0n, userXacts: 200n }, 2000).path, 'user', 'the next full window decides');
  t.equal(a.update(pool, { kernelXacts: 0n, userXacts: 200n }, 12_000).state, AutoState.Probe);
  const v = a.update(pool, { kernelXacts: 0n, userXacts: 210n }, 13_000);
  t.equal(v.path, 'user', 'no traffic during the probe: user space again');
  t.match(v.reason, /too few to judge/);
});

t.test('pools are judged apart', async (t) => {
  const a = new AutoBypass<object>(timing);
  const p1 = {}, p2 = {};
  a.update(p1, { kernelXacts: 0n, userXacts: 0n }, 0);
  a.update(p2, { kernelXacts: 0n, userXacts: 0n }, 0);
  t.equal(a.update(p1, { kernelXacts: 0n, userXacts: 1000n }, 1000).path, 'user');
  t.equal(a.update(p2, { kernelXacts: 1000n, userXacts: 0n }, 1000).path, 'kernel');
});

t.test('timing from the environment, defaults on bad input', async (t) => {
  t.same(autoTimingFromEnv({}), DEFAULT_AUTO_TIMING);
  t.same(autoTimingFromEnv({ PGSPLICE_BYPASS_AUTO_TIMING: 'x,1,2' }), DEFAULT_AUTO_TIMING);
  const v = autoTimingFromEnv({ PGSPLICE_BYPASS_AUTO_TIMING: '1000,20,3000' });
  t.equal(v.windowMs, 1000);
  t.equal(v.minXacts, 20);
  t.equal(v.probeAfterMs, 3000);
});

// waitUntil (src/kernel/settle.ts), how hand-overs wait for the kernel: it never blocks the
// event loop, backs off instead of polling every millisecond, and honours its deadline.
// The hand-overs themselves are covered by test/ebpf-handoff.test.ts and the kernel-* suites.
import t from 'tap';
import { waitUntil } from '../src/kernel/settle';

t.test('true at once when already ready, without a loop turn', async (t) => {
  let checks = 0;
  t.equal(await waitUntil(() => (checks++, true), 1000), true);
  t.equal(checks, 1);
});

t.test('the event loop keeps running while it waits', async (t) => {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 5);
  const start = Date.now();
  const ok = await waitUntil(() => Date.now() - start >= 200, 5000);
  clearInterval(timer);
  t.equal(ok, true, 'resolved true once ready');
  // a blocking wait (Atomics.wait) would let no timer run before it returns
  t.ok(ticks >= 2, `other timers ran meanwhile (${ticks} ticks of a 5 ms timer)`);
});

t.test('backs off: few checks over a long wait', async (t) => {
  let checks = 0;
  const ok = await waitUntil(() => (checks++, false), 600);
  t.equal(ok, false, 'false at the deadline');
  // a 1 ms poll would check ~600 times; 4 loop turns, then 1, 2, 4 ... 50 ms steps
  t.ok(checks < 40, `${checks} checks in 600 ms`);
  t.ok(checks >= 5, `but it kept checking (${checks})`);
});

t.test('deadline respected', async (t) => {
  const start = Date.now();
  t.equal(await waitUntil(() => false, 150), false);
  const took = Date.now() - start;
  t.ok(took >= 150 && took < 2000, `about 150 ms (${took})`);
});

// Waiting for the kernel without blocking the event loop. Some conditions of a hand-over
// become true on their own and raise no event: a kernel worker sending the bytes a
// verdict queued for a socket, or a verdict on another CPU finishing a frame it committed.
// They usually take microseconds; a slow reader can make the first take minutes.
// So: check now, then after a few event-loop turns, then on timers that back off from
// 1 ms to MAX_STEP_MS, until the deadline.

const IMMEDIATE_TRIES = 4;
const MAX_STEP_MS = 50;

/** Resolves true once `ready()` holds, false if `maxMs` passes first. */
export function waitUntil(ready: () => boolean, maxMs: number): Promise<boolean> {
  if (ready()) return Promise.resolve(true);
  const deadline = Date.now() + maxMs;
  return new Promise((resolve) => {
    let tries = 0;
    let step = 1;
    const check = (): void => {
      if (ready()) return resolve(true);
      const left = deadline - Date.now();
      if (left <= 0) return resolve(false);
      if (++tries <= IMMEDIATE_TRIES) {
        setImmediate(check);
      } else {
        setTimeout(check, Math.min(step, left));
        step = Math.min(step * 2, MAX_STEP_MS);
      }
    };
    setImmediate(check);
  });
}

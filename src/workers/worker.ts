// A worker's side of the primary: tells it when the listeners are up, does what a
// SHUTDOWN given on any worker's console asks, and drains if the primary is gone.
import { log } from '../observe/log';
import type { WorkerMessage } from './primary';
import type { ShutdownMode } from '../proxy-state';
import { exitSoon } from '../process/exit';

interface Drainable {
  drain(): Promise<void>;
  shutdown(mode: ShutdownMode): Promise<void>;
}

export function serveAsWorker(proxy: Drainable): void {
  process.on('message', (m: WorkerMessage) => {
    if (m?.type !== 'shutdown') return;
    void proxy.shutdown(m.mode).then(exitSoon);
  });
  // Killed primary: nobody would pass signals on any more; serve who is here, then stop.
  process.on('disconnect', () => {
    log.warn('the primary is gone: draining');
    void proxy.drain().then(exitSoon);
  });
  process.send?.({ type: 'listening' } satisfies WorkerMessage);
}

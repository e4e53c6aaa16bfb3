// The primary of `workers: N`: forks N worker processes that each run the whole proxy on
// the shared port (SO_REUSEPORT), hands each its peer id, passes signals and SHUTDOWN on
// to all of them, starts a worker again if it dies, and exits when they all have.
// It accepts no connection and loads no kernel program itself.
import { ChildProcess, fork } from 'node:child_process';
import type { Config } from '../config/types';
import { log } from '../observe/log';
import { choosePeerIds, drainOthers, peerDir } from './peer';
import { workerCount, workerEnv } from './role';
import type { ShutdownMode } from '../proxy-state';

// Messages between the primary and a worker (process.send).
export type WorkerMessage = { type: 'listening' } | { type: 'shutdown'; mode: ShutdownMode };

const FORWARDED_SIGNALS: NodeJS.Signals[] = ['SIGHUP', 'SIGTERM', 'SIGINT', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'];
const STOPPING_SIGNALS = new Set<NodeJS.Signals>(['SIGTERM', 'SIGINT', 'SIGQUIT']);
const RESTART_DELAY_MS = 1000;

export async function runPrimary(config: Config, takeover: boolean): Promise<void> {
  const count = workerCount(config);
  const dir = peerDir(config);
  const port = config.listen.port;
  const ids = await choosePeerIds(dir, port, count, config.peer_id);
  const workers = new Map<number, ChildProcess>();
  let stopping = false;
  let started = 0; // workers that have listened once: the takeover waits for all of them

  const broadcast = (m: WorkerMessage) => {
    for (const w of workers.values()) if (w.connected) w.send(m);
  };

  const start = (index: number): void => {
    const child = fork(process.argv[1], process.argv.slice(2), {
      env: workerEnv({ index, count, peerId: ids[index - 1] }),
      stdio: 'inherit',
    });
    workers.set(index, child);
    child.on('message', (m: WorkerMessage) => {
      if (m?.type === 'listening') {
        if (++started === count) {
          log.info(`pgsplice primary (pid ${process.pid}): ${count} workers listening, peer ids ${ids.join(', ')}`);
          if (takeover) {
            void drainOthers(dir, port, ids).then((asked) =>
              log.info(asked.length ? `takeover: asked peer ${asked.join(', ')} to drain` : 'takeover: no other pgsplice on this port'),
            );
          }
        }
      } else if (m?.type === 'shutdown') {
        // SHUTDOWN on one worker's console stops them all.
        stopping = true;
        broadcast(m);
      }
    });
    child.on('exit', (code, signal) => {
      workers.delete(index);
      // Exit 0: a shutdown or a drain that ended (a takeover); else it died: start it again.
      if (stopping || code === 0) {
        log.info(`worker ${index} (pid ${child.pid}) exited`);
        if (workers.size === 0) process.exit(0);
        return;
      }
      log.error(`worker ${index} (pid ${child.pid}) died (${signal ?? `exit ${code}`}); starting it again`);
      setTimeout(() => {
        if (!stopping) start(index);
        else if (workers.size === 0) process.exit(0);
      }, RESTART_DELAY_MS);
    });
  };

  for (const sig of FORWARDED_SIGNALS) {
    process.on(sig, () => {
      if (STOPPING_SIGNALS.has(sig)) stopping = true;
      for (const w of workers.values()) w.kill(sig);
    });
  }
  for (let i = 1; i <= count; i++) start(i);
}

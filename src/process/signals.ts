// PgBouncer's signal meanings (1.23+):
//   SIGHUP   reload the config and reopen logfile
//   SIGTERM  super safe shutdown: stop accepting, wait for clients to disconnect
//   SIGINT   safe shutdown: stop accepting, wait for servers to be released (transactions end)
//   SIGQUIT  immediate shutdown
//   SIGUSR1  PAUSE (every database)     SIGUSR2  RESUME (every database)
// A second SIGINT or SIGTERM during a waiting shutdown makes it immediate. Waits are bounded
// by shutdown_timeout. The counters line that SIGUSR1 used to log is SHOW SUMMARY.
import { log } from '../observe/log';
import type { Proxy } from '../proxy';
import { ShutdownMode } from '../proxy-state';
import { exitSoon } from './exit';

export function installSignalHandlers(proxy: Proxy): void {
  process.on('SIGHUP', () => {
    try {
      log.info(`SIGHUP: ${proxy.control.reload()}`); // reopens logfile too (src/admin/control.ts)
    } catch (e) {
      log.error(`reload failed, keeping the running configuration: ${(e as Error).message}`);
    }
  });
  const shutdown = (signal: string, mode: ShutdownMode) => () => {
    log.info(`${signal}: shutdown ${mode}`);
    void proxy.shutdown(mode).then(exitSoon);
  };
  process.on('SIGTERM', shutdown('SIGTERM', ShutdownMode.WaitForClients));
  process.on('SIGINT', shutdown('SIGINT', ShutdownMode.WaitForServers));
  process.on('SIGQUIT', shutdown('SIGQUIT', ShutdownMode.Immediate));
  process.on('SIGUSR1', () => {
    proxy.control.pause();
    log.info('SIGUSR1: paused all databases (new transactions wait; SIGUSR2 or RESUME resumes)');
  });
  process.on('SIGUSR2', () => {
    proxy.control.resume();
    log.info('SIGUSR2: resumed all databases');
  });
}

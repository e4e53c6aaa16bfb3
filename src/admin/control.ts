// The Proxy seen from the admin console and the metrics endpoint: reload, apply a
// changed config, shutdown, pause/resume, and the kernel path's numbers.
import type { Config } from '../config/types';
import type { Pooler } from '../pooling/pooler';
import { loadConfigFile } from '../config/load';
import { log, setLogLevel } from '../observe/log';
import type { ProxyControl } from './console';

// What the control needs of the running proxy (src/proxy.ts), declared here so that the
// admin modules do not import the module that builds them.
export interface ControlledProxy {
  readonly config: Config;
  readonly pooler: Pooler;
  reload(next: Config): string[]; // the keys that need a restart
  shutdownFast(): void;
  // SHUTDOWN WAIT_FOR_CLIENTS: resolves once every pool client has left.
  drain(): Promise<void>;
  // A worker passes a SHUTDOWN to its primary, which sends it to every worker (true then).
  relayShutdown(waitForClients: boolean): boolean;
}

export function proxyControl(proxy: ControlledProxy): ProxyControl {
  const apply = (next: Config): string[] => {
    const before = proxy.config;
    const needRestart = proxy.reload(next);
    if (before.log_level !== next.log_level) setLogLevel(next.log_level);
    return needRestart;
  };

  const control: ProxyControl = {
    reload(): string {
      const file = proxy.config.source.file;
      const next = loadConfigFile(file); // throws ConfigError: the running config stays
      const needRestart = apply(next);
      return `configuration reloaded from ${file}${needRestart.length ? `; these keys need a restart to change: ${needRestart.join(', ')}` : ''}`;
    },
    apply,
    shutdown(waitForClients: boolean): void {
      if (proxy.relayShutdown(waitForClients)) return;
      const exit = () => setTimeout(() => process.exit(0), 100);
      if (!waitForClients) {
        proxy.shutdownFast();
        exit();
        return;
      }
      // Refuse new clients, wait until every pool client has disconnected, then stop.
      log.info('SHUTDOWN WAIT_FOR_CLIENTS: waiting for clients to disconnect');
      void proxy.drain().then(exit);
    },
    pause: (db) => proxy.pooler.pause(db),
    resume: (db) => proxy.pooler.resume(db),
    isPaused: (db) => proxy.pooler.isPaused(db),
    bypassInfo: () => proxy.pooler.kernel.info(),
    bypassCounters: () => proxy.pooler.kernel.flatCounters(),
  };
  return control;
}

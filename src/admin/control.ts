// The Proxy seen from the admin console and the metrics endpoint: reload, apply a
// changed config, shutdown, pause/resume, and the kernel path's numbers.
import type { Config } from '../config/types';
import type { Pooler } from '../pooling/pooler';
import { loadConfigFile } from '../config/load';
import { ClientState } from '../pooling/client-connection';
import { log, setLogLevel } from '../observe/log';
import type { ProxyControl } from './console';

// What the control needs of the running proxy (src/proxy.ts), declared here so that the
// admin modules do not import the module that builds them.
export interface ControlledProxy {
  readonly config: Config;
  readonly pooler: Pooler;
  reload(next: Config): string[]; // the keys that need a restart
  shutdownFast(): void;
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
      const exit = () => setTimeout(() => process.exit(0), 100);
      if (!waitForClients) {
        proxy.shutdownFast();
        exit();
        return;
      }
      // Refuse new clients, wait until every pool client has disconnected, then stop.
      proxy.pooler.accepting = false;
      log.info('SHUTDOWN WAIT_FOR_CLIENTS: new connections refused; waiting for clients to disconnect');
      const timer = setInterval(() => {
        const left = [...proxy.pooler.clients].filter((c) => c.pool && c.state !== ClientState.Closed).length;
        if (left > 0) return;
        clearInterval(timer);
        proxy.shutdownFast();
        exit();
      }, 100);
    },
    pause: (db) => proxy.pooler.pause(db),
    resume: (db) => proxy.pooler.resume(db),
    isPaused: (db) => proxy.pooler.isPaused(db),
    bypassInfo: () => proxy.pooler.kernel.info(),
    bypassCounters: () => proxy.pooler.kernel.flatCounters(),
  };
  return control;
}

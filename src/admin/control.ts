// The Proxy seen from the admin console and the metrics endpoint: reload, apply a
// changed config, shutdown, pause/resume, and the kernel path's numbers.
import type { Config } from '../config/types';
import type { Pooler } from '../pooling/pooler';
import { loadConfigFile } from '../config/load';
import { configureLogging, log, setLogLevel } from '../observe/log';
import type { ProxyControl } from './console';
import type { Readiness, ShutdownMode } from '../proxy-state';
import { exitSoon } from '../process/exit';

// What the control needs of the running proxy (src/proxy.ts), declared here so that the
// admin modules do not import the module that builds them.
export interface ControlledProxy {
  readonly config: Config;
  readonly pooler: Pooler;
  reload(next: Config): string[]; // the keys that need a restart
  shutdown(mode: ShutdownMode): Promise<void>;
  readiness(): Readiness;
  statsLine(): string;
  // A worker passes a SHUTDOWN to its primary, which sends it to every worker (true then).
  relayShutdown(mode: ShutdownMode): boolean;
}

export function proxyControl(proxy: ControlledProxy): ProxyControl {
  const apply = (next: Config): string[] => {
    const before = proxy.config;
    const needRestart = proxy.reload(next);
    if (before.log_level !== next.log_level) setLogLevel(next.log_level);
    // log_format, logfile and syslog follow the config; the file is reopened by name, so
    // that a RELOAD or SIGHUP after logrotate moved it writes to a new file (as PgBouncer).
    try {
      configureLogging(next);
    } catch (e) {
      log.error(`logging where it did (${next.logfile ? `logfile ${next.logfile}` : 'syslog'}): ${(e as Error).message}`);
    }
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
    shutdown(mode: ShutdownMode): void {
      if (proxy.relayShutdown(mode)) return;
      void proxy.shutdown(mode).then(exitSoon);
    },
    readiness: () => proxy.readiness(),
    summary: () => proxy.statsLine(),
    pause: (db) => proxy.pooler.pause(db),
    resume: (db) => proxy.pooler.resume(db),
    isPaused: (db) => proxy.pooler.isPaused(db),
    bypassInfo: () => proxy.pooler.kernel.info(),
    bypassCounters: () => proxy.pooler.kernel.flatCounters(),
  };
  return control;
}

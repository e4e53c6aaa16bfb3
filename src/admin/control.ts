// The Proxy seen from the admin console and the metrics endpoint: reload, apply a
// changed config, shutdown, pause/resume, and the kernel path's numbers (which the
// bypass controller plugs in by replacing bypassInfo / bypassCounters).
import type { Proxy } from '../proxy';
import type { Config } from '../config/types';
import type { Pool } from '../pool';
import { loadConfigFile } from '../config/load';
import { ClientState } from '../client-connection';
import { log, setLogLevel } from '../log';
import type { ProxyControl } from './console';

export function proxyControl(proxy: Proxy): ProxyControl {
  let pausedAll = false;
  const pausedDbs = new Set<string>();
  const isPaused = (db: string) => pausedAll || pausedDbs.has(db);
  const poolsOf = (db?: string): Pool[] => [...proxy.pooler.pools.values()].filter((p) => db === undefined || p.database === db);

  // Pools created while their database is paused start paused.
  let hookInstalled = false;
  const installPoolHook = () => {
    if (hookInstalled) return;
    hookInstalled = true;
    const hooks = proxy.pooler.hooks;
    const prev = hooks.poolCreated;
    hooks.poolCreated = (p) => {
      prev?.(p);
      if (isPaused(p.database)) p.pause();
    };
  };

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
    pause(db?: string): void {
      installPoolHook();
      if (db === undefined) pausedAll = true;
      else pausedDbs.add(db);
      for (const p of poolsOf(db)) p.pause();
    },
    resume(db?: string): void {
      if (db === undefined) {
        pausedAll = false;
        pausedDbs.clear();
      } else {
        pausedDbs.delete(db);
      }
      for (const p of poolsOf(db)) if (!isPaused(p.database)) p.resume();
    },
    isPaused,
    bypassInfo(): Array<[string, string]> {
      const mode = proxy.config.bypass;
      return [
        ['loaded', 'no'],
        ['reason', mode === 'off' ? 'bypass: off' : 'kernel path not built into this version'],
        ['mode', mode],
      ];
    },
    bypassCounters(): Record<string, number | bigint> {
      return {};
    },
  };
  return control;
}

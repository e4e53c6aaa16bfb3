// The running proxy: listeners, the pooler, reload and the two kinds of shutdown.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Pooler } from './pooling/pooler';
import { openKernelHost } from './kernel/controller';
import type { KernelHost } from './pooling/kernel-host';
import type { Config } from './config/types';
import { changesNeedingRestart } from './config/load';
import { trackExtraParameters } from './session/session-parameters';
import { log } from './observe/log';
import { ProxyControl, startAdminConsole } from './admin/console';
import { proxyControl } from './admin/control';
import { MetricsServer, startMetrics } from './observe/prometheus';

export class Proxy {
  readonly pooler: Pooler;
  // The kernel path, or UserSpaceOnly for bypass: off (src/pooling/kernel-host.ts).
  readonly kernel: KernelHost;
  private servers: net.Server[] = [];
  private stopping = false;
  // Admin console and metrics.
  readonly control: ProxyControl;
  private metrics: MetricsServer | null = null;

  constructor(public config: Config) {
    trackExtraParameters(config.track_extra_parameters);
    // Throws for 'on' without a kernel path. It reads the config the pooler runs with now.
    this.kernel = openKernelHost(config.bypass, () => this.pooler.config);
    this.pooler = new Pooler(config, this.kernel, (c) => startAdminConsole(c, this.pooler, this.control));
    this.control = proxyControl(this);
  }

  // One line with what each data path carried (SIGUSR1).
  statsLine(): string {
    let xacts = 0n;
    for (const p of this.pooler.pools.values()) xacts += p.stats.xacts;
    const rows = this.kernel.info().map(([k, v]) => `${k}=${/\s/.test(v) ? JSON.stringify(v) : v}`);
    return `stats: clients=${this.pooler.clients.size} pools=${this.pooler.pools.size} user_xacts=${xacts} ${rows.join(' ')}`;
  }

  async listen(): Promise<void> {
    // Metrics first: once "listening on" is logged for clients, everything is up.
    if (this.config.metrics) this.metrics = await startMetrics(this.config.metrics, this.pooler, this.control);
    const { host, port, unix_socket_dir } = this.config.listen;
    if (host) {
      for (const h of host.split(',').map((s) => s.trim()).filter(Boolean)) {
        await this.listenOn({ host: h === '*' ? '0.0.0.0' : h, port }, `${h}:${port}`);
      }
    }
    if (unix_socket_dir) {
      const file = path.join(unix_socket_dir, `.s.PGSQL.${port}`);
      try {
        fs.unlinkSync(file); // a stale socket of a previous run
      } catch {
        /* none */
      }
      await this.listenOn({ path: file }, file);
      fs.chmodSync(file, 0o777);
    }
  }

  private listenOn(opts: net.ListenOptions, label: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const srv = net.createServer({ noDelay: true }, (sock) => this.pooler.accept(sock));
      srv.maxConnections = Math.max(this.config.max_client_conn + 100, 1000);
      srv.once('error', (e) => reject(new Error(`cannot listen on ${label}: ${e.message}`)));
      srv.listen({ ...opts, backlog: 4096 }, () => {
        srv.removeAllListeners('error');
        srv.on('error', (e) => log.error(`listener ${label}: ${e.message}`));
        log.info(`listening on ${label}`);
        this.servers.push(srv);
        resolve();
      });
    });
  }

  // Applies what can change while running; returns the changed keys that need a restart
  // (the caller reports them: RELOAD, SIGHUP, the admin console's SET).
  reload(next: Config): string[] {
    const needRestart = changesNeedingRestart(this.config, next);
    trackExtraParameters(next.track_extra_parameters);
    this.pooler.reload(next);
    this.config = next;
    return needRestart;
  }

  private stopListening(): void {
    for (const s of this.servers) s.close();
    this.servers = [];
    this.pooler.accepting = false;
    this.metrics?.close();
  }

  // SIGTERM: stop accepting, let clients finish their transactions (bounded), then stop.
  async shutdownGraceful(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.stopListening();
    const deadline = Date.now() + this.config.shutdown_timeout * 1000;
    log.info(`shutting down: waiting up to ${this.config.shutdown_timeout}s for ${this.pooler.activeClients.length} clients in transactions`);
    while (Date.now() < deadline && this.pooler.activeClients.length > 0) {
      await new Promise((r) => setTimeout(r, 50));
    }
    this.pooler.close();
    this.kernel.close();
  }

  // SIGINT: close everything now.
  shutdownFast(): void {
    this.stopping = true;
    this.stopListening();
    this.pooler.close();
    this.kernel.close();
  }
}

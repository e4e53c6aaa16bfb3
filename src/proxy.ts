// The running proxy: listeners, the pooler, reload and the two kinds of shutdown.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Pooler } from './pooling/pooler';
import { ClientState } from './pooling/client-connection';
import { openKernelHost } from './kernel/controller';
import type { KernelHost } from './pooling/kernel-host';
import type { Config } from './config/types';
import { changesNeedingRestart } from './config/load';
import { trackExtraParameters } from './session/session-parameters';
import { applyKeepalive, configureKeepalive } from './pooling/tcp-keepalive';
import { log } from './observe/log';
import { ProxyControl, startAdminConsole } from './admin/console';
import { proxyControl } from './admin/control';
import { MetricsServer, startMetrics } from './observe/prometheus';
import { ProxyState, ShutdownMode, type Readiness } from './proxy-state';

export { ProxyState, ShutdownMode, type Readiness };

export class Proxy {
  readonly pooler: Pooler;
  // The kernel path, or UserSpaceOnly for bypass: off (src/pooling/kernel-host.ts).
  readonly kernel: KernelHost;
  private servers: net.Server[] = [];
  state = ProxyState.Starting;
  // Admin console and metrics.
  readonly control: ProxyControl;
  private metrics: MetricsServer | null = null;

  constructor(public config: Config) {
    trackExtraParameters(config.track_extra_parameters);
    configureKeepalive(config);
    // Throws for 'on' without a kernel path. It reads the config the pooler runs with now.
    this.kernel = openKernelHost(config.bypass, () => this.pooler.config);
    this.pooler = new Pooler(config, this.kernel, (c) => startAdminConsole(c, this.pooler, this.control));
    this.control = proxyControl(this);
  }

  // Ready for new clients: running (every listener open) and not paused as a whole.
  readiness(): Readiness {
    if (this.state !== ProxyState.Running) return { ready: false, reason: this.state };
    if (this.pooler.isPaused('')) return { ready: false, reason: 'paused (PAUSE or SIGUSR1); RESUME or SIGUSR2 resumes' };
    return { ready: true, reason: `running, ${this.servers.length} listener(s), config ${this.config.source.file}` };
  }

  // One line with what each data path carried (the admin console's SHOW SUMMARY).
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
      fs.chmodSync(file, this.config.listen.unix_socket_mode ?? 0o777);
    }
    this.state = ProxyState.Running;
  }

  private listenOn(opts: net.ListenOptions, label: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const tcp = opts.path === undefined;
      const srv = net.createServer({ noDelay: true }, (sock) => {
        if (tcp) applyKeepalive(sock);
        this.pooler.accept(sock);
      });
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
    configureKeepalive(next);
    this.pooler.reload(next);
    this.config = next;
    return needRestart;
  }

  // Stops accepting; the metrics listener stays up (it answers /readyz "shutting down")
  // until the process is done.
  private stopListening(): void {
    this.state = ProxyState.ShuttingDown;
    for (const s of this.servers) s.close();
    this.servers = [];
    this.pooler.accepting = false;
  }

  // Resolves when the shutdown is complete (everything closed). A second call while one is
  // under way with a waiting mode turns it into an immediate one (PgBouncer: a second
  // SIGINT/SIGTERM). Waiting is bounded by shutdown_timeout (0: no bound).
  shutdown(mode: ShutdownMode): Promise<void> {
    if (this.shuttingDown) {
      this.abortWait?.();
      return this.shuttingDown;
    }
    this.stopListening();
    this.shuttingDown = (async () => {
      if (mode !== ShutdownMode.Immediate) {
        const waiting = () =>
          mode === ShutdownMode.WaitForServers
            ? this.pooler.activeClients.length
            : [...this.pooler.clients].filter((c) => c.pool && c.state !== ClientState.Closed).length;
        const limit = this.config.shutdown_timeout;
        log.info(`shutdown ${mode}: new connections refused; waiting${limit > 0 ? ` up to ${limit}s` : ''} for ${waiting()} client(s)${mode === ShutdownMode.WaitForServers ? ' in transactions' : ' to disconnect'}`);
        const deadline = limit > 0 ? Date.now() + limit * 1000 : Infinity;
        let aborted = false;
        const abort = new Promise<void>((r) => (this.abortWait = () => { aborted = true; r(); }));
        while (!aborted && Date.now() < deadline && waiting() > 0) {
          await Promise.race([new Promise((r) => setTimeout(r, 50)), abort]);
        }
        if (aborted) log.info('shutdown: second signal, closing everything now');
        else if (waiting() > 0) log.info(`shutdown: shutdown_timeout reached, closing ${waiting()} client(s)`);
      }
      this.pooler.close();
      this.kernel.close();
      this.metrics?.close();
    })();
    return this.shuttingDown;
  }
  private shuttingDown: Promise<void> | null = null;
  private abortWait: (() => void) | null = null;

  shutdownFast(): void {
    void this.shutdown(ShutdownMode.Immediate);
  }
}

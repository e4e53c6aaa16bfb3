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
import { log } from './observe/log';
import { ProxyControl, startAdminConsole } from './admin/console';
import { proxyControl } from './admin/control';
import { MetricsServer, startMetrics } from './observe/prometheus';
import { workerRole, sharesPort } from './workers/role';
import { workerShare } from './workers/share';
import { PeerChannel, choosePeerIds, drainOthers, peerDir } from './workers/peer';
import { setLocalPeerId } from './workers/cancel-key';
import { Listener, replaceUnixSocket, reusePortFd, stillOurs, temporaryUnixName } from './workers/listen';

export class Proxy {
  readonly pooler: Pooler;
  // The kernel path, or UserSpaceOnly for bypass: off (src/pooling/kernel-host.ts).
  readonly kernel: KernelHost;
  private servers: Listener[] = [];
  private stopping = false;
  private draining: Promise<void> | null = null;
  // The peer socket, when other processes share the port (src/workers/peer.ts).
  private peer: PeerChannel | null = null;
  // Worker i of n, or null for the only process.
  private readonly role = workerRole();
  // Admin console and metrics.
  readonly control: ProxyControl;
  private metrics: MetricsServer | null = null;

  constructor(public config: Config) {
    config = this.config = workerShare(config, this.role?.count ?? 1); // each worker's part of the server limits
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

  // The peer id this process issues cancel keys under (0: the port is not shared).
  get peerId(): number {
    return this.peer?.id ?? 0;
  }

  async listen(): Promise<void> {
    const shared = sharesPort(this.config);
    const { host, port, unix_socket_dir } = this.config.listen;
    // The peer socket first: a cancel key names it from the first client on.
    if (shared) {
      const dir = peerDir(this.config);
      const id = this.role ? this.role.peerId : (await choosePeerIds(dir, port, 1, this.config.peer_id))[0];
      setLocalPeerId(id);
      this.peer = new PeerChannel(dir, port, id, {
        cancel: (pid, key) => this.pooler.cancel(pid, key, true),
        // A new generation took the port over: exit once drained (a worker's primary sees exit 0 as done).
        drain: () => void this.drain().then(() => setTimeout(() => process.exit(0), 100)),
      });
      await this.peer.open();
      this.pooler.forwardCancel = (pid, key) => this.peer?.forwardCancel(pid, key) ?? false;
    }
    // Metrics next: once "listening on" is logged for clients, everything is up.
    if (this.config.metrics) this.metrics = await startMetrics(this.config.metrics, this.pooler, this.control, shared);
    if (host) {
      for (const h of host.split(',').map((s) => s.trim()).filter(Boolean)) {
        const addr = h === '*' ? '0.0.0.0' : h;
        const opts = shared ? { fd: reusePortFd(addr, port, 4096) } : { host: addr, port };
        await this.listenOn(opts, `${h}:${port}`);
      }
    }
    // With workers the first one serves the unix socket (one file, one listener).
    if (unix_socket_dir && (this.role?.index ?? 1) === 1) {
      const file = path.join(unix_socket_dir, `.s.PGSQL.${port}`);
      if (shared) {
        // Bound aside and renamed over the path: a running generation keeps serving until then.
        const tmp = temporaryUnixName(file);
        try {
          fs.unlinkSync(tmp);
        } catch {
          /* none */
        }
        const l = await this.listenOn({ path: tmp }, file);
        fs.chmodSync(tmp, 0o777);
        l.unixFile = file;
        l.unixIno = replaceUnixSocket(tmp, file);
      } else {
        try {
          fs.unlinkSync(file); // a stale socket of a previous run
        } catch {
          /* none */
        }
        await this.listenOn({ path: file }, file);
        fs.chmodSync(file, 0o777);
      }
    }
  }

  // --takeover: once this process listens, every other pgsplice on the port drains.
  async takeOver(ownPeerIds: readonly number[] = [this.peerId]): Promise<void> {
    if (!this.peer) throw new Error('--takeover needs so_reuseport: true (or workers > 1) in this and the running pgsplice');
    const asked = await drainOthers(peerDir(this.config), this.config.listen.port, ownPeerIds);
    log.info(asked.length ? `takeover: asked peer ${asked.join(', ')} to drain` : 'takeover: no other pgsplice on this port');
  }

  private listenOn(opts: net.ListenOptions, label: string): Promise<Listener> {
    return new Promise((resolve, reject) => {
      const srv = net.createServer({ noDelay: true }, (sock) => this.pooler.accept(sock));
      srv.maxConnections = Math.max(this.config.max_client_conn + 100, 1000);
      srv.once('error', (e) => reject(new Error(`cannot listen on ${label}: ${e.message}`)));
      srv.listen({ ...opts, backlog: 4096 }, () => {
        srv.removeAllListeners('error');
        srv.on('error', (e) => log.error(`listener ${label}: ${e.message}`));
        log.info(`listening on ${label}`);
        const l: Listener = { server: srv, label };
        this.servers.push(l);
        resolve(l);
      });
    });
  }

  // Applies what can change while running; returns the changed keys that need a restart
  // (the caller reports them: RELOAD, SIGHUP, the admin console's SET).
  reload(next: Config): string[] {
    next = workerShare(next, this.role?.count ?? 1);
    const needRestart = changesNeedingRestart(this.config, next);
    trackExtraParameters(next.track_extra_parameters);
    this.pooler.reload(next);
    this.config = next;
    return needRestart;
  }

  private stopListening(): void {
    for (const l of this.servers) this.closeListener(l);
    this.servers = [];
    this.pooler.accepting = false;
    this.metrics?.close();
  }

  // Closing a Node unix listener removes its file by name: a file that a newer generation
  // renamed over ours is left alone (our socket is unreachable already; it goes at exit).
  private closeListener(l: Listener): void {
    if (l.unixFile === undefined) {
      l.server.close();
      return;
    }
    if (!stillOurs(l.unixFile, l.unixIno!)) return;
    try {
      fs.unlinkSync(l.unixFile);
    } catch {
      /* gone */
    }
    l.server.close();
  }

  // SHUTDOWN WAIT_FOR_CLIENTS and a takeover's drain: take no new clients, serve the
  // connected ones until they disconnect, then stop (resolves then). A process sharing its
  // port closes its listeners, so the kernel gives new connections to the other processes;
  // alone on its port it keeps them open and refuses new clients with an error, as PgBouncer.
  drain(): Promise<void> {
    if (this.draining) return this.draining;
    this.draining = (async () => {
      if (this.peer) {
        for (const l of this.servers) this.closeListener(l);
        this.servers = [];
      }
      this.pooler.accepting = false;
      log.info(`draining: new connections ${this.peer ? 'go to the other processes on this port' : 'refused'}; waiting for ${this.pooler.poolClientCount} clients to disconnect`);
      for (;;) {
        const left = [...this.pooler.clients].filter((c) => c.pool && c.state !== ClientState.Closed).length;
        if (left === 0 || this.stopping) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      log.info('drained: every client has disconnected');
      this.shutdownFast();
    })();
    return this.draining;
  }

  relayShutdown(waitForClients: boolean): boolean {
    if (!this.role || !process.send) return false;
    process.send({ type: 'shutdown', wait: waitForClients });
    return true;
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
    this.peer?.close();
  }

  // SIGINT: close everything now.
  shutdownFast(): void {
    this.stopping = true;
    this.stopListening();
    this.pooler.close();
    this.kernel.close();
    this.peer?.close();
  }
}

// The running proxy: listeners, the pooler, reload and the two kinds of shutdown.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Pooler } from './pooling/pooler';
import { ClientState } from './pooling/client-connection';
import { openKernelHost } from './kernel/controller';
import type { KernelHost } from './pooling/kernel-host';
import type { Config } from './config/types';
import { DEFAULT_UNIX_SOCKET_MODE, changesNeedingRestart } from './config/load';
import { trackExtraParameters } from './session/session-parameters';
import { applyTcpOptions, configureTcp } from './pooling/tcp-options';
import { log } from './observe/log';
import { ProxyControl, startAdminConsole } from './admin/console';
import { proxyControl } from './admin/control';
import { MetricsServer, startMetrics } from './observe/prometheus';
import { ProxyState, ShutdownMode, type Readiness } from './proxy-state';

export { ProxyState, ShutdownMode, type Readiness };
import { workerRole, sharesPort } from './workers/role';
import { workerShare } from './workers/share';
import { PeerChannel, choosePeerIds, drainOthers, peerDir } from './workers/peer';
import { setLocalPeerId } from './workers/cancel-key';
import { Listener, replaceUnixSocket, reusePortFd, stillOurs, temporaryUnixName } from './workers/listen';
import { exitSoon } from './process/exit';
import { withSharedReads } from './pooling/client-reads';

export class Proxy {
  readonly pooler: Pooler;
  // The kernel path, or UserSpaceOnly for bypass: off (src/pooling/kernel-host.ts).
  readonly kernel: KernelHost;
  private servers: Listener[] = [];
  state = ProxyState.Starting;
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
    configureTcp(config);
    // Throws for 'on' without a kernel path. It reads the config the pooler runs with now.
    this.kernel = openKernelHost(config.bypass, () => this.pooler.config, config.mirror_ring_bytes);
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
    let xacts = 0;
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
        drain: () => void this.drain().then(exitSoon),
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
        fs.chmodSync(tmp, this.config.listen.unix_socket_mode ?? DEFAULT_UNIX_SOCKET_MODE);
        l.unixFile = file;
        l.unixIno = replaceUnixSocket(tmp, file);
      } else {
        try {
          fs.unlinkSync(file); // a stale socket of a previous run
        } catch {
          /* none */
        }
        await this.listenOn({ path: file }, file);
        fs.chmodSync(file, this.config.listen.unix_socket_mode ?? DEFAULT_UNIX_SOCKET_MODE);
      }
    }
    this.state = ProxyState.Running;
  }

  // --takeover: once this process listens, every other pgsplice on the port drains.
  async takeOver(ownPeerIds: readonly number[] = [this.peerId]): Promise<void> {
    if (!this.peer) throw new Error('--takeover needs so_reuseport: true (or workers > 1) in this and the running pgsplice');
    const asked = await drainOthers(peerDir(this.config), this.config.listen.port, ownPeerIds);
    log.info(asked.length ? `takeover: asked peer ${asked.join(', ')} to drain` : 'takeover: no other pgsplice on this port');
  }

  private listenOn(opts: net.ListenOptions, label: string): Promise<Listener> {
    return new Promise((resolve, reject) => {
      const tcp = opts.path === undefined;
      // pauseOnConnect: nothing is read before withSharedReads gives the socket its reads
      const srv = net.createServer({ noDelay: true, pauseOnConnect: true }, (accepted) => {
        const sock = withSharedReads(accepted);
        if (tcp) applyTcpOptions(sock);
        this.pooler.accept(sock);
      });
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
    configureTcp(next);
    this.pooler.reload(next);
    this.config = next;
    return needRestart;
  }

  // Stops accepting; the metrics listener stays up (it answers /readyz "shutting down")
  // until the process is done.
  private stopListening(): void {
    for (const l of this.servers) this.closeListener(l);
    this.servers = [];
    this.pooler.accepting = false;
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

  // Resolves when the shutdown is complete (everything closed). A second call while one is
  // under way with a waiting mode turns it into an immediate one (PgBouncer: a second
  // SIGINT/SIGTERM). Waiting is bounded by shutdown_timeout (0: no bound).
  // The listeners close at once, as in PgBouncer 1.23+: new connections are refused, or,
  // when the port is shared (so_reuseport, workers, a takeover), go to the other processes.
  shutdown(mode: ShutdownMode): Promise<void> {
    if (this.shuttingDown) {
      this.abortWait?.();
      return this.shuttingDown;
    }
    this.state = ProxyState.ShuttingDown;
    this.stopListening();
    this.shuttingDown = (async () => {
      if (mode !== ShutdownMode.Immediate) {
        const waiting = () =>
          mode === ShutdownMode.WaitForServers
            ? this.pooler.activeClients.length
            : [...this.pooler.clients].filter((c) => c.pool && c.state !== ClientState.Closed).length;
        // A takeover's drain is not bounded: the point of a rolling restart is that no
        // client is dropped (a signal still ends it, as a second signal ends any wait).
        const limit = this.takeoverDrain ? 0 : this.config.shutdown_timeout;
        const what = this.takeoverDrain ? 'draining' : `shutdown ${mode}`;
        log.info(`${what}: new connections ${this.peer ? 'go to the other processes on this port' : 'refused'}; waiting${limit > 0 ? ` up to ${limit}s` : ''} for ${waiting()} client(s)${mode === ShutdownMode.WaitForServers ? ' in transactions' : ' to disconnect'}`);
        const deadline = limit > 0 ? Date.now() + limit * 1000 : Infinity;
        let aborted = false;
        const abort = new Promise<void>((r) => (this.abortWait = () => { aborted = true; r(); }));
        while (!aborted && Date.now() < deadline && waiting() > 0) {
          await Promise.race([new Promise((r) => setTimeout(r, 50)), abort]);
        }
        if (aborted) log.info('shutdown: second signal, closing everything now');
        else if (waiting() > 0) log.info(`shutdown: shutdown_timeout reached, closing ${waiting()} client(s)`);
        else log.info(this.takeoverDrain ? 'drained: every client has disconnected' : `shutdown ${mode}: nothing left to wait for`);
      }
      this.pooler.close();
      this.kernel.close();
      this.peer?.close();
      this.metrics?.close();
    })();
    return this.shuttingDown;
  }
  private shuttingDown: Promise<void> | null = null;
  private takeoverDrain = false;
  private abortWait: (() => void) | null = null;

  // A takeover's drain (a newer generation took the port over) and a worker whose primary
  // is gone: serve the connected clients until they disconnect, then stop.
  drain(): Promise<void> {
    if (!this.shuttingDown) this.takeoverDrain = true;
    return this.shutdown(ShutdownMode.WaitForClients);
  }

  shutdownFast(): void {
    void this.shutdown(ShutdownMode.Immediate);
  }

  // A worker passes a SHUTDOWN to its primary, which sends it to every worker (true then).
  relayShutdown(mode: ShutdownMode): boolean {
    if (!this.role || !process.send) return false;
    process.send({ type: 'shutdown', mode });
    return true;
  }
}

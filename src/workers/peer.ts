// Peers: the pgsplice processes that serve one port (workers of one primary, and the old
// and new generation during a takeover). Each has a unix socket, its peer socket, named by
// its peer id in the directory of the port's unix socket (or the temp directory). A peer
// socket carries two requests, each one message on its own connection:
//   - a CancelRequest whose key another peer issued (the key names the owner,
//     cancel-key.ts): the owner cancels the query as if the request had come to it;
//   - a drain request (a new generation took over the port): the peer closes its
//     listeners and exits once its clients have left (Proxy.drain).
// The socket is mode 0600: only the user pgsplice runs as can cancel or drain through it.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { CANCEL_REQUEST_CODE } from '../protocol/constants';
import { cancelRequest } from '../protocol/messages';
import type { Config } from '../config/types';
import { log } from '../observe/log';
import { MAX_PEER_ID, peerOfCancelPid } from './cancel-key';

// The drain request: length 8 and a code no PostgreSQL client sends ("PGSD").
export const DRAIN_REQUEST_CODE = 0x50475344;
const MAX_REQUEST = 64;

export function peerDir(config: Config): string {
  return config.listen.unix_socket_dir || os.tmpdir();
}

export function peerSocketPath(dir: string, port: number, id: number): string {
  return path.join(dir, `.s.PGSPLICE.${port}.peer.${id}`);
}

// The peer ids with a socket file for this port (live or stale).
function peerFiles(dir: string, port: number): number[] {
  const prefix = `.s.PGSPLICE.${port}.peer.`;
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  return names.filter((n) => n.startsWith(prefix)).map((n) => Number(n.slice(prefix.length))).filter((n) => Number.isInteger(n) && n > 0);
}

// Sends one request to a peer; resolves true once the peer has read it, false when no
// process listens there (a stale file, which is removed).
function send(file: string, msg: Buffer | null): Promise<boolean> {
  // Only a socket of our own user is a peer: in a shared directory such as /tmp another
  // user could put one there to collect cancel keys or ignore drains.
  if (!ownSocket(file)) return Promise.resolve(false);
  return new Promise((resolve) => {
    const sock = net.connect(file);
    sock.setTimeout(2000, () => sock.destroy(new Error('timeout')));
    let connected = false;
    sock.on('connect', () => {
      connected = true;
      if (msg) sock.end(msg);
      else sock.end();
    });
    sock.on('data', () => {});
    sock.on('close', () => resolve(connected));
    sock.on('error', (e: NodeJS.ErrnoException) => {
      if (!connected && e.code === 'ECONNREFUSED') {
        try {
          fs.unlinkSync(file); // a peer that died without removing its socket
        } catch {
          /* gone already */
        }
      }
    });
  });
}

function ownSocket(file: string): boolean {
  try {
    const st = fs.lstatSync(file);
    return st.isSocket() && st.uid === process.getuid?.();
  } catch {
    return false;
  }
}

function isLive(file: string): Promise<boolean> {
  return send(file, null);
}

// Peer ids for `count` processes: configured..configured+count-1, or, when configured is
// 0, the lowest free run. Ids of live peers are never reused: their keys are in clients' hands.
export async function choosePeerIds(dir: string, port: number, count: number, configured: number): Promise<number[]> {
  const live = new Set<number>();
  for (const id of peerFiles(dir, port)) if (await isLive(peerSocketPath(dir, port, id))) live.add(id);
  const run = (first: number) => Array.from({ length: count }, (_, i) => first + i);
  if (configured > 0) {
    const ids = run(configured);
    if (ids[ids.length - 1] > MAX_PEER_ID) throw new Error(`peer_id ${configured} + workers exceeds ${MAX_PEER_ID}`);
    const taken = ids.filter((i) => live.has(i));
    if (taken.length) throw new Error(`peer_id ${taken.join(', ')} is used by a running pgsplice on port ${port}: give this one another peer_id, or 0 to choose one`);
    return ids;
  }
  for (let first = 1; first + count - 1 <= MAX_PEER_ID; first++) {
    const ids = run(first);
    if (!ids.some((i) => live.has(i))) return ids;
  }
  throw new Error(`no free peer id for ${count} processes on port ${port}`);
}

// Asks every live peer of this port except `own` to drain; returns the ids asked.
export async function drainOthers(dir: string, port: number, own: readonly number[]): Promise<number[]> {
  const msg = Buffer.alloc(8);
  msg.writeInt32BE(8, 0);
  msg.writeInt32BE(DRAIN_REQUEST_CODE, 4);
  const asked: number[] = [];
  for (const id of peerFiles(dir, port)) {
    if (own.includes(id)) continue;
    if (await send(peerSocketPath(dir, port, id), msg)) asked.push(id);
  }
  return asked;
}

export interface PeerHandlers {
  // A cancel request forwarded by a peer: never forwarded again.
  cancel(pid: number, key: number): void;
  drain(): void;
}

export class PeerChannel {
  private server: net.Server | null = null;
  readonly file: string;

  constructor(
    private readonly dir: string,
    private readonly port: number,
    readonly id: number,
    private readonly handlers: PeerHandlers,
  ) {
    this.file = peerSocketPath(dir, port, id);
  }

  open(): Promise<void> {
    try {
      fs.unlinkSync(this.file); // choosePeerIds found no live process behind it
    } catch {
      /* none */
    }
    return new Promise((resolve, reject) => {
      const srv = net.createServer((sock) => this.serve(sock));
      srv.once('error', (e) => reject(new Error(`cannot open peer socket ${this.file}: ${e.message}`)));
      // 0600 from the start: no moment in which another user could connect.
      const mask = process.umask(0o177);
      srv.listen(this.file, () => {
        process.umask(mask);
        srv.removeAllListeners('error');
        srv.on('error', (e) => log.error(`peer socket ${this.file}: ${e.message}`));
        this.server = srv;
        log.info(`peer ${this.id}: ${this.file}`);
        resolve();
      });
    });
  }

  private serve(sock: net.Socket): void {
    let buf = Buffer.alloc(0);
    sock.setTimeout(5000, () => sock.destroy());
    sock.on('error', () => {});
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length > MAX_REQUEST) sock.destroy();
    });
    sock.on('end', () => {
      sock.end();
      if (buf.length === 16 && buf.readInt32BE(0) === 16 && buf.readInt32BE(4) === CANCEL_REQUEST_CODE) {
        this.handlers.cancel(buf.readInt32BE(8), buf.readInt32BE(12));
      } else if (buf.length === 8 && buf.readInt32BE(0) === 8 && buf.readInt32BE(4) === DRAIN_REQUEST_CODE) {
        log.info(`peer ${this.id}: drain requested by a new pgsplice on port ${this.port}`);
        this.handlers.drain();
      } else if (buf.length > 0) {
        log.warn(`peer ${this.id}: ignored a malformed peer request (${buf.length} bytes)`);
      }
    });
  }

  // Sends a cancel request whose key another peer issued to that peer. False when the key
  // names no peer, this one, or a peer that is gone.
  forwardCancel(pid: number, key: number): boolean {
    const owner = peerOfCancelPid(pid);
    if (owner === 0 || owner === this.id) return false;
    const file = peerSocketPath(this.dir, this.port, owner);
    if (!fs.existsSync(file)) return false;
    log.info(`cancel request forwarded to peer ${owner}`);
    void send(file, cancelRequest(pid, key)).then((ok) => {
      if (!ok) log.info(`cancel request for peer ${owner}: that peer is gone`);
    });
    return true;
  }

  close(): void {
    if (!this.server) return;
    this.server.close(); // removes the socket file
    this.server = null;
  }
}

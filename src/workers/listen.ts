// Listening sockets that other pgsplice processes may share: TCP with SO_REUSEPORT (Node
// 20's net cannot set it; the addon creates the socket and Node listens on its fd), and
// the unix socket file replaced atomically, so that a new generation takes the path over
// while the old one still serves the clients it accepted.
import * as fs from 'node:fs';
import type * as net from 'node:net';

export function reusePortFd(host: string, port: number, backlog: number): number {
  let addon: { listenReusePort(host: string, port: number, backlog: number): number };
  try {
    // Loaded lazily: a process that does not share its port needs no addon.
    addon = (require('../kernel/kernel-path') as typeof import('../kernel/kernel-path')).loadAddon();
  } catch (e) {
    throw new Error(`so_reuseport and workers need the pgsplice addon: ${(e as Error).message}`);
  }
  return addon.listenReusePort(host, port, backlog);
}

// The unix socket is bound under a temporary name and renamed over `file`: connections
// go to the old socket until the rename and to the new one after it, none is refused.
export function temporaryUnixName(file: string): string {
  return `${file}.${process.pid}.new`;
}

export function replaceUnixSocket(tmp: string, file: string): number {
  fs.renameSync(tmp, file);
  return fs.statSync(file).ino;
}

// Whether `file` is still the socket this process bound (inode ino): only then may it be
// closed, since closing a Node unix listener removes the file by name.
export function stillOurs(file: string, ino: number): boolean {
  try {
    return fs.statSync(file).ino === ino;
  } catch {
    return false;
  }
}

export type Listener = { server: net.Server; label: string; unixFile?: string; unixIno?: number };

// PgBouncer's TCP settings on client and server TCP sockets (it applies them to both; unix
// sockets have none). Set from the config at start and on every reload; new sockets use
// the new values. Node sets SO_KEEPALIVE and TCP_KEEPIDLE itself; TCP_KEEPCNT,
// TCP_KEEPINTVL and TCP_USER_TIMEOUT only the addon can set (one narrow call, tcpOption).
import type * as net from 'node:net';
import { loadAddon } from '../kernel/kernel-path';
import { log } from '../observe/log';

export type TcpOptionName = 'keepcnt' | 'keepintvl' | 'user_timeout';
type SetOption = (fd: number, name: TcpOptionName, value?: number) => number;

interface TcpSettings {
  tcp_keepalive: boolean;
  tcp_keepidle: number; // s
  tcp_keepcnt: number;
  tcp_keepintvl: number; // s
  tcp_user_timeout: number; // ms
}

let enabled = true;
let idleMs = 0; // 0: the kernel's default (net.ipv4.tcp_keepalive_time)
let extra: Array<[TcpOptionName, number]> = []; // the addon-set options that are not 0
let setOption: SetOption | null = null;

// Throws, naming the key, when a non-zero option needs the addon and it cannot be loaded:
// at start-up that stops the process, on reload the old values stay.
export function configureTcp(c: TcpSettings): void {
  const next: Array<[TcpOptionName, number, string]> = [];
  // As PgBouncer: the keepalive counts only with keepalive on; the user timeout regardless.
  if (c.tcp_keepalive && c.tcp_keepcnt > 0) next.push(['keepcnt', c.tcp_keepcnt, 'tcp_keepcnt']);
  if (c.tcp_keepalive && c.tcp_keepintvl > 0) next.push(['keepintvl', Math.max(1, Math.round(c.tcp_keepintvl)), 'tcp_keepintvl']);
  if (c.tcp_user_timeout > 0) next.push(['user_timeout', c.tcp_user_timeout, 'tcp_user_timeout']);
  if (next.length > 0 && !setOption) setOption = addonSetter(next.map((n) => n[2]).join(', '));
  enabled = c.tcp_keepalive;
  idleMs = Math.round(c.tcp_keepidle * 1000);
  extra = next.map(([name, value]) => [name, value]);
}

function addonSetter(keys: string): SetOption {
  let addon: { tcpOption?: SetOption };
  try {
    addon = loadAddon();
  } catch (e) {
    throw new Error(`${keys}: Node.js cannot set this TCP option; it needs the pgsplice addon, which is unavailable (${(e as Error).message}); set it to 0 or build the addon`);
  }
  if (typeof addon.tcpOption !== 'function') throw new Error(`${keys}: the pgsplice addon is too old to set TCP options; rebuild it`);
  return addon.tcpOption.bind(addon);
}

// For TCP sockets only. An outgoing socket has no fd until it connects: the addon's
// options follow at 'connect'.
export function applyTcpOptions(sock: net.Socket): void {
  sock.setKeepAlive(enabled, enabled ? idleMs : 0);
  if (extra.length === 0) return;
  const opts = extra;
  const apply = () => {
    const fd = socketFd(sock);
    if (fd < 0 || !setOption) return;
    try {
      for (const [name, value] of opts) setOption(fd, name, value);
    } catch (e) {
      // The loader bounds the values; a socket closed meanwhile is not worth more than a line.
      log.warn(`TCP options not set on a socket: ${(e as Error).message}`);
    }
  };
  if (socketFd(sock) >= 0) apply();
  else sock.once('connect', apply);
}

// The fd behind a net.Socket (undocumented, stable in practice); -1 when it has none yet.
function socketFd(sock: net.Socket): number {
  return (sock as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1;
}

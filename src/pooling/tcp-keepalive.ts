// tcp_keepalive / tcp_keepidle on client and server TCP sockets (PgBouncer applies them to
// both). Set from the config at start and on every reload; new sockets use the new values.
import type * as net from 'node:net';

let enabled = true;
let idleMs = 0; // 0: the kernel's default (net.ipv4.tcp_keepalive_time)

export function configureKeepalive(c: { tcp_keepalive: boolean; tcp_keepidle: number }): void {
  enabled = c.tcp_keepalive;
  idleMs = Math.round(c.tcp_keepidle * 1000);
}

// For TCP sockets only: unix sockets have no keepalive.
export function applyKeepalive(sock: net.Socket): void {
  sock.setKeepAlive(enabled, enabled ? idleMs : 0);
}

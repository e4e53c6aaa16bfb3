// The one interface between pooling (user space) and the kernel path. Pooling calls the
// kernel side only through these methods; the kernel side calls back only through named
// methods of the connection objects (ClientConnection.adoptServer, Pool.serverAvailable,
// ...). Every method is required: an implementation that forgets one does not compile.
// BypassController (src/kernel/controller.ts) is the implementation that owns the kernel
// path; UserSpaceOnly below is the one for `bypass: off` (or a kernel path that cannot load).
import type { BypassMode } from '../config/types';
import type { ClientConnection, ClientKernel } from './client-connection';
import type { KernelPassListener, ServerConnection } from './server-connection';
import type { Pool, PoolKernel } from './pool';
import type { Totals } from '../observe/stats';

// Pools, clients and servers each declare the part they call (PoolKernel, ClientKernel,
// KernelPassListener) so that they do not import this module: no import cycle, not even
// of types. KernelHost is all of them and the rest, which the Pooler and the console call.
export interface KernelHost extends PoolKernel, ClientKernel, KernelPassListener {
  // ---- pools ----
  // A pool was created: the kernel path may serve its clients.
  poolCreated(pool: Pool): void;
  // The pool's waiters or its pause changed: while clients wait (or it is paused) the
  // kernel binds no new transaction, so requests queue in user space, FIFO.
  waitersChanged(pool: Pool): void;
  // Offers a server idle in user space to the kernel's idle stack; true if the kernel owns it now.
  offerIdle(pool: Pool, server: ServerConnection): boolean;
  // Takes a server idle in the kernel for user space, or null.
  takeIdle(pool: Pool): ServerConnection | null;
  // Closes the pool's servers idle in the kernel now and marks its bound ones to close at release.
  closeIdle(pool: Pool, reason: string): void;

  // ---- clients ----
  // Moves an idle client to the kernel path when that is safe; false keeps it in user space.
  // aboutToWrite: bytes the caller writes to the client right after (its login response).
  offerClient(client: ClientConnection, aboutToWrite: number): boolean;
  // The kernel passed this client's bytes up: it is served here from now on.
  leftKernel(client: ClientConnection): void;
  // Hands a waiting request and the server it got to the kernel (which carries the
  // response); false keeps them in user space.
  bindInKernel(client: ClientConnection, server: ServerConnection, request: Buffer[]): boolean;
  // More bytes of a client whose server is bound in the kernel: true if sent on to it,
  // false if the kernel released it meanwhile (the bytes start a new request).
  feedKernelBound(client: ClientConnection, data: Buffer): boolean;
  // The client's next bytes need rewriting: its bound pair comes to user space
  // (ClientConnection.adoptServer); false if the kernel released it meanwhile.
  reclaimBound(client: ClientConnection): boolean;
  // A client closed: a server the kernel had bound to it is taken back and cleaned.
  clientClosed(client: ClientConnection): void;
  // The server a cancel for this client must hit, held from now on; null when the kernel has none.
  cancelServer(client: ClientConnection): ServerConnection | null;
  // Whether the kernel has a server bound to this client now (inside a transaction).
  clientBound(client: ClientConnection): boolean;

  // ---- servers ----
  // Whether the kernel has bound this server to a client now (SHOW SERVERS, PAUSE).
  serverBound(server: ServerConnection): boolean;
  // The kernel passed bytes of a server it owned up to user space.
  serverPassed(server: ServerConnection): void;

  // ---- upkeep and observation ----
  // Once a second: sweeps and timeouts of what the kernel carries.
  janitor(now: number): void;
  // Cumulative traffic the kernel carried per pool (added to the user-space totals).
  trafficByPool(): Map<Pool, Partial<Totals>>;
  // Rows for SHOW BYPASS and the SIGUSR1 line.
  info(): Array<[string, string]>;
  // Counters by name for Prometheus (pgsplice_kernel_<name>_total).
  flatCounters(): Record<string, number | bigint>;
  close(): void;
}

export interface BypassStatus {
  mode: BypassMode;
  loaded: boolean;
  reason: string;
}

// User-space side counters of the kernel path, for comparison with the kernel's.
export interface UserPathCounters {
  clientsToKernel: number;
  clientsFromKernel: number;
  bindsFromUser: number;
  slowHandovers: number;
  reclaims: number; // bound pairs taken back for a request only user space can rewrite
  serversToKernel: number;
  serversFromKernel: number;
  paramsChanged: number;
  kernelServerLost: number;
  handoffs: number; // transactions taken over mid-way for a named statement or session state
}

export function zeroUserPathCounters(): UserPathCounters {
  return {
    clientsToKernel: 0, clientsFromKernel: 0, bindsFromUser: 0, slowHandovers: 0, reclaims: 0, serversToKernel: 0,
    serversFromKernel: 0, paramsChanged: 0, kernelServerLost: 0, handoffs: 0,
  };
}

// The rows every implementation starts SHOW BYPASS with.
export function statusRows(status: BypassStatus, counters: UserPathCounters, clientsInKernel: number, serversInKernel: number): Array<[string, string]> {
  const rows: Array<[string, string]> = [
    ['mode', status.mode],
    ['loaded', status.loaded ? 'yes' : 'no'],
    ['reason', status.reason],
    ['clients_in_kernel', String(clientsInKernel)],
    ['servers_in_kernel', String(serversInKernel)],
  ];
  for (const [k, v] of Object.entries(counters)) rows.push([`user_${k}`, String(v)]);
  return rows;
}

// The user-space counters named for Prometheus.
export function flatUserCounters(counters: UserPathCounters): Record<string, number | bigint> {
  const out: Record<string, number | bigint> = {};
  for (const [k, v] of Object.entries(counters)) out[`user_${k.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase())}`] = v;
  return out;
}

const nothing = (): void => {};
const no = (): boolean => false;
const none = (): null => null;

// `bypass: off`, or a kernel path that could not be loaded: everything stays in user space.
// The kernel takes nothing, has nothing, and is told of nothing.
export class UserSpaceOnly implements KernelHost {
  private readonly counters = zeroUserPathCounters();
  constructor(readonly status: BypassStatus) {}
  // Told of something (a pool, waiters, a client leaving, the janitor's tick): nothing to do.
  poolCreated = nothing; waitersChanged = nothing; closeIdle = nothing; leftKernel = nothing; beforeMirrorFeed = nothing; clientClosed = nothing; serverPassed = nothing; janitor = nothing;
  // Asked to take something: it takes nothing.
  offerIdle = no; offerClient = no; bindInKernel = no; feedKernelBound = no; reclaimBound = no; clientBound = no; serverBound = no;
  // Asked for something it would hold: it holds nothing.
  takeIdle = none; settingsLearned = none; cancelServer = none;
  readonly bindsRequests = false;
  trafficByPool(): Map<Pool, Partial<Totals>> {
    return new Map();
  }
  info(): Array<[string, string]> {
    return statusRows(this.status, this.counters, 0, 0);
  }
  flatCounters(): Record<string, number | bigint> {
    return flatUserCounters(this.counters);
  }
  close(): void {}
}

// For connections the kernel path never sees (auth_query's own server connections).
export const USER_SPACE_ONLY: KernelHost = new UserSpaceOnly({ mode: 'off', loaded: false, reason: 'not offered to the kernel path' });

// The states of a client and of a server connection, and the moves between them. Every
// change of state goes through StateOf.to (as PgBouncer's change_client_state):
// a move the table does not list is a bug of ours and is logged as one. It is still made:
// a running proxy does not drop a client over its own bookkeeping.
import { log } from '../observe/log';

export enum ClientState {
  Startup = 'startup',
  AuthLookup = 'auth-lookup', // waiting for auth_query to find the user's secret
  Auth = 'auth',
  Login = 'login', // authenticated, learning the pool's server parameters
  Idle = 'idle', // between transactions, no server
  Waiting = 'waiting', // has a request, waits for a server
  Active = 'active', // linked to a server in user space
  // The kernel has bound a server to it and carries that transaction, but the client's own
  // bytes reach user space, which feeds them to that server (ClientConnection.kernelServer).
  KernelBound = 'kernel-bound',
  Kernel = 'kernel', // the kernel path carries its data
  Closed = 'closed',
}

export enum ServerState {
  Connecting = 'connecting',
  Login = 'login',
  Idle = 'idle', // in its pool, owned by user space
  Active = 'active', // linked to a client, user space forwards
  Internal = 'internal', // running a query of the proxy's own (SET, reset, check)
  Kernel = 'kernel', // owned by the kernel path (idle there or bound to a client)
  Closed = 'closed',
}

const C = ClientState;
// Legal moves of a client. Closed is reachable from everywhere (an error, a hang-up).
export const CLIENT_MOVES: Readonly<Record<ClientState, readonly ClientState[]>> = {
  [C.Startup]: [C.Auth, C.Closed],
  [C.Auth]: [C.AuthLookup, C.Login, C.Closed],
  [C.AuthLookup]: [C.Auth, C.Closed],
  [C.Login]: [C.Idle, C.Closed],
  // Idle -> Active: the kernel handed over the pair it carried after passing the client up;
  // -> KernelBound: it passed the client up while it still carries its transaction.
  [C.Idle]: [C.Waiting, C.Kernel, C.KernelBound, C.Active, C.Closed],
  // Waiting -> Waiting: another server is asked for (the first could not be reset);
  // -> KernelBound: its request and server were bound in the kernel.
  [C.Waiting]: [C.Waiting, C.Active, C.KernelBound, C.Idle, C.Closed],
  [C.Active]: [C.Idle, C.Waiting, C.Closed],
  // KernelBound -> Kernel: quiet again, its bytes go to the kernel too; -> Idle: its bytes
  // came up again, or the kernel released the server (they are a new request); -> Active:
  // the pair was handed to user space.
  [C.KernelBound]: [C.Kernel, C.Idle, C.Active, C.Closed],
  // Kernel -> Idle: the kernel passed its bytes up; -> Active: it handed its pair over.
  [C.Kernel]: [C.Idle, C.Active, C.Closed],
  [C.Closed]: [],
};

const S = ServerState;
export const SERVER_MOVES: Readonly<Record<ServerState, readonly ServerState[]>> = {
  [S.Connecting]: [S.Login, S.Closed],
  [S.Login]: [S.Idle, S.Closed],
  // Idle -> Idle: released again (a cancel completed, the kernel gave it back).
  [S.Idle]: [S.Idle, S.Active, S.Internal, S.Kernel, S.Closed],
  [S.Active]: [S.Idle, S.Internal, S.Closed],
  [S.Internal]: [S.Idle, S.Active, S.Closed],
  [S.Kernel]: [S.Idle, S.Closed],
  [S.Closed]: [],
};

export function isLegalClientMove(from: ClientState, to: ClientState): boolean {
  return CLIENT_MOVES[from].includes(to);
}

export function isLegalServerMove(from: ServerState, to: ServerState): boolean {
  return SERVER_MOVES[from].includes(to);
}

// Counted for tests and SHOW-style inspection: how many illegal moves were seen.
export const illegalMoves = { count: 0 };

function illegal(label: string, from: string, to: string): void {
  illegalMoves.count++;
  log.error(`${label}: illegal state transition ${from} -> ${to} (a bug in pgsplice)\n${new Error().stack}`);
}

// The state of one connection: read by anyone, changed only by a checked move.
export class StateOf<S extends string> {
  // label: a name, or the connection itself (its label read only if a move is illegal,
  // so no name string is kept per connection).
  constructor(
    private readonly label: string | { readonly label: string },
    private readonly moves: Readonly<Record<S, readonly S[]>>,
    private now: S,
  ) {}

  get current(): S {
    return this.now;
  }

  to(next: S): void {
    if (!this.moves[this.now].includes(next)) illegal(typeof this.label === 'string' ? this.label : this.label.label, this.now, next);
    this.now = next;
  }
}

// The proxy's life states and shutdown modes, shared by the proxy, its admin console and
// the health endpoints.

// Where the process is in its life; /readyz answers from it.
export enum ProxyState {
  Starting = 'starting', // config loaded, listeners opening
  Running = 'running',
  ShuttingDown = 'shutting down', // listeners closed, clients draining or being closed
}

// PgBouncer's shutdowns (1.23+): SIGINT waits for servers to be released (clients finish
// their transactions), SIGTERM waits for clients to disconnect, SIGQUIT does not wait.
export enum ShutdownMode {
  WaitForServers = 'WAIT_FOR_SERVERS',
  WaitForClients = 'WAIT_FOR_CLIENTS',
  Immediate = 'IMMEDIATE',
}

export interface Readiness {
  ready: boolean;
  reason: string;
}

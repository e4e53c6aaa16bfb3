// What both data paths must do the same way, written once: cleaning a server when its
// client leaves, the client timeouts, and the sweep of idle servers. User space
// (ClientConnection, Pool) and the kernel path (BypassController) call these with what
// each knows; only how they learn it differs (user space sees the bytes, the kernel path
// samples the kernel's counters).
import type { PoolMode } from '../config/types';
import { SqlState } from '../protocol/constants';
import type { ErrorFields } from '../protocol/messages';
import { classifySql } from '../session/sql-classifier';
import { runEach } from './server-reset';

// ---- cleaning a server its client left ----

export interface LeaveFacts {
  inTransaction: boolean; // a transaction may be open on the server (unknown counts as open)
  pinned: boolean; // the client left session state there (LISTEN, temp tables, locks...)
  mode: PoolMode;
  resetQuery: string; // server_reset_query ('' = none)
  resetQueryAlways: boolean; // server_reset_query_always
}

// The statements a quiet server runs before it serves another client, once its client
// has left, one Query each (DISCARD ALL cannot run in the implicit block of a
// multi-statement Query). Empty: release it as it is.
export function stepsOnLeave(f: LeaveFacts): string[] {
  const steps: string[] = [];
  if (f.inTransaction) steps.push('ROLLBACK');
  if (f.pinned) {
    steps.push('DISCARD ALL'); // what it pinned must not reach the next client
  } else if ((f.mode === 'session' || f.resetQueryAlways) && f.resetQuery) {
    steps.push(f.resetQuery);
  }
  return steps;
}

// The statements a server runs at a transaction end in transaction mode before it goes
// back to its pool (server_reset_query_always); empty: none.
export function stepsAtTransactionEnd(resetQuery: string, resetQueryAlways: boolean): readonly string[] {
  return resetQueryAlways && resetQuery ? [resetQuery] : NO_STEPS;
}
const NO_STEPS: readonly string[] = Object.freeze([]); // shared: asked at every transaction end

// Whether these statements drop the server's prepared statements.
export function dropsStatements(sqls: readonly string[]): boolean {
  return sqls.some((q) => classifySql(q).some((e) => e.kind === 'discard_all' || (e.kind === 'deallocate' && e.name === null)));
}

// The parts of a server that cleaning touches.
export interface CleanableServer {
  runInternal(sql: string): Promise<void>;
  readonly applied: { clear(): void }; // settings the proxy SET on it
  readonly statements: { clear(): void }; // statements the proxy prepared on it
  close(reason: string, graceful?: boolean): void;
}

// A server that has not finished being cleaned by then is closed: nobody waits for it,
// and one stuck (whatever the cause) would hold a pool slot for good.
export const CLEAN_DEADLINE_MS = 10_000;

// Runs the steps, forgets what they undid (settings, prepared statements), then calls
// done(); a server that fails a step, or does not finish within CLEAN_DEADLINE_MS, is
// closed. wrap: the caller's error boundary.
export function cleanServer<S extends CleanableServer>(
  server: S, steps: readonly string[], done: (server: S) => void, failure: string,
  wrap: <A extends unknown[]>(fn: (...a: A) => void) => (...a: A) => void = (fn) => fn,
): void {
  if (steps.length === 0) return done(server);
  const deadline = setTimeout(() => server.close(`${failure}: no answer within ${CLEAN_DEADLINE_MS / 1000} s`, false), CLEAN_DEADLINE_MS);
  deadline.unref();
  runEach(server, steps).then(
    wrap(() => {
      clearTimeout(deadline);
      if (steps.some((s) => s !== 'ROLLBACK')) server.applied.clear();
      if (dropsStatements(steps)) server.statements.clear();
      done(server);
    }),
    wrap((e: Error) => {
      clearTimeout(deadline);
      server.close(`${failure}: ${e.message}`);
    }),
  );
}

// ---- client timeouts ----

export interface TimeoutSettings {
  query_timeout: number; // s, 0 = off
  idle_transaction_timeout: number;
  client_idle_timeout: number;
  transaction_timeout: number;
}

export interface ClientActivity {
  busySince: number; // ms: when its oldest unanswered request was sent, 0 = none
  quietSince: number; // ms: its last activity (a byte either way)
  idleInTransaction: boolean; // holds a server inside a transaction with nothing outstanding
  betweenTransactions: boolean; // holds no server
  transactionAge: number; // ms its open transaction has held a server so far, 0 = none
}

export interface TimeoutVerdict extends ErrorFields {
  cancelQuery: boolean; // stop the query on the server too, not just the client
  closeServer: boolean; // close the client's server instead of cleaning it for the pool
}

// client_idle_timeout, idle_transaction_timeout, query_timeout and transaction_timeout:
// the error that ends the client now, or null. Checked in PgBouncer's order.
export function clientTimeout(c: TimeoutSettings, a: ClientActivity, now: number): TimeoutVerdict | null {
  if (c.query_timeout > 0 && a.busySince && now - a.busySince > c.query_timeout * 1000) {
    return { code: SqlState.QueryCanceled, message: 'query_timeout: the query ran longer than query_timeout', cancelQuery: true, closeServer: false };
  }
  const quietFor = now - a.quietSince;
  if (c.idle_transaction_timeout > 0 && a.idleInTransaction && quietFor > c.idle_transaction_timeout * 1000) {
    return { code: SqlState.IdleInTransactionTimeout, message: 'idle_transaction_timeout: transaction left idle too long', cancelQuery: false, closeServer: false };
  }
  // As PgBouncer: its server is closed (not rolled back and pooled: a transaction this long
  // may be stuck), the client gets FATAL 08P01 "transaction timeout". A query still running
  // is cancelled too, so that its backend does not run on after the close.
  if (c.transaction_timeout > 0 && a.transactionAge > c.transaction_timeout * 1000) {
    return { code: SqlState.ProtocolViolation, message: 'transaction timeout', cancelQuery: a.busySince !== 0, closeServer: true };
  }
  if (c.client_idle_timeout > 0 && a.betweenTransactions && quietFor > c.client_idle_timeout * 1000) {
    return { code: SqlState.IdleSessionTimeout, message: 'client_idle_timeout: connection idle too long', cancelQuery: false, closeServer: false };
  }
  return null;
}

export function anyClientTimeout(c: TimeoutSettings): boolean {
  return c.query_timeout > 0 || c.idle_transaction_timeout > 0 || c.client_idle_timeout > 0 || c.transaction_timeout > 0;
}

// ---- idle servers: lifetime, idle timeout, RECONNECT ----

export interface SweepSettings {
  serverIdleTimeout: number; // s, 0 = never
  serverLifetime: number; // s, 0 = never
  minSize: number;
}

export interface IdleServerFacts {
  createdAt: number; // ms
  idleSince: number; // ms: its last use
  closeNeeded: boolean; // RECONNECT
}

export function lifetimeReached(s: Pick<SweepSettings, 'serverLifetime'>, createdAt: number, now: number): boolean {
  return s.serverLifetime > 0 && now - createdAt > s.serverLifetime * 1000;
}

// Why an idle server must be closed now, or null to keep it. poolServers: the pool's
// servers now (server_idle_timeout keeps min_pool_size).
export function idleServerVerdict(s: SweepSettings, srv: IdleServerFacts, poolServers: number, now: number): string | null {
  if (srv.closeNeeded) return 'close_needed (RECONNECT)';
  if (s.serverIdleTimeout > 0 && now - srv.idleSince > s.serverIdleTimeout * 1000 && poolServers > s.minSize) return 'server_idle_timeout';
  if (lifetimeReached(s, srv.createdAt, now)) return 'server_lifetime reached';
  return null;
}

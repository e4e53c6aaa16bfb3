// One error boundary per connection. Every event a connection handles (socket data,
// timers, promise continuations) runs through its boundary, so an exception ends that
// connection with an ErrorResponse and never reaches the process: bad protocol input
// gets 08P01 with what was wrong, a bug of the proxy gets XX000 and a logged stack.
import { SqlState } from '../protocol/constants';
import { ErrorFields, ProtocolError } from '../protocol/messages';
import { AuthProtocolError } from '../auth/scram';
import { log } from '../observe/log';

// What an exception means for the client: its own malformed input, or our bug.
export function errorFieldsFor(e: unknown, label: string): ErrorFields {
  if (e instanceof ProtocolError || e instanceof AuthProtocolError) {
    return { code: SqlState.ProtocolViolation, message: e.message };
  }
  log.error(`${label} internal error: ${e instanceof Error ? e.stack : String(e)}`);
  return { code: SqlState.InternalError, message: 'internal error in pgsplice' };
}

export interface Guarded {
  readonly label: string;
  // Ends the connection for this exception; must not throw itself.
  failWith(e: unknown): void;
}

// Wraps a callback of `owner` so that whatever it throws ends only that connection.
export function guard<A extends unknown[]>(owner: Guarded, fn: (...args: A) => void): (...args: A) => void {
  return (...args: A) => {
    try {
      fn(...args);
    } catch (e) {
      owner.failWith(e);
    }
  };
}

// The last line: an exception no connection's boundary caught is logged, and the proxy
// keeps serving its other clients rather than exiting with all of them.
let installed = false;
export function installProcessBoundary(): void {
  if (installed) return;
  installed = true;
  process.on('uncaughtException', (e) => {
    log.error(`uncaught exception (the proxy keeps running): ${e instanceof Error ? e.stack : String(e)}`);
  });
  process.on('unhandledRejection', (e) => {
    log.error(`unhandled promise rejection (the proxy keeps running): ${e instanceof Error ? e.stack : String(e)}`);
  });
}

// PostgreSQL's extended-protocol error rule, written once for the transaction tracker
// (what the server owes) and the reply filter (what the client sees): after an
// ErrorResponse to an extended-protocol message (Parse, Bind, Describe, Execute, Close)
// the server discards every message up to the next Sync, a Query or FunctionCall
// included, and answers only that Sync, with ReadyForQuery. An error of a Query,
// FunctionCall or Sync is answered by its own ReadyForQuery and starts no skip.

export enum Unit {
  Extended = 1, // Parse, Bind, Describe, Execute, Close
  Query, // Query or FunctionCall: answered by a ReadyForQuery
  Sync,
}

export class SkipToSync {
  private on = false;

  // The server is discarding input until the next Sync.
  get active(): boolean {
    return this.on;
  }

  // An ErrorResponse answered a unit of this kind.
  failed(kind: Unit): void {
    if (kind === Unit.Extended) this.on = true;
  }

  // The server comes to a unit of this kind: whether it processes it (false: discarded).
  // A Sync is always processed, and ends the skip.
  reaches(kind: Unit): boolean {
    if (kind === Unit.Sync) {
      this.on = false;
      return true;
    }
    return !this.on;
  }

  reset(): void {
    this.on = false;
  }
}

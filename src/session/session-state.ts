// Session state a client leaves on its server in transaction mode, and what the pool's
// policy does with it (docs/transaction-mode.md): `track` parameters (read back at the
// transaction's end and re-applied on the next server), `pin` the client to its server
// while the state exists, or `reject` the statement with an error.
import type { SessionEffect } from './sql-classifier';
import type { SessionStatePolicies } from '../config/types';

export type PinReason = 'parameters' | 'listen' | 'advisory_locks' | 'temp_tables' | 'prepared_sql' | 'hold_cursors' | 'prepared_statements';

export interface Rejection {
  reason: PinReason;
  message: string;
}

// What a CommandComplete tag must say for a statement that removes state to have run.
const REMOVAL_TAGS: Record<string, string[]> = {
  unlisten: ['UNLISTEN'],
  deallocate: ['DEALLOCATE', 'DEALLOCATE ALL'],
  close_cursor: ['CLOSE CURSOR', 'CLOSE CURSOR ALL'],
  discard_all: ['DISCARD ALL'],
  discard_temp: ['DISCARD TEMP'],
};

export class SessionState {
  // The sets are made at their first entry: most clients never need one.
  private listening: Set<string> | null = null;
  private allListening = false; // a LISTEN on a channel we could not name
  private advisoryLocks = 0;
  private tempTables = false;
  private sqlPrepared: Set<string> | null = null;
  private holdCursors: Set<string> | null = null;
  private pinnedParameters = false;
  private named: Set<string> | null = null;
  private pending: Set<string> | null = null;
  // Named statements passed through (max_prepared_statements 0).
  get protocolNamed(): Set<string> {
    return (this.named ??= new Set());
  }
  // Parameters to read back before the server is given up.
  get pendingParameters(): Set<string> {
    return (this.pending ??= new Set());
  }
  get hasPendingParameters(): boolean {
    return (this.pending?.size ?? 0) > 0;
  }
  resetAll = false; // RESET ALL / DISCARD ALL ran: every setting is read back

  constructor(private readonly policies: SessionStatePolicies) {}

  // Reasons the client keeps its server now (SHOW CLIENTS), empty when it need not.
  get pins(): PinReason[] {
    const out: PinReason[] = [];
    if (this.pinnedParameters) out.push('parameters');
    if (this.listening?.size || this.allListening) out.push('listen');
    if (this.advisoryLocks > 0) out.push('advisory_locks');
    if (this.tempTables) out.push('temp_tables');
    if (this.sqlPrepared?.size) out.push('prepared_sql');
    if (this.holdCursors?.size) out.push('hold_cursors');
    if (this.named?.size) out.push('prepared_statements');
    return out;
  }

  get pinned(): boolean {
    return this.pinnedParameters || (this.listening?.size ?? 0) > 0 || this.allListening || this.advisoryLocks > 0 || this.tempTables
      || (this.sqlPrepared?.size ?? 0) > 0 || (this.holdCursors?.size ?? 0) > 0 || (this.named?.size ?? 0) > 0;
  }

  // Whether DEALLOCATE of this name is for a statement prepared with SQL PREPARE.
  hasSqlPrepared(name: string): boolean {
    return !!this.sqlPrepared?.has(name);
  }

  // The first effect the policies refuse, checked before anything is sent.
  rejection(effects: SessionEffect[]): Rejection | null {
    for (const e of effects) {
      const reason = reasonOf(e);
      if (!reason) continue;
      if (this.policies[reason as keyof SessionStatePolicies] === 'reject') {
        return { reason, message: `${describe(e)} is not allowed in transaction pooling mode (session_state.${reason} is reject)` };
      }
    }
    return null;
  }

  // Effects that add state: applied when the statement is sent (pinning early is safe).
  began(effects: SessionEffect[]): void {
    for (const e of effects) {
      switch (e.kind) {
        case 'parameter':
          if (this.policies.parameters === 'pin') this.pinnedParameters = true;
          else for (const n of e.names) (this.pending ??= new Set()).add(n);
          break;
        case 'reset_all':
          this.resetAll = true;
          break;
        case 'discard_all':
          this.resetAll = true;
          break;
        case 'other':
          this.pinnedParameters = true; // an extent we cannot track
          break;
        case 'listen':
          if (e.channel) (this.listening ??= new Set()).add(e.channel);
          else this.allListening = true;
          break;
        case 'advisory_lock':
          if (e.delta > 0) this.advisoryLocks += e.delta;
          break;
        case 'temp_table':
          this.tempTables = true;
          break;
        case 'prepare':
          (this.sqlPrepared ??= new Set()).add(e.name);
          break;
        case 'hold_cursor':
          (this.holdCursors ??= new Set()).add(e.name);
          break;
      }
    }
  }

  // Effects that remove state: applied only once the server confirms them (the
  // statement's CommandComplete tag), so a failed UNLISTEN never unpins.
  confirmed(effects: SessionEffect[], tag: string): void {
    for (const e of effects) {
      const tags = REMOVAL_TAGS[e.kind];
      if (e.kind === 'advisory_lock' && e.delta < 0) this.advisoryLocks = Math.max(0, this.advisoryLocks + e.delta);
      else if (e.kind === 'advisory_unlock_all') this.advisoryLocks = 0;
      if (!tags || !tags.some((t) => tag === t)) continue;
      switch (e.kind) {
        case 'unlisten':
          if (e.channel === null) {
            this.listening?.clear();
            this.allListening = false;
          } else this.listening?.delete(e.channel);
          break;
        case 'deallocate':
          if (e.name === null) this.sqlPrepared?.clear();
          else this.sqlPrepared?.delete(e.name);
          break;
        case 'close_cursor':
          if (e.name === null) this.holdCursors?.clear();
          else this.holdCursors?.delete(e.name);
          break;
        case 'discard_temp':
          this.tempTables = false;
          break;
        case 'discard_all':
          this.clearAll();
          break;
      }
    }
  }

  // The server session was reset (DISCARD ALL): nothing is left on it.
  clearAll(): void {
    this.listening?.clear();
    this.allListening = false;
    this.advisoryLocks = 0;
    this.tempTables = false;
    this.sqlPrepared?.clear();
    this.holdCursors?.clear();
    this.pinnedParameters = false;
    this.named?.clear();
  }
}

function reasonOf(e: SessionEffect): PinReason | null {
  switch (e.kind) {
    case 'parameter': case 'reset_all': case 'other': return 'parameters';
    case 'listen': return 'listen';
    case 'advisory_lock': return e.delta > 0 ? 'advisory_locks' : null;
    case 'temp_table': return 'temp_tables';
    case 'prepare': return 'prepared_sql';
    case 'hold_cursor': return 'hold_cursors';
    default: return null; // removals and DISCARD are always allowed
  }
}

function describe(e: SessionEffect): string {
  switch (e.kind) {
    case 'parameter': return `SET of ${e.names.join(', ')}`;
    case 'reset_all': return 'RESET ALL';
    case 'other': return e.what;
    case 'listen': return 'LISTEN';
    case 'advisory_lock': return 'a session advisory lock';
    case 'temp_table': return 'a temporary table';
    case 'prepare': return 'PREPARE';
    case 'hold_cursor': return 'a cursor WITH HOLD';
    default: return e.kind;
  }
}

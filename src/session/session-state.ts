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

// Every effect that adds state is stamped with a mark, in the order the client sent it;
// a removal takes away only what was stamped before it. A client may send LISTEN c;
// UNLISTEN c; LISTEN c (in one Query, or in Queries sent before the first reply): the
// UNLISTEN confirmed last must not unpin it, or its server goes to another client with
// the channel, temp table or lock still on it.
export class SessionState {
  private mark = 0;
  // The maps are made at their first entry: most clients never need one. Values are marks.
  private listening: Map<string, number> | null = null;
  private allListening = -1; // mark of a LISTEN on a channel we could not name; -1: none
  private advisoryLocks: { at: number; key: string }[] | null = null; // session locks taken, oldest first
  private tempTables = -1;
  private sqlPrepared: Map<string, number> | null = null;
  private holdCursors: Map<string, number> | null = null;
  private pinnedParameters = -1;
  private named: Map<string, number> | null = null;
  private pending: Set<string> | null = null;
  // Named statements passed through (max_prepared_statements 0).
  addNamed(name: string): void {
    (this.named ??= new Map()).set(name, this.mark++);
  }
  deleteNamed(name: string): void {
    this.named?.delete(name);
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
    if (this.pinnedParameters >= 0) out.push('parameters');
    if (this.listening?.size || this.allListening >= 0) out.push('listen');
    if (this.advisoryLocks?.length) out.push('advisory_locks');
    if (this.tempTables >= 0) out.push('temp_tables');
    if (this.sqlPrepared?.size) out.push('prepared_sql');
    if (this.holdCursors?.size) out.push('hold_cursors');
    if (this.named?.size) out.push('prepared_statements');
    return out;
  }

  get pinned(): boolean {
    return this.pinnedParameters >= 0 || (this.listening?.size ?? 0) > 0 || this.allListening >= 0 || (this.advisoryLocks?.length ?? 0) > 0
      || this.tempTables >= 0 || (this.sqlPrepared?.size ?? 0) > 0 || (this.holdCursors?.size ?? 0) > 0 || (this.named?.size ?? 0) > 0;
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
  // Returns the mark of effects[0] (effects[i] has mark + i), which confirmed() is given.
  began(effects: SessionEffect[]): number {
    const base = this.mark;
    this.mark += effects.length;
    for (let i = 0; i < effects.length; i++) {
      const e = effects[i];
      const at = base + i;
      switch (e.kind) {
        case 'parameter':
          if (this.policies.parameters === 'pin') this.pinnedParameters = at;
          else for (const n of e.names) (this.pending ??= new Set()).add(n);
          break;
        case 'reset_all':
          this.resetAll = true;
          break;
        case 'discard_all':
          this.resetAll = true;
          break;
        case 'other':
          this.pinnedParameters = at; // an extent we cannot track
          break;
        case 'listen':
          if (e.channel) (this.listening ??= new Map()).set(e.channel, at);
          else this.allListening = at;
          break;
        case 'advisory_lock':
          for (let n = 0; n < e.delta; n++) (this.advisoryLocks ??= []).push({ at, key: e.key });
          break;
        case 'temp_table':
          this.tempTables = at;
          break;
        case 'prepare':
          (this.sqlPrepared ??= new Map()).set(e.name, at);
          break;
        case 'hold_cursor':
          (this.holdCursors ??= new Map()).set(e.name, at);
          break;
      }
    }
    return base;
  }

  // Effects that remove state: applied only once the server confirms them (the
  // statement's CommandComplete tag), so a failed UNLISTEN never unpins; each at most once
  // (`done`, one flag per effect, kept by the caller for the request), and only to state
  // made before it (`base` from began()).
  // UNLISTEN and DISCARD TEMP are undone if their transaction rolls back: with `held` (a
  // simple Query, whose ReadyForQuery tells) they take effect only once it committed.
  confirmed(effects: SessionEffect[], tag: string, base: number, done: boolean[], held?: HeldRemovals): void {
    for (let i = 0; i < effects.length; i++) {
      if (done[i]) continue;
      const e = effects[i];
      const at = base + i;
      if ((e.kind === 'advisory_lock' && e.delta < 0) || e.kind === 'advisory_unlock_all') {
        if (!tag.startsWith('SELECT')) continue;
        done[i] = true;
        if (!this.advisoryLocks) continue;
        if (e.kind === 'advisory_unlock_all') {
          this.advisoryLocks = this.advisoryLocks.filter((l) => l.at > at);
          continue;
        }
        // the oldest lock of the same key (mode and literal arguments) taken before it
        for (let n = -e.delta; n > 0; n--) {
          const i = this.advisoryLocks.findIndex((l) => l.at < at && l.key === e.key);
          if (i >= 0) this.advisoryLocks.splice(i, 1);
        }
        continue;
      }
      const tags = REMOVAL_TAGS[e.kind];
      if (!tags || !tags.some((t) => tag === t)) continue;
      done[i] = true;
      switch (e.kind) {
        case 'unlisten': {
          const channel = e.channel;
          const apply = () => {
            if (channel === null) {
              dropBefore(this.listening, at);
              if (this.allListening < at) this.allListening = -1;
            } else dropOneBefore(this.listening, channel, at);
          };
          if (held) held.later.push(apply);
          else apply();
          break;
        }
        case 'deallocate':
          if (e.name === null) dropBefore(this.sqlPrepared, at);
          else dropOneBefore(this.sqlPrepared, e.name, at);
          break;
        case 'close_cursor':
          if (e.name === null) dropBefore(this.holdCursors, at);
          else dropOneBefore(this.holdCursors, e.name, at);
          break;
        case 'discard_temp': {
          const apply = () => { if (this.tempTables < at) this.tempTables = -1; };
          if (held) held.later.push(apply);
          else apply();
          break;
        }
        case 'discard_all':
          this.clearBefore(at);
          break;
      }
    }
  }

  // The server session was reset (DISCARD ALL) at `at`: nothing made before it is left.
  private clearBefore(at: number): void {
    dropBefore(this.listening, at);
    if (this.allListening < at) this.allListening = -1;
    if (this.advisoryLocks) this.advisoryLocks = this.advisoryLocks.filter((l) => l.at > at);
    if (this.tempTables < at) this.tempTables = -1;
    dropBefore(this.sqlPrepared, at);
    dropBefore(this.holdCursors, at);
    if (this.pinnedParameters < at) this.pinnedParameters = -1;
    dropBefore(this.named, at);
  }
}

// Removals of a Query that wait for its transaction's outcome.
export class HeldRemovals {
  later: (() => void)[] = [];
  failed = false; // an error, ROLLBACK or PREPARE TRANSACTION in the Query's reply
  onTag(tag: string): void {
    if (tag.startsWith('ROLLBACK') || tag === 'PREPARE TRANSACTION') this.failed = true;
  }
  // The Query's ReadyForQuery: 'I' with no failure means its transaction committed. Inside
  // a block ('T', 'E') the outcome comes later: the state is kept (the client stays pinned).
  settle(status: number): void {
    if (status === 0x49 /* I */ && !this.failed) for (const f of this.later) f();
    this.later = [];
  }
}

function dropBefore(m: Map<string, number> | null, at: number): void {
  if (m) for (const [k, v] of m) if (v < at) m.delete(k);
}

// The one entry `key`, if it was made before `at`.
function dropOneBefore(m: Map<string, number> | null, key: string, at: number): void {
  const v = m?.get(key);
  if (v !== undefined && v < at) m!.delete(key);
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

// Rewrites a transaction-mode client's requests for the server it got: its statement
// names become the server's (preparing them there on demand), statements that would
// leave session state are tracked, pinned or refused, and the ReplyFilter learns what
// each written message's reply must look like to the client.
import { Frontend, SqlState } from '../protocol/constants';
import { errorResponse, message, query } from '../protocol/messages';
import { ReplyAction, ReplyEnd } from './reply-filter';
import {
  ABSENT_STATEMENT, ClientStatement, bindStatement, bindWithStatement, closeStatement, describeStatement, parseMessage,
  parseParts, serverStatementName,
} from './prepared-statements';
import { SessionEffect, classifySql, mayAffectSession, splitStatements } from './sql-classifier';
import { ClientStatementObserver, kernelNameFor, serverNameFor } from './statement-names';
import { HeldRemovals, SessionState } from './session-state';
import type { ServerConnection } from '../pooling/server-connection';
import type { SessionStatePolicies } from '../config/types';

// A message the rewriter looks into; other bytes pass as raw Buffers, and the
// messages among them whose replies must be accounted for leave a marker (their type).
export interface ClientMessage {
  type: number;
  body: Buffer;
  raw?: Buffer; // the message as the client sent it, when it came in one chunk
}
export type RequestUnit = Buffer | ClientMessage | number;

export const REWRITTEN_TYPES = 'PBDCQ';
export const MARKED_TYPES = new Set([Frontend.Execute, Frontend.Sync, Frontend.FunctionCall]);

const MARKER_ENDS = new Map<number, ReplyEnd>([
  [Frontend.Execute, ReplyEnd.Execute], [Frontend.Sync, ReplyEnd.Ready], [Frontend.FunctionCall, ReplyEnd.Ready],
  [Frontend.Query, ReplyEnd.Ready], [Frontend.Parse, ReplyEnd.ParseComplete], [Frontend.Bind, ReplyEnd.BindComplete],
  [Frontend.Describe, ReplyEnd.Describe], [Frontend.Close, ReplyEnd.CloseComplete],
]);

const complete = (type: string): Buffer => message(type.charCodeAt(0), Buffer.alloc(0));
const PARSE_COMPLETE = complete('1');
const CLOSE_COMPLETE = complete('3');

type TagHandler = ((tag: string) => void) | undefined;
// The statements of the client and of its server when a DISCARD ALL / DEALLOCATE ALL was sent.
interface StatementsBefore { readonly client: [string, ClientStatement][]; readonly server: string[] }
// What the unnamed statement (or the bound portal) does to the session: replaced, never changed.
interface Bound { readonly effects: SessionEffect[]; readonly onTag: TagHandler }
const NOTHING_BOUND: Bound = Object.freeze({ effects: [], onTag: undefined });

export interface RewriterOptions {
  maxPreparedStatements: number; // 0: named statements pass through and pin the client
  policies: SessionStatePolicies;
}

// The client a rewriter works for: its current settings (search_path names statements)
// and where synthetic replies due now go. An interface rather than a Map and a closure: the
// client's settings may be replaced (shared until first changed), and a closure per idle
// client is memory.
export interface RewriterClient {
  readonly settings: ReadonlyMap<string, string>;
  deliverReplies(replies: Buffer[], server: ServerConnection): void;
}

// Until a client names its first statement, its statement map is this shared empty one.
const NO_STATEMENTS: ReadonlyMap<string, ClientStatement> = new Map();

export class RequestRewriter {
  private ownStatements: Map<string, ClientStatement> | null = null; // made at the first statement
  get statements(): ReadonlyMap<string, ClientStatement> {
    return this.ownStatements ?? NO_STATEMENTS;
  }
  readonly session: SessionState;
  private unnamed: Bound = NOTHING_BOUND;
  // The kernel path's copy of this client's confirmed statement names (controller).
  private observer: ClientStatementObserver | null = null;
  private observedAs = 0; // the id the observer knows this client by
  private bound: Bound = NOTHING_BOUND;

  // `opts` may be shared by all clients of a config (never written).
  constructor(
    private readonly opts: RewriterOptions,
    private readonly client: RewriterClient,
  ) {
    this.session = new SessionState(opts.policies);
  }

  // Reports every confirmed statement now and each change from now on. One observer serves
  // all clients (no closure per client): it is told whose name changed (id).
  observe(o: ClientStatementObserver | null, id = 0): void {
    this.observer = o;
    this.observedAs = id;
    if (o) for (const [name, e] of this.statements) if (e.confirmed) o(id, name, e);
  }

  private confirmStatement(name: string, entry: ClientStatement): void {
    if (this.statements.get(name) !== entry || entry.confirmed) return;
    entry.confirmed = true;
    this.observer?.(this.observedAs, name, entry);
  }

  private setStatement(name: string, entry: ClientStatement): void {
    (this.ownStatements ??= new Map()).set(name, entry);
    if (entry.confirmed) this.observer?.(this.observedAs, name, entry);
  }

  private dropStatement(name: string): void {
    const e = this.statements.get(name);
    if (!e) return;
    this.ownStatements!.delete(name);
    if (e.confirmed) this.observer?.(this.observedAs, name, 'gone');
  }

  private clearStatements(): void {
    for (const name of [...this.statements.keys()]) this.dropStatement(name);
  }

  // The request's bytes for `server` when the only rewriting it needs is what the kernel
  // does itself: Bind/Describe(S) of statements, without session effects, whose server
  // name the kernel knows and that `server` already has (confirmed). null otherwise. Used
  // when user space hands a waiting request to the kernel (bindInKernel, feedKernelBound),
  // where no reply of the proxy's own may be needed.
  kernelRewrite(units: RequestUnit[], server: ServerConnection): Buffer[] | null {
    const out: Buffer[] = [];
    for (const u of units) {
      if (typeof u === 'number') continue;
      if (Buffer.isBuffer(u)) {
        out.push(u);
        continue;
      }
      const raw = u.raw ?? Buffer.concat([messageHeader(u.type, u.body.length), u.body]);
      if (!this.needsRewrite(u)) {
        out.push(raw);
        continue;
      }
      if (u.type !== Frontend.Bind && u.type !== Frontend.Describe) return null;
      const isBind = u.type === Frontend.Bind;
      const at = isBind ? bindStatement(u.body) : { name: u.body.toString('utf8', 1, u.body.length - 1), start: 1, end: u.body.length - 1 };
      const entry = this.statements.get(at.name);
      if (!entry || !entry.confirmed || !entry.kernel || entry.effects.length || !server.statements.isConfirmed(entry.serverName)) return null;
      server.statements.touch(entry.serverName);
      if (isBind) this.bound = { effects: [], onTag: undefined };
      out.push(isBind ? bindWithStatement(u.body, at, entry.serverName) : describeStatement(entry.serverName));
    }
    return out;
  }

  // Whether the unit must be rewritten in user space (the kernel may carry the rest).
  needsRewrite(u: RequestUnit): boolean {
    if (typeof u === 'number' || Buffer.isBuffer(u)) return false;
    const b = u.body;
    switch (u.type) {
      case Frontend.Parse: return b[0] !== 0 || affectsSession(parseParts(b).query);
      case Frontend.Bind: return bindStatement(b).name !== '';
      case Frontend.Describe:
      case Frontend.Close: return b[0] === 0x53 /* S */ && b[1] !== 0;
      case Frontend.Query: return affectsSession(queryText(b));
      default: return false;
    }
  }

  // The bytes to write to `server` for these units, in order.
  write(units: RequestUnit[], server: ServerConnection): Buffer[] {
    const out: Buffer[] = [];
    for (const u of units) {
      if (Buffer.isBuffer(u)) out.push(u);
      else if (typeof u === 'number') this.marker(u, server);
      else this.rewrite(u, server, out);
    }
    return out;
  }

  private expect(server: ServerConnection, e: Parameters<ServerConnection['replies']['expect']>[0]): void {
    const due = server.replies.expect(e);
    if (due.length) this.client.deliverReplies(due, server);
  }

  // A reply that passes as it is and that nobody waits on: counted, no object queued.
  private pass(server: ServerConnection, end: ReplyEnd, sync = false): void {
    server.replies.expectPass(end, sync);
  }

  // A message passed as raw bytes: its reply is the client's own.
  private marker(type: number, server: ServerConnection): void {
    const end = MARKER_ENDS.get(type) ?? ReplyEnd.Ready;
    const onTag = type === Frontend.Execute ? this.bound.onTag : undefined;
    if (!onTag) return this.pass(server, end, type === Frontend.Sync);
    this.expect(server, { end, action: ReplyAction.Pass, onTag });
  }

  private rewrite(m: ClientMessage, server: ServerConnection, out: Buffer[]): void {
    // As the client sent it; a message that came split is written as header + body (a
    // 100 MB Query is not copied once more).
    const raw = (): Buffer[] => (m.raw ? [m.raw] : [messageHeader(m.type, m.body.length), m.body]);
    switch (m.type) {
      case Frontend.Query: return this.onQuery(m.body, server, out, raw);
      case Frontend.Parse: return this.onParse(m.body, server, out, raw);
      case Frontend.Bind: return this.onBind(m.body, server, out, raw);
      case Frontend.Describe:
      case Frontend.Close: {
        const kind = m.body[0];
        const name = m.body.toString('utf8', 1, Math.max(1, m.body.length - 1));
        const isDescribe = m.type === Frontend.Describe;
        const end = isDescribe ? ReplyEnd.Describe : ReplyEnd.CloseComplete;
        if (kind !== 0x53 || name === '' || this.opts.maxPreparedStatements === 0) {
          if (!isDescribe && kind === 0x53 && name) {
            this.expect(server, { end, action: ReplyAction.Pass, onDone: () => this.session.deleteNamed(name) });
          } else this.pass(server, end);
          out.push(...raw());
          return;
        }
        const entry = this.statements.get(name);
        if (isDescribe) {
          if (!entry) return this.failWith(server, out, SqlState.InvalidSqlStatementName, `prepared statement "${name}" does not exist`);
          this.ensurePrepared(entry, server, out);
          out.push(describeStatement(entry.serverName));
          this.pass(server, end);
          return;
        }
        // Close: the client's name goes; the server keeps the statement for others.
        if (entry) this.dropStatement(name);
        this.expect(server, {
          end, action: ReplyAction.Synthetic, reply: CLOSE_COMPLETE,
          onFail: () => { if (entry && !this.statements.has(name)) this.setStatement(name, entry); },
        });
        return;
      }
    }
  }

  private onQuery(body: Buffer, server: ServerConnection, out: Buffer[], raw: () => Buffer[]): void {
    const sql = queryText(body);
    const effects = mayAffectSession(sql) ? classifySql(sql) : [];
    if (effects.length === 0) {
      out.push(...raw());
      this.pass(server, ReplyEnd.Ready);
      return;
    }
    const refused = this.session.rejection(effects);
    if (refused) {
      out.push(query(raiseSql(refused.message)));
      this.pass(server, ReplyEnd.Ready);
      return;
    }
    const dealloc = this.deallocateTarget(sql, effects);
    if (dealloc) {
      this.ensurePrepared(dealloc.entry, server, out);
      out.push(query(`DEALLOCATE "${dealloc.entry.serverName}"`));
      this.expect(server, { end: ReplyEnd.Ready, action: ReplyAction.Pass, onTag: this.deallocated(dealloc.name, dealloc.entry, server) });
      return;
    }
    const base = this.session.began(effects);
    out.push(...raw());
    const held = effects.some((e) => e.kind === 'unlisten' || e.kind === 'discard_temp') ? new HeldRemovals() : undefined;
    this.expect(server, {
      end: ReplyEnd.Ready, action: ReplyAction.Pass, onTag: this.confirm(effects, server, base, this.dropsStatements(effects, server), held),
      ...(held ? { onError: () => { held.failed = true; }, onReady: (status: number) => held.settle(status) } : {}),
    });
  }

  private onParse(body: Buffer, server: ServerConnection, out: Buffer[], raw: () => Buffer[]): void {
    const p = parseParts(body);
    const effects = mayAffectSession(p.query) ? classifySql(p.query) : [];
    const refused = effects.length ? this.session.rejection(effects) : null;
    let rest = p.rest;
    if (refused) rest = Buffer.concat([Buffer.from(`${raiseSql(refused.message)}\0`), p.rest.subarray(p.rest.indexOf(0) + 1)]);
    const usable = refused ? [] : effects;
    if (p.name === '') {
      const dealloc = refused ? null : this.deallocateTarget(p.query, effects);
      if (dealloc) {
        this.ensurePrepared(dealloc.entry, server, out);
        rest = Buffer.concat([Buffer.from(`DEALLOCATE "${dealloc.entry.serverName}"\0`), p.rest.subarray(p.rest.indexOf(0) + 1)]);
        this.unnamed = { effects: [], onTag: this.deallocated(dealloc.name, dealloc.entry, server) };
      } else this.unnamed = { effects: usable, onTag: undefined }; // its confirmation is made per Bind
      if (refused || dealloc) out.push(parseMessage('', rest));
      else out.push(...raw());
      this.pass(server, ReplyEnd.ParseComplete);
      return;
    }
    if (this.opts.maxPreparedStatements === 0) {
      this.session.addNamed(p.name); // stays on this server: the client keeps it
      out.push(...raw());
      this.expect(server, { end: ReplyEnd.ParseComplete, action: ReplyAction.Pass, onFail: () => this.session.deleteNamed(p.name) });
      return;
    }
    if (this.statements.has(p.name)) {
      return this.failWith(server, out, SqlState.DuplicatePreparedStatement, `prepared statement "${p.name}" already exists`);
    }
    const identity = serverStatementName(rest, this.client.settings.get('search_path'));
    // a server name as long as the client's, so that the kernel path can carry its Binds
    const k = kernelNameFor(identity, p.name);
    const serverName = k.name ? serverNameFor(k.name.len, k.name.idx) : identity;
    const entry: ClientStatement = {
      serverName, parse: parseMessage(serverName, rest), effects: usable, kernel: k.name, kernelMiss: k.reason, confirmed: false,
    };
    (this.ownStatements ??= new Map()).set(p.name, entry);
    const forget = () => { if (this.statements.get(p.name) === entry) this.dropStatement(p.name); };
    const confirmed = () => this.confirmStatement(p.name, entry);
    if (server.statements.has(serverName)) {
      server.statements.touch(serverName);
      this.expect(server, { end: ReplyEnd.ParseComplete, action: ReplyAction.Synthetic, reply: PARSE_COMPLETE, onFail: forget, onDone: confirmed });
      return;
    }
    this.makeRoom(server, serverName, out);
    server.statements.add(serverName);
    out.push(entry.parse);
    this.expect(server, {
      end: ReplyEnd.ParseComplete, action: ReplyAction.Pass,
      onFail: () => { server.statements.delete(serverName); forget(); },
      onDone: () => { server.statements.confirm(serverName); confirmed(); },
    });
  }

  private onBind(body: Buffer, server: ServerConnection, out: Buffer[], raw: () => Buffer[]): void {
    const at = bindStatement(body);
    if (at.name === '') {
      const u = this.unnamed;
      this.bound = u.effects.length ? { effects: u.effects, onTag: this.confirm(u.effects, server, this.session.began(u.effects), this.dropsStatements(u.effects, server)) } : u;
      out.push(...raw());
      this.pass(server, ReplyEnd.BindComplete);
      return;
    }
    if (this.opts.maxPreparedStatements === 0) {
      this.bound = NOTHING_BOUND;
      out.push(...raw());
      this.pass(server, ReplyEnd.BindComplete);
      return;
    }
    const entry = this.statements.get(at.name);
    if (!entry) return this.failWith(server, out, SqlState.InvalidSqlStatementName, `prepared statement "${at.name}" does not exist`);
    this.ensurePrepared(entry, server, out);
    this.bound = entry.effects.length
      ? { effects: entry.effects, onTag: this.confirm(entry.effects, server, this.session.began(entry.effects), this.dropsStatements(entry.effects, server)) }
      : NOTHING_BOUND;
    out.push(bindWithStatement(body, at, entry.serverName));
    this.pass(server, ReplyEnd.BindComplete);
  }

  // Prepares a client's statement on this server if it is not there yet; the client
  // never sees the ParseComplete (an error it does see, as PostgreSQL would send it).
  private ensurePrepared(entry: ClientStatement, server: ServerConnection, out: Buffer[]): void {
    if (server.statements.has(entry.serverName)) {
      server.statements.touch(entry.serverName);
      return;
    }
    this.makeRoom(server, entry.serverName, out);
    server.statements.add(entry.serverName);
    out.push(entry.parse);
    this.expect(server, {
      end: ReplyEnd.ParseComplete, action: ReplyAction.Drop,
      onFail: () => server.statements.delete(entry.serverName), onDone: () => server.statements.confirm(entry.serverName),
    });
  }

  // Closes the least recently used statements so one more fits (max_prepared_statements).
  private makeRoom(server: ServerConnection, keep: string, out: Buffer[]): void {
    for (const name of server.statements.evictFor(this.opts.maxPreparedStatements, keep)) {
      out.push(closeStatement(name));
      this.expect(server, { end: ReplyEnd.CloseComplete, action: ReplyAction.Drop, onFail: () => server.statements.add(name) });
    }
  }

  // Makes the server fail at this point of the stream with an error of the proxy's own,
  // so that the rest up to Sync is skipped and a transaction is aborted as PostgreSQL would.
  private failWith(server: ServerConnection, out: Buffer[], code: string, text: string): void {
    out.push(describeStatement(ABSENT_STATEMENT));
    this.expect(server, {
      end: ReplyEnd.Describe, action: ReplyAction.ErrorAs,
      reply: errorResponse({ severity: 'ERROR', code, message: text }),
    });
  }

  // DEALLOCATE <name> as the only statement, of a protocol-level statement of the client.
  private deallocateTarget(sql: Buffer, effects: SessionEffect[]): { name: string; entry: ClientStatement } | null {
    if (effects.length !== 1 || effects[0].kind !== 'deallocate' || effects[0].name === null) return null;
    const name = effects[0].name;
    const entry = this.statements.get(name);
    if (!entry || this.session.hasSqlPrepared(name) || splitStatements(sql)?.length !== 1) return null;
    return { name, entry };
  }

  private deallocated(name: string, entry: ClientStatement, server: ServerConnection): TagHandler {
    return (tag) => {
      if (tag !== 'DEALLOCATE') return;
      if (this.statements.get(name) === entry) this.dropStatement(name);
      server.statements.delete(entry.serverName);
    };
  }

  // Applies what a statement's CommandComplete tags confirm; `base` is the mark began()
  // gave this sending of it.
  private confirm(effects: SessionEffect[], server: ServerConnection, base: number, dropped?: StatementsBefore, held?: HeldRemovals): TagHandler {
    const done: boolean[] = [];
    return (tag) => {
      held?.onTag(tag);
      this.session.confirmed(effects, tag, base, done, held);
      if (dropped && (tag === 'DEALLOCATE ALL' || tag === 'DISCARD ALL')) {
        // PostgreSQL drops the session's protocol-level statements too: those that existed
        // when it was sent. One the client parsed behind it (before this reply) stays, for
        // the client and in what the proxy knows the server has.
        for (const [name, entry] of dropped.client) if (this.statements.get(name) === entry) this.dropStatement(name);
        for (const name of dropped.server) server.statements.delete(name);
      }
    };
  }

  // What DISCARD ALL / DEALLOCATE ALL among these effects will drop: the statements now.
  private dropsStatements(effects: SessionEffect[], server: ServerConnection): StatementsBefore | undefined {
    if (!effects.some((e) => e.kind === 'discard_all' || (e.kind === 'deallocate' && e.name === null))) return undefined;
    return { client: [...this.statements], server: server.statements.snapshot() };
  }
}

const messageHeader = (type: number, bodyLength: number): Buffer => {
  const h = Buffer.allocUnsafe(5);
  h[0] = type;
  h.writeInt32BE(bodyLength + 4, 1);
  return h;
};

const affectsSession = (sql: Buffer): boolean => mayAffectSession(sql) && classifySql(sql).length > 0;

// A Query body's text without its terminator, as bytes (never decoded: it may be 1 GB).
const queryText = (body: Buffer): Buffer => body.subarray(0, Math.max(0, body.length - 1));

const literal = (s: string): string => `'${s.replace(/'/g, "''")}'`;

// SQL that fails on the server with this message (SQLSTATE 0A000), so a refusal aborts
// the transaction and ends with the server's own ReadyForQuery.
export function raiseSql(text: string): string {
  const safe = text.replace(/\$/g, '＄');
  return `DO $pgsplice$BEGIN RAISE EXCEPTION USING ERRCODE = '${SqlState.FeatureNotSupported}', MESSAGE = ${literal(safe)}; END$pgsplice$`;
}

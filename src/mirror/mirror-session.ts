// One mirrored client's copy of its traffic toward one mirror.
//
// The client's requests are framed into units (the messages up to a Query, Sync or
// FunctionCall: one ReadyForQuery each). The primary's answers, as the client sees them,
// close units in order; a unit answered with ReadyForQuery 'I' closes a transaction.
// Only then is the transaction queued for the mirror, whole: a transaction is mirrored
// entirely or not at all, and the primary's outcome is known to compare with. Nothing
// here waits for the mirror on the client's path: the client's bytes are copied, the
// mirror connection is written without regard to its back-pressure, and every byte held
// for the mirror (gathered, queued, or sent and not yet answered) counts against the
// mirror's queue_bytes; past it, whole transactions are dropped and counted.
//
// The mirror connection is this session's own (a session on the mirror), so the
// client's SETs and named prepared statements reach it as they reach the primary.
// After a transaction is dropped the mirror may lack what it did to the session: before
// the next one, the mirror session is reset (DISCARD ALL) and given the client's
// settings and named statements again (the settings as the proxy tracks them in
// transaction mode, the statements as the client prepared them). A Bind or Describe of
// a statement the mirror session lacks all the same (its Parse was in a transaction the
// kernel's copy lost) gets the statement prepared first, as the transaction-mode pool
// prepares a statement on a server that lacks it.
import { Frontend, MAX_MESSAGE_LENGTH, TxStatus } from '../protocol/constants';
import { MessageWalker } from '../protocol/walker';
import { BodyReader, message, query } from '../protocol/messages';
import { ServerConnection, type ServerPeer, type ServerTarget } from '../pooling/server-connection';
import { log } from '../observe/log';
import { OutcomeReader, sameItems, type DivergenceLog } from './divergence';
import type { MirrorCompare } from '../config/types';

// What a session needs of its mirror (src/mirror/mirror.ts implements it): its queue
// bound, connection state and counters. Declared here so the two modules import one way.
export interface MirrorLink {
  readonly config: { compare: MirrorCompare };
  readonly sessions: Set<MirrorSession>;
  readonly divergences: DivergenceLog;
  transactions: bigint;
  dropped: bigint;
  diverged: bigint;
  lagMs: number;
  target(startupParams: Record<string, string>): ServerTarget;
  reserve(bytes: number): boolean;
  release(bytes: number): void;
  flushSoon(session: MirrorSession): void; // calls session.flush() shortly (one write per session per interval)
  mayConnect(): boolean;
  connected(): void;
  failed(reason: string): void;
}

// What a session needs of the client it mirrors.
export interface MirroredClient {
  readonly database: string;
  readonly label: string;
  // Its settings now (tracked in transaction mode: SETs read back at transaction ends),
  // as a Map that does not change afterwards (a change of the client's copies it first).
  settingsSnapshot(): ReadonlyMap<string, string>;
  // What its servers are opened with (startup settings, application_name).
  readonly mirrorStartup: Record<string, string>;
  // Its named statements as the proxy tracks them in transaction mode: name -> the Parse
  // that made it, under the client's name (null: none, or not tracked in this pool mode).
  statementsNow(): Map<string, Buffer> | null;
  statementNow(name: string): Buffer | null; // one of them

  // One of its sessions ended (the mirror was removed, or the client left): its traffic
  // stops being copied for it (on the kernel path too, once no session is left).
  mirrorEnded(session: MirrorSession): void;
}

interface Unit {
  // The client's messages, whole: each part a copy of the messages that arrived together
  // (one for a request that came in one read or ring record), not one copy per message.
  parts: Buffer[];
  bytes: number; // reserved in the mirror's queue
  lost: boolean; // did not fit: its transaction is dropped
  text: string; // the statement, for the divergence report (or the kept message's)
  // The kept Query or Parse whose text is the statement, at textAt of textPart: decoded
  // only for a report.
  textPart: Buffer | null;
  textAt: number;
  outcome: string[] | null; // the primary's answer
  statementOps: StatementOp[] | null; // its Parse/Close of named statements, applied when its transaction ends
}

type StatementOp = { set: string; parse: Buffer; sql: string } | { del: string } | { clear: true };

interface Txn {
  units: Unit[];
  bytes: number;
  closedAt: number; // when the primary finished it
  answered: string[][] | null; // the mirror's outcomes, by unit (made at its first answer)
  sent: boolean; // written to the mirror connection
  settings: ReadonlyMap<string, string>; // the client's settings when it began (for a setup before it)
  afterGap: boolean; // transactions before it were dropped: the mirror session is set up first
}


enum LinkState {
  None = 'none',
  Connecting = 'connecting',
  Ready = 'ready',
}

const NO_ITEMS: string[] = [];
const NO_OUTCOMES: string[][] = [];
const NO_KERNEL = { serverPassed(): void {} }; // mirror connections never enter the kernel path
const COPY_FOLLOWERS = new Set<number>([Frontend.CopyData, Frontend.CopyDone, Frontend.CopyFail]);

function newUnit(): Unit {
  return { parts: [], bytes: 0, lost: false, text: '', textPart: null, textAt: 0, outcome: null, statementOps: null };
}

// The statement of a unit, for the divergence report.
function unitText(u: Unit): string {
  if (u.text || !u.textPart) return u.text;
  const m = u.textPart;
  const at = u.textAt;
  return m[at] === Frontend.Query ? m.toString('utf8', at + 5, Math.max(at + 5, m.indexOf(0, at + 5))) : parseSql(m, at);
}

export class MirrorSession implements ServerPeer {
  private readonly requests = new MessageWalker(MAX_MESSAGE_LENGTH);
  private readonly answers = new MessageWalker(MAX_MESSAGE_LENGTH); // the primary's, as the client got them
  private readonly mirrorAnswers = new MessageWalker(MAX_MESSAGE_LENGTH);
  // The walkers' callbacks, made once (not a closure per chunk).
  private readonly onRequestAt = (type: number, buf: Buffer, start: number, end: number): void => this.onRequest(type, buf, start, end);
  private readonly onPrimaryAt = (type: number, buf: Buffer, start: number, end: number): void => this.onPrimaryAnswer(type, buf, start, end);
  private readonly onMirrorAt = (type: number, buf: Buffer, start: number, end: number): boolean => this.onMirrorAnswer(type, buf, start, end);
  private readonly primaryOutcome: OutcomeReader;
  private readonly mirrorOutcome: OutcomeReader;
  private open = newUnit(); // messages since the last Query/Sync/FunctionCall
  private sent: Unit[] = []; // complete units the primary has not answered yet
  private txnUnits: Unit[] = []; // answered units of the client's open transaction
  private queue: Txn[] = []; // whole transactions waiting for the mirror connection
  // Per ReadyForQuery the mirror owes, in order: the transaction whose next unit it answers,
  // or null for one of a session setup (a transaction once per unit).
  private expected: (Txn | null)[] = [];
  private link = LinkState.None;
  private conn: ServerConnection | null = null;
  private outbox: Buffer[] = []; // messages for the mirror connection, written by flush()
  private gap = false; // transactions were dropped (or a used connection lost) since the last queued one
  private used = false; // something was sent on the mirror connection: a setup resets it first
  // The client's settings when its current transaction began: what a setup before it applies.
  private startSettings: ReadonlyMap<string, string> | null = null;
  private stopped = false;
  private lost = false; // the kernel's copy of the client's streams has a hole (kernel-feed.ts)
  // When it was lost, the requests awaiting answers beyond the first: a pipelining client's
  // transactions that end in the hole, which the kernel counts as one (one release).
  private lostPipelined = 0;
  private closing = false; // the client left: finish what was sent, then close
  private overAnswered = false; // the mirror answered more than it was sent (its connection is closed)
  // The client's named statements as of its last finished transaction: the Parse that
  // made each (sent again after a resync); and as of now, for the statement texts.
  private readonly statements = new Map<string, { parse: Buffer; sql: string }>();
  private readonly latest = new Map<string, string>();
  // The named statements the mirror session has, as sent to it (setups, the client's
  // Parse and Close, and those prepared on demand).
  private readonly mirrorHas = new Set<string>();
  // The client's messages not copied yet: [runStart, runEnd) of runBuf, consecutive messages
  // of runUnit that arrived together, copied in one step when the unit closes or the chunk
  // ends; runTextAt: where in the run the unit's statement text is (-1: not in it).
  private runBuf: Buffer | null = null;
  private runStart = 0;
  private runEnd = 0;
  private runUnit: Unit | null = null;
  private runTextAt = -1;

  // What this session compares, for its life (a reload's new compare applies to new sessions).
  readonly compare: MirrorCompare;

  constructor(
    readonly mirror: MirrorLink,
    private readonly client: MirroredClient,
  ) {
    this.compare = mirror.config.compare;
    this.primaryOutcome = new OutcomeReader(this.compare);
    this.mirrorOutcome = new OutcomeReader(this.compare);
  }

  // ---- the client's side (called on the client's path: copies and counts only) ----

  // Bytes the client sent, in order, as they reached the proxy.
  clientBytes(chunk: Buffer): void {
    if (this.stopped || this.lost) return;
    try {
      this.requests.push(chunk, this.onRequestAt);
    } finally {
      this.copyRun(); // (the chunk may be a read buffer used again)
    }
  }

  // One request, its body at [start, end) of buf: kept whole (header too) for the mirror,
  // copied with the messages next to it (copyRun).
  private onRequest(type: number, buf: Buffer, start: number, end: number): void {
    if (type === Frontend.Terminate) return;
    if (!this.startSettings) this.startSettings = this.client.settingsSnapshot();
    // COPY data follows the Query that started the COPY: it belongs to that unit.
    const last = this.sent[this.sent.length - 1];
    const openEmpty = this.open.parts.length === 0 && this.runUnit !== this.open;
    const unit = COPY_FOLLOWERS.has(type) && openEmpty && last ? last : this.open;
    if (type === Frontend.Parse || type === Frontend.Close || type === Frontend.Query) this.trackStatements(type, buf, start, end, unit);
    if (!unit.lost) {
      if (this.runUnit !== unit || this.runBuf !== buf || this.runEnd !== start - 5) {
        this.copyRun();
        this.runBuf = buf;
        this.runStart = start - 5;
        this.runUnit = unit;
      }
      this.runEnd = end;
    }
    if (!unit.text && !unit.textPart && !(this.runUnit === unit && this.runTextAt >= 0)) {
      // A Query's or Parse's text is decoded when a report needs it, from the kept copy.
      if (!unit.lost && hasText(type, buf, start, end)) this.runTextAt = start - 5 - this.runStart;
      else if (type === Frontend.Query || type === Frontend.Parse || (type === Frontend.Bind && namesStatement(buf, start, end))) unit.text = this.textOf(type, buf.subarray(start, end));
    }
    if (type === Frontend.Query || type === Frontend.Sync || type === Frontend.FunctionCall) {
      this.copyRun();
      this.sent.push(this.open);
      this.open = newUnit();
    }
  }

  // Copies the run of messages gathered for a unit, in one step, if the mirror's queue has
  // room; otherwise the unit's transaction is dropped whole when it ends.
  private copyRun(): void {
    const unit = this.runUnit;
    const buf = this.runBuf;
    const textAt = this.runTextAt;
    this.runUnit = null;
    this.runBuf = null;
    this.runTextAt = -1;
    if (!unit || !buf || unit.lost) return;
    const n = this.runEnd - this.runStart;
    if (!this.mirror.reserve(n)) {
      unit.lost = true;
      this.mirror.release(unit.bytes);
      unit.parts = [];
      unit.bytes = 0;
      unit.textPart = null;
      return;
    }
    const copy = Buffer.allocUnsafe(n);
    buf.copy(copy, 0, this.runStart, this.runEnd);
    unit.parts.push(copy);
    unit.bytes += n;
    if (textAt >= 0) {
      unit.textPart = copy;
      unit.textAt = textAt;
    }
  }

  private textOf(type: number, body: Buffer): string {
    const r = new BodyReader(body);
    if (type === Frontend.Query) return r.cstring();
    if (type === Frontend.Parse) {
      r.cstring();
      return r.cstring();
    }
    if (type === Frontend.Bind) {
      r.cstring();
      const name = r.cstring();
      if (!name) return '';
      const sql = this.latest.get(name);
      if (sql !== undefined) return sql;
      const parse = this.client.statementNow(name); // prepared in a transaction whose copy was lost
      return parse ? parseSql(parse) : `(statement ${name})`;
    }
    return '';
  }

  // (body at [start, end) of buf: looked at in place, a view made only for a named statement)
  private trackStatements(type: number, buf: Buffer, start: number, end: number, unit: Unit): void {
    if (type === Frontend.Parse) {
      if (buf[start] === 0) return; // the unnamed statement
      const body = buf.subarray(start, end);
      const r = new BodyReader(body);
      const name = r.cstring();
      if (!name) return;
      const sql = r.cstring();
      this.latest.set(name, sql);
      (unit.statementOps ??= []).push({ set: name, parse: message(type, body), sql });
    } else if (type === Frontend.Close && buf[start] === 0x53 /* S */) {
      const name = new BodyReader(buf.subarray(start + 1, end)).cstring();
      this.latest.delete(name);
      (unit.statementOps ??= []).push({ del: name });
    } else if (type === Frontend.Query && mayResetStatements(buf, start)) {
      const sql = new BodyReader(buf.subarray(start, end)).cstring();
      if (RESETS_STATEMENTS.test(sql)) {
        this.latest.clear();
        (unit.statementOps ??= []).push({ clear: true });
      }
    }
  }

  // The named statements the client has after these units (applied in transaction order,
  // as each transaction is sent to the mirror or dropped).
  private applyStatementOps(units: Unit[]): void {
    for (const u of units) {
      if (!u.statementOps) continue;
      for (const op of u.statementOps) {
        if ('set' in op) this.statements.set(op.set, { parse: op.parse, sql: op.sql });
        else if ('del' in op) this.statements.delete(op.del);
        else this.statements.clear();
      }
    }
  }

  // The client's settings were read back after its transaction (transaction mode): a
  // transaction that began meanwhile and has not run yet starts from them.
  settingsLearned(): void {
    if (this.startSettings && this.txnUnits.length === 0) this.startSettings = this.client.settingsSnapshot();
  }

  // Whether requests of the client are taken and their answers from the primary not all seen.
  awaitsPrimary(): boolean {
    return !this.stopped && !this.lost && this.sent.length > 0;
  }

  // What the client was sent (the primary's answers, and the proxy's own), in order.
  primaryBytes(chunk: Buffer): void {
    if (this.stopped || this.lost) return;
    this.answers.push(chunk, this.onPrimaryAt);
  }

  private onPrimaryAnswer(type: number, buf: Buffer, start: number, end: number): void {
    const out = this.primaryOutcome.onMessage(type, buf, start, end);
    if (!out) return;
    const unit = this.sent.shift();
    if (!unit) return; // a ReadyForQuery of no request of the client's (none expected)
    unit.outcome = out.items;
    this.txnUnits.push(unit);
    if (out.status === 'I') this.transactionEnded();
  }

  private transactionEnded(): void {
    const units = this.txnUnits;
    this.txnUnits = [];
    let bytes = 0;
    let lost = false;
    for (const u of units) {
      bytes += u.bytes;
      lost ||= u.lost;
    }
    const txn: Txn = { units, bytes, closedAt: Date.now(), answered: null, sent: false, settings: this.startSettings ?? this.client.settingsSnapshot(), afterGap: false };
    this.startSettings = null;
    if (lost || (this.link === LinkState.None && !this.mirror.mayConnect())) return this.drop([txn]);
    txn.afterGap = this.gap;
    this.gap = false;
    this.queue.push(txn);
    this.pump();
  }

  // Bytes of the client's streams did not reach the proxy (the kernel path's ring was
  // full): what it gathered of its open transaction is dropped, and nothing is taken until
  // both streams are at a transaction boundary again (streamResumed).
  streamLost(): void {
    if (this.stopped || this.lost) return;
    this.lost = true;
    this.lostPipelined = Math.max(0, this.sent.length - 1);
    this.freeGathered();
    this.startSettings = null;
  }

  // Both streams start clean after a transaction boundary; `transactions` ended meanwhile,
  // none of them mirrored. The mirror session is set up again before the next one.
  streamResumed(transactions: number): void {
    if (this.stopped || !this.lost) return;
    this.lost = false;
    this.requests.reset();
    this.answers.reset();
    this.primaryOutcome.reset();
    this.mirror.dropped += BigInt(transactions + this.lostPipelined);
    this.lostPipelined = 0;
    this.gap = true;
    // Parses and Closes of the lost transactions were not seen: the client's statements
    // are what the proxy's map says it has now (the setup before the next one prepares them).
    const now = this.client.statementsNow();
    if (!now) return;
    this.statements.clear();
    this.latest.clear();
    for (const [name, parse] of now) {
      const sql = parseSql(parse);
      this.statements.set(name, { parse, sql });
      this.latest.set(name, sql);
    }
  }

  // ---- the mirror's side ----

  private pump(): void {
    if (this.stopped) return;
    if (this.link === LinkState.None) {
      if (this.queue.length && this.mirror.mayConnect()) this.connect();
      else if (this.queue.length) this.drop(this.queue.splice(0));
      return;
    }
    if (this.link !== LinkState.Ready) return; // connecting: the queue waits (bounded by queue_bytes)
    const out = this.outbox;
    const queue = this.queue;
    this.queue = [];
    for (const txn of queue) {
      if (txn.afterGap) out.push(...this.setup(this.used, txn.settings));
      this.used = true;
      for (const unit of txn.units) {
        for (const part of unit.parts) this.sendPart(part, out);
        this.expected.push(txn);
      }
      this.applyStatementOps(txn.units); // a setup after this one starts from here
      txn.sent = true;
    }
    if (out.length) this.mirror.flushSoon(this);
  }

  // Writes what pump gathered since the last flush, in one write: a write to a socket costs
  // the proxy a system call, and on a host-local mirror TCP's work for the receiving side
  // too, so transactions that end within a flush interval go together. Written without
  // waiting for drain: what is unanswered stays counted in queue_bytes.
  flush(): void {
    const out = this.outbox;
    if (!out.length) return;
    this.outbox = [];
    if (this.stopped || this.link !== LinkState.Ready || !this.conn) return;
    this.conn.write(out.length === 1 ? out[0] : Buffer.concat(out));
  }

  // A part of the client's messages toward the mirror (whole, as copied), with a Parse of
  // a named statement one uses before it when the mirror session lacks it; follows what
  // the session has. Sent as it is unless such a Parse goes in between.
  private sendPart(p: Buffer, out: Buffer[]): void {
    let from = 0;
    for (let at = 0; at + 5 <= p.length; ) {
      const end = at + 1 + p.readInt32BE(at + 1);
      const parse = this.beforeMessage(p, at, end);
      if (parse) {
        if (at > from) out.push(p.subarray(from, at));
        out.push(parse); // its ParseComplete is not compared (OutcomeReader skips it)
        from = at;
      }
      at = end;
    }
    out.push(from === 0 ? p : p.subarray(from));
  }

  // The message at [at, end) of p as the mirror session gets it: what it does to the
  // session's named statements; returns a Parse to send first when it uses one the
  // session lacks.
  private beforeMessage(p: Buffer, at: number, end: number): Buffer | null {
    const type = p[at];
    if (type === Frontend.Bind || type === Frontend.Describe || type === Frontend.Parse || type === Frontend.Close) {
      const name = statementNameOf(type, p, at, end);
      if (name === null) return null; // (not a named statement: a portal, or the unnamed statement)
      if (type === Frontend.Parse) this.mirrorHas.add(name);
      else if (type === Frontend.Close) this.mirrorHas.delete(name);
      else if (!this.mirrorHas.has(name)) {
        const parse = this.statements.get(name)?.parse ?? this.client.statementNow(name);
        if (parse) this.mirrorHas.add(name);
        return parse;
      }
    } else if (type === Frontend.Query && mayResetStatements(p, at + 5) && RESETS_STATEMENTS.test(p.toString('utf8', at + 5, Math.min(end - 1, at + 5 + 64)))) {
      this.mirrorHas.clear();
    }
    return null;
  }

  // Messages that give the mirror session the client's settings and named statements
  // (after a reset when the session was in use). Their answers are not compared.
  private setup(reset: boolean, settings: ReadonlyMap<string, string>): Buffer[] {
    const out: Buffer[] = [];
    if (reset) {
      out.push(query('DISCARD ALL'));
      this.expected.push(null);
      this.mirrorHas.clear();
    }
    const sql = settingsSql(settings);
    if (sql) {
      out.push(query(sql));
      this.expected.push(null);
    }
    if (this.statements.size) {
      for (const [name, s] of this.statements) {
        out.push(s.parse);
        this.mirrorHas.add(name);
      }
      out.push(message(Frontend.Sync, Buffer.alloc(0)));
      this.expected.push(null);
    }
    return out;
  }

  private connect(): void {
    this.link = LinkState.Connecting;
    const conn = new ServerConnection(this.mirror.target(this.client.mirrorStartup), NO_KERNEL);
    this.conn = conn;
    conn.connect().then(
      () => {
        if (this.stopped || this.conn !== conn) return conn.close('mirror session ended');
        this.mirror.connected();
        conn.link(this);
        this.link = LinkState.Ready;
        // A new session starts as the client's did (its startup settings); only after a gap
        // does it need the client's settings and statements (pump), without a reset.
        this.used = false;
        this.mirrorHas.clear();
        this.pump();
        if (this.closing) this.finish(); // the client left while this connection opened
      },
      (e: Error) => {
        if (this.conn !== conn) return;
        this.conn = null;
    this.outbox = [];
        this.link = LinkState.None;
        this.mirror.failed(e.message);
        this.drop(this.queue.splice(0));
        if (this.closing) this.finish();
      },
    );
  }

  // The mirror's answers.
  onServerData(chunk: Buffer, server: ServerConnection): void {
    if (server !== this.conn) return;
    this.overAnswered = false;
    this.mirrorAnswers.push(chunk, this.onMirrorAt);
    if (this.overAnswered) return;
    if (this.closing) this.finish();
  }

  // One message of the mirror's; false once the connection is closed for answering too much.
  private onMirrorAnswer(type: number, buf: Buffer, start: number, end: number): boolean {
    const out = this.mirrorOutcome.onMessage(type, buf, start, end);
    if (!out) return true;
    if (this.expected.length === 0) {
      this.overAnswered = true;
      this.conn!.close('mirror answered more than it was sent', false);
      return false;
    }
    const txn = this.expected.shift();
    if (!txn) return true; // (a setup's)
    const answered = (txn.answered ??= []);
    answered.push(out.items);
    if (answered.length === txn.units.length) this.mirrored(txn);
    return true;
  }

  private mirrored(txn: Txn): void {
    const m = this.mirror;
    m.release(txn.bytes);
    m.transactions++;
    m.lagMs = Date.now() - txn.closedAt;
    const answered = txn.answered ?? NO_OUTCOMES;
    const i = this.firstDifference(txn.units, answered);
    if (i < 0) return;
    const primary = txn.units.map((u) => u.outcome ?? []);
    m.diverged++;
    let text = unitText(txn.units[i]);
    for (let k = 0; !text && k < txn.units.length; k++) text = unitText(txn.units[k]);
    m.divergences.report(text, primary[i], answered[i] ?? []);
  }

  // The index of the first unit whose answers differ, or -1 (firstDifference without an
  // array of the primary's outcomes per transaction).
  private firstDifference(units: Unit[], answered: string[][]): number {
    for (let i = 0; i < units.length; i++) if (!sameItems(units[i].outcome ?? NO_ITEMS, answered[i] ?? NO_ITEMS)) return i;
    return -1;
  }

  // Whether the mirror connection's last read is still referenced after onServerData:
  // only by the framer, holding a message not complete yet (the outcome reader copies
  // what it keeps). Otherwise the connection reads into the same buffer again instead of
  // a new one per answer.
  keepsServerBytes(): boolean {
    return this.mirrorAnswers.buffered > 0;
  }

  onServerPieces(pieces: Buffer[], server: ServerConnection): void {
    for (const p of pieces) this.onServerData(p, server);
  }

  onServerReady(_status: TxStatus, _server: ServerConnection): void {
    // (answers are counted in onServerData, in stream order)
  }

  onServerParameter(): void {}

  onServerLost(server: ServerConnection, reason: string): void {
    if (server !== this.conn) return;
    this.conn = null;
    this.outbox = [];
    this.link = LinkState.None;
    if (this.used) this.gap = true; // what the client did to its session there is gone
    if (!this.stopped && !this.closing) this.mirror.failed(`connection lost: ${reason}`);
    // What was sent and not answered is unconfirmed: counted as dropped.
    const inFlight = new Set<Txn>();
    for (const t of this.expected) if (t) inFlight.add(t);
    this.expected = [];
    this.drop([...inFlight, ...this.queue.splice(0)]);
    this.mirrorAnswers.reset();
    this.mirrorOutcome.reset(); // forget a half-read answer
  }

  failWith(e: unknown): void {
    log.error(`mirror session of ${this.client.label}: ${(e as Error)?.stack ?? String(e)}`);
    this.stop('internal error');
  }

  // Transactions not mirrored: counted, their bytes freed; the mirror session is set up again first.
  private drop(txns: Txn[]): void {
    for (const t of txns) {
      if (!t.sent) this.applyStatementOps(t.units);
      this.mirror.release(t.bytes);
      this.mirror.dropped++;
    }
    if (txns.length) this.gap = true;
  }

  // ---- ends ----

  // The client left: what was sent is finished, then the mirror connection closes.
  clientClosed(): void {
    if (this.stopped || this.closing) return;
    this.closing = true;
    this.freeGathered();
    if (this.link === LinkState.Ready) this.pump();
    this.finish();
  }

  private finish(): void {
    if (this.expected.length || this.queue.length || this.link === LinkState.Connecting) return;
    this.stop('client closed');
  }

  // Ends this session now (the mirror was removed, or the client left and all is answered).
  stop(reason: string): void {
    if (this.stopped) return;
    this.stopped = true;
    this.freeGathered();
    const inFlight = new Set<Txn>();
    for (const t of this.expected) if (t) inFlight.add(t);
    this.expected = [];
    this.drop([...inFlight, ...this.queue.splice(0)]);
    const conn = this.conn;
    this.conn = null;
    this.outbox = [];
    this.link = LinkState.None;
    if (conn) conn.close(reason);
    this.mirror.sessions.delete(this);
    this.client.mirrorEnded(this);
  }

  // Frees the bytes of transactions the client had not finished.
  private freeGathered(): void {
    this.runUnit = null;
    this.runBuf = null;
    this.runTextAt = -1;
    for (const u of [this.open, ...this.sent, ...this.txnUnits]) this.mirror.release(u.bytes);
    this.open = newUnit();
    this.sent = [];
    this.txnUnits = [];
  }
}

// A Query that drops the session's named statements.
const RESETS_STATEMENTS = /^\s*(DEALLOCATE\s+(PREPARE\s+)?ALL|DISCARD\s+ALL)\s*;?\s*$/i;

// Whether a query text at buf[at...] may match RESETS_STATEMENTS: its first character
// after white space is a D (most queries are not decoded to be tested).
function mayResetStatements(buf: Buffer, at: number): boolean {
  while (at < buf.length && (buf[at] === 0x20 || (buf[at] >= 0x09 && buf[at] <= 0x0d))) at++;
  return buf[at] === 0x44 || buf[at] === 0x64;
}

// The named statement a Parse, Bind, Close or Describe message (whole, with its header, at
// [start, end) of m) is about; null for the unnamed statement, a portal, or a malformed message.
function statementNameOf(type: number, m: Buffer, start: number, end: number): string | null {
  let at = start + 5;
  if (type === Frontend.Bind) {
    at = m.indexOf(0, at) + 1; // the portal name first
    if (at === 0 || at >= end) return null;
  } else if (type === Frontend.Close || type === Frontend.Describe) {
    if (m[at] !== 0x53 /* S */) return null;
    at++;
  }
  const z = m.indexOf(0, at);
  return z > at && z < end ? m.toString('utf8', at, z) : null;
}

// Whether a Query or Parse (body) has a statement text that is not empty: what textOf
// would find in it, without decoding it.
function hasText(type: number, buf: Buffer, start: number, end: number): boolean {
  if (type === Frontend.Query) return end > start && buf[start] !== 0;
  if (type !== Frontend.Parse) return false;
  const z = buf.indexOf(0, start);
  return z >= 0 && z + 1 < end && buf[z + 1] !== 0;
}

// Whether a Bind (body at [start, end) of buf) names a statement (not the unnamed one).
function namesStatement(buf: Buffer, start: number, end: number): boolean {
  const z = buf.indexOf(0, start); // the end of the portal name
  return z >= 0 && z + 1 < end && buf[z + 1] !== 0;
}

// The query text of a Parse message (whole, with its header, at `at` of m).
function parseSql(m: Buffer, at = 0): string {
  const r = new BodyReader(m.subarray(at + 5, at + 1 + m.readInt32BE(at + 1)));
  r.cstring();
  return r.cstring();
}

// SQL that gives a mirror session the client's settings (one Query: all or nothing).
// role is set last, so that settings needing the session user's rights go first.
function settingsSql(settings: ReadonlyMap<string, string>): string | null {
  const stmts: string[] = [];
  let role: string | null = null;
  for (const [k, v] of settings) {
    if (k === 'session_authorization') continue; // the mirror's user is the configured one
    if (k === 'role') {
      role = v;
      continue;
    }
    stmts.push(`SELECT pg_catalog.set_config(${quoteLiteral(k)}, ${quoteLiteral(v)}, false)`);
  }
  if (role !== null && role !== 'none') stmts.push(`SELECT pg_catalog.set_config('role', ${quoteLiteral(role)}, false)`);
  return stmts.length ? stmts.join('; ') : null;
}

function quoteLiteral(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

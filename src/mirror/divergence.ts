// What a server answered to one request unit (the messages up to its ReadyForQuery), reduced
// to what the divergence report compares: command tags (with their row counts), success vs
// error and the SQLSTATE, and with compare: rows a hash of the rows, in the order returned.
// Message texts, notices and parameter reports are not compared: they differ between
// versions and configurations without the data differing.
import * as crypto from 'node:crypto';
import { Backend, TxStatus } from '../protocol/constants';
import { parseErrorFields } from '../protocol/messages';
import type { MirrorCompare } from '../config/types';
import { log } from '../observe/log';

export interface Outcome {
  items: string[]; // e.g. ["UPDATE 1", "ERROR 23505", "SELECT 1", "ROWS 9f3c..."]
  status: TxStatus;
}

const MAX_CACHED_TAG = 64;

export class OutcomeReader {
  private items: string[] = [];
  private lastItems: string[] = []; // the last outcome returned: returned again for the same one
  private hash: crypto.Hash | null = null;

  constructor(private readonly compare: MirrorCompare) {}

  // Reads one server message, its body at [start, end) of buf (src/protocol/walker.ts);
  // returns the unit's outcome at its ReadyForQuery.
  onMessage(type: number, buf: Buffer, start: number, end: number): Outcome | null {
    switch (type) {
      case Backend.DataRow:
        if (this.compare === 'rows') (this.hash ??= crypto.createHash('sha1')).update(buf.subarray(start, end));
        return null;
      case Backend.CommandComplete:
        this.flushRows();
        this.items.push(this.tag(buf, start, Math.max(start, end - 1)));
        return null;
      case Backend.ErrorResponse:
        this.flushRows();
        this.items.push(`ERROR ${parseErrorFields(buf.subarray(start, end)).C ?? '?'}`);
        return null;
      case Backend.EmptyQueryResponse:
        this.items.push('EMPTY');
        return null;
      case Backend.ReadyForQuery: {
        this.flushRows();
        let items = this.items;
        if (sameItems(items, this.lastItems)) {
          items = this.lastItems; // shared: outcomes are never changed once returned
          this.items.length = 0;
        } else {
          this.lastItems = items;
          this.items = [];
        }
        return { items, status: (end > start ? String.fromCharCode(buf[start]) : 'I') as TxStatus };
      }
      default:
        return null;
    }
  }

  // Forgets a half-read answer (its connection was lost).
  reset(): void {
    this.items = [];
    this.hash = null;
  }

  // A command tag: the last one's string again when the bytes are the same (most units of
  // a workload answer alike), so that a transaction kept for the mirror's answer holds no
  // string of its own.
  private lastTag = '';
  private readonly lastTagBytes = Buffer.alloc(MAX_CACHED_TAG);
  private lastTagLength = -1;
  private tag(buf: Buffer, start: number, end: number): string {
    const n = end - start;
    if (n === this.lastTagLength) {
      // (a loop: a tag is a few bytes, less than the cost of a call into Buffer.compare)
      const last = this.lastTagBytes;
      let i = 0;
      while (i < n && buf[start + i] === last[i]) i++;
      if (i === n) return this.lastTag;
    }
    this.lastTag = buf.toString('utf8', start, end);
    if (n <= MAX_CACHED_TAG) {
      buf.copy(this.lastTagBytes, 0, start, end);
      this.lastTagLength = n;
    } else this.lastTagLength = -1;
    return this.lastTag;
  }

  private flushRows(): void {
    if (!this.hash) return;
    this.items.push(`ROWS ${this.hash.digest('hex').slice(0, 16)}`);
    this.hash = null;
  }
}

export function sameItems(a: string[], b: string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

const MAX_STATEMENT = 200; // characters of a statement in the log and in SHOW MIRRORS
const LOG_WINDOW_MS = 10_000;
const LOG_PER_WINDOW = 5;

// A bounded, escaped statement text for the log.
export function statementText(sql: string): string {
  // eslint-disable-next-line no-control-regex
  const one = sql.replace(/\s+/g, ' ').trim().replace(/[\u0000-\u001f\u007f]/g, '?');
  return one.length > MAX_STATEMENT ? `${one.slice(0, MAX_STATEMENT)}...(${one.length} chars)` : one;
}

// Logs divergences of one mirror, at most LOG_PER_WINDOW lines per window; the rest are counted.
export class DivergenceLog {
  last = ''; // the most recent divergence, for SHOW MIRRORS
  private windowStart = 0;
  private inWindow = 0;
  private suppressed = 0;

  constructor(private readonly name: string) {}

  report(statement: string, primary: string[], mirror: string[]): void {
    const line = `statement: ${statementText(statement) || '(unknown)'}; primary: ${primary.join(', ') || '(nothing)'}; mirror: ${mirror.join(', ') || '(nothing)'}`;
    this.last = line;
    const now = Date.now();
    if (now - this.windowStart >= LOG_WINDOW_MS) {
      if (this.suppressed) log.warn(`mirror ${this.name}: ${this.suppressed} more divergences not logged`);
      this.windowStart = now;
      this.inWindow = 0;
      this.suppressed = 0;
    }
    if (this.inWindow++ < LOG_PER_WINDOW) log.warn(`mirror ${this.name} diverged: ${line}`);
    else this.suppressed++;
  }
}

// Named prepared statements in transaction mode. A client's statement names are its
// own; on a server each statement lives under a name derived from its text, so two
// clients with the same SQL share it and different SQL can never collide. Each server
// keeps an LRU of the statements prepared on it (max_prepared_statements).
import * as crypto from 'node:crypto';
import { ProtocolError, message } from '../protocol/messages';
import { Frontend } from '../protocol/constants';
import type { SessionEffect } from './sql-classifier';
import type { KernelName, ServerStatementObserver } from './statement-names';

export const SERVER_NAME_PREFIX = 'pgsplice_';
// Never a statement name the proxy makes (those are hex): Describe of it always fails.
export const ABSENT_STATEMENT = `${SERVER_NAME_PREFIX}absent`;

// A Parse message's body split at the statement name.
export interface ParseParts {
  name: string;
  rest: Buffer; // query text\0, parameter count, parameter types
  query: Buffer; // the query text's UTF-8 bytes (the classifier reads bytes: no string of a huge query)
}

export function parseParts(body: Buffer): ParseParts {
  const nameEnd = body.indexOf(0);
  const queryEnd = body.indexOf(0, nameEnd + 1);
  if (nameEnd < 0 || queryEnd < 0) throw new ProtocolError('invalid message format: Parse message has no NUL-terminated statement name or query string');
  return { name: body.toString('utf8', 0, nameEnd), rest: body.subarray(nameEnd + 1), query: body.subarray(nameEnd + 1, queryEnd) };
}

// The statement name a Bind refers to, and where it sits in the body.
export function bindStatement(body: Buffer): { name: string; start: number; end: number } {
  const portalEnd = body.indexOf(0);
  const end = body.indexOf(0, portalEnd + 1);
  if (portalEnd < 0 || end < 0) throw new ProtocolError('invalid message format: Bind message has no NUL-terminated portal or statement name');
  return { name: body.toString('utf8', portalEnd + 1, end), start: portalEnd + 1, end };
}

const cstr = (s: string): Buffer => Buffer.from(`${s}\0`, 'utf8');

export const parseMessage = (name: string, rest: Buffer): Buffer => message(Frontend.Parse, Buffer.concat([cstr(name), rest]));
export const bindWithStatement = (body: Buffer, at: { start: number; end: number }, name: string): Buffer =>
  message(Frontend.Bind, Buffer.concat([body.subarray(0, at.start), cstr(name), body.subarray(at.end + 1)]));
export const describeStatement = (name: string): Buffer => message(Frontend.Describe, Buffer.concat([Buffer.from('S'), cstr(name)]));
export const closeStatement = (name: string): Buffer => message(Frontend.Close, Buffer.concat([Buffer.from('S'), cstr(name)]));

// The server-side name of a statement: its text, parameter types and the search_path
// it was parsed under (a name resolves to other tables under another path).
export function serverStatementName(rest: Buffer, searchPath: string | undefined): string {
  const h = crypto.createHash('sha1');
  h.update(searchPath ?? '');
  h.update('\0');
  h.update(rest);
  return SERVER_NAME_PREFIX + h.digest('hex').slice(0, 32);
}

// One of a client's statements.
export interface ClientStatement {
  serverName: string;
  parse: Buffer; // the Parse message under serverName, to prepare it on any server
  effects: SessionEffect[]; // what executing it does to the session (usually nothing)
  // its server name is as long as the client's name (statement-names.ts), so the kernel
  // path can rewrite it in place; null: it can't (kernelMiss says why)
  kernel: KernelName | null;
  kernelMiss: 'name_too_long' | 'name_too_short' | null;
  confirmed: boolean; // PostgreSQL accepted the client's Parse (ParseComplete reached it)
}

// The statements prepared on one server, least recently used first. A name is
// `confirmed` once the server's ParseComplete for it arrived: only then is it reported to
// the observer (the kernel's map of what each server has).
export class ServerStatementCache {
  private readonly names = new Map<string, boolean>();
  private observer: ServerStatementObserver | null = null;

  // Reports every confirmed name now and each change from now on.
  observe(o: ServerStatementObserver | null): void {
    this.observer = o;
    if (o) for (const [n, ok] of this.names) if (ok) o(n, true);
  }

  // The server answered its Parse: the statement exists there.
  confirm(name: string): void {
    if (this.names.get(name) !== false) return;
    this.names.set(name, true);
    this.observer?.(name, true);
  }

  isConfirmed(name: string): boolean {
    return this.names.get(name) === true;
  }

  get size(): number {
    return this.names.size;
  }

  has(name: string): boolean {
    return this.names.has(name);
  }

  // Marks a use: the statement moves to the recent end.
  touch(name: string): void {
    const ok = this.names.get(name);
    if (ok === undefined) return;
    this.names.delete(name);
    this.names.set(name, ok);
  }

  // About to be prepared (not confirmed yet).
  add(name: string): void {
    this.delete(name);
    this.names.set(name, false);
  }

  delete(name: string): void {
    const ok = this.names.get(name);
    if (ok === undefined) return;
    this.names.delete(name);
    if (ok) this.observer?.(name, false); // before anything closes it on the server
  }

  // Names to close so that one more fits under max (never `keep`).
  evictFor(max: number, keep: string): string[] {
    const out: string[] = [];
    for (const n of this.names.keys()) {
      if (this.names.size - out.length < max) break;
      if (n !== keep) out.push(n);
    }
    for (const n of out) this.delete(n);
    return out;
  }

  clear(): void {
    for (const n of [...this.names.keys()]) this.delete(n);
  }

  // The names now, for forgetting exactly these later (DISCARD ALL's reply).
  snapshot(): string[] {
    return [...this.names.keys()];
  }
}

// Server-side names that the kernel path can write in place. A client's statement is
// prepared on a server under a name exactly as long as the client's own name, so the
// verdict program rewrites a Bind or Describe without moving a byte (ebpf/statements.h,
// docs/kernel-path.md "Named statements in the kernel"). The name of length L is
// derived from an index: one index per statement identity (SQL, parameter types,
// search_path: serverStatementName) and length, the same on every server, so a server
// either has the statement under that name or not at all.

// Longest client name the verdict copies (PGS_STMT_NAME_MAX in ebpf/pgsplice.h).
export const KERNEL_NAME_MAX = 63;
// Indexes are packed with the length in the kernel (PGS_STMT_IDX_LIMIT).
const INDEX_LIMIT = 1 << 26;

const DIGITS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

// How many names of length len there are: a digit first (no unquoted SQL identifier
// starts with one, so `PREPARE x` can never take such a name), then base-62 digits.
export function namesOfLength(len: number): number {
  return Math.min(INDEX_LIMIT, 10 * 62 ** (len - 1));
}

// The server name of length len and index idx; ebpf/statements.h pgs_stmt_name builds
// the same bytes: least significant digit first, padded with '0'.
export function serverNameFor(len: number, idx: number): string {
  let s = String.fromCharCode(0x30 + (idx % 10));
  let rest = Math.floor(idx / 10);
  for (let k = 1; k < len; k++) {
    s += DIGITS[rest % 62];
    rest = Math.floor(rest / 62);
  }
  return s;
}

export interface KernelName {
  len: number; // bytes, the client's name's length
  idx: number; // server name serverNameFor(len, idx); null idx: none left of that length
}

// Process-wide: identity + length -> index, and the next free index per length. Never
// shrinks (an index must not be reused while any server may hold it); bounded by the
// distinct statements the clients prepare.
const assigned = new Map<string, number>();
const nextIndex = new Map<number, number>();

// The kernel name of a statement for a client name, or null when the kernel can't carry
// it: too long (the verdict's bounded copy) or too short (every name of that length is
// taken: 10 of length 1, 620 of length 2...). `identity` is serverStatementName's.
export function kernelNameFor(identity: string, clientName: string): { name: KernelName; reason: null } | { name: null; reason: 'name_too_long' | 'name_too_short' } {
  const len = Buffer.byteLength(clientName, 'utf8');
  if (len > KERNEL_NAME_MAX) return { name: null, reason: 'name_too_long' };
  const key = `${len}\0${identity}`;
  let idx = assigned.get(key);
  if (idx === undefined) {
    const next = nextIndex.get(len) ?? 0;
    if (next >= namesOfLength(len)) return { name: null, reason: 'name_too_short' };
    idx = next;
    nextIndex.set(len, next + 1);
    assigned.set(key, idx);
  }
  return { name: { len, idx }, reason: null };
}

// Receives the statements PostgreSQL confirmed and those that went away, so that the
// kernel's maps hold exactly what is true (src/kernel/controller.ts fills them).
export interface ClientStatementObserver {
  // clientId: whose (as given to observe); clientName: the client's; the statement it
  // names now (confirmed by PostgreSQL), or 'gone'
  (clientId: number, clientName: string, state: { kernel: KernelName | null; kernelMiss: string | null; effects: unknown[] } | 'gone'): void;
}
export type ServerStatementObserver = (serverName: string, present: boolean) => void;

// The kernel name a server name stands for (serverNameFor's inverse), or null.
export function parseServerName(name: string): KernelName | null {
  const len = name.length;
  if (len < 1 || len > KERNEL_NAME_MAX || name.charCodeAt(0) < 0x30 || name.charCodeAt(0) > 0x39) return null;
  let idx = 0;
  for (let k = len - 1; k >= 1; k--) {
    const d = DIGITS.indexOf(name[k]);
    if (d < 0) return null;
    idx = idx * 62 + d;
  }
  idx = idx * 10 + (name.charCodeAt(0) - 0x30);
  return serverNameFor(len, idx) === name ? { len, idx } : null;
}

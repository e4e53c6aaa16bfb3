// Proxy-issued cancel keys name the process that owns the client. With several pgsplice
// processes on one port (workers, or an old and a new generation during a takeover) a
// CancelRequest lands on whichever process the kernel picks; the owner's peer id, carried
// in the key's "backend pid" half, tells that process where to forward it (PgBouncer's
// peers encode peer_id in the cancel key the same way).
import * as crypto from 'node:crypto';

// Bits 16..29 of the pid half: the peer id (1..16383); bits 0..15: random. 0 = no peers.
export const MAX_PEER_ID = 16383;
const PEER_SHIFT = 16;

let localPeerId = 0;

// Set once at start-up, before any client connects.
export function setLocalPeerId(id: number): void {
  if (!Number.isInteger(id) || id < 0 || id > MAX_PEER_ID) throw new Error(`peer id ${id} out of range 0..${MAX_PEER_ID}`);
  localPeerId = id;
}

export function getLocalPeerId(): number {
  return localPeerId;
}

// The pid half of a new client's cancel key (always > 0, as a PostgreSQL backend pid).
export function newCancelPid(): number {
  if (localPeerId === 0) return crypto.randomInt(1, 0x7fffffff);
  return (localPeerId << PEER_SHIFT) | crypto.randomInt(0, 1 << PEER_SHIFT);
}

// The peer id a cancel key's pid half names (0 when issued without peers).
export function peerOfCancelPid(pid: number): number {
  return (pid >>> PEER_SHIFT) & MAX_PEER_ID;
}

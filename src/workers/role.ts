// Which part this process plays: the only process (workers: 1), the primary that forks
// workers, or worker i of n. The primary passes the worker's index and peer id in the
// environment of the process it forks.
import * as os from 'node:os';
import type { Config } from '../config/types';

export interface WorkerRole {
  index: number; // 1..count
  count: number;
  peerId: number;
}

const ENV_INDEX = 'PGSPLICE_WORKER_INDEX';
const ENV_COUNT = 'PGSPLICE_WORKER_COUNT';
const ENV_PEER = 'PGSPLICE_WORKER_PEER_ID';

export function workerCount(config: Config): number {
  return config.workers === 'auto' ? Math.max(1, os.availableParallelism()) : config.workers;
}

// This process's worker role, or null when it is not a forked worker.
export function workerRole(): WorkerRole | null {
  const index = Number(process.env[ENV_INDEX]);
  const count = Number(process.env[ENV_COUNT]);
  const peerId = Number(process.env[ENV_PEER]);
  if (!Number.isInteger(index) || index < 1 || !Number.isInteger(count) || count < index) return null;
  return { index, count, peerId: Number.isInteger(peerId) ? peerId : 0 };
}

export function workerEnv(role: WorkerRole): NodeJS.ProcessEnv {
  return { ...process.env, [ENV_INDEX]: String(role.index), [ENV_COUNT]: String(role.count), [ENV_PEER]: String(role.peerId) };
}

// Whether this process's listeners share the port with other processes (SO_REUSEPORT).
export function sharesPort(config: Config): boolean {
  return config.so_reuseport || workerRole() !== null;
}

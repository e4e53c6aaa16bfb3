// Each worker owns its pools and their server connections (its own kernel maps too: a
// socket of one process cannot be in another process's sockhash without passing the fd),
// so the limits on server connections are split between the workers: N workers open at
// most what one process would. Client-side limits (max_client_conn) stay per worker,
// since the kernel spreads clients over the workers unevenly.
import type { Config, DatabaseConfig, UserConfig } from '../config/types';

// A limit of at least 1 split n ways (each worker keeps at least 1); 0 ("none") stays 0.
const split = (v: number, n: number): number => (v <= 0 ? v : Math.max(1, Math.floor(v / n)));
// A minimum split n ways, rounded down (0 allowed).
const splitMin = (v: number, n: number): number => Math.floor(v / n);

type Rule = (v: number, n: number) => number;

// Which limits are split, and how, where each can be set: a database, a user, the top level.
const DATABASE_SHARE: Partial<Record<keyof DatabaseConfig, Rule>> = {
  pool_size: split, min_pool_size: splitMin, reserve_pool_size: splitMin, max_db_connections: split,
};
const USER_SHARE: Partial<Record<keyof UserConfig, Rule>> = { pool_size: split, max_user_connections: split };
const TOP_SHARE: Partial<Record<keyof Config, Rule>> = {
  default_pool_size: split, min_pool_size: splitMin, reserve_pool_size: splitMin, max_db_connections: split, max_user_connections: split,
};

// A copy of o with each limit that is set split n ways by its rule.
function shareOf<T extends object>(o: T, rules: Partial<Record<keyof T, Rule>>, n: number): T {
  const out = { ...o } as Record<string, unknown>;
  for (const [key, rule] of Object.entries(rules) as Array<[string, Rule]>) {
    const v = out[key];
    if (typeof v === 'number') out[key] = rule(v, n);
  }
  return out as T;
}

export function workerShare(config: Config, workers: number): Config {
  if (workers <= 1) return config;
  const databases = new Map<string, DatabaseConfig>();
  for (const [name, db] of config.databases) databases.set(name, shareOf(db, DATABASE_SHARE, workers));
  const users = new Map<string, UserConfig>();
  for (const [name, u] of config.users) users.set(name, shareOf(u, USER_SHARE, workers));
  return { ...shareOf(config, TOP_SHARE, workers), databases, users };
}

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

export function workerShare(config: Config, workers: number): Config {
  if (workers <= 1) return config;
  const databases = new Map<string, DatabaseConfig>();
  for (const [name, db] of config.databases) {
    databases.set(name, {
      ...db,
      ...(db.pool_size !== undefined ? { pool_size: split(db.pool_size, workers) } : {}),
      ...(db.min_pool_size !== undefined ? { min_pool_size: splitMin(db.min_pool_size, workers) } : {}),
      ...(db.reserve_pool_size !== undefined ? { reserve_pool_size: splitMin(db.reserve_pool_size, workers) } : {}),
      ...(db.max_db_connections !== undefined ? { max_db_connections: split(db.max_db_connections, workers) } : {}),
    });
  }
  const users = new Map<string, UserConfig>();
  for (const [name, u] of config.users) {
    users.set(name, {
      ...u,
      ...(u.pool_size !== undefined ? { pool_size: split(u.pool_size, workers) } : {}),
      ...(u.max_user_connections !== undefined ? { max_user_connections: split(u.max_user_connections, workers) } : {}),
    });
  }
  return {
    ...config,
    databases,
    users,
    default_pool_size: split(config.default_pool_size, workers),
    min_pool_size: splitMin(config.min_pool_size, workers),
    reserve_pool_size: splitMin(config.reserve_pool_size, workers),
    max_db_connections: split(config.max_db_connections, workers),
    max_user_connections: split(config.max_user_connections, workers),
  };
}

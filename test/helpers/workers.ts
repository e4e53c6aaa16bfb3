// Helpers for tests of processes sharing a port (workers, takeover): which process an
// admin-console connection reached (the NOTICE each SHOW carries), and pgbench's summary.
import { Client } from 'pg';
import { APP_PASSWORD, APP_USER, type Endpoint } from './cluster';

export interface ShowAnswer {
  peer: number; // the peer id the answering process named
  pid: number;
  rows: Record<string, unknown>[];
}

// Runs one SHOW on a fresh admin-console connection (user app must be in admin_users).
export async function showOnce(ep: Endpoint, what: string): Promise<ShowAnswer> {
  const c = new Client({ host: ep.host, port: ep.port, user: APP_USER, password: APP_PASSWORD, database: 'pgsplice', connectionTimeoutMillis: 10000 });
  c.on('error', () => undefined);
  let notice = '';
  c.on('notice', (n) => (notice += n.message ?? ''));
  await c.connect();
  try {
    const r = await c.query(`SHOW ${what}`);
    const m = /peer_id (\d+), pid (\d+)/.exec(notice);
    if (!m) throw new Error(`SHOW ${what} carried no peer notice (${JSON.stringify(notice)})`);
    return { peer: Number(m[1]), pid: Number(m[2]), rows: r.rows };
  } finally {
    await c.end().catch(() => undefined);
  }
}

// pgbench's summary: processed and failed transaction counts.
export function pgbenchCounts(out: string): { processed: number; failed: number } {
  const p = /number of transactions actually processed: (\d+)/.exec(out);
  const f = /number of failed transactions: (\d+)/.exec(out);
  return { processed: p ? Number(p[1]) : -1, failed: f ? Number(f[1]) : 0 };
}

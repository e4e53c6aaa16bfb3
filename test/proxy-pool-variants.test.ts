// Clients of one (database, user) that send different startup settings (PGDATESTYLE,
// PGOPTIONS -c ...) are served by variant pools whose servers are opened with those settings,
// but pool_size is the pair's budget (as PgBouncer's): together they never hold more than
// pool_size servers, every client is served, and RESET returns to each client's own startup
// value. SHOW POOLS and the Prometheus endpoint show one row / series per (database, user).
// Past max_pool_variants, a client's settings are SET on the plain pool's servers instead.
import t from 'tap';
import { Client } from 'pg';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, type ProxyHandle } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, freePort, waitUntil, run, libpqEnv, type PgTestClient } from './helpers/cluster';

async function adminPools(proxy: ProxyHandle): Promise<Array<Record<string, string>>> {
  const r = await run('psql', ['-X', '-A', '-F', '\t', '-P', 'footer=off', '-c', 'SHOW POOLS'], { env: libpqEnv(proxy, 'pgsplice') });
  if (r.code !== 0) throw new Error(`SHOW POOLS: ${r.stderr}`);
  const [head, ...rows] = r.stdout.trim().split('\n').map((l) => l.split('\t'));
  return rows.map((row) => Object.fromEntries(head.map((h, i) => [h, row[i]])));
}

const show = async (pg: PgTestClient, name: string): Promise<string> => Object.values((await pg.query(`SHOW ${name}`)).rows[0])[0] as string;

t.test('pool_size is shared by startup-settings variants', async (t) => {
  const c = await startCluster(t);
  // Samples servers from a direct connection (not a blocking psql, which would stall the test's clients).
  const direct = new Client({ host: '127.0.0.1', port: c.pg.port, user: c.user, password: c.password, database: c.db });
  await direct.connect();
  t.teardown(() => direct.end());
  const servers = async (): Promise<number> =>
    Number((await direct.query(`SELECT count(*) AS n FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend' AND pid <> pg_backend_pid()`)).rows[0].n);

  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;
    t.test(`variants of one (database, user) share pool_size 2 ${B}`, async (t) => {
      await direct.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app' AND pid <> pg_backend_pid()`);
      await waitUntil(async () => (await servers()) === 0, 10000, 'no server of app left');
      const mport = await freePort();
      const proxy = await startProxy(t, await proxyConfig(c, {
        bypass, default_pool_size: 2, query_wait_timeout: 60, server_idle_timeout: 600, admin_users: ['app'],
        max_pool_variants: 2, metrics: { host: '127.0.0.1', port: mport },
      }));
      // Three startup variants: none (psql-like), DateStyle (a JDBC-like driver), PGOPTIONS -c.
      const variants: Array<{ options?: string; setting: string; want: string }> = [
        { setting: 'work_mem', want: '4MB' },
        { options: '-c DateStyle=SQL,DMY', setting: 'DateStyle', want: 'SQL, DMY' },
        { options: '-c work_mem=3MB', setting: 'work_mem', want: '3MB' },
      ];
      const clients = await Promise.all(variants.flatMap((v) => [0, 1].map(() => pgClient(t, proxy, v.options ? { options: v.options } : {}))));
      let peak = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          peak = Math.max(peak, await servers());
          await new Promise((r) => setTimeout(r, 20));
        }
      })();
      const rounds = 4;
      const answers = await Promise.all(clients.map(async (pg, i) => {
        const v = variants[Math.floor(i / 2)];
        const seen: string[] = [];
        for (let k = 0; k < rounds; k++) {
          await pg.query('BEGIN');
          await pg.query('SELECT pg_sleep(0.05)');
          await pg.query('COMMIT');
          await pg.query(v.setting === 'DateStyle' ? 'SET DateStyle = ISO' : `SET work_mem = '9MB'`);
          await pg.query(`RESET ${v.setting}`);
          seen.push(await show(pg, v.setting));
        }
        return seen;
      }));
      sampling = false;
      await sampler;
      peak = Math.max(peak, await servers());
      t.ok(peak <= 2, `at most pool_size servers for the pair over its variants (peak ${peak})`);
      t.ok(peak >= 1, `servers were opened (peak ${peak})`);
      answers.forEach((seen, i) => {
        const v = variants[Math.floor(i / 2)];
        t.same(seen, Array(rounds).fill(v.want), `client ${i} (${v.options ?? 'no options'}): every round served, RESET ${v.setting} gives ${v.want}`);
      });

      const pools = (await adminPools(proxy)).filter((p) => p.database === 'app' && p.user === 'app');
      t.equal(pools.length, 1, 'SHOW POOLS: one row for (app, app)');
      t.equal(pools[0].variants, '2', 'SHOW POOLS: it counts two startup variants');
      t.equal(Number(pools[0].cl_active) + Number(pools[0].cl_waiting), clients.length, 'SHOW POOLS: the row sums the clients of all variants');
      t.ok(Number(pools[0].sv_active) + Number(pools[0].sv_idle) + Number(pools[0].sv_used) <= 2, 'SHOW POOLS: at most two servers');

      const text = await (await fetch(`http://127.0.0.1:${mport}/metrics`)).text();
      const series = text.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.slice(0, l.lastIndexOf(' ')));
      const dup = series.filter((s, i) => series.indexOf(s) !== i);
      t.same(dup, [], 'Prometheus: no duplicate series');
      const poolServers = text.split('\n').filter((l) => l.startsWith('pgsplice_pool_servers{') && /database="app"/.test(l) && /user="app"/.test(l));
      const total = poolServers.reduce((n, l) => n + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
      t.ok(poolServers.length > 0 && total <= 2, `Prometheus: pgsplice_pool_servers for (app, app) sums to at most 2 (${total})`);
      const clientsActive = text.split('\n').find((l) => l.startsWith('pgsplice_pool_clients{') && /state="active"/.test(l) && /database="app"/.test(l));
      t.ok(clientsActive && clientsActive.endsWith(` ${clients.length}`), `Prometheus: all clients counted in one series (${clientsActive})`);

      // A third startup variant is past max_pool_variants 2: its setting is SET on the plain
      // pool's servers, so it still sees it, and RESET returns to the server's default.
      const extra = await pgClient(t, proxy, { options: '-c work_mem=5MB' });
      t.equal(await show(extra, 'work_mem'), '5MB', 'past max_pool_variants the startup setting still applies');
      await extra.query('RESET work_mem');
      t.equal(await show(extra, 'work_mem'), '4MB', 'RESET then returns to the server default (documented)');
      t.equal((await adminPools(proxy)).find((p) => p.database === 'app')?.variants, '2', 'no third variant pool');
      t.match(proxy.logs(), /max_pool_variants \(2\) reached/, 'the fallback is logged');
      t.ok((await servers()) <= 2, 'still at most two servers');
      for (const pg of [...clients, extra]) t.same(pg.errors, [], 'no client saw a connection error');
    });
  }
});

// server_login_retry: after a failed server login the pool waits this long before it
// tries again, and meanwhile requests get the login error at once (PgBouncer's
// fast-fail), instead of the proxy reconnecting hundreds of times a second. The "server"
// here is a TCP listener that accepts and closes at once; its accepts are the proxy's
// connect attempts. Clients hammer the down database, and min_pool_size asks for servers
// of its own; the attempts stay bounded by the retry interval. Both data paths.
import t from 'tap';
import * as net from 'node:net';
import { Client } from 'pg';
import { startProxy } from './helpers/proxy';
import { startCluster, sleep, freePort } from './helpers/cluster';
import { BYPASS_MODES } from './helpers/modes';
import { kernelConfig } from './helpers/kernel';

const RETRY = 1; // s
const POOL = 4;
const MIN = 2;

t.test('server_login_retry', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    t.test(`connect attempts to a down database are bounded [bypass=${bypass}]`, async (t) => {
      let accepts = 0;
      const down = net.createServer((s) => {
        accepts++;
        s.destroy();
      });
      const downPort = await freePort();
      await new Promise<void>((r) => down.listen(downPort, '127.0.0.1', () => r()));
      t.teardown(() => down.close());
      const cfg = await kernelConfig(c, bypass, {
        default_pool_size: POOL,
        server_login_retry: RETRY,
        databases: {
          app: { host: '127.0.0.1', port: c.pg.port, dbname: 'app' },
          down: { host: '127.0.0.1', port: downPort, dbname: 'app', min_pool_size: MIN },
        },
      });
      const proxy = await startProxy(t, cfg, { logLevel: 'info' });

      // 4 clients connect to the down database in a loop for 5 s.
      const SECONDS = 5;
      const until = Date.now() + SECONDS * 1000;
      const codes = new Map<string, number>();
      let attempts = 0;
      let slowest = 0;
      const loop = async () => {
        while (Date.now() < until) {
          const cl = new Client({ host: '127.0.0.1', port: proxy.port, user: 'app', password: 'app-pw', database: 'down' });
          cl.on('error', () => undefined);
          const started = Date.now();
          try {
            await cl.connect();
            codes.set('connected', (codes.get('connected') ?? 0) + 1);
            await cl.end();
          } catch (e) {
            const code = (e as { code?: string }).code ?? 'none';
            codes.set(code, (codes.get(code) ?? 0) + 1);
          }
          slowest = Math.max(slowest, Date.now() - started);
          attempts++;
          await sleep(5);
        }
      };
      const acceptsBefore = accepts;
      await Promise.all([loop(), loop(), loop(), loop()]);
      const during = accepts - acceptsBefore;
      t.comment(`[bypass=${bypass}] ${attempts} client logins in ${SECONDS}s -> ${during} server connect attempts (${JSON.stringify([...codes])}, slowest ${slowest} ms)`);
      t.ok(attempts > 20, `clients kept trying (${attempts})`);
      t.notOk(codes.has('connected'), 'no client logged in to the down database');
      t.ok((codes.get('08006') ?? 0) > 0, 'clients get 08006 with the login error');
      // One attempt opens at most the pool size at once, one attempt per RETRY seconds.
      const bound = (SECONDS / RETRY + 2) * POOL;
      t.ok(during <= bound, `${during} connect attempts in ${SECONDS}s, at most ${bound} (${(during / SECONDS).toFixed(1)}/s)`);
      t.ok(slowest < 5000, `clients are answered at once, not after a wait (${slowest} ms)`);

      // No clients: min_pool_size alone retries, at most once per RETRY.
      const quietFrom = accepts;
      await sleep(4000);
      const quiet = accepts - quietFrom;
      t.ok(quiet >= 1, `min_pool_size still retries (${quiet} attempts in 4 s)`);
      t.ok(quiet <= (4 / RETRY + 1) * MIN, `and at most ${(4 / RETRY + 1) * MIN} in 4 s (${quiet})`);

      // The healthy database through the same proxy is unaffected.
      const ok = new Client({ host: '127.0.0.1', port: proxy.port, user: 'app', password: 'app-pw', database: 'app' });
      await ok.connect();
      t.same((await ok.query('SELECT 1 AS one')).rows, [{ one: 1 }], 'the app database works');
      await ok.end();
      t.notOk(proxy.exited(), 'the proxy is still running');
    });
  }
});

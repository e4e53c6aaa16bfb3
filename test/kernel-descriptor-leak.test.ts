// Every socket has one owner that destroys it, on every exit path: 100 clients whose
// server connection is lost (each sends a message type PostgreSQL does not know; it
// answers FATAL 08P01 and closes) leave the proxy with the descriptors it had before,
// nothing in SHOW CLIENTS / SHOW SERVERS but what is alive, and each client gets the
// server's FATAL once, not also a second FATAL of the proxy's own. Both data paths.
import t from 'tap';
import * as fs from 'node:fs';
import { startProxy } from './helpers/proxy';
import { startCluster, waitUntil, sleep, backendCount } from './helpers/cluster';
import { login, message, parseFields, simpleQuery } from './helpers/pgwire';
import { BYPASS_MODES } from './helpers/modes';
import { kernelConfig, adminRows, probePool } from './helpers/kernel';

const LOST = 100;
const POOL = 4;

const fdCount = (pid: number): number => fs.readdirSync(`/proc/${pid}/fd`).length;

t.test('descriptors after lost servers', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    t.test(`${LOST} clients whose server answers FATAL and closes [bypass=${bypass}]`, async (t) => {
      const proxy = await startProxy(t, await kernelConfig(c, bypass, { default_pool_size: POOL }), { logLevel: 'info' });
      const pid = proxy.proc.pid!;
      // Warm up: the pool's servers exist, the admin console has been used once.
      t.equal((await probePool(proxy, POOL)).pids, POOL, 'pool warmed up');
      await adminRows(proxy, 'SHOW SERVERS');
      await sleep(300);
      const before = fdCount(pid);
      let fatals = 0;
      let doubled = 0;
      const codes = new Set<string>();
      for (let i = 0; i < LOST; i++) {
        const s = await login(proxy.port, { user: 'app', password: 'app-pw' });
        if (i % 2 === 0) await simpleQuery(s.conn, 'SELECT 1'); // half of them have been in the kernel path
        s.conn.write(message('y', Buffer.alloc(0))); // no such frontend message type
        const { msgs, closed } = await s.conn.readAllUntilClose(10000);
        const errors = msgs.filter((m) => m.type === 'E').map((m) => parseFields(m.body));
        if (closed && errors.length >= 1) fatals++;
        if (errors.length > 1) doubled++;
        for (const e of errors) codes.add(`${e.S} ${e.C}`);
        s.conn.destroy();
      }
      t.equal(fatals, LOST, `every client got an error and a closed connection (${[...codes].join(', ')})`);
      t.equal(doubled, 0, 'none got a second FATAL after the server\'s');
      t.ok(codes.has('FATAL 08P01'), 'the server\'s own FATAL 08P01 reaches the client');
      // The proxy closes what it holds within its own grace periods (1 s socket destroy).
      let after = 0;
      const settled = await waitUntil(() => (after = fdCount(pid)) <= before + 2, 15000, 'descriptors back', 250).then(() => true, () => false);
      t.ok(settled, `descriptors: ${before} before, ${after} after ${LOST} lost servers`);
      t.comment(`[bypass=${bypass}] fds before ${before}, after ${after}`);
      const clients = (await adminRows(proxy, 'SHOW CLIENTS')).filter((r) => r.database === 'app');
      t.equal(clients.length, 0, 'SHOW CLIENTS lists no app client');
      const servers = (await adminRows(proxy, 'SHOW SERVERS')).filter((r) => r.database === 'app');
      t.ok(servers.length <= POOL, `SHOW SERVERS lists at most the pool (${servers.length})`);
      t.ok(backendCount(c, 'app') <= POOL, `PostgreSQL has at most ${POOL} app backends (${backendCount(c, 'app')})`);
      t.equal((await probePool(proxy, POOL)).pids, POOL, 'all servers usable at once afterwards');
      // With the pool full again, as when `before` was taken.
      await sleep(1500);
      const refilled = fdCount(pid);
      t.ok(refilled <= before + 2, `descriptors with the pool refilled: ${refilled} (before: ${before})`);
      t.notOk(proxy.exited(), 'the proxy is still running');
    });
  }
});

// bypass: auto per pool, through the proxy: a pool whose transactions the kernel punts
// (session-state SQL in every transaction) is served in user space and SHOW BYPASS says
// why; when its traffic changes, the next probe brings it back to the kernel path. A pool
// whose requests mostly wait for a server in user space goes there too.
// bypass: on keeps the kernel path whatever the traffic. (bypass: off has no kernel path
// to switch: covered by every other kernel-*.test.ts.) Short windows through
// PGSPLICE_BYPASS_AUTO_TIMING (2 s windows, 8 transactions, probe after 8 s).
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, run, libpqEnv, waitUntil, Cluster } from './helpers/cluster';
import { kernelConfig, showBypass, pgbenchCounts } from './helpers/kernel';

process.env.PGSPLICE_BYPASS_AUTO_TIMING = '2000,8,8000';

const poolRow = async (proxy: ProxyHandle): Promise<string> => (await showBypass(proxy))['pool app@app'] ?? '';

t.test('bypass: auto serves a mostly punted pool in user space, and returns', async (t) => {
  const c: Cluster = await startCluster(t);
  c.sql(`CREATE TABLE ba (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); ALTER TABLE ba OWNER TO app;
         INSERT INTO ba SELECT g FROM generate_series(1, 100) g;`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-ba-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const punted = path.join(dir, 'punted.sql');
  fs.writeFileSync(punted, "\\set id random(1, 100)\nBEGIN;\nSET LOCAL statement_timeout = '5s';\nSELECT v FROM ba WHERE id = :id;\nCOMMIT;\n");
  const plain = path.join(dir, 'plain.sql');
  fs.writeFileSync(plain, '\\set id random(1, 100)\nSELECT v FROM ba WHERE id = :id;\n');
  // Each transaction holds its server 5 ms: with 16 clients on 2 servers nearly every request
  // finds none idle, however fast the machine (a plain SELECT did not, once the kernel held
  // released servers for user space's waiters).
  const waits = path.join(dir, 'waits.sql');
  fs.writeFileSync(waits, '\\set id random(1, 100)\nSELECT pg_sleep(0.005), v FROM ba WHERE id = :id;\n');
  // Plain traffic runs as many clients as the pool has servers, so that no request waits
  // for one in user space (a pool whose requests mostly wait goes to user space too: below).
  const bench = async (proxy: ProxyHandle, script: string, secs: number) => {
    const clients = script === plain ? '2' : '8';
    const r = await run('pgbench', ['-n', '-c', clients, '-j', '2', '-T', String(secs), '-f', script], { env: libpqEnv(proxy), timeoutMs: 120_000 });
    const n = pgbenchCounts(r.stdout);
    t.equal(n.failed, 0, `pgbench ${path.basename(script)}: 0 failed (${n.processed} processed)`);
    return n;
  };
  // Runs the script in rounds until the pool's SHOW BYPASS row matches re.
  const until = async (proxy: ProxyHandle, script: string, re: RegExp, what: string) => {
    let row = '';
    await waitUntil(async () => {
      await bench(proxy, script, 3);
      row = await poolRow(proxy);
      return re.test(row);
    }, 90_000, what, 0).catch((e: Error) => {
      throw new Error(`${e.message}; SHOW BYPASS pool row: ${row}`);
    });
    return row;
  };

  t.test('bypass: auto', async (t) => {
    const proxy = await startProxy(t, await kernelConfig(c, 'auto', { default_pool_size: 2 }), { startTimeoutMs: 60_000 });
    const toUser = await until(proxy, punted, /^user: /, 'the pool served in user space');
    t.match(toUser, /the kernel carried [\d.]+% of \d+ transactions .*\(< 50%\): served in user space, next probe in/, `reason given: ${toUser}`);
    const b = await showBypass(proxy);
    const tx = Number(b.kernel_transactions);
    await bench(proxy, plain, 1);
    const still = await showBypass(proxy);
    // (unless the probe started meanwhile on a slow machine: then the row says so)
    if (/^user: /.test(still['pool app@app'])) t.equal(Number(still.kernel_transactions), tx, 'in user space the kernel carries nothing of the pool, even plain traffic');
    else t.match(still['pool app@app'], /^kernel \(probe\): probing/, `probing already: ${still['pool app@app']}`);
    const back = await until(proxy, plain, /^kernel: the kernel carried/, 'the pool back on the kernel path');
    t.pass(`back after a probe: ${back}`);
    const before = Number((await showBypass(proxy)).kernel_transactions);
    await bench(proxy, plain, 2);
    t.ok(Number((await showBypass(proxy)).kernel_transactions) > before, 'the kernel carries the pool again');
  });

  t.test('bypass: auto serves a pool whose requests mostly wait for a server in user space', async (t) => {
    // 16 clients on a pool of 2: nearly every request finds no idle server, waits in user
    // space and is bound in the kernel from there, costing both paths.
    const proxy = await startProxy(t, await kernelConfig(c, 'auto', { default_pool_size: 2 }), { startTimeoutMs: 60_000 });
    let row = '';
    await waitUntil(async () => {
      const r = await run('pgbench', ['-n', '-c', '16', '-j', '1', '-T', '3', '-f', waits], { env: libpqEnv(proxy), timeoutMs: 120_000 });
      t.equal(pgbenchCounts(r.stdout).failed, 0, 'pgbench: 0 failed');
      row = await poolRow(proxy);
      return /^user: /.test(row);
    }, 90_000, 'the waiting pool served in user space', 0).catch((e: Error) => {
      throw new Error(`${e.message}; SHOW BYPASS pool row: ${row}`);
    });
    t.match(row, /\(< 50%\): served in user space/, `reason given: ${row}`);
  });

  t.test('bypass: on keeps the kernel path', async (t) => {
    const proxy = await startProxy(t, await kernelConfig(c, 'on', { default_pool_size: 2 }), { startTimeoutMs: 60_000 });
    await bench(proxy, punted, 3);
    t.equal(await poolRow(proxy), 'kernel: bypass: on', 'SHOW BYPASS: forced by bypass: on');
  });
});

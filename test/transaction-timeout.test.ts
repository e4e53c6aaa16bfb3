// transaction_timeout (PgBouncer's key) on both data paths: a transaction that holds its
// server longer than the timeout is ended as PgBouncer ends it (FATAL 08P01 "transaction
// timeout", the client disconnected, its server connection closed, a running query
// cancelled first), whether it keeps sending queries or waits on one long query. Short
// transactions, and a client idle between transactions for longer than the timeout, are
// untouched. On the kernel path the proxy sees none of these bytes: the age comes from the
// start time the verdict records per client.
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import { startCluster, pgClient, withTimeout, sleep, waitUntil, backendCount, type PgTestClient } from './helpers/cluster';
import { adminRows, kernelConfig } from './helpers/kernel';

type PgError = Error & { code?: string; severity?: string };
const TIMEOUT_S = 3;
// node-postgres keeps its socket here (not in its typings).
const streamOf = (client: PgTestClient) => (client as unknown as { connection: { stream: { localPort: number; destroyed: boolean } } }).connection.stream;

t.test('transaction_timeout', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;

    t.test(`a long transaction is ended with 08P01 and its server closed; others run on ${B}`, async (t) => {
      const proxy = await startProxy(t, await kernelConfig(c, bypass, { default_pool_size: 4, transaction_timeout: TIMEOUT_S }));
      const alive = (pid: number) => backendCount(c, 'app', `pid = ${pid}`) === 1;

      // Short transactions all along: never hit.
      const short = await pgClient(t, proxy);
      let shortDone = 0;
      let shortErrors = 0;
      let stop = false;
      const shortLoop = (async () => {
        while (!stop) {
          try {
            await short.query('BEGIN');
            await short.query('SELECT 1');
            await short.query('COMMIT');
            shortDone++;
          } catch {
            shortErrors++;
          }
          await sleep(150);
        }
      })();

      // Idle between transactions for longer than the timeout: not a transaction.
      const between = await pgClient(t, proxy);
      await between.query('SELECT 1');

      // A transaction that stays busy (a query every 250 ms) but lasts too long.
      const busyTx = await pgClient(t, proxy);
      if (bypass === 'on') {
        // Idle in the kernel first, so that its BEGIN is bound there (on a loaded machine
        // the hand-over after login can lag the first queries).
        const port = streamOf(busyTx).localPort;
        await waitUntil(async () => {
          await busyTx.query('SELECT 1');
          return (await adminRows(proxy, 'SHOW CLIENTS')).find((r) => Number(r.port) === port)?.path === 'kernel';
        }, 20_000, 'the client idle on the kernel path', 250);
      }
      await busyTx.query('BEGIN');
      const busyPid = Number((await busyTx.query('SELECT pg_backend_pid() AS p')).rows[0].p);
      const started = Date.now();
      let sawKernel = false;
      let busyError: PgError | undefined;
      while (!busyError && Date.now() - started < 30_000) {
        try {
          await busyTx.query('SELECT 1');
        } catch (e) {
          // The error arrives between two queries (then node-postgres emits it as an
          // 'error' event and refuses the next query) or as the answer to one.
          busyError = (busyTx.errors[0] ?? e) as PgError;
          break;
        }
        if (bypass === 'on' && !sawKernel) {
          const port = streamOf(busyTx).localPort;
          const row = (await adminRows(proxy, 'SHOW CLIENTS')).find((r) => Number(r.port) === port);
          sawKernel = row?.path === 'kernel';
        }
        await sleep(250);
      }
      const busyAfter = (Date.now() - started) / 1000;
      t.equal(busyError?.code, '08P01', `busy transaction: 08P01 after ${busyAfter.toFixed(1)} s (${busyError?.message})`);
      t.equal(busyError?.message, 'transaction timeout', 'PgBouncer\'s message');
      t.equal(busyError?.severity, 'FATAL', 'FATAL: the connection ends');
      t.ok(busyAfter >= TIMEOUT_S - 0.5, `not before the timeout (${busyAfter.toFixed(1)} s >= ${TIMEOUT_S} s)`);
      if (bypass === 'on') t.ok(sawKernel, 'that transaction was carried by the kernel (SHOW CLIENTS path=kernel)');
      await waitUntil(() => streamOf(busyTx).destroyed, 5000, 'busy client disconnected');
      t.pass('the client was disconnected');
      await waitUntil(() => !alive(busyPid), 10_000, `server ${busyPid} closed`);
      t.pass(`its server connection (backend ${busyPid}) was closed, not pooled`);

      // A transaction waiting on one long query: the query is cancelled and the server closed.
      const sleeper = await pgClient(t, proxy);
      await sleeper.query('BEGIN');
      const sleepPid = Number((await sleeper.query('SELECT pg_backend_pid() AS p')).rows[0].p);
      const t0 = Date.now();
      const e = await withTimeout(sleeper.query('SELECT pg_sleep(60)').then(() => undefined, (x) => x as PgError), 30_000, 'sleeping transaction ended');
      t.equal(e?.code, '08P01', `transaction in a long query: 08P01 after ${((Date.now() - t0) / 1000).toFixed(1)} s (${e?.message})`);
      await waitUntil(() => !alive(sleepPid), 10_000, `server ${sleepPid} gone`);
      t.pass(`its query was stopped and its server (backend ${sleepPid}) closed`);

      stop = true;
      await shortLoop;
      t.equal(shortErrors, 0, `short transactions untouched (${shortDone} ran alongside)`);
      t.ok(shortDone > 10, 'and they kept running');
      t.same((await between.query('SELECT 2 AS x')).rows, [{ x: 2 }], `a client idle between transactions for ${Math.round((Date.now() - started) / 1000)} s still works`);
      t.equal(between.errors.length + short.errors.length, 0, 'no error event on the other clients');
      const fresh: PgTestClient = await pgClient(t, proxy);
      t.same((await fresh.query('SELECT 3 AS x')).rows, [{ x: 3 }], 'a new client is served');
    });
  }
});

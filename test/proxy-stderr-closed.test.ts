// A proxy whose stderr reader went away (the shell or log shipper that started it exited)
// keeps serving and stays idle: every log line then fails with EPIPE, which once looped
// through the uncaught-exception logger at full CPU. Not a data-path test: user space only.
import t from 'tap';
import { startProxy } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, pgConnectError, sleep } from './helpers/cluster';
import { cpuMs } from './helpers/kernel';

t.test('stderr closed under the proxy', async (t) => {
  const c = await startCluster(t);
  const proxy = await startProxy(t, await proxyConfig(c, { bypass: 'off' }), { logLevel: 'debug' });
  proxy.proc.stderr!.destroy(); // our end of its stderr pipe: its next writes get EPIPE
  // Log lines: failed logins, and a client's session at debug level.
  for (let i = 0; i < 5; i++) {
    const e = await pgConnectError(proxy, { password: 'wrong' });
    t.equal(e.code, '28P01', `a failed login still gets its error (${i + 1})`);
  }
  const cl = await pgClient(t, proxy);
  t.same((await cl.query('SELECT 41 + 1 AS n')).rows, [{ n: 42 }], 'a client is served');
  await cl.end();
  await sleep(500);
  const cpu0 = cpuMs(proxy.proc.pid!);
  await sleep(3000);
  const spent = cpuMs(proxy.proc.pid!) - cpu0;
  t.ok(spent < 1000, `idle afterwards: ${spent} ms of CPU in 3 s`);
  t.notOk(proxy.exited(), 'the proxy is still running');
  const cl2 = await pgClient(t, proxy);
  t.same((await cl2.query('SELECT 1 AS one')).rows, [{ one: 1 }], 'and still serves');
  await cl2.end();
});

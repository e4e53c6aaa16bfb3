// The published artifact: `npm pack` builds and packs the package (prepack: eBPF object,
// TypeScript, addon), `npm install --prefix` installs the tarball into an empty prefix
// (its install script checks that the shipped addon loads), and the installed `pgsplice`
// binary serves a query on the kernel path (`bypass: on`), loading the addon and the
// eBPF object from the installed package, not from this checkout.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startProxy, REPO_ROOT } from './helpers/proxy';
import { startCluster, run, psqlVia } from './helpers/cluster';
import { kernelConfig, showBypass, adminRows } from './helpers/kernel';

t.test('npm pack, install into a prefix, run the kernel path from it', async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-pack-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

  const pack = await run('npm', ['pack', '--pack-destination', tmp, '--loglevel=error'], { cwd: REPO_ROOT, timeoutMs: 300000 });
  t.equal(pack.code, 0, `npm pack exits 0 ${pack.stderr.slice(-500)}`);
  const tgz = fs.readdirSync(tmp).find((f) => f.endsWith('.tgz'));
  if (!tgz) return t.fail(`no tarball in ${tmp}: ${pack.stdout} ${pack.stderr}`);

  const list = await run('tar', ['-tzf', path.join(tmp, tgz)]);
  const files = list.stdout.split('\n');
  for (const f of ['package/dist/src/cli.js', 'package/ebpf/pgsplice.bpf.o', 'package/addon/build/Release/pgsplice.node', 'package/scripts/install-native.js']) {
    t.ok(files.includes(f), `the tarball has ${f}`);
  }
  t.notOk(files.some((f) => f.startsWith('package/test/') || f.startsWith('package/node_modules/')), 'no tests or node_modules in the tarball');

  const prefix = path.join(tmp, 'prefix');
  const inst = await run('npm', ['install', '--prefix', prefix, '--no-audit', '--no-fund', '--loglevel=error', '--foreground-scripts', path.join(tmp, tgz)], {
    cwd: tmp,
    timeoutMs: 300000,
  });
  t.equal(inst.code, 0, `npm install exits 0 ${inst.stderr.slice(-800)}`);
  t.match(inst.stdout + inst.stderr, /native addon (loads|rebuilt)/, 'the install script found a usable addon');
  const bin = path.join(prefix, 'node_modules', '.bin', 'pgsplice');
  const pkgDir = path.join(prefix, 'node_modules', 'pgsplice');
  t.ok(fs.existsSync(bin), `the pgsplice binary is installed (${bin})`);

  const version = await run(bin, ['--version']);
  t.equal(version.stdout.trim(), JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')).version, 'the installed binary prints the version');

  const c = await startCluster(t);
  const proxy = await startProxy(t, await kernelConfig(c, 'on'), { command: bin, logLevel: 'info', startTimeoutMs: 30000 });
  await proxy.waitForLog(/pgsplice .* started/, 15000);
  const by = await showBypass(proxy);
  t.equal(by.loaded, 'yes', `SHOW BYPASS: loaded=${by.loaded} (${by.reason ?? ''})`);
  t.equal(await psqlVia(proxy, 'SELECT 40 + 2'), '42', 'a query through the installed proxy');
  const kernelTx = Number((await adminRows(proxy, 'SHOW BYPASS')).find((r) => r.key === 'kernel_transactions')?.value ?? NaN);
  t.comment(`kernel_transactions after one psql query: ${kernelTx}`);

  // The process mapped the addon of the installed package, not this checkout's.
  const maps = fs.readFileSync(`/proc/${proxy.proc.pid}/maps`, 'utf8');
  t.ok(maps.includes(path.join(pkgDir, 'addon', 'build', 'Release', 'pgsplice.node')), 'the addon was loaded from the installed package');
  t.notOk(maps.includes(path.join(REPO_ROOT, 'addon')), 'and not from the checkout');
  const st = await proxy.stop('SIGINT', 20000);
  t.equal(st.code, 0, 'the installed proxy shuts down cleanly');
});

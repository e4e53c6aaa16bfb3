// No module in src/ imports itself through others at run time (dpdm, a devDependency).
// A cycle makes load order decide which module sees the other's exports as undefined.
// `-T` drops type-only imports first: tsc erases them, so they cannot cycle at run time.
// (Type-only cycles remain only between a Pool, the KernelHost it is given and the client
// that uses both: docs/architecture.md.)
import t from 'tap';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { execFileSync } from 'child_process';

const root = path.join(__dirname, '..');

t.test('no circular imports in src/', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-dpdm-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const out = path.join(dir, 'deps.json');
  const bin = path.join(root, 'node_modules', 'dpdm', 'lib', 'bin', 'dpdm.js');
  execFileSync(process.execPath, [bin, '-T', '--no-tree', '--no-warning', '--no-circular', '--no-progress', '-o', out, 'src/**/*.ts'], {
    cwd: root,
    stdio: 'pipe',
  });
  const deps = JSON.parse(fs.readFileSync(out, 'utf8')) as { tree: Record<string, unknown>; circulars: string[][] };
  t.ok(Object.keys(deps.tree).length >= 38, `dpdm read the modules (${Object.keys(deps.tree).length})`);
  t.ok(deps.tree['src/kernel/controller.ts'], 'including the kernel path');
  t.same(deps.circulars.map((c) => c.join(' -> ')), [], 'no import cycles');
});

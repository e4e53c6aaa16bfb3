// No module in src/ imports itself through others (dpdm, a devDependency), type-only
// imports included. A run-time cycle makes load order decide which module sees the
// other's exports as undefined; a type-only one still ties two modules together (a Pool,
// a client and the KernelHost each declare the part of the others they call instead:
// docs/architecture.md).
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
  execFileSync(process.execPath, [bin, '--no-tree', '--no-warning', '--no-circular', '--no-progress', '-o', out, 'src/**/*.ts'], {
    cwd: root,
    stdio: 'pipe',
  });
  const deps = JSON.parse(fs.readFileSync(out, 'utf8')) as { tree: Record<string, unknown>; circulars: string[][] };
  t.ok(Object.keys(deps.tree).length >= 38, `dpdm read the modules (${Object.keys(deps.tree).length})`);
  t.ok(deps.tree['src/kernel/controller.ts'], 'including the kernel path');
  t.same(deps.circulars.map((c) => c.join(' -> ')), [], 'no import cycles');
});

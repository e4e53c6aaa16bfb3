// Deployment files that cannot run here (no container engine, no systemd as PID 1, no
// Kubernetes): each is parsed and checked for what it must say, and every pgsplice config
// they carry is validated by the real loader (`pgsplice check`). docs/deploy.md says what
// was and was not exercised.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import YAML from 'yaml';
import { REPO_ROOT, runCli, writeConfig } from './helpers/proxy';

const CAPS = ['BPF', 'NET_ADMIN', 'PERFMON'];
const read = (rel: string) => fs.readFileSync(path.join(REPO_ROOT, rel), 'utf8');

function checkConfig(t: Tap.Test, text: string, what: string): any {
  const r = runCli(['check', '--config', writeConfig(text)], 60000);
  t.equal(r.code, 0, `${what} is a valid pgsplice config ${r.stderr.trim()}`);
  return YAML.parse(text);
}

// Dockerfile instructions with continuation lines joined and comments dropped.
function dockerInstructions(text: string): Array<{ op: string; args: string }> {
  const out: Array<{ op: string; args: string }> = [];
  let cur = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (cur === '' && (line === '' || line.startsWith('#'))) continue;
    if (line.startsWith('#')) continue;
    cur += (cur ? ' ' : '') + line.replace(/\\$/, '').trim();
    if (!line.endsWith('\\')) {
      const m = /^(\S+)\s+(.*)$/.exec(cur)!;
      out.push({ op: m[1].toUpperCase(), args: m[2] });
      cur = '';
    }
  }
  return out;
}

t.test('Dockerfile: two stages on Debian 12, sources exist, non-root runtime with three file capabilities', async (t) => {
  const ins = dockerInstructions(read('Dockerfile'));
  const stages: Array<{ name: string; image: string; ins: typeof ins }> = [];
  for (const i of ins) {
    if (i.op === 'FROM') {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(i.args)!;
      stages.push({ image: m[1], name: m[2] ?? String(stages.length), ins: [] });
    } else {
      t.ok(stages.length > 0, `${i.op} comes after a FROM`);
      stages[stages.length - 1].ins.push(i);
    }
  }
  t.same(stages.map((s) => s.name), ['build', 'runtime'], 'stages build and runtime');
  for (const s of stages) t.match(s.image, /bookworm/, `stage ${s.name} is Debian 12 (${s.image})`);
  const build = stages[0].ins.map((i) => i.args).join('\n');
  const aptWords = new Set(build.split(/\s+/));
  for (const pkg of ['clang', 'libbpf-dev', 'bpftool', 'g++', 'make']) t.ok(aptWords.has(pkg), `the build stage installs ${pkg}`);
  t.match(build, /npm pack/, 'the build stage packs the package (prepack builds eBPF object, TypeScript and addon)');
  const ignored = read('.dockerignore').split('\n').map((l) => l.trim()).filter(Boolean);
  stages.forEach((s, si) => {
    for (const i of s.ins.filter((i) => i.op === 'COPY')) {
      const words = i.args.split(/\s+/);
      const from = words.find((w) => w.startsWith('--from='));
      const srcs = words.filter((w) => !w.startsWith('--')).slice(0, -1);
      if (from) {
        const name = from.slice(7);
        t.ok(stages.slice(0, si).some((p) => p.name === name), `COPY --from=${name} names an earlier stage`);
        continue;
      }
      for (const src of srcs) {
        t.ok(fs.existsSync(path.join(REPO_ROOT, src)), `COPY source ${src} exists`);
        t.notOk(ignored.includes(src) || ignored.includes(src.replace(/\/$/, '')), `COPY source ${src} is not in .dockerignore`);
      }
    }
  });
  const runtime = stages[1].ins;
  const user = runtime.filter((i) => i.op === 'USER').pop();
  t.ok(user && !/^(0|root)(:|$)/.test(user.args), `the runtime runs as a non-root user (USER ${user?.args})`);
  const setcap = runtime.map((i) => i.args).join('\n').match(/setcap\s+(\S+)\s+(\S+)/);
  t.ok(setcap, 'the runtime stage sets file capabilities');
  if (setcap) {
    const [caps, flags] = setcap[1].split('+');
    t.same(caps.split(',').map((c) => c.replace(/^cap_/, '').toUpperCase()).sort(), [...CAPS].sort(), `exactly ${CAPS.join(', ')} (${setcap[1]})`);
    t.equal(flags, 'ep', 'effective and permitted');
  }
  const entry = runtime.find((i) => i.op === 'ENTRYPOINT');
  t.ok(entry && setcap && JSON.parse(entry.args)[0] === setcap[2], 'the entrypoint is the program that carries the capabilities');
  t.ok(read('examples/container.yaml'), 'the image default config exists');
  checkConfig(t, read('examples/container.yaml'), 'examples/container.yaml (the image default)');
});

t.test('docker-compose.yml: built from the Dockerfile, capabilities instead of privileged, ready check', async (t) => {
  const doc = YAML.parse(read('docker-compose.yml'));
  const svc = doc.services?.pgsplice;
  t.ok(svc, 'a pgsplice service');
  t.equal(svc.build?.dockerfile, 'Dockerfile', 'built from ./Dockerfile');
  t.notOk(svc.privileged, 'not privileged');
  t.same(svc.cap_drop, ['ALL'], 'drops every capability');
  t.same([...svc.cap_add].sort(), [...CAPS].sort(), `adds ${CAPS.join(', ')}`);
  for (const s of Object.values<any>(doc.services)) t.notOk(s.privileged, 'no service is privileged');
  const mount = (svc.volumes as string[]).find((v) => v.endsWith(':/etc/pgsplice/pgsplice.yaml:ro'));
  t.ok(mount, 'mounts a config');
  const cfg = checkConfig(t, read(mount!.split(':')[0]), `${mount!.split(':')[0]} (its config)`);
  t.match(JSON.stringify(svc.healthcheck.test), new RegExp(`:${cfg.metrics.port}/readyz`), 'the health check asks /readyz on the metrics port');
  t.equal(svc.stop_signal, 'SIGINT', 'stops with the safe shutdown');
});

t.test('packaging/kubernetes.yaml: ConfigMap, Deployment, Service; probes, capabilities, non-root', async (t) => {
  const docs = YAML.parseAllDocuments(read('packaging/kubernetes.yaml')).map((d) => {
    t.same(d.errors, [], 'the document parses');
    return d.toJSON();
  });
  const byKind = Object.fromEntries(docs.map((d) => [d.kind, d]));
  t.same(docs.map((d) => d.kind).sort(), ['ConfigMap', 'Deployment', 'Service'], 'one ConfigMap, Deployment and Service');
  for (const d of docs) t.ok(d.apiVersion && d.metadata?.name, `${d.kind} has apiVersion and metadata.name`);
  const dep = byKind.Deployment;
  t.equal(dep.apiVersion, 'apps/v1', 'Deployment is apps/v1');
  const pod = dep.spec.template.spec;
  t.same(dep.spec.selector.matchLabels, dep.spec.template.metadata.labels, 'the selector matches the pod labels');
  t.same(byKind.Service.spec.selector, dep.spec.template.metadata.labels, 'the Service selects the pods');
  t.equal(pod.securityContext.runAsNonRoot, true, 'runAsNonRoot');
  t.ok(pod.securityContext.runAsUser > 0, 'a non-zero uid');
  const c = pod.containers[0];
  t.same(c.securityContext.capabilities.drop, ['ALL'], 'drops every capability');
  t.same([...c.securityContext.capabilities.add].sort(), [...CAPS].sort(), `adds ${CAPS.join(', ')}`);
  t.notOk(c.securityContext.privileged, 'not privileged');
  t.equal(c.securityContext.allowPrivilegeEscalation, true, 'no no_new_privs (file capabilities would be ignored)');
  t.equal(c.readinessProbe.httpGet.path, '/readyz', 'readiness probe on /readyz');
  t.equal(c.livenessProbe.httpGet.path, '/healthz', 'liveness probe on /healthz');
  const port = (name: string | number) => (typeof name === 'number' ? name : c.ports.find((p: any) => p.name === name)?.containerPort);
  const cfgMount = c.volumeMounts.find((m: any) => m.mountPath === '/etc/pgsplice');
  const vol = pod.volumes.find((v: any) => v.name === cfgMount.name);
  t.equal(vol.configMap.name, byKind.ConfigMap.metadata.name, 'the config volume is the ConfigMap');
  t.ok(c.args.join(' ').includes('/etc/pgsplice/pgsplice.yaml'), 'runs with the mounted config');
  const cfg = checkConfig(t, byKind.ConfigMap.data['pgsplice.yaml'], 'the ConfigMap pgsplice.yaml');
  t.equal(port(c.readinessProbe.httpGet.port), cfg.metrics.port, 'probes hit the metrics listener port');
  t.equal(port(c.livenessProbe.httpGet.port), cfg.metrics.port, 'liveness too');
  t.equal(port('postgres'), cfg.listen.port, 'the postgres port is the config listen.port');
  t.ok(pod.terminationGracePeriodSeconds > (cfg.shutdown_timeout ?? 30), 'the grace period outlasts shutdown_timeout');
});

t.test('packaging/pgsplice.service: systemd-analyze verify, ambient capabilities', async (t) => {
  const unit = read('packaging/pgsplice.service');
  const keys = (k: string) => unit.split('\n').filter((l) => l.startsWith(`${k}=`)).map((l) => l.slice(k.length + 1).trim());
  t.same(keys('AmbientCapabilities')[0]?.split(/\s+/).sort(), CAPS.map((c) => `CAP_${c}`).sort(), 'AmbientCapabilities: the three');
  t.same(keys('CapabilityBoundingSet')[0]?.split(/\s+/).sort(), CAPS.map((c) => `CAP_${c}`).sort(), 'CapabilityBoundingSet: the three');
  t.ok(keys('User')[0] && keys('User')[0] !== 'root', 'runs as a non-root user');
  t.equal(keys('KillSignal')[0], 'SIGINT', 'stops with the safe shutdown');
  t.match(keys('ExecReload')[0], /-HUP/, 'reload is SIGHUP');
  const which = spawnSync('systemd-analyze', ['--version']);
  if (which.error) {
    t.comment('systemd-analyze not installed: unit keys checked above only');
    return;
  }
  // verify wants ExecStart's program to exist: the same unit with this machine's node.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-unit-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'pgsplice.service');
  fs.writeFileSync(file, unit.replace(/^ExecStart=\S+/m, `ExecStart=${process.execPath}`));
  const r = spawnSync('systemd-analyze', ['verify', file], { encoding: 'utf8' });
  t.equal(r.status, 0, 'systemd-analyze verify exits 0');
  t.equal(r.stderr.trim(), '', `no warnings (unknown keys, bad values): ${r.stderr.trim()}`);
});

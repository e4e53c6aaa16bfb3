#!/usr/bin/env node
// npm "install" script of the published package: makes sure the kernel path's native
// parts are usable where the package was installed.
//
// The tarball ships the eBPF object (BPF bytecode: the same for every x86-64 and arm64
// kernel that has the helpers it uses, so no clang is needed here) and the addon built on
// Debian 12 / x86-64 (node-addon-api: one build serves every Node >= 20). If that addon
// does not load here (another architecture or libc, libbpf.so.1 missing), it is rebuilt
// with node-gyp, which needs g++, make, python3 and libbpf-dev. If that fails too, the
// install still succeeds: pgsplice then serves everything in user space and says why at
// start-up (`bypass: on` refuses to start instead).
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const root = path.resolve(__dirname, '..');
const addon = path.join(root, 'addon', 'build', 'Release', 'pgsplice.node');
const object = path.join(root, 'ebpf', 'pgsplice.bpf.o');
const say = (msg) => process.stderr.write(`pgsplice install: ${msg}\n`);

// A git checkout is built by scripts/bootstrap (scripts/build), not by npm ci.
if (fs.existsSync(path.join(root, '.git'))) process.exit(0);

function addonLoads() {
  if (!fs.existsSync(addon)) return 'not built';
  // In a child: a library that fails to load must not take this script with it.
  const r = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(addon)}).libbpfVersion()`], { encoding: 'utf8' });
  return r.status === 0 ? null : (r.stderr || '').trim().split('\n').find((l) => /Error/.test(l)) || `exit ${r.status}`;
}

if (!fs.existsSync(object)) say(`warning: ${object} is missing; the kernel path will not load (build it with "make -C ebpf", needs clang)`);

const why = addonLoads();
if (why === null) {
  say('native addon loads; the kernel path can be used where the process has CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON');
  process.exit(0);
}
say(`the shipped addon does not load here (${why}); rebuilding it with node-gyp`);
// npm tells its scripts where its own node-gyp is; npx finds one otherwise.
const gyp = process.env.npm_config_node_gyp;
const r = gyp
  ? spawnSync(process.execPath, [gyp, 'rebuild', '--loglevel=error'], { cwd: path.join(root, 'addon'), stdio: 'inherit' })
  : spawnSync('npx', ['--yes', 'node-gyp', 'rebuild', '--loglevel=error'], { cwd: path.join(root, 'addon'), stdio: 'inherit' });
const after = r.status === 0 ? addonLoads() : `node-gyp exited ${r.status}`;
if (after === null) {
  say('native addon rebuilt');
} else {
  say(`warning: no usable native addon (${after}); pgsplice will serve everything in user space. ` +
      'To build it: apt-get install g++ make python3 libbpf-dev, then npm rebuild pgsplice');
}
process.exit(0);

// Reads a TAP 14 stream (tap's "tap" reporter) on stdin, echoes it, and prints the
// plain "N passed, N failed" line CI reads. A test is a leaf t.test() block (one with
// no nested blocks); a file that fails outside any block counts as one failure.
'use strict';
let passed = 0, failed = 0;
const childSeen = new Map(); // content indent -> a nested "# Subtest:" was seen
let leafFailuresInFile = 0;
const lines = require('fs').readFileSync(0, 'utf8').split('\n');
for (const line of lines) {
  process.stdout.write(line + '\n');
  const indent = line.length - line.trimStart().length;
  const body = line.trimStart();
  if (body.startsWith('# Subtest:')) {
    childSeen.set(indent, false);
    childSeen.set(indent - 4, true);
    continue;
  }
  const m = /^(not )?ok \d+ - .*# time=/.exec(body) || (indent === 0 ? /^(not )?ok \d+ - /.exec(body) : null);
  if (!m) continue;
  const ok = !m[1];
  if (indent === 0) {
    if (!ok && leafFailuresInFile === 0) failed++;
    leafFailuresInFile = 0;
    continue;
  }
  if (childSeen.get(indent + 4)) continue; // not a leaf
  if (/# SKIP/.test(body)) continue;
  if (ok) passed++;
  else { failed++; leafFailuresInFile++; }
}
if (passed + failed === 0) failed = 1; // no test ran: that is a failure
console.log(`${passed} passed, ${failed} failed`);
process.exitCode = failed > 0 ? 1 : 0;

// Reads a TAP 14 stream (tap's "tap" reporter) on stdin and prints the plain
// "N passed, N failed" line CI reads. A test is a t.test() block at the first
// level inside a file; a file that fails outside any block counts as one failure.
'use strict';
let passed = 0, failed = 0, fileFailures = 0, fileHadFailedBlock = false;
const lines = require('fs').readFileSync(0, 'utf8').split('\n');
for (const line of lines) {
  process.stdout.write(line + '\n');
  if (/^    ok \d+/.test(line) && !/# SKIP/.test(line)) passed++;
  else if (/^    not ok \d+/.test(line)) { failed++; fileHadFailedBlock = true; }
  else if (/^not ok \d+/.test(line)) { if (!fileHadFailedBlock) fileFailures++; fileHadFailedBlock = false; }
  else if (/^ok \d+/.test(line)) fileHadFailedBlock = false;
}
failed += fileFailures;
if (passed + failed === 0) failed = 1; // no test ran: that is a failure
console.log(`${passed} passed, ${failed} failed`);
process.exitCode = failed > 0 ? 1 : 0;

// syslog, syslog_ident, syslog_facility (PgBouncer's keys) and syslog_socket (pgsplice's
// own, for this test): every log line also reaches a real unix datagram listener the test
// binds at a temporary path, framed as syslog(3) frames it ("<PRI>Mmm dd hh:mm:ss
// ident[pid]: message"), with the facility and level in PRI. When the listener goes away
// the proxy keeps serving and says so once on stderr; without the addon syslog: true
// stops start-up naming the key.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, writeConfig, cliCommand } from './helpers/proxy';
import { startCluster, proxyConfig, psqlVia, waitUntil } from './helpers/cluster';

// A unix datagram listener (Node has none): python binds the path and prints each
// datagram it receives as one JSON string per line.
const LISTENER_PY = `
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print('ready', flush=True)
while True:
    print(json.dumps(s.recv(65536).decode('utf-8', 'replace')), flush=True)
`;

function listen(sockPath: string): Promise<{ proc: ChildProcess; lines: string[] }> {
  return new Promise((resolve, reject) => {
    const proc = spawn('python3', ['-c', LISTENER_PY, sockPath], { stdio: ['ignore', 'pipe', 'inherit'] });
    const lines: string[] = [];
    let buf = '';
    proc.stdout!.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const l = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (l === 'ready') resolve({ proc, lines });
        else lines.push(JSON.parse(l) as string);
      }
    });
    proc.on('exit', (code) => reject(new Error(`listener exited ${code}`)));
  });
}

t.test('syslog', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    t.test(`log lines reach a unix datagram listener, framed as syslog(3) (bypass: ${bypass})`, async (t) => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-syslog-'));
      t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
      const sockPath = path.join(dir, 'log');
      const l = await listen(sockPath);
      t.teardown(() => { l.proc.kill(); });
      const proxy = await startProxy(t, await proxyConfig(c, {
        bypass, syslog: true, syslog_ident: 'pgs-test', syslog_facility: 'local3', syslog_socket: sockPath,
      }), { logLevel: 'info' });
      t.equal(await psqlVia(proxy, 'SELECT 1'), '1', 'a client is served');
      const pid = proxy.proc.pid!;
      const login = await waitUntil(() => l.lines.find((x) => /login ok/.test(x)), 10000, 'login line in syslog');
      // local3 = 19, info = 6: PRI 19 * 8 + 6 = 158.
      t.match(login, new RegExp(`^<158>[A-Z][a-z]{2} [ 1-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9] pgs-test\\[${pid}\\]: C-\\d+ app@app .* login ok`), `syslog(3) framing, ident, pid, facility local3, severity info: ${login}`);
      t.ok(l.lines.some((x) => /^<158>.*listening on 127\.0\.0\.1:/.test(x)), 'the start-up lines too');
      t.match(proxy.logs(), /login ok/, 'stderr still has the lines');
      t.notMatch(l.lines.join('\n'), /\d{4}-\d\d-\d\dT/, 'the syslog text carries no second (ISO) timestamp');

      // The daemon goes away: clients are still served; one note on stderr.
      l.proc.kill();
      await waitUntil(() => l.proc.exitCode !== null || l.proc.signalCode !== null, 5000, 'listener stopped');
      fs.rmSync(sockPath, { force: true });
      t.equal(await psqlVia(proxy, 'SELECT 2'), '2', 'with no listener a client is still served');
      t.equal(await psqlVia(proxy, 'SELECT 3'), '3', 'and another');
      const notes = proxy.logs().split('\n').filter((x) => /syslog: cannot send to/.test(x));
      t.equal(notes.length, 1, `one note on stderr: ${notes[0]}`);
    });
  }

  t.test('syslog: true without the addon: a start-up error naming the key', async (t) => {
    const cfg = writeConfig(await proxyConfig(c, { bypass: 'off', syslog: true }));
    const r = spawnSync(...cliCommand(['--config', cfg]), { encoding: 'utf8', timeout: 30000, env: { ...process.env, PGSPLICE_ADDON: '/nonexistent/pgsplice.node' } });
    t.equal(r.status, 1, 'exit 1');
    t.match(r.stderr, /syslog: .*needs the pgsplice addon/, r.stderr.trim());
  });
});

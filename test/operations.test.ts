// Operating pgsplice: /healthz and /readyz on the metrics listener, log_format json,
// logfile (reopened on SIGHUP after a rotation), pidfile, the TCP keepalive settings on
// client and server sockets, auth_file (userlist.txt), unix_socket_mode, and the keys
// that are refused with a reason; tcp_keepcnt/keepintvl/user_timeout read back from the
// proxy's sockets, and refused at start-up without the addon that sets them.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as http from 'node:http';
import { spawn, spawnSync } from 'node:child_process';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, runCli, writeConfig, cliCommand } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, pgConnectError, psqlVia, sleep, waitUntil, freePort, run, APP_USER, APP_PASSWORD } from './helpers/cluster';
import { kernelConfig, adminRows } from './helpers/kernel';

function get(port: number, p: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: p, timeout: 5000 }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

// Established TCP sockets owned by pid matching an ss filter, with their timers (-o).
async function sockets(pid: number, filter: string): Promise<string[]> {
  const r = await run('ss', ['-tnopH', 'state', 'established', filter]);
  return r.stdout.split('\n').filter((l) => l.includes(`pid=${pid},`));
}

// The TCP options of sockets another process holds, read back from the sockets
// themselves: python duplicates each fd with pidfd_getfd (we run as root) and calls
// getsockopt on it.
const SOCKOPTS_PY = `
import ctypes, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
pidfd = libc.syscall(434, int(sys.argv[1]), 0)  # pidfd_open
out = {}
for target in sys.argv[2:]:
    fd = libc.syscall(438, pidfd, int(target), 0)  # pidfd_getfd
    if fd < 0:
        raise OSError(ctypes.get_errno(), 'pidfd_getfd')
    s = socket.socket(fileno=fd)
    g = lambda level, opt: s.getsockopt(level, opt)
    out[target] = {'keepalive': g(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 'keepidle': g(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                   'keepcnt': g(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), 'keepintvl': g(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                   'user_timeout': g(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)}
    s.detach()
    os.close(fd)
print(json.dumps(out))
`;
const sysctl = (name: string) => Number(fs.readFileSync(`/proc/sys/net/ipv4/${name}`, 'utf8').trim());
type SockOpts = { keepalive: number; keepidle: number; keepcnt: number; keepintvl: number; user_timeout: number };
async function sockopts(pid: number, ssLine: string): Promise<SockOpts> {
  const fd = /pid=\d+,fd=(\d+)/.exec(ssLine)?.[1];
  if (!fd) throw new Error(`no fd in ${ssLine}`);
  const r = await run('python3', ['-c', SOCKOPTS_PY, String(pid), fd]);
  if (r.code !== 0) throw new Error(`getsockopt through pidfd_getfd failed: ${r.stderr}`);
  return JSON.parse(r.stdout)[fd] as SockOpts;
}

t.test('operations', async (t) => {
  const c = await startCluster(t);

  for (const bypass of BYPASS_MODES) {
    const B = `(bypass: ${bypass})`;

    t.test(`/healthz and /readyz: ready when running, 503 when paused or shutting down ${B}`, async (t) => {
      const mport = await freePort();
      const proxy = await startProxy(t, await kernelConfig(c, bypass, { metrics: { host: '127.0.0.1', port: mport } }), { logLevel: 'info', startTimeoutMs: 30000 });
      await proxy.waitForLog(/pgsplice .* started/);
      t.same(await get(mport, '/healthz'), { status: 200, body: 'ok\n' }, '/healthz: 200 ok');
      const ready = await get(mport, '/readyz');
      t.equal(ready.status, 200, `/readyz: 200 (${ready.body.trim()})`);
      t.match(ready.body, /^ready: running/, 'says running');
      await adminRows(proxy, 'PAUSE');
      const paused = await get(mport, '/readyz');
      t.equal(paused.status, 503, `/readyz while paused: 503 (${paused.body.trim()})`);
      t.equal((await get(mport, '/healthz')).status, 200, '/healthz stays 200 while paused (alive)');
      await adminRows(proxy, 'RESUME');
      t.equal((await get(mport, '/readyz')).status, 200, '/readyz: 200 again after RESUME');
      const a = await pgClient(t, proxy);
      await a.query('SELECT 1');
      proxy.proc.kill('SIGTERM');
      await proxy.waitForLog(/shutdown WAIT_FOR_CLIENTS/, 5000);
      const draining = await get(mport, '/readyz');
      t.equal(draining.status, 503, `/readyz while draining: 503 (${draining.body.trim()})`);
      t.match(draining.body, /shutting down/, 'says shutting down');
      await a.end();
      const st = await proxy.waitExit(10000);
      t.equal(st?.code, 0, 'exits 0 once the client left');
    });

    t.test(`max_db_client_connections and max_user_client_connections (with per-database/user overrides) ${B}`, async (t) => {
      c.sql(`DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'other') THEN CREATE ROLE other LOGIN PASSWORD 'other-pw'; END IF; END $$; GRANT ALL ON DATABASE app TO other;`);
      const base = await proxyConfig(c, { bypass, max_db_client_connections: 2, max_user_client_connections: 3 });
      base.databases.roomy = { host: '127.0.0.1', port: c.pg.port, dbname: 'app', max_db_client_connections: 10 };
      base.users.other = { password: 'other-pw', max_user_client_connections: 1 };
      const proxy = await startProxy(t, base, { logLevel: 'info' });
      const a1 = await pgClient(t, proxy);
      const a2 = await pgClient(t, proxy);
      await Promise.all([a1.query('SELECT 1'), a2.query('SELECT 1')]);
      const e = await pgConnectError(proxy);
      t.equal(e.code, '53300', `a 3rd client of database app: 53300 (${e.message})`);
      t.match(e.message, /max_db_client_connections 2/, 'the message names the setting');
      const r1 = await pgClient(t, proxy, { database: 'roomy' });
      t.same((await r1.query('SELECT 1 AS x')).rows, [{ x: 1 }], 'database roomy (its own limit 10) still takes clients: a 3rd client of user app');
      const eu = await pgConnectError(proxy, { database: 'roomy' });
      t.equal(eu.code, '53300', `a 4th client of user app: 53300 (${eu.message})`);
      t.match(eu.message, /max_user_client_connections 3/, 'names max_user_client_connections');
      const o1 = await pgClient(t, proxy, { database: 'roomy', user: 'other', password: 'other-pw' });
      await o1.query('SELECT 1');
      const eo = await pgConnectError(proxy, { database: 'roomy', user: 'other', password: 'other-pw' });
      t.match(eo.message, /user "other" \(max_user_client_connections 1\)/, `user other's own limit 1 (${eo.message})`);
      t.same(a1.errors, [], 'the admitted clients saw no error');
      await a1.end();
      // The proxy sees the close a moment later: retry until the place is free.
      const a3 = await waitUntil(() => pgClient(t, proxy).catch(() => null), 10000, 'a place freed by a client that left');
      t.same((await a3.query('SELECT 3 AS x')).rows, [{ x: 3 }], 'a client that left frees its place');
      t.same(a2.errors, [], 'the other admitted client saw no error');
      await proxy.stop('SIGQUIT');
    });

    t.test(`tcp_keepalive, tcp_keepidle, tcp_keepcnt, tcp_keepintvl, tcp_user_timeout on client and server sockets ${B}`, async (t) => {
      for (const [keepalive, idle] of [[true, 7], [false, 0]] as const) {
        const proxy = await startProxy(t, await proxyConfig(c, {
          bypass, tcp_keepalive: keepalive, tcp_keepidle: idle, tcp_keepcnt: 4, tcp_keepintvl: 3, tcp_user_timeout: 12345,
        }), { logLevel: 'info' });
        const a = await pgClient(t, proxy);
        await a.query('SELECT 1');
        const pid = proxy.proc.pid!;
        // ss shows one timer per socket: right after traffic it can be the retransmit
        // timer ("on") until the last segment is acked; the keepalive timer shows after.
        let client: string[] = [];
        let server: string[] = [];
        for (let i = 0; i < 50; i++) {
          client = await sockets(pid, `( sport = :${proxy.port} )`);
          server = await sockets(pid, `( dport = :${c.pg.port} )`);
          const settled = [client[0], server[0]].every((l) => l !== undefined && (keepalive ? /timer:\(keepalive/.test(l) : !/timer:\(on/.test(l)));
          if (settled) break;
          await new Promise((r) => setTimeout(r, 100));
        }
        t.ok(client.length >= 1 && server.length >= 1, `ss sees the proxy's client (${client.length}) and server (${server.length}) sockets`);
        // Read back from the proxy's own sockets. As PgBouncer: the keepalive counts only
        // with tcp_keepalive on (else the kernel's defaults, net.ipv4.tcp_keepalive_*), the user
        // timeout in any case.
        for (const [what, lines] of [['client', client], ['server', server]] as const) {
          const o = await sockopts(pid, lines[0]);
          t.same(o, keepalive
            ? { keepalive: 1, keepidle: 7, keepcnt: 4, keepintvl: 3, user_timeout: 12345 }
            : { keepalive: 0, keepidle: sysctl('tcp_keepalive_time'), keepcnt: sysctl('tcp_keepalive_probes'), keepintvl: sysctl('tcp_keepalive_intvl'), user_timeout: 12345 },
          `${what} socket (tcp_keepalive ${keepalive}): ${JSON.stringify(o)}`);
        }
        if (keepalive) {
          for (const [what, lines] of [['client', client], ['server', server]] as const) {
            // ss prints the time left as "6.480ms" (seconds.milliseconds), "119min" past a minute.
            const m = /timer:\(keepalive,([^,)]*)/.exec(lines[0]);
            if (!m) t.comment(`${what}: ${lines.join(" | ")}`); // what ss showed instead
            t.ok(m, `${what} socket has a keepalive timer: ${m?.[0]}`);
            const left = m?.[1] ?? '';
            t.ok(!/min/.test(left) && parseFloat(left) <= 7, `${what}: first probe within tcp_keepidle 7 s (${left}; the kernel's default is 7200 s)`);
          }
        } else {
          t.notMatch(client.join('\n'), /keepalive/, 'tcp_keepalive false: no keepalive timer on the client socket');
          t.notMatch(server.join('\n'), /keepalive/, 'nor on the server socket');
        }
        await a.end();
        await proxy.stop('SIGQUIT');
      }
    });
  }

  t.test('log_format json, logfile reopened on SIGHUP after rotation, --quiet', async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-log-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const logfile = path.join(dir, 'pgsplice.log');
    const cfg = await proxyConfig(c, { log_format: 'json', logfile });
    const proxy = await startProxy(t, cfg, { logLevel: 'info' });
    await proxy.waitForLog(/started/);
    await psqlVia(proxy, 'SELECT 1');
    const stderrLines = proxy.logs().split('\n').filter(Boolean);
    const parsed = stderrLines.map((l) => {
      try {
        return JSON.parse(l);
      } catch {
        return null;
      }
    });
    t.ok(stderrLines.length >= 2 && parsed.every((p) => p && typeof p.time === 'string' && typeof p.level === 'string' && p.pid === proxy.proc.pid && typeof p.msg === 'string'),
      `every stderr line is one JSON object {time, level, pid, msg} (${stderrLines.length} lines)`);
    t.ok(parsed.some((p) => /listening on/.test(p?.msg)), 'the listening line is among them');
    const fileLines = fs.readFileSync(logfile, 'utf8').split('\n').filter(Boolean);
    t.ok(fileLines.length >= 2 && fileLines.every((l) => JSON.parse(l).pid === proxy.proc.pid), `logfile has the same JSON lines (${fileLines.length})`);
    // logrotate: move the file away, SIGHUP, the proxy writes to a new file of the old name.
    fs.renameSync(logfile, `${logfile}.1`);
    const from = proxy.logs().length;
    proxy.proc.kill('SIGHUP');
    await proxy.waitForLog(/SIGHUP/, 5000, from);
    await waitUntil(() => fs.existsSync(logfile) && /SIGHUP/.test(fs.readFileSync(logfile, 'utf8')), 5000, 'a new logfile with the SIGHUP line');
    t.pass('after SIGHUP the proxy logs to a new file of the configured name');
    t.notMatch(fs.readFileSync(`${logfile}.1`, 'utf8'), /SIGHUP: configuration reloaded/, 'the rotated file does not get the lines after the reopen');
    await proxy.stop('SIGQUIT');

    // --quiet with a logfile: nothing on stderr, everything in the file.
    const q = path.join(dir, 'quiet.log');
    const cfgFile = writeConfig({ ...(await proxyConfig(c, { logfile: q })) }, dir);
    const p = spawn(...cliCommand(['--config', cfgFile, '--quiet']), { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d) => (err += d));
    t.teardown(() => p.kill('SIGKILL'));
    await waitUntil(() => fs.existsSync(q) && /started/.test(fs.readFileSync(q, 'utf8')), 15000, 'the quiet proxy started');
    p.kill('SIGQUIT');
    await new Promise((r) => p.on('exit', r));
    t.equal(err, '', '--quiet: nothing on stderr');
    t.match(fs.readFileSync(q, 'utf8'), /INFO listening on/, 'text lines in the logfile');
  });

  t.test('pidfile: written, refuses a second instance, removed at exit, stale one replaced', async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-pid-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const pidfile = path.join(dir, 'pgsplice.pid');
    const proxy = await startProxy(t, await proxyConfig(c, { pidfile }), { logLevel: 'info' });
    t.equal(fs.readFileSync(pidfile, 'utf8').trim(), String(proxy.proc.pid), 'the pidfile names the running proxy');
    const second = runCli(['--config', writeConfig(await proxyConfig(c, { pidfile }))], 30000);
    t.equal(second.code, 1, 'a second instance with the same pidfile exits 1');
    t.match(second.stderr, new RegExp(`names process ${proxy.proc.pid}, which is running`), `and says why: ${second.stderr.trim()}`);
    t.equal(fs.readFileSync(pidfile, 'utf8').trim(), String(proxy.proc.pid), 'the pidfile still names the first');
    await proxy.stop('SIGINT');
    t.notOk(fs.existsSync(pidfile), 'removed at exit');
    // A pidfile whose process is gone (a crash) does not stop the next start.
    const dead = spawn('true');
    await new Promise((r) => dead.on('exit', r));
    fs.writeFileSync(pidfile, `${dead.pid}\n`);
    const p2 = await startProxy(t, await proxyConfig(c, { pidfile }), { logLevel: 'info' });
    t.equal(fs.readFileSync(pidfile, 'utf8').trim(), String(p2.proc.pid), 'a stale pidfile is replaced');
    await p2.stop('SIGTERM');
    t.notOk(fs.existsSync(pidfile), 'removed at exit (SIGTERM)');
  });

  t.test('auth_file (userlist.txt) and unix_socket_mode', async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-af-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    c.sql(`DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'quo"te') THEN CREATE ROLE "quo""te" LOGIN PASSWORD 'p"w'; END IF; END $$; GRANT ALL ON DATABASE app TO "quo""te";`);
    fs.writeFileSync(path.join(dir, 'userlist.txt'), `;; PgBouncer userlist\n"${APP_USER}" "${APP_PASSWORD}"\n"quo""te" "p""w" trailing words are ignored\n`);
    const cfg = await proxyConfig(c, { auth_file: path.join(dir, 'userlist.txt'), listen: { host: '127.0.0.1', port: await freePort(), unix_socket_dir: dir, unix_socket_mode: '0660' } });
    delete cfg.users;
    const proxy = await startProxy(t, cfg, { logLevel: 'info' });
    t.equal(await psqlVia(proxy, 'SELECT current_user'), APP_USER, 'a user of auth_file logs in (no users: section)');
    t.equal(await psqlVia(proxy, 'SELECT current_user', { user: 'quo"te', password: 'p"w' }), 'quo"te', 'quoted "" in names and passwords');
    const sock = path.join(dir, `.s.PGSQL.${proxy.port}`);
    t.equal(fs.statSync(sock).mode & 0o777, 0o660, 'the unix socket has unix_socket_mode 0660');
    const r = await run('psql', ['-X', '-A', '-t', '-h', dir, '-p', String(proxy.port), '-U', APP_USER, '-d', 'app', '-c', 'SELECT 7'], { env: { PGPASSWORD: APP_PASSWORD } });
    t.equal(r.stdout.trim(), '7', `a query over the unix socket ${r.stderr}`);
    const wrong = await psqlVia(proxy, 'SELECT 1', { password: 'nope' }).catch((e: Error) => e.message);
    t.match(wrong, /password authentication failed/, 'a wrong password is refused');
  });

  t.test('values that cannot be honoured are refused with the reason', async (t) => {
    const base = await proxyConfig(c);
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ syslog_facility: 'kern' }, /syslog_facility: /],
      [{ tcp_keepcnt: 128 }, /tcp_keepcnt: .*127/],
      [{ tcp_keepintvl: 40000 }, /tcp_keepintvl: at most 32767/],
      [{ tcp_user_timeout: -1 }, /tcp_user_timeout: /],
      [{ auth_file: '/nonexistent/userlist.txt' }, /auth_file: cannot read/],
      [{ listen: { host: '127.0.0.1', port: 6432, unix_socket_mode: '0999' } }, /unix_socket_mode: expected permission bits/],
    ];
    for (const [over, re] of cases) {
      const r = runCli(['check', '--config', writeConfig({ ...base, ...over })], 30000);
      t.equal(r.code, 2, `${JSON.stringify(over)}: check fails`);
      t.match(r.stderr, re, r.stderr.trim());
    }
    const ok = runCli(['check', '--config', writeConfig({ ...base, syslog: 0, tcp_keepcnt: 0, tcp_keepintvl: 0, tcp_user_timeout: 0 })], 30000);
    t.equal(ok.code, 0, `their defaults (0) are accepted, as pgbouncer.ini files carry them ${ok.stderr}`);
  });

  t.test('tcp_keepcnt without the addon: a start-up error naming the key', async (t) => {
    const cfg = writeConfig(await proxyConfig(c, { bypass: 'off', tcp_keepcnt: 5, tcp_user_timeout: 1000 }));
    const env = { ...process.env, PGSPLICE_ADDON: '/nonexistent/pgsplice.node' };
    const r = spawnSync(...cliCommand(['--config', cfg]), { encoding: 'utf8', timeout: 30000, env });
    t.not(r.status, 0, `it does not start (exit ${r.status})`);
    t.match(r.stderr, /tcp_keepcnt, tcp_user_timeout: .*needs the pgsplice addon/, 'the error names the keys and the addon');
    const zero = writeConfig(await proxyConfig(c, { bypass: 'off' }));
    const started = spawn(...cliCommand(['--config', zero]), { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    started.stderr!.on('data', (d) => (out += d));
    await waitUntil(() => /started/.test(out) || started.exitCode !== null, 20000, 'start without the addon');
    t.match(out, /started/, 'with them at 0 it starts without the addon (bypass: off)');
    started.kill('SIGQUIT');
  });
});
void sleep;

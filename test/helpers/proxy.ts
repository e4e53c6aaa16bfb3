// Runs the real proxy (node dist/src/cli.js) as a child process for a test.
import { spawn, ChildProcess, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import YAML from 'yaml';

export const REPO_ROOT = path.resolve(__dirname, '..', '..');
export const CLI = path.join(REPO_ROOT, 'dist', 'src', 'cli.js');

// tap puts its process-info hook (@tapjs/processinfo: it records the files each node
// process loads, for coverage, which is off here) into the NODE_OPTIONS of every program a
// test starts, and adds it back to any env a spawn passes. In the proxy it cost ~0.5 s of
// CPU per start and a module-loader thread. So node programs are started through env(1)
// with NODE_OPTIONS minus that hook: the proxy runs as it does outside the tests. env
// execs the program: the child's pid is the program's. env: the environment the program
// is given (its own NODE_OPTIONS, e.g. --inspect, are kept).
export function withoutTapHook(command: string, args: string[], env: NodeJS.ProcessEnv = process.env): [string, string[]] {
  const options = (env.NODE_OPTIONS ?? '').split(/\s+/).filter((o) => o !== '' && !/@tapjs[\\/]processinfo/.test(o));
  return ['env', [`NODE_OPTIONS=${options.join(' ')}`, command, ...args]];
}

// The proxy's command line (node dist/src/cli.js ARGS), without tap's hook.
export function cliCommand(args: string[], env: NodeJS.ProcessEnv = process.env): [string, string[]] {
  return withoutTapHook(process.execPath, [CLI, ...args], env);
}

// The subset of tap's Test the helpers use.
export interface TeardownHost {
  teardown(fn: () => unknown): void;
  passing?(): boolean;
  comment?(...args: unknown[]): void;
}

export interface ProxyOptions {
  logLevel?: 'error' | 'warn' | 'info' | 'debug';
  // How long to wait for "listening on" (ms).
  startTimeoutMs?: number;
  extraArgs?: string[];
  // Signal used to kill the proxy at teardown if it still runs.
  killSignal?: NodeJS.Signals;
  // The program to run instead of node dist/src/cli.js (an installed `pgsplice` binary).
  command?: string;
  // Added to the proxy's environment.
  env?: Record<string, string>;
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ProxyHandle {
  host: string;
  port: number;
  configFile: string;
  proc: ChildProcess;
  logs(): string;
  // Rewrites the config file and sends SIGHUP; waits until the proxy logs something
  // about the reload (or a short grace period passes).
  reload(newConfig: object | string): Promise<void>;
  // Sends a signal and waits for the exit (SIGKILL after timeoutMs).
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<ExitStatus>;
  waitExit(timeoutMs?: number): Promise<ExitStatus | undefined>;
  // Resolves once a log line matches re (after `from` characters of log), or rejects.
  waitForLog(re: RegExp, timeoutMs?: number, from?: number): Promise<string>;
  exited(): ExitStatus | undefined;
}

/** The minimal config, exactly as written (config and lifecycle tests start from it). */
export const MINIMAL_CONFIG = `listen: { host: 127.0.0.1, port: 6432 }
pool_mode: transaction
default_pool_size: 8
bypass: off
databases:
  bench: { host: 127.0.0.1, port: 55432, dbname: bench }
users:
  bench: { password: bench }
`;

export function configText(config: object | string): string {
  return typeof config === 'string' ? config : YAML.stringify(config);
}

export function writeConfig(config: object | string, dir?: string): string {
  const d = dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-cfg-'));
  const file = path.join(d, 'pgsplice.yaml');
  fs.writeFileSync(file, configText(config));
  return file;
}

export function requireCli(): void {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} does not exist: build first (npx tsc -p tsconfig.json)`);
}

// Runs the CLI to completion (check, --version, --help ...).
export function runCli(args: string[], timeoutMs = 60000): { code: number | null; stdout: string; stderr: string } {
  requireCli();
  const r = spawnSync(...cliCommand(args), { cwd: REPO_ROOT, encoding: 'utf8', timeout: timeoutMs });
  return { code: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

// The same, without blocking: several CLI runs can go side by side.
export function runCliAsync(args: string[], timeoutMs = 60000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  requireCli();
  return new Promise((resolve) => {
    const p = spawn(...cliCommand(args), { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout!.on('data', (d) => (stdout += d));
    p.stderr!.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

// Proxies still running when this test process exits (a file ended by tap's timeout runs
// no teardown) are killed by pid, so none outlives its test.
const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of running) p.kill('SIGKILL');
});

export async function startProxy(t: TeardownHost, config: object | string, opts: ProxyOptions = {}): Promise<ProxyHandle> {
  requireCli();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-cfg-'));
  const configFile = writeConfig(config, dir);
  const args = ['--config', configFile, '--log-level', opts.logLevel ?? 'debug', ...(opts.extraArgs ?? [])];
  const env = opts.env ? { ...process.env, ...opts.env } : process.env;
  const proc = opts.command
    ? spawn(...withoutTapHook(opts.command, args, env), { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env })
    : spawn(...cliCommand(args, env), { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'], env });
  running.add(proc);
  proc.once('exit', () => running.delete(proc));
  let log = '';
  let exit: ExitStatus | undefined;
  const waiters = new Set<() => void>();
  const wake = () => {
    for (const w of [...waiters]) w();
  };
  proc.stdout!.on('data', (d) => {
    log += d;
    wake();
  });
  proc.stderr!.on('data', (d) => {
    log += d;
    wake();
  });
  const exitPromise = new Promise<ExitStatus>((resolve) => {
    proc.on('exit', (code, signal) => {
      exit = { code, signal };
      wake();
      resolve(exit);
    });
  });

  const waitForLog = (re: RegExp, timeoutMs = 5000, from = 0): Promise<string> =>
    new Promise((resolve, reject) => {
      const check = () => {
        const lines = log.slice(from).split('\n');
        const hit = lines.find((l) => re.test(l));
        if (hit !== undefined) {
          done();
          resolve(hit);
        } else if (exit) {
          done();
          reject(new Error(`proxy exited (${JSON.stringify(exit)}) before logging ${re}; log:\n${log.slice(-4000)}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`proxy did not log ${re} within ${timeoutMs} ms; log:\n${log.slice(-4000)}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      check();
    });

  // The timer is cleared once the proxy exits: a pending one would keep the test process
  // alive for the rest of timeoutMs after its last test ended.
  const waitExit = async (timeoutMs = 10000): Promise<ExitStatus | undefined> => {
    if (exit) return exit;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), timeoutMs)));
    try {
      return await Promise.race([exitPromise, timeout]);
    } finally {
      clearTimeout(timer);
    }
  };

  const stop = async (signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 10000): Promise<ExitStatus> => {
    if (exit) return exit;
    proc.kill(signal);
    const st = await waitExit(timeoutMs);
    if (st) return st;
    proc.kill('SIGKILL');
    return exitPromise;
  };

  t.teardown(async () => {
    // A failed test shows the end of the proxy's log: what the proxy's engineer needs.
    if (t.passing && !t.passing() && t.comment) t.comment(`proxy log (last 3000 chars):\n${log.slice(-3000)}`);
    if (!exit) {
      proc.kill(opts.killSignal ?? 'SIGKILL');
      await waitExit(5000);
    }
    fs.rmSync(dir, { recursive: true, force: true });
    // Every state change is checked (src/pooling/connection-state.ts): one the table does not
    // allow is a bug of the proxy's, whatever the test itself asserted.
    const illegal = log.split('\n').filter((l) => l.includes('illegal state transition'));
    if (illegal.length) throw new Error(`the proxy made ${illegal.length} illegal state transition(s):\n${illegal.slice(0, 5).join('\n')}`);
  });

  // (not node's own "Debugger listening on ws://..." when started with --inspect)
  const listenLine = await waitForLog(/(?<!Debugger )listening on/, opts.startTimeoutMs ?? 60000);
  const cfgObj: any = typeof config === 'string' ? YAML.parse(config) : config;
  let host: string = cfgObj?.listen?.host ?? '127.0.0.1';
  let port: number = Number(cfgObj?.listen?.port);
  if (!port) {
    const m = /listening on (\[[^\]]+\]|[^\s:]+):(\d+)/.exec(listenLine);
    if (!m) throw new Error(`cannot read the port from: ${listenLine}`);
    host = m[1].replace(/^\[|\]$/g, '');
    port = Number(m[2]);
  }

  return {
    host,
    port,
    configFile,
    proc,
    logs: () => log,
    exited: () => exit,
    waitForLog,
    waitExit,
    stop,
    reload: async (newConfig) => {
      fs.writeFileSync(configFile, configText(newConfig));
      const from = log.length;
      proc.kill('SIGHUP');
      try {
        await waitForLog(/reload/i, 3000, from);
      } catch {
        /* the proxy may log nothing recognisable; give it a moment */
      }
      await new Promise((r) => setTimeout(r, 300));
    },
  };
}

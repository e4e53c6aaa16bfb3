// A throw-away PostgreSQL cluster on a free port: initdb, SCRAM auth, started and
// stopped by the caller. Used by the tests, the demo and the benchmark, so each
// starts from a known server without touching the machine's own clusters.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

const PG_BIN_CANDIDATES = ['/usr/lib/postgresql/15/bin', '/usr/lib/postgresql/16/bin', '/usr/local/bin'];

export function pgBinDir(): string {
  for (const d of PG_BIN_CANDIDATES) if (fs.existsSync(path.join(d, 'initdb'))) return d;
  throw new Error('PostgreSQL server binaries (initdb) not found; run scripts/bootstrap');
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface ScratchOptions {
  port?: number;
  superuser?: string;
  password?: string;
  // Extra postgresql.conf lines (e.g. tuning for benchmarks).
  settings?: Record<string, string | number>;
  // Authentication for TCP connections in pg_hba.conf.
  hbaMethod?: 'scram-sha-256' | 'md5' | 'trust';
  log?: (line: string) => void;
  // A login role (SCRAM password) and a database it owns, made once in the initdb
  // template: each cluster copied from it has them, instead of two more psql runs and a
  // CREATE DATABASE (~0.5 s of CPU and ~1 s per cluster) on every start.
  owner?: { user: string; password: string; db: string };
}

// SQL string literal and identifier quoting for the few statements made here.
const literal = (s: string) => `'${s.replace(/'/g, "''")}'`;
const ident = (s: string) => `"${s.replace(/"/g, '""')}"`;

// PostgreSQL refuses to run as root: run its programs as the 'postgres' OS user then.
function asPgUser(cmd: string, args: string[]): [string, string[]] {
  if (process.getuid && process.getuid() === 0) return ['runuser', ['-u', 'postgres', '--', cmd, ...args]];
  return [cmd, args];
}

// initdb costs seconds of wall time (most of a small test's set-up); its output depends
// only on the binaries, the superuser and its password. So the first cluster of a given
// kind is initdb'ed into a template under the temp directory and every cluster after it
// is a copy (~0.1 s). The template is built under a private name and renamed into place,
// so concurrent test processes never see a half-written one.
// passwordEncryption: how the owner's password is stored (the cluster's password_encryption).
function copyInitdbTemplate(bin: string, superuser: string, password: string, dataDir: string, owner?: ScratchOptions['owner'], passwordEncryption = 'scram-sha-256'): void {
  const version = execFileSync(path.join(bin, 'initdb'), ['--version'], { encoding: 'utf8' }).trim();
  const ownerKey = owner ? [owner.user, owner.password, owner.db, passwordEncryption] : [];
  const key = createHash('sha256').update([version, bin, superuser, password, ...ownerKey].join('\0')).digest('hex').slice(0, 16);
  const template = path.join(os.tmpdir(), `pgsplice-initdb-${key}`);
  if (!fs.existsSync(path.join(template, 'PG_VERSION'))) {
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-initdb-build-'));
    try {
      fs.chmodSync(work, 0o755);
      const pwfile = path.join(work, 'pwfile');
      fs.writeFileSync(pwfile, password + '\n');
      if (process.getuid && process.getuid() === 0) execFileSync('chown', ['-R', 'postgres:postgres', work]);
      const [c, a] = asPgUser(path.join(bin, 'initdb'), [
        '-D', path.join(work, 'data'), '-U', superuser, '--pwfile', pwfile, '-A', 'scram-sha-256',
        '-E', 'UTF8', '--locale=C', '--no-sync',
      ]);
      execFileSync(c, a, { stdio: 'pipe' });
      if (owner) {
        // Single-user mode: no server to start, one statement per line on stdin.
        const [sc, sa] = asPgUser(path.join(bin, 'postgres'), [
          '--single', '-D', path.join(work, 'data'), '-c', 'fsync=off', '-c', `password_encryption=${passwordEncryption}`, 'postgres',
        ]);
        const sql = `CREATE ROLE ${ident(owner.user)} LOGIN PASSWORD ${literal(owner.password)}\nCREATE DATABASE ${ident(owner.db)} OWNER ${ident(owner.user)}\n`;
        // It reports a failed statement on stderr and still exits 0.
        const r = spawnSync(sc, sa, { input: sql, encoding: 'utf8' });
        if (r.status !== 0 || /\b(ERROR|FATAL):/.test(r.stderr)) throw new Error(`making ${owner.user} and ${owner.db} in the initdb template: ${r.stderr || r.error}`);
      }
      try {
        fs.renameSync(path.join(work, 'data'), template);
      } catch (e) {
        // Another process installed the same template first: use theirs.
        if (!fs.existsSync(path.join(template, 'PG_VERSION'))) throw e;
      }
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  }
  execFileSync('cp', ['-a', template, dataDir]);
}

export class ScratchPostgres {
  readonly dir: string;
  readonly port: number;
  readonly superuser: string;
  readonly password: string;
  private started = false;

  private constructor(dir: string, port: number, superuser: string, password: string) {
    this.dir = dir;
    this.port = port;
    this.superuser = superuser;
    this.password = password;
  }

  get dataDir(): string {
    return path.join(this.dir, 'data');
  }
  get socketDir(): string {
    return this.dir;
  }
  get logFile(): string {
    return path.join(this.dir, 'postgres.log');
  }

  static async create(opts: ScratchOptions = {}): Promise<ScratchPostgres> {
    const port = opts.port ?? (await freePort());
    const superuser = opts.superuser ?? 'postgres';
    const password = opts.password ?? 'postgres';
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsplice-pg-'));
    fs.chmodSync(dir, 0o755);
    const pg = new ScratchPostgres(dir, port, superuser, password);
    const bin = pgBinDir();
    if (process.getuid && process.getuid() === 0) execFileSync('chown', ['-R', 'postgres:postgres', dir]);
    // (a settings value is written as postgresql.conf has it: quoted strings)
    const passwordEncryption = String(opts.settings?.password_encryption ?? 'scram-sha-256').replace(/^'|'$/g, '');
    copyInitdbTemplate(bin, superuser, password, pg.dataDir, opts.owner, passwordEncryption);
    const hba = opts.hbaMethod ?? 'scram-sha-256';
    fs.writeFileSync(
      path.join(pg.dataDir, 'pg_hba.conf'),
      `local all all trust\nhost all all 127.0.0.1/32 ${hba}\nhost all all ::1/128 ${hba}\n`,
    );
    const settings: Record<string, string | number> = {
      port,
      listen_addresses: "'127.0.0.1'",
      unix_socket_directories: `'${dir}'`,
      max_connections: 1200,
      password_encryption: "'scram-sha-256'",
      fsync: 'off',
      synchronous_commit: 'off',
      full_page_writes: 'off',
      shared_buffers: "'256MB'",
      log_min_messages: 'warning',
      ...opts.settings,
    };
    fs.appendFileSync(
      path.join(pg.dataDir, 'postgresql.conf'),
      '\n' + Object.entries(settings).map(([k, v]) => `${k} = ${v}`).join('\n') + '\n',
    );
    if (process.getuid && process.getuid() === 0) execFileSync('chown', ['-R', 'postgres:postgres', dir]);
    await pg.start();
    return pg;
  }

  private pgCtl(args: string[]): void {
    const [c, a] = asPgUser(path.join(pgBinDir(), 'pg_ctl'), ['-D', this.dataDir, ...args]);
    execFileSync(c, a, { stdio: 'pipe' });
  }

  async start(): Promise<void> {
    this.pgCtl(['-l', this.logFile, '-w', '-t', '60', 'start']);
    this.started = true;
  }

  // mode: 'fast' rolls back and disconnects clients; 'immediate' is a crash stop.
  async stop(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    if (!this.started) return;
    this.pgCtl(['-m', mode, '-w', '-t', '60', 'stop']);
    this.started = false;
  }

  async restart(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    await this.stop(mode);
    await this.start();
  }

  // Runs SQL as the superuser through psql over the unix socket; returns stdout.
  psql(sql: string, db = 'postgres'): string {
    return execFileSync(
      'psql',
      ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', this.socketDir, '-p', String(this.port), '-U', this.superuser, '-d', db, '-c', sql],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
    ).trim();
  }

  // Creates a login role with a SCRAM password and a database it owns.
  createUserAndDb(user: string, password: string, db = user): void {
    this.psql(`CREATE ROLE ${ident(user)} LOGIN PASSWORD ${literal(password)}`);
    this.psql(`CREATE DATABASE ${ident(db)} OWNER ${ident(user)}`);
  }

  async destroy(): Promise<void> {
    try {
      await this.stop('immediate');
    } catch {
      /* already down */
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  // Spawns a long-running client program (pgbench etc.) as a child, resolving with its output.
  static run(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const p = spawn(cmd, args, { env: { ...process.env, ...env } });
      let stdout = '';
      let stderr = '';
      p.stdout.on('data', (d) => (stdout += d));
      p.stderr.on('data', (d) => (stderr += d));
      p.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    });
  }
}

#!/usr/bin/env node
// pgsplice command line: run the proxy, check a config, read the counters.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import * as fs from 'node:fs';
import { loadConfigFile, parseConfig } from './config/load';
import { importPgbouncer } from './config/import-pgbouncer';
import * as path from 'node:path';
import { ConfigError, type Config, type LogLevel } from './config/types';
import { configureLogging, log, setLogLevel, setQuiet } from './observe/log';
import { claimPidfile } from './process/pidfile';
import { installSignalHandlers } from './process/signals';
import { Proxy } from './proxy';
import { buildTls } from './auth/tls';
import { installProcessBoundary } from './pooling/error-boundary';
import { workerCount, workerRole } from './workers/role';
import { runPrimary } from './workers/primary';
import { serveAsWorker } from './workers/worker';

const VERSION: string = require('../../package.json').version;

async function run(configPath: string, logLevel: LogLevel | undefined, quiet: boolean, takeover = false): Promise<void> {
  let config;
  try {
    config = loadConfigFile(configPath);
  } catch (e) {
    process.stderr.write(`pgsplice: ${(e as Error).message}\n`);
    process.exit(2);
  }
  setLogLevel(logLevel ?? config.log_level);
  setQuiet(quiet);
  // workers: N > 1: this process forks the workers and serves nothing itself.
  const role = workerRole();
  try {
    configureLogging(config);
    // The pidfile is the primary's (or the only process's): a worker is not what operators signal.
    if (config.pidfile && !role) claimPidfile(relativeToConfig(config, config.pidfile));
  } catch (e) {
    process.stderr.write(`pgsplice: ${(e as Error).message}\n`);
    process.exit(1);
  }
  if (!role && workerCount(config) > 1) {
    try {
      await runPrimary(config, takeover);
    } catch (e) {
      log.error((e as Error).message);
      process.exit(1);
    }
    return;
  }
  let proxy: Proxy;
  try {
    proxy = new Proxy(config);
  } catch (e) {
    log.error((e as Error).message);
    process.exit(1);
  }
  // Handlers first: a signal that arrives while the listeners open must not take Node's
  // defaults (SIGUSR1 would open the inspector, SIGUSR2 would exit).
  installSignalHandlers(proxy);
  // Each connection has its own error boundary; this logs what escapes them all, so
  // one connection's exception never exits the process with every client.
  installProcessBoundary();
  try {
    await proxy.listen();
  } catch (e) {
    log.error((e as Error).message);
    process.exit(1);
  }
  // A worker's takeover is its primary's, once all workers listen.
  if (role) serveAsWorker(proxy);
  else if (takeover) {
    try {
      await proxy.takeOver();
    } catch (e) {
      log.error((e as Error).message);
    }
  }
  const who = role ? `, worker ${role.index} of ${role.count}, peer_id ${role.peerId}` : proxy.peerId ? `, peer_id ${proxy.peerId}` : '';
  log.info(`pgsplice ${VERSION} started (pid ${process.pid}${who}, pool_mode ${config.pool_mode}, bypass ${config.bypass})`);
}

// File settings (logfile, pidfile) are relative to the config file's directory, like the others.
function relativeToConfig(c: Config, file: string): string {
  return path.resolve(path.dirname(c.source.file), file);
}

void yargs(hideBin(process.argv))
  .scriptName('pgsplice')
  .usage('$0 [--config FILE]  run the proxy\n$0 check --config FILE  validate a config\n$0 import pgbouncer.ini [userlist.txt] [-o FILE]  translate a PgBouncer config')
  .option('config', { alias: 'c', type: 'string', describe: 'YAML config file', default: 'pgsplice.yaml' })
  .option('takeover', { type: 'boolean', default: false, describe: 'once listening (so_reuseport), make the pgsplice already on the port drain and exit' })
  .option('log-level', { type: 'string', choices: ['error', 'warn', 'info', 'debug'], describe: 'overrides log_level' })
  .option('quiet', { alias: 'q', type: 'boolean', default: false, describe: 'with logfile set, do not also log to stderr' })
  .command(
    ['run', '$0'],
    'run the proxy',
    () => {},
    (argv) => run(argv.config as string, argv['log-level'] as LogLevel | undefined, argv.quiet as boolean, argv.takeover as boolean),
  )
  .command(
    'check',
    'validate a config file and exit',
    () => {},
    (argv) => {
      try {
        buildTls(loadConfigFile(argv.config as string)); // reads the TLS files too
        process.stdout.write('config ok\n');
      } catch (e) {
        process.stderr.write(`pgsplice: ${e instanceof ConfigError ? e.message : (e as Error).message}\n`);
        process.exit(2);
      }
    },
  )
  .command(
    'import <ini> [userlist]',
    'translate pgbouncer.ini (and userlist.txt) into pgsplice YAML; lists what it could not translate',
    (y) =>
      y
        .positional('ini', { type: 'string', describe: 'pgbouncer.ini', demandOption: true })
        .positional('userlist', { type: 'string', describe: "userlist.txt (PgBouncer's auth_file): its users are written under users:" })
        .option('output', { alias: 'o', type: 'string', describe: 'write the YAML here instead of stdout' }),
    (argv) => {
      let r;
      try {
        r = importPgbouncer(argv.ini as string, argv.userlist as string | undefined);
      } catch (e) {
        process.stderr.write(`pgsplice import: ${(e as Error).message}\n`);
        process.exit(2);
      }
      const out = argv.output as string | undefined;
      if (out) fs.writeFileSync(out, r.yaml, { mode: 0o600 }); // it may hold passwords
      else process.stdout.write(r.yaml);
      for (const u of r.untranslated) process.stderr.write(`not translated: ${u}\n`);
      // The result must load as it is: checked with the loader, as `check` would.
      try {
        parseConfig(r.yaml, out ?? path.join(path.dirname(path.resolve(argv.ini as string)), 'pgsplice.yaml'));
        process.stderr.write(`pgsplice import: ${r.untranslated.length} setting(s) not translated; the YAML is a valid pgsplice config\n`);
      } catch (e) {
        process.stderr.write(`pgsplice import: the YAML does not load: ${(e as Error).message}\n`);
        process.exit(1);
      }
    },
  )
  .version(VERSION)
  .help()
  .strict()
  .parse();

#!/usr/bin/env node
// pgsplice command line: run the proxy, check a config, read the counters.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { loadConfigFile } from './config/load';
import { ConfigError, LogLevel } from './config/types';
import { log, setLogLevel } from './observe/log';
import { Proxy } from './proxy';
import { buildTls } from './auth/tls';
import { installProcessBoundary } from './pooling/error-boundary';
import { workerCount, workerRole } from './workers/role';
import { runPrimary } from './workers/primary';
import { serveAsWorker } from './workers/worker';

const VERSION: string = require('../../package.json').version;

async function run(configPath: string, logLevel?: LogLevel, takeover = false): Promise<void> {
  let config;
  try {
    config = loadConfigFile(configPath);
  } catch (e) {
    process.stderr.write(`pgsplice: ${(e as Error).message}\n`);
    process.exit(2);
  }
  setLogLevel(logLevel ?? config.log_level);
  // workers: N > 1: this process forks the workers and serves nothing itself.
  const role = workerRole();
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
  // defaults (SIGUSR1 would open the inspector).
  process.on('SIGHUP', () => {
    try {
      log.info(`SIGHUP: ${proxy.control.reload()}`);
    } catch (e) {
      log.error(`reload failed, keeping the running configuration: ${(e as Error).message}`);
    }
  });
  process.on('SIGTERM', () => {
    log.info('SIGTERM: graceful shutdown');
    proxy.shutdownGraceful().then(() => setTimeout(() => process.exit(0), 100));
  });
  process.on('SIGUSR1', () => log.info(proxy.statsLine()));
  // PgBouncer's meaning: resume every paused database (Node's default would exit).
  process.on('SIGUSR2', () => {
    proxy.control.resume();
    log.info('SIGUSR2: resumed all databases');
  });
  // Each connection has its own error boundary; this logs what escapes them all, so
  // one connection's exception never exits the process with every client.
  installProcessBoundary();
  process.on('SIGINT', () => {
    log.info('SIGINT: fast shutdown');
    proxy.shutdownFast();
    setTimeout(() => process.exit(0), 100);
  });
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

void yargs(hideBin(process.argv))
  .scriptName('pgsplice')
  .usage('$0 [--config FILE]  run the proxy\n$0 check --config FILE  validate a config')
  .option('config', { alias: 'c', type: 'string', describe: 'YAML config file', default: 'pgsplice.yaml' })
  .option('takeover', { type: 'boolean', default: false, describe: 'once listening (so_reuseport), make the pgsplice already on the port drain and exit' })
  .option('log-level', { type: 'string', choices: ['error', 'warn', 'info', 'debug'], describe: 'overrides log_level' })
  .command(
    ['run', '$0'],
    'run the proxy',
    () => {},
    (argv) => run(argv.config as string, argv['log-level'] as LogLevel | undefined, argv.takeover as boolean),
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
  .version(VERSION)
  .help()
  .strict()
  .parse();

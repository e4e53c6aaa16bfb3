#!/usr/bin/env node
// pgsplice command line: run the proxy, check a config, read the counters.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { loadConfigFile } from './config/load';
import * as path from 'node:path';
import { ConfigError, type Config, type LogLevel } from './config/types';
import { configureLogging, log, setLogLevel, setQuiet } from './observe/log';
import { claimPidfile } from './process/pidfile';
import { installSignalHandlers } from './process/signals';
import { Proxy } from './proxy';
import { buildTls } from './auth/tls';
import { installProcessBoundary } from './pooling/error-boundary';

const VERSION: string = require('../../package.json').version;

async function run(configPath: string, logLevel: LogLevel | undefined, quiet: boolean): Promise<void> {
  let config;
  try {
    config = loadConfigFile(configPath);
  } catch (e) {
    process.stderr.write(`pgsplice: ${(e as Error).message}\n`);
    process.exit(2);
  }
  setLogLevel(logLevel ?? config.log_level);
  setQuiet(quiet);
  try {
    configureLogging(config);
    if (config.pidfile) claimPidfile(relativeToConfig(config, config.pidfile));
  } catch (e) {
    process.stderr.write(`pgsplice: ${(e as Error).message}\n`);
    process.exit(1);
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
  log.info(`pgsplice ${VERSION} started (pid ${process.pid}, pool_mode ${config.pool_mode}, bypass ${config.bypass})`);
}

// File settings (logfile, pidfile) are relative to the config file's directory, like the others.
function relativeToConfig(c: Config, file: string): string {
  return path.resolve(path.dirname(c.source.file), file);
}

void yargs(hideBin(process.argv))
  .scriptName('pgsplice')
  .usage('$0 [--config FILE]  run the proxy\n$0 check --config FILE  validate a config')
  .option('config', { alias: 'c', type: 'string', describe: 'YAML config file', default: 'pgsplice.yaml' })
  .option('log-level', { type: 'string', choices: ['error', 'warn', 'info', 'debug'], describe: 'overrides log_level' })
  .option('quiet', { alias: 'q', type: 'boolean', default: false, describe: 'with logfile set, do not also log to stderr' })
  .command(
    ['run', '$0'],
    'run the proxy',
    () => {},
    (argv) => run(argv.config as string, argv['log-level'] as LogLevel | undefined, argv.quiet as boolean),
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

// One line per event, to stderr and, with `logfile`, appended to that file too (as
// PgBouncer does; `--quiet` leaves stderr out); with `syslog`, also sent to syslog
// (src/observe/syslog.ts). log_format text: "<ISO time> <LEVEL>
// <message>"; json: one object per line {"time","level","pid","msg"}. SIGHUP reopens the
// file so that logrotate can move it away.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Config, LogFormat, LogLevel } from '../config/types';
import { SyslogSink } from './syslog';

const ORDER: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };
let current: LogLevel = 'info';
let format: LogFormat = 'text';
let toStderr = true;
let file: { path: string; fd: number } | null = null;
let syslog: SyslogSink | null = null;

export function setLogLevel(level: LogLevel): void {
  current = level;
}

export function setLogFormat(f: LogFormat): void {
  format = f;
}

let quiet = false; // --quiet: no stderr while a logfile is open

// A stderr whose reader went away (the terminal or log shipper that started us exited)
// fails every write with EPIPE. Unhandled, that error reached the uncaught-exception
// logger, whose own line failed again: the proxy spun at full CPU. Once it fails, the
// logs go only to the logfile and syslog.
let stderrGone = false;
process.stderr.on('error', () => {
  stderrGone = true;
});
const toStderrStream = (line: string): void => {
  if (!stderrGone) process.stderr.write(line);
};

export function setQuiet(q: boolean): void {
  quiet = q;
}

/** log_format and logfile from a config (start, reload, SET). logfile is relative to the
 * config file's directory; the same name is reopened (RELOAD after rotation). Throws when
 * the file cannot be opened. */
export function configureLogging(c: Pick<Config, 'log_format' | 'logfile' | 'source' | 'syslog' | 'syslog_ident' | 'syslog_facility' | 'syslog_socket'>): void {
  const nextSyslog = c.syslog ? SyslogSink.open(c) : null; // throws before anything changes
  format = c.log_format;
  setLogFile(c.logfile ? path.resolve(path.dirname(c.source.file), c.logfile) : '');
  syslog = nextSyslog;
  toStderr = !quiet || !file;
}

/** Opens (or reopens: same path after rotation, or a new one) the log file; '' closes it.
 * Throws when the file cannot be opened; the previous file stays in use then. */
export function setLogFile(path: string): void {
  if (path === '') {
    if (file) fs.closeSync(file.fd);
    file = null;
    return;
  }
  const fd = fs.openSync(path, 'a', 0o640);
  if (file) fs.closeSync(file.fd);
  file = { path, fd };
}

export function formatLine(level: LogLevel, msg: string, now = new Date()): string {
  if (format === 'json') return JSON.stringify({ time: now.toISOString(), level, pid: process.pid, msg }) + '\n';
  return `${now.toISOString()} ${level.toUpperCase()} ${msg}\n`;
}

function emit(level: LogLevel, msg: string): void {
  if (ORDER[level] > ORDER[current]) return;
  syslog?.write(level, msg); // its own framing: the daemon adds nothing we would repeat
  const line = formatLine(level, msg);
  if (toStderr || !file) toStderrStream(line);
  if (file) {
    try {
      fs.writeSync(file.fd, line);
    } catch {
      // A full disk must not stop the proxy; stderr still has the line.
      if (!toStderr) toStderrStream(line);
    }
  }
}

export const log = {
  error: (msg: string) => emit('error', msg),
  warn: (msg: string) => emit('warn', msg),
  info: (msg: string) => emit('info', msg),
  debug: (msg: string) => emit('debug', msg),
  enabled: (level: LogLevel) => ORDER[level] <= ORDER[current],
};

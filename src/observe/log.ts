// One line per event on stderr: "<ISO time> <level> <message>".
import type { LogLevel } from '../config/types';

const ORDER: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };
let current: LogLevel = 'info';

export function setLogLevel(level: LogLevel): void {
  current = level;
}

function emit(level: LogLevel, msg: string): void {
  if (ORDER[level] > ORDER[current]) return;
  process.stderr.write(`${new Date().toISOString()} ${level.toUpperCase()} ${msg}\n`);
}

export const log = {
  error: (msg: string) => emit('error', msg),
  warn: (msg: string) => emit('warn', msg),
  info: (msg: string) => emit('info', msg),
  debug: (msg: string) => emit('debug', msg),
  enabled: (level: LogLevel) => ORDER[level] <= ORDER[current],
};

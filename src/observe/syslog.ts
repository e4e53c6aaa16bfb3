// syslog (PgBouncer's keys syslog, syslog_ident, syslog_facility): each log line also goes
// to the local syslog daemon as one datagram on its unix socket (/dev/log, or
// syslog_socket), framed as glibc's syslog(3) frames it for /dev/log (RFC 3164 without the
// host name): "<PRI>Mmm dd hh:mm:ss ident[pid]: message". Node has no unix datagram
// sockets: the addon sends the datagram (sendDatagram); everything else is here.
import { constants } from 'node:os';
import { loadAddon } from '../kernel/kernel-path';
import { SYSLOG_FACILITIES, type LogLevel, type SyslogFacility } from '../config/types';

const SEVERITY: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

// One datagram's text. Local time, as syslog(3); the day is space-padded.
export function syslogLine(facility: SyslogFacility, level: LogLevel, ident: string, pid: number, msg: string, now = new Date()): string {
  const pri = SYSLOG_FACILITIES[facility] * 8 + SEVERITY[level];
  const two = (n: number) => String(n).padStart(2, '0');
  const stamp = `${MONTHS[now.getMonth()]} ${String(now.getDate()).padStart(2, ' ')} ${two(now.getHours())}:${two(now.getMinutes())}:${two(now.getSeconds())}`;
  return `<${pri}>${stamp} ${ident}[${pid}]: ${msg}`;
}

export interface SyslogSettings {
  syslog: boolean;
  syslog_ident: string;
  syslog_facility: SyslogFacility;
  syslog_socket: string;
}

type Send = (path: string, data: Buffer) => number;

// The sink log.ts writes to. A failed send (no daemon, a full queue) is reported once on
// stderr until a send succeeds again; the line itself still went to stderr / logfile.
export class SyslogSink {
  private failing = false;
  private constructor(private readonly s: SyslogSettings, private readonly send: Send) {}

  // Throws, naming the key, when the addon that sends datagrams is unavailable.
  static open(s: SyslogSettings): SyslogSink {
    let addon: { sendDatagram?: Send };
    try {
      addon = loadAddon();
    } catch (e) {
      throw new Error(`syslog: Node.js has no unix datagram sockets; sending to ${s.syslog_socket} needs the pgsplice addon, which is unavailable (${(e as Error).message}); set syslog: false or build the addon`);
    }
    if (typeof addon.sendDatagram !== 'function') throw new Error('syslog: the pgsplice addon is too old to send datagrams; rebuild it');
    return new SyslogSink(s, addon.sendDatagram.bind(addon));
  }

  write(level: LogLevel, msg: string): void {
    const err = this.send(this.s.syslog_socket, Buffer.from(syslogLine(this.s.syslog_facility, level, this.s.syslog_ident, process.pid, msg)));
    if (err === 0) {
      this.failing = false;
    } else if (!this.failing) {
      this.failing = true;
      process.stderr.write(`pgsplice: syslog: cannot send to ${this.s.syslog_socket} (${errnoName(err)}); lines are dropped there until it accepts them again\n`);
    }
  }
}

function errnoName(n: number): string {
  return Object.entries(constants.errno).find(([, v]) => v === n)?.[0] ?? `errno ${n}`;
}

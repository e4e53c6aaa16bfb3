// pidfile: written at start, removed at exit; a live process named in it stops a second
// start (as PgBouncer). A pidfile left by a process that is gone is replaced.
import * as fs from 'node:fs';

export class PidfileError extends Error {}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // exists, belongs to someone else
  }
}

/** Claims the pidfile for this process; throws PidfileError when another live pid holds it. */
export function claimPidfile(file: string): void {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = fs.openSync(file, 'wx', 0o644); // exclusive: two starts cannot both win
      fs.writeSync(fd, `${process.pid}\n`);
      fs.closeSync(fd);
      process.on('exit', () => releasePidfile(file));
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new PidfileError(`pidfile ${file}: ${(e as Error).message}`);
    }
    const text = fs.readFileSync(file, 'utf8').trim();
    const pid = Number(text);
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
      throw new PidfileError(`pidfile ${file} names process ${pid}, which is running: is another pgsplice using it?`);
    }
    fs.rmSync(file, { force: true }); // stale: its process is gone
  }
  throw new PidfileError(`pidfile ${file}: could not claim it`);
}

/** Removes the pidfile if it still names this process. */
export function releasePidfile(file: string): void {
  try {
    if (fs.readFileSync(file, 'utf8').trim() === String(process.pid)) fs.rmSync(file, { force: true });
  } catch {
    /* already gone */
  }
}

// The end of every shutdown (signal, admin SHUTDOWN, takeover drain, a worker told by its
// primary): exit 0 a moment later, so the last log lines and socket closes are flushed.
export function exitSoon(): void {
  setTimeout(() => process.exit(0), 100);
}

// Holding a connection's input while a hand-over from the kernel path settles: the socket
// is paused, what was already read is kept in order, and given back when it is over.
import type * as net from 'node:net';

export class InputHold {
  private held: Buffer[] | null = null;

  get active(): boolean {
    return this.held !== null;
  }

  // Keeps chunk if input is held now; false: the caller reads it.
  keep(chunk: Buffer): boolean {
    if (!this.held) return false;
    this.held.push(chunk);
    return true;
  }

  // Holds socket's input until `until` resolves, then hands what was kept to release.
  // A hold already in place stays the one in force.
  start(socket: net.Socket, until: Promise<void>, release: (held: Buffer[]) => void): void {
    if (this.held) return;
    this.held = [];
    socket.pause();
    // Given back however `until` ends: a hold that never ended would leave the socket paused.
    const end = (): void => {
      const held = this.held ?? [];
      this.held = null;
      release(held);
    };
    until.then(end, end);
  }
}

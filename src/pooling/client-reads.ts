import * as net from 'node:net';

// Client sockets read into one buffer that all of them share (Node's `onread`), and each
// read's bytes are copied out of it at once into a buffer of their own size: the shared
// buffer holds nothing once the read is handled, so any socket may read into it next.
// This spares Node's path for a read (a 64 KiB allocation shrunk to the bytes read, an
// ArrayBuffer, the Readable stream's push and its bookkeeping) and costs an idle client
// no buffer. A buffer per client, as server sockets have, could not be shared: the socket
// keeps reading into the one it was last given, and bytes a write has not finished
// (libuv holds a pointer to them) must not be overwritten, so idle clients would each
// hold one.
const SHARED_BYTES = 64 * 1024;
const shared = Buffer.allocUnsafeSlow(SHARED_BYTES);

// The copy goes out as a 'data' event: the client's handlers, switching to the TLS
// socket (which reads the TCP socket itself once it wraps it) and pause() work as for
// a socket Node reads.
const onread = {
  buffer: (): Buffer => shared,
  callback(this: net.Socket, n: number, buf: Uint8Array): true {
    const chunk = Buffer.allocUnsafe(n); // (small ones are slices of Node's pool)
    chunk.set(n === buf.length ? buf : buf.subarray(0, n));
    this.emit('data', chunk);
    return true; // read on (pause() stops reading)
  },
};

type Internals = { _handle: unknown; _server: net.Server | null; server: net.Server | null };

// Gives a socket that a net.Server accepted (with pauseOnConnect: nothing was read yet) a
// new net.Socket over the same handle (file descriptor) that reads as above. net.Server
// makes its sockets without `onread`; net.Socket takes it with a handle. The server
// counts its connections down when a socket it made closes: the new one takes that over.
export function withSharedReads(accepted: net.Socket): net.Socket {
  const a = accepted as unknown as Internals;
  if (!a._handle || accepted.destroyed) return accepted;
  const sock = new net.Socket({ handle: a._handle, readable: true, writable: true, onread } as net.SocketConstructorOpts);
  const s = sock as unknown as Internals;
  s._server = s.server = a._server;
  a._server = a.server = null;
  a._handle = null; // the old socket is dropped unused
  return sock;
}

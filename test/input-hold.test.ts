// InputHold: a connection's input held while a hand-over from the kernel path settles.
// What was read meanwhile comes back in order, once, however the hand-over ends: a hold
// that never ended would leave the client's socket paused and the client hung.
import t from 'tap';
import * as net from 'node:net';
import { InputHold } from '../src/pooling/input-hold';

async function socketPair(t: Tap.Test): Promise<net.Socket> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const peer = await accepted;
  t.teardown(() => {
    client.destroy();
    peer.destroy();
    server.close();
  });
  return peer;
}

const settle = () => new Promise((r) => setImmediate(r));

const endings = [
  { name: 'the hand-over settles', end: (d: { resolve: () => void; reject: (e: Error) => void }) => d.resolve() },
  { name: 'the hand-over fails', end: (d: { resolve: () => void; reject: (e: Error) => void }) => d.reject(new Error('lost')) },
];

for (const { name, end } of endings) {
  t.test(`held input comes back in order when ${name}`, async (t) => {
    const sock = await socketPair(t);
    const hold = new InputHold();
    let resolve!: () => void;
    let reject!: (e: Error) => void;
    const until = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const released: Buffer[][] = [];
    t.equal(hold.keep(Buffer.from('x')), false, 'nothing is kept before a hold');
    hold.start(sock, until, (held) => released.push(held));
    t.ok(hold.active, 'the hold is on');
    t.ok(sock.isPaused(), 'the socket is paused while held');
    t.ok(hold.keep(Buffer.from('a')) && hold.keep(Buffer.from('b')), 'chunks read meanwhile are kept');
    hold.start(sock, new Promise<void>(() => undefined), () => released.push([Buffer.from('second hold')]));
    t.ok(hold.keep(Buffer.from('c')), 'a second start keeps the hold in force');
    end({ resolve, reject });
    await settle();
    t.same(released.map((h) => h.map(String)), [['a', 'b', 'c']], 'released once, in order');
    t.notOk(hold.active, 'the hold is over');
    t.equal(hold.keep(Buffer.from('d')), false, 'later chunks are read at once');
  });
}

// The connection state machines (src/pooling/connection-state.ts): which moves are legal, that an
// illegal one is reported, and that the connections' named moves go through the check.
// (Every proxy the other suites start also fails its test at teardown if its log shows
// an illegal transition: test/helpers/proxy.ts.)
import t from 'tap';
import {
  CLIENT_MOVES, ClientState, SERVER_MOVES, ServerState, StateOf, illegalMoves, isLegalClientMove, isLegalServerMove,
} from '../src/pooling/connection-state';
import * as net from 'node:net';
import { ClientConnection, ClientHost } from '../src/pooling/client-connection';
import { ServerConnection } from '../src/pooling/server-connection';
import { USER_SPACE_ONLY } from '../src/pooling/kernel-host';
import { setLogLevel } from '../src/observe/log';

setLogLevel('error');
const C = ClientState;
const S = ServerState;

t.test('client moves', async (t) => {
  const cases: Array<[ClientState, ClientState, boolean, string]> = [
    [C.Startup, C.Auth, true, 'startup packet read'],
    [C.Startup, C.Idle, false, 'no data phase without authentication'],
    [C.Auth, C.AuthLookup, true, 'auth_query lookup'],
    [C.AuthLookup, C.Auth, true, 'the lookup answered'],
    [C.Auth, C.Login, true, 'authenticated'],
    [C.Login, C.Idle, true, 'login done'],
    [C.Login, C.Kernel, false, 'the kernel takes only idle clients'],
    [C.Idle, C.Waiting, true, 'a request'],
    [C.Idle, C.Kernel, true, 'moved to the kernel'],
    [C.Waiting, C.Active, true, 'got a server'],
    [C.Waiting, C.KernelBound, true, 'request bound in the kernel, its bytes still come here'],
    [C.Waiting, C.Kernel, false, 'a bound request is KernelBound first'],
    [C.Idle, C.KernelBound, true, 'passed up while the kernel carries its transaction'],
    [C.KernelBound, C.Kernel, true, 'quiet again: its bytes go to the kernel too'],
    [C.KernelBound, C.Idle, true, 'its bytes came up, or the kernel released its server'],
    [C.KernelBound, C.Active, true, 'its pair handed to user space'],
    [C.KernelBound, C.Waiting, false, 'its bytes go to the bound server first'],
    [C.Kernel, C.KernelBound, false, 'bound again only after being passed up (Idle)'],
    [C.Active, C.Idle, true, 'transaction end'],
    [C.Active, C.Kernel, false, 'a linked client is not moved to the kernel'],
    [C.Kernel, C.Idle, true, 'the kernel passed its bytes up'],
    [C.Kernel, C.Active, true, 'the kernel handed over its pair'],
    [C.Closed, C.Idle, false, 'closed is final'],
  ];
  for (const [from, to, ok, what] of cases) t.equal(isLegalClientMove(from, to), ok, `${from} -> ${to}: ${what}`);
  for (const s of Object.values(C)) if (s !== C.Closed) t.ok(CLIENT_MOVES[s].includes(C.Closed), `${s} can close`);
});

t.test('server moves', async (t) => {
  const cases: Array<[ServerState, ServerState, boolean, string]> = [
    [S.Connecting, S.Login, true, 'connected'],
    [S.Login, S.Idle, true, 'logged in'],
    [S.Connecting, S.Idle, false, 'no use before login'],
    [S.Idle, S.Active, true, 'linked to a client'],
    [S.Idle, S.Kernel, true, 'to the kernel idle stack'],
    [S.Active, S.Kernel, false, 'a linked server is not given to the kernel'],
    [S.Kernel, S.Idle, true, 'back from the kernel'],
    [S.Kernel, S.Active, false, 'back from the kernel through Idle only'],
    [S.Internal, S.Active, true, 'internal query of a linked server done'],
    [S.Closed, S.Idle, false, 'closed is final'],
  ];
  for (const [from, to, ok, what] of cases) t.equal(isLegalServerMove(from, to), ok, `${from} -> ${to}: ${what}`);
  for (const s of Object.values(S)) if (s !== S.Closed) t.ok(SERVER_MOVES[s].includes(S.Closed), `${s} can close`);
});

t.test('an illegal move is reported', async (t) => {
  const before = illegalMoves.count;
  const client = new StateOf('C-test', CLIENT_MOVES, C.Idle);
  client.to(C.Waiting);
  t.equal(client.current, C.Waiting, 'a legal move is made');
  t.equal(illegalMoves.count, before, 'and reports nothing');
  const server = new StateOf('S-test', SERVER_MOVES, S.Closed);
  server.to(S.Idle);
  t.equal(illegalMoves.count, before + 1, 'an illegal one is counted (and logged)');
});

t.test("ServerConnection's named moves are checked", async (t) => {
  const server = new ServerConnection({ host: '127.0.0.1', port: 1, dbname: 'd', user: 'u', connectTimeout: 1 }, USER_SPACE_ONLY);
  t.equal(server.state, S.Connecting);
  const before = illegalMoves.count;
  server.enteredKernel(); // a server still connecting cannot go to the kernel
  t.equal(illegalMoves.count, before + 1, 'Connecting -> Kernel is reported');
  server.leftKernel();
  t.equal(server.state, S.Idle);
  server.enteredKernel();
  t.equal(illegalMoves.count, before + 1, 'Idle -> Kernel -> Idle is legal');
});

t.test("ClientConnection's kernel moves are checked, and its bound server goes with KernelBound", async (t) => {
  // A client that never connects: only its state machine is used (no login timer, no pool).
  const host = { config: { client_login_timeout: 0 }, kernel: USER_SPACE_ONLY, clientClosed: () => {} } as unknown as ClientHost;
  const client = new ClientConnection(new net.Socket(), host);
  const server = new ServerConnection({ host: '127.0.0.1', port: 1, dbname: 'd', user: 'u', connectTimeout: 1 }, USER_SPACE_ONLY);
  t.equal(client.state, C.Startup);
  t.equal(client.kernelServer, null, 'no bound server outside KernelBound');
  const before = illegalMoves.count;
  client.boundInKernel(server); // the kernel binds only clients that are logged in
  t.equal(illegalMoves.count, before + 1, 'Startup -> KernelBound is reported');
  t.equal(client.state, C.KernelBound, 'and still made');
  t.equal(client.kernelServer, server, 'the bound server is part of the state');
  client.enteredKernel();
  t.equal(illegalMoves.count, before + 1, 'KernelBound -> Kernel is legal');
  t.equal(client.kernelServer, null, 'leaving KernelBound drops the bound server');
  client.close('test over', true);
  t.equal(client.state, C.Closed);
  server.close('test over', false);
});

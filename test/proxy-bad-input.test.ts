// Bad input from clients: each gets an ErrorResponse with the right SQLSTATE and a
// closed connection, and the proxy keeps serving everyone else (checked after each).
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy, ProxyHandle } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, waitUntil, backendCount } from './helpers/cluster';
import { RawConn, Msg, int32, parseFields, rawStartup, startupMessage, message, login, query, simpleQuery, sslRequest } from './helpers/pgwire';

interface Outcome {
  errors: Record<string, string>[];
  closed: boolean;
  msgs: Msg[];
}

// Sends bytes on a fresh (not logged in) connection and collects what comes back until close.
async function sendRaw(proxy: ProxyHandle, bytes: Buffer, opts: { endAfter?: boolean; waitMs?: number } = {}): Promise<Outcome> {
  const conn = await RawConn.connect(proxy.port);
  conn.write(bytes);
  if (opts.endAfter) conn.end();
  const r = await conn.readAllUntilClose(opts.waitMs ?? 5000);
  conn.destroy();
  return { errors: r.msgs.filter((m) => m.type === 'E').map((m) => parseFields(m.body)), closed: r.closed, msgs: r.msgs };
}

// Logs in, then sends bytes; collects until close.
async function afterLogin(proxy: ProxyHandle, bytes: Buffer, opts: { endAfter?: boolean; waitMs?: number } = {}): Promise<Outcome> {
  const s = await login(proxy.port, { user: 'app', password: 'app-pw' });
  s.conn.write(bytes);
  if (opts.endAfter) s.conn.end();
  const r = await s.conn.readAllUntilClose(opts.waitMs ?? 5000);
  s.conn.destroy();
  return { errors: r.msgs.filter((m) => m.type === 'E').map((m) => parseFields(m.body)), closed: r.closed, msgs: r.msgs };
}

t.test('bad input', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    t.test(`each bad input is refused and the proxy keeps serving [bypass=${bypass}]`, async (t) => {
      // Pool size 1: a server left stuck by a bad client would block the health check.
      const proxy = await startProxy(t, await proxyConfig(c, { bypass, default_pool_size: 1, query_wait_timeout: 5 }));
      const stillServing = async (t: tap.Test, label: string) => {
        t.equal(proxy.exited(), undefined, `${label}: proxy still running`);
        const pg = await pgClient(t, proxy);
        const r = await pg.query('SELECT $1::text AS v', ['alive']);
        t.same(r.rows, [{ v: 'alive' }], `${label}: a normal client still works`);
        await pg.end();
        // A server the bad client left in a transaction must be rolled back or closed
        // (a closed backend may show for a moment while it exits).
        const left = await waitUntil(() => backendCount(c, 'app', `state LIKE 'idle in transaction%'`) === 0, 3000, 'no idle-in-transaction server').then(() => 0, () => backendCount(c, 'app', `state LIKE 'idle in transaction%'`));
        t.equal(left, 0, `${label}: no server is left idle in transaction`);
      };
      const expectError = (t: tap.Test, o: Outcome, codes: RegExp, label: string) => {
        t.ok(o.errors.length >= 1, `${label}: an ErrorResponse is sent (got ${o.msgs.map((m) => m.type).join('') || 'nothing'})`);
        if (o.errors[0]) {
          t.match(o.errors[0].C, codes, `${label}: SQLSTATE ${o.errors[0].C} (${o.errors[0].M})`);
          t.ok((o.errors[0].M ?? '').length > 5, `${label}: the message says something`);
          t.match(o.errors[0].S ?? o.errors[0].V, /FATAL|ERROR/, `${label}: severity`);
        }
        t.ok(o.closed, `${label}: connection closed`);
      };

      t.test('absurd startup length (2 GB)', async (t) => {
        const o = await sendRaw(proxy, rawStartup(Buffer.from('user\0app\0'), undefined, 0x7ffffff0));
        expectError(t, o, /^08P01$/, 'absurd startup length');
        await stillServing(t, 'after absurd startup length');
      });
      t.test('startup length smaller than the header', async (t) => {
        const o = await sendRaw(proxy, rawStartup(Buffer.alloc(0), undefined, 4));
        expectError(t, o, /^08P01$/, 'startup length 4');
        await stillServing(t, 'after tiny startup length');
      });
      t.test('HTTP request on the PostgreSQL port', async (t) => {
        const o = await sendRaw(proxy, Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
        t.ok(o.closed, 'connection closed');
        if (o.errors[0]) t.match(o.errors[0].C, /^(08P01|0A000)$/, `SQLSTATE ${o.errors[0].C}`);
        await stillServing(t, 'after HTTP garbage');
      });
      t.test('truncated startup packet, then EOF', async (t) => {
        const full = startupMessage({ user: 'app', database: 'app' });
        const o = await sendRaw(proxy, full.subarray(0, 12), { endAfter: true });
        t.ok(o.closed, 'connection closed');
        for (const e of o.errors) t.equal(e.C, '08P01', `any error sent is 08P01 (${e.M})`);
        await stillServing(t, 'after truncated startup');
      });
      t.test('startup parameters not NUL-terminated', async (t) => {
        const o = await sendRaw(proxy, rawStartup(Buffer.from('user\0app\0database\0ap')));
        expectError(t, o, /^08P01$/, 'unterminated startup parameters');
        await stillServing(t, 'after unterminated startup parameters');
      });
      t.test('startup without a user', async (t) => {
        const o = await sendRaw(proxy, startupMessage({ database: 'app' } as Record<string, string>));
        expectError(t, o, /^(08P01|28000)$/, 'no user');
        await stillServing(t, 'after startup without user');
      });
      t.test('unsupported protocol version 2.0 and 4.0', async (t) => {
        for (const v of [0x00020000, 0x00040000]) {
          const o = await sendRaw(proxy, startupMessage({ user: 'app', database: 'app' }, v));
          expectError(t, o, /^0A000$/, `protocol ${v >> 16}.0`);
          if (o.errors[0]) t.match(o.errors[0].M, /protocol/i, 'the message mentions the protocol');
        }
        await stillServing(t, 'after bad protocol versions');
      });
      t.test('two SSLRequests in a row', async (t) => {
        const conn = await RawConn.connect(proxy.port);
        conn.write(sslRequest());
        t.equal((await conn.readBytes(1)).toString('latin1'), 'N', 'first SSLRequest -> N');
        conn.write(sslRequest());
        const r = await conn.readAllUntilClose(5000);
        const errs = r.msgs.filter((m) => m.type === 'E').map((m) => parseFields(m.body));
        t.ok(r.closed, 'second SSLRequest: connection closed');
        t.ok(errs.length >= 1, 'second SSLRequest: an ErrorResponse (PostgreSQL: 0A000 unsupported frontend protocol 1234.5679)');
        for (const e of errs) t.match(e.C, /^(08P01|0A000)$/, `second SSLRequest: ${e.C} (${e.M})`);
        conn.destroy();
        await stillServing(t, 'after double SSLRequest');
      });
      t.test('wrong message instead of a password', async (t) => {
        const conn = await RawConn.connect(proxy.port);
        conn.write(startupMessage({ user: 'app', database: 'app' }));
        const auth = await conn.readMessage();
        t.equal(auth.type, 'R', 'authentication request');
        conn.write(query('SELECT 1'));
        const r = await conn.readAllUntilClose(5000);
        const errs = r.msgs.filter((m) => m.type === 'E').map((m) => parseFields(m.body));
        t.ok(errs.length >= 1, 'an ErrorResponse');
        if (errs[0]) t.match(errs[0].C, /^(08P01|28P01)$/, `SQLSTATE ${errs[0].C} (${errs[0].M})`);
        t.ok(r.closed, 'connection closed');
        conn.destroy();
        await stillServing(t, 'after a query instead of a password');
      });
      t.test('absurd password message length', async (t) => {
        const conn = await RawConn.connect(proxy.port);
        conn.write(startupMessage({ user: 'app', database: 'app' }));
        await conn.readMessage();
        conn.write(Buffer.concat([Buffer.from('p'), int32(0x7ffffff0), Buffer.from('xx')]));
        const r = await conn.readAllUntilClose(5000);
        const errs = r.msgs.filter((m) => m.type === 'E').map((m) => parseFields(m.body));
        t.ok(errs.length >= 1, 'an ErrorResponse');
        if (errs[0]) t.equal(errs[0].C, '08P01', `SQLSTATE ${errs[0].C} (${errs[0].M})`);
        t.ok(r.closed, 'connection closed');
        conn.destroy();
        await stillServing(t, 'after absurd password length');
      });
      t.test('unknown message type after login', async (t) => {
        const o = await afterLogin(proxy, message('z', Buffer.from('garbage')));
        expectError(t, o, /^08P01$/, "message type 'z'");
        await stillServing(t, 'after unknown message type');
      });
      t.test('absurd message length after login', async (t) => {
        const o = await afterLogin(proxy, Buffer.concat([Buffer.from('Q'), int32(0x7ffffff0), Buffer.from('SELECT 1\0')]));
        expectError(t, o, /^08P01$/, 'absurd Query length');
        await stillServing(t, 'after absurd message length');
      });
      t.test('message length below 4 after login', async (t) => {
        const o = await afterLogin(proxy, Buffer.concat([Buffer.from('Q'), int32(2)]));
        expectError(t, o, /^08P01$/, 'Query length 2');
        await stillServing(t, 'after negative-body message');
      });
      t.test('negative message length after login', async (t) => {
        const o = await afterLogin(proxy, Buffer.concat([Buffer.from('Q'), int32(-5)]));
        expectError(t, o, /^08P01$/, 'Query length -5');
        await stillServing(t, 'after negative length');
      });
      t.test('truncated message after login, then EOF', async (t) => {
        // Length says 100, 10 bytes follow, then the client half-closes.
        const o = await afterLogin(proxy, Buffer.concat([Buffer.from('Q'), int32(100), Buffer.from('SELECT 1; ')]), { endAfter: true });
        t.ok(o.closed, 'connection closed');
        for (const e of o.errors) t.equal(e.C, '08P01', `any error sent is 08P01 (${e.M})`);
        await stillServing(t, 'after truncated message');
      });
      t.test('truncated message inside a transaction, then EOF', async (t) => {
        const s = await login(proxy.port, { user: 'app', password: 'app-pw' });
        const r = await simpleQuery(s.conn, 'BEGIN');
        t.equal(r.status, 'T', 'in a transaction');
        s.conn.write(Buffer.concat([Buffer.from('Q'), int32(100), Buffer.from('INSERT')]));
        s.conn.end();
        t.ok(await s.conn.waitClosed(5000), 'connection closed');
        s.conn.destroy();
        await stillServing(t, 'after truncated message in a transaction');
      });
      t.test('malformed Bind (parameter count lies)', async (t) => {
        // Bind claiming 5 parameters but carrying none: PostgreSQL or the proxy rejects it with 08P01.
        const s = await login(proxy.port, { user: 'app', password: 'app-pw' });
        const body = Buffer.concat([Buffer.from('\0\0'), Buffer.from([0, 0, 0, 5])]);
        s.conn.write(Buffer.concat([message('P', Buffer.from('\0SELECT 1\0\0\0')), message('B', body), message('S')]));
        const msgs: Msg[] = [];
        try {
          for (;;) {
            const m = await s.conn.readMessage(5000);
            msgs.push(m);
            if (m.type === 'Z') break;
          }
        } catch {
          /* closed */
        }
        const errs = msgs.filter((m) => m.type === 'E').map((m) => parseFields(m.body));
        t.ok(errs.length >= 1, 'an ErrorResponse');
        if (errs[0]) t.equal(errs[0].C, '08P01', `SQLSTATE ${errs[0].C} (${errs[0].M})`);
        s.conn.destroy();
        await stillServing(t, 'after malformed Bind');
      });
      t.test('a burst of bad connections', async (t) => {
        const bursts = Array.from({ length: 30 }, (_, i) =>
          sendRaw(proxy, i % 2 ? Buffer.from('\xff\xff\xff\xff\x00\x03\x00\x00', 'latin1') : Buffer.concat([int32(0x7fffffff), int32(1234)]), { waitMs: 5000 }),
        );
        const outs = await Promise.all(bursts);
        t.ok(outs.every((o) => o.closed), 'all 30 closed');
        await stillServing(t, 'after a burst of bad connections');
      });
      t.test('the proxy logged the bad input', async (t) => {
        t.match(proxy.logs(), /08P01|protocol|invalid|malformed/i, 'log mentions the protocol errors');
      });
    });
  }
});

import t from 'tap';
import { createHash } from 'crypto';
import {
  AuthProtocolError,
  ScramClientSession,
  ScramServerSession,
  makeScramVerifier,
  parseScramVerifier,
  isScramVerifier,
  saslprep,
  scramKeysFrom,
} from '../src/auth/scram';
import { serverCredentialFrom } from '../src/auth/auth-query';
import { md5PasswordHash, md5Response, verifyMd5Response, isMd5Hash } from '../src/auth/md5';
import { chooseAuthMethod, classifySecret, verifyPlainPassword } from '../src/auth/verifier';

// RFC 7677 section 3.
const RFC = {
  user: 'user',
  password: 'pencil',
  clientNonce: 'rOprNGfwEbeRWgbNEkqO',
  serverNoncePart: '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0',
  salt: 'W22ZaJ0SNY7soEsUEjb6gQ==',
  clientFirst: 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO',
  serverFirst: 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096',
  clientFinal:
    'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  serverFinal: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
};
const b = (s: string) => Buffer.from(s, 'latin1');

function rfcServer(): ScramServerSession {
  const verifier = makeScramVerifier(RFC.password, 4096, Buffer.from(RFC.salt, 'base64'));
  return new ScramServerSession(verifier, { serverNonce: RFC.serverNoncePart });
}

t.test('RFC 7677 test vector: client side', async (t) => {
  const c = new ScramClientSession(RFC.user, RFC.password, { nonce: RFC.clientNonce });
  t.equal(c.clientFirst().toString(), RFC.clientFirst);
  t.equal(c.handleServerFirst(b(RFC.serverFirst)).toString(), RFC.clientFinal);
  t.doesNotThrow(() => c.verifyServerFinal(b(RFC.serverFinal)));
});

t.test('RFC 7677 test vector: server side', async (t) => {
  const s = rfcServer();
  t.equal(s.handleClientFirst(b(RFC.clientFirst)).toString(), RFC.serverFirst);
  const r = s.handleClientFinal(b(RFC.clientFinal));
  t.ok(r.ok);
  if (r.ok) t.equal(r.serverFinal.toString(), RFC.serverFinal);
});

t.test('client rejects a wrong server signature', async (t) => {
  const c = new ScramClientSession(RFC.user, RFC.password, { nonce: RFC.clientNonce });
  c.clientFirst();
  c.handleServerFirst(b(RFC.serverFirst));
  t.throws(() => c.verifyServerFinal(b('v=' + Buffer.alloc(32).toString('base64'))), AuthProtocolError);
  const c2 = new ScramClientSession(RFC.user, RFC.password, { nonce: RFC.clientNonce });
  c2.clientFirst();
  c2.handleServerFirst(b(RFC.serverFirst));
  t.throws(() => c2.verifyServerFinal(b('e=invalid-proof')), /invalid-proof/);
});

t.test('client rejects a server nonce that does not extend its own', async (t) => {
  const c = new ScramClientSession('u', 'p', { nonce: 'abc' });
  c.clientFirst();
  t.throws(() => c.handleServerFirst(b('r=xyzdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096')), AuthProtocolError);
});

function roundTrip(secret: string, password: string, user = 'alice') {
  const s = new ScramServerSession(secret);
  const c = new ScramClientSession(user, password);
  const sf = s.handleClientFirst(c.clientFirst());
  const cf = c.handleServerFirst(sf);
  const r = s.handleClientFinal(cf);
  if (r.ok) c.verifyServerFinal(r.serverFinal);
  return r;
}

t.test('round trip with a plain password', async (t) => {
  t.ok(roundTrip('s3cret', 's3cret').ok);
  t.ok(roundTrip('s3cret', 's3cret').ok, 'second login (cached derivation) works too');
  const bad = roundTrip('s3cret', 'wrong');
  t.equal(bad.ok, false);
  if (!bad.ok) t.match(bad.reason, /password/);
});

t.test('round trip with a verifier', async (t) => {
  const v = makeScramVerifier('hunter2');
  t.ok(roundTrip(v, 'hunter2').ok);
  t.equal(roundTrip(v, 'hunter3').ok, false);
  const r = roundTrip(v, 'hunter2');
  t.ok(r.ok && r.clientKey.length === 32, 'exposes ClientKey on success');
});

t.test('SCRAM pass-through: a ClientKey from one login logs in to a server with the same verifier', async (t) => {
  const v = makeScramVerifier('hunter2');
  const first = roundTrip(v, 'hunter2');
  if (!first.ok) return t.fail('first login');
  const keys = scramKeysFrom(v, first.clientKey);
  // The proxy, as a client of a PostgreSQL that stores the same verifier.
  const server = new ScramServerSession(v);
  const client = new ScramClientSession('u', keys);
  const sf = server.handleClientFirst(client.clientFirst());
  const res = server.handleClientFinal(client.handleServerFirst(sf));
  t.ok(res.ok, 'the server accepts the proof made from the keys');
  if (res.ok) t.doesNotThrow(() => client.verifyServerFinal(res.serverFinal), 'and the client checks the server signature');
  // A server that stores another verifier (password changed): refused before any proof is sent.
  const other = new ScramServerSession(makeScramVerifier('hunter2'));
  const c2 = new ScramClientSession('u', keys);
  const sf2 = other.handleClientFirst(c2.clientFirst());
  t.throws(() => c2.handleServerFirst(sf2), /different verifier/);
  // What a login teaches about the server login.
  t.same(serverCredentialFrom(v, { password: 'hunter2' }), { password: 'hunter2' }, 'cleartext: the password itself');
  t.same(serverCredentialFrom('md5' + '0'.repeat(32), {}), { password: 'md5' + '0'.repeat(32) }, 'md5 hash: the hash');
  t.same(serverCredentialFrom(v, { clientKey: first.clientKey }), { scramKeys: keys }, 'SCRAM proof: pass-through keys');
  t.equal(serverCredentialFrom(v, {}), undefined, 'trust against a verifier: nothing');
});

t.test('user name with , and = and non-ASCII password', async (t) => {
  t.ok(roundTrip('pässwörd', 'pässwörd', 'a,b=c').ok);
  // SASLprep: NFKC maps the ligature "ﬁ" to "fi", so both spell the same password.
  t.equal(saslprep('\uFB01sh'), 'fish');
  t.ok(roundTrip(makeScramVerifier('fish€'), '\uFB01sh€').ok);
  t.equal(saslprep('plain ascii\x01'), 'plain ascii\x01', 'ASCII passes through untouched');
  t.equal(saslprep('a\u00A0b\u00ADc'), 'a bc', 'non-ASCII space mapped, soft hyphen removed');
});

t.test('verifier parse/format', async (t) => {
  const v = makeScramVerifier('pencil', 4096, Buffer.from(RFC.salt, 'base64'));
  const p = parseScramVerifier(v);
  t.equal(p.iterations, 4096);
  t.equal(p.salt.toString('base64'), RFC.salt);
  t.equal(p.storedKey.length, 32);
  t.ok(isScramVerifier(v));
  t.notOk(isScramVerifier('pencil'));
  t.throws(() => parseScramVerifier('SCRAM-SHA-256$4096:abc$def'));
  t.throws(() => parseScramVerifier('SCRAM-SHA-256$0:' + RFC.salt + '$' + p.storedKey.toString('base64') + ':' + p.serverKey.toString('base64')));
  t.throws(() => new ScramServerSession('md5' + '0'.repeat(32)), /md5/);
});

t.test('gs2 header handling', async (t) => {
  // "y,," accepted; the final message must echo it (c=eSws).
  const s = rfcServer();
  s.handleClientFirst(b('y,,n=user,r=rOprNGfwEbeRWgbNEkqO'));
  t.throws(() => s.handleClientFinal(b(RFC.clientFinal)), AuthProtocolError, 'c=biws does not match y,,');

  t.throws(() => rfcServer().handleClientFirst(b('p=tls-server-end-point,,n=,r=abc')), /channel binding/);
  t.throws(() => rfcServer().handleClientFirst(b('n,a=bob,n=,r=abc')), /authorization identity/);
  t.throws(() => rfcServer().handleClientFirst(b('n,,m=ext,n=,r=abc')), /extensions/);
});

t.test('malformed messages throw AuthProtocolError', async (t) => {
  const firsts = ['', 'x,,n=,r=abc', 'n,n=,r=abc', 'n,,n=', 'n,,r=abc', 'n,,n=,r=', 'n,,n=,r=a b', 'n,,garbage'];
  for (const m of firsts) {
    t.throws(() => rfcServer().handleClientFirst(b(m)), AuthProtocolError, JSON.stringify(m));
  }
  const finals = [
    '',
    'r=x,p=abc',
    'c=biws,r=wrongnonce,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
    'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0',
    'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=!!notbase64',
    'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA',
    'c=bad*,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  ];
  for (const m of finals) {
    const s = rfcServer();
    s.handleClientFirst(b(RFC.clientFirst));
    t.throws(() => s.handleClientFinal(b(m)), AuthProtocolError, JSON.stringify(m));
  }
  t.throws(() => rfcServer().handleClientFinal(b(RFC.clientFinal)), AuthProtocolError, 'final before first');
  const s = rfcServer();
  s.handleClientFirst(b(RFC.clientFirst));
  t.throws(() => s.handleClientFirst(b(RFC.clientFirst)), AuthProtocolError, 'first twice');
});

t.test('md5', async (t) => {
  // PostgreSQL: rolpassword = 'md5' || md5(password || username). Computed independently:
  // md5('pencil' || 'user') = md5('penciluser').
  const byHand = 'md5' + createHash('md5').update('penciluser').digest('hex');
  t.equal(md5PasswordHash('user', 'pencil'), byHand);
  // Known constant: md5("postgres" + "postgres") as commonly found in pg_authid dumps.
  t.equal(md5PasswordHash('postgres', 'postgres'), 'md53175bce1d3201d16594cebf9d7eb3f9d');
  t.ok(isMd5Hash(byHand));
  const salt = Buffer.from([0x01, 0x02, 0x03, 0x04]);
  const inner = byHand.slice(3);
  const expected = 'md5' + createHash('md5').update(Buffer.concat([Buffer.from(inner), salt])).digest('hex');
  t.equal(md5Response('user', 'pencil', salt), expected, 'from the plain password');
  t.equal(md5Response('user', byHand, salt), expected, 'from the stored hash');
  t.ok(verifyMd5Response('pencil', 'user', salt, expected));
  t.ok(verifyMd5Response(byHand, 'user', salt, expected));
  t.ok(verifyMd5Response(byHand, 'user', salt, Buffer.from(expected + '\0')), 'C string terminator tolerated');
  t.notOk(verifyMd5Response('pencil', 'user', salt, md5Response('user', 'pen', salt)));
  t.notOk(verifyMd5Response('pencil', 'other', salt, expected), 'user name is part of the hash');
  t.notOk(verifyMd5Response('pencil', 'user', Buffer.from([4, 3, 2, 1]), expected), 'salt matters');
  t.notOk(verifyMd5Response('pencil', 'user', salt, 'md5short'));
  t.notOk(verifyMd5Response(makeScramVerifier('pencil'), 'user', salt, expected));
});

t.test('choosing a method and plain checks', async (t) => {
  const v = makeScramVerifier('pw');
  const h = md5PasswordHash('u', 'pw');
  t.equal(classifySecret(v), 'scram');
  t.equal(classifySecret(h), 'md5');
  t.equal(classifySecret('pw'), 'plain');
  t.same(chooseAuthMethod('md5', v), { method: 'scram-sha-256' });
  t.same(chooseAuthMethod('md5', 'pw'), { method: 'md5' });
  t.ok('error' in chooseAuthMethod('scram-sha-256', h));
  t.same(chooseAuthMethod('trust', undefined), { method: 'trust' });
  for (const stored of ['pw', v, h]) {
    t.ok(verifyPlainPassword(stored, 'u', 'pw'), classifySecret(stored));
    t.notOk(verifyPlainPassword(stored, 'u', 'px'), classifySecret(stored));
  }
});

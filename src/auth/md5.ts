// PostgreSQL's md5 password scheme.
//   stored hash:  "md5" + hex(md5(password || username))
//   wire reply:   "md5" + hex(md5(hex(md5(password || username)) || salt))   (salt: 4 random bytes)
// The stored value may be the plain password or the "md5..." hash; both work.

import { createHash, timingSafeEqual } from 'crypto';

const MD5_HASH_RE = /^md5[0-9a-f]{32}$/;

function md5hex(...parts: Array<string | Buffer>): string {
  const h = createHash('md5');
  for (const p of parts) h.update(p);
  return h.digest('hex');
}

/** True when s looks like a stored md5 hash ("md5" + 32 lowercase hex digits), as PostgreSQL decides it. */
export function isMd5Hash(s: string): boolean {
  return MD5_HASH_RE.test(s);
}

/** "md5" + hex(md5(password + user)): what PostgreSQL stores in pg_authid for an md5 password. */
export function md5PasswordHash(user: string, password: string): string {
  return 'md5' + md5hex(Buffer.from(password, 'utf8'), Buffer.from(user, 'utf8'));
}

/** What a client sends in PasswordMessage after AuthenticationMD5Password(salt). */
export function md5Response(user: string, passwordOrHash: string, salt: Buffer): string {
  if (salt.length !== 4) throw new Error('md5 salt must be 4 bytes');
  const hash = isMd5Hash(passwordOrHash) ? passwordOrHash : md5PasswordHash(user, passwordOrHash);
  return 'md5' + md5hex(Buffer.from(hash.slice(3), 'latin1'), salt);
}

/**
 * Check a client's md5 reply against the stored secret (plain password or md5 hash), in
 * constant time. A SCRAM verifier cannot check an md5 reply: returns false (the caller
 * should have chosen SCRAM for such a user; see verifier.ts chooseAuthMethod).
 */
export function verifyMd5Response(
  storedPasswordOrHash: string,
  user: string,
  salt: Buffer,
  response: string | Buffer,
): boolean {
  if (storedPasswordOrHash.startsWith('SCRAM-SHA-256$')) return false;
  const expected = Buffer.from(md5Response(user, storedPasswordOrHash, salt), 'latin1');
  let got = typeof response === 'string' ? Buffer.from(response, 'latin1') : response;
  // PasswordMessage carries a C string: tolerate the terminator if the caller left it on.
  if (got.length > 0 && got[got.length - 1] === 0) got = got.subarray(0, got.length - 1);
  if (got.length !== expected.length) {
    timingSafeEqual(expected, expected);
    return false;
  }
  return timingSafeEqual(got, expected);
}

// What kind of secret a user has, and which method authenticates a client with it,
// following PostgreSQL: an md5 method with a SCRAM verifier stored does SCRAM; a SCRAM
// method with only an md5 hash stored cannot work.

import type { AuthType, Config } from '../config/types';
import { hbaDecision, type HbaClient } from './hba';
import { createHash, timingSafeEqual } from 'crypto';
import { isMd5Hash, md5PasswordHash } from './md5';
import { constantTimeEqual, ScramServerSession } from './scram';

export type SecretKind = 'scram' | 'md5' | 'plain';
export type AuthMethod = 'scram-sha-256' | 'md5' | 'plain' | 'trust';
// An auth_type that names a method (hba picks one of these per client).
export type ClientAuthType = Exclude<AuthType, 'hba'>;

const HBA_AUTH_TYPES = { trust: 'trust', password: 'plain', md5: 'md5', 'scram-sha-256': 'scram-sha-256' } as const;

/**
 * The auth_type that applies to this client: the configured one, or with auth_type hba
 * the first matching HBA rule's method; or the 28000 message that refuses the client.
 */
export function clientAuthType(config: Config, client: HbaClient): { authType: ClientAuthType } | { refusal: string } {
  if (config.auth_type !== 'hba') return { authType: config.auth_type };
  const d = hbaDecision(config.hbaRules, client);
  if ('refusal' in d) return d;
  return { authType: HBA_AUTH_TYPES[d.method] };
}

export function classifySecret(secret: string): SecretKind {
  if (secret.startsWith('SCRAM-SHA-256$')) return 'scram';
  if (isMd5Hash(secret)) return 'md5';
  return 'plain';
}

/**
 * The method to run for a client given the configured auth_type and the user's stored
 * secret, or an explanation of why no method can work (configuration error).
 */
export function chooseAuthMethod(
  authType: ClientAuthType,
  secret: string | undefined,
): { method: AuthMethod } | { error: string } {
  if (authType === 'trust') return { method: 'trust' };
  if (secret === undefined) return { error: 'the user has no password configured' };
  const kind = classifySecret(secret);
  switch (authType) {
    case 'scram-sha-256':
      if (kind === 'md5') return { error: 'the stored password is an md5 hash, which cannot do SCRAM-SHA-256' };
      return { method: 'scram-sha-256' };
    case 'md5':
      return { method: kind === 'scram' ? 'scram-sha-256' : 'md5' };
    case 'plain':
      // Like PostgreSQL's "password" method: a cleartext reply can be checked against any kind.
      return { method: 'plain' };
  }
}

/** Check a cleartext password (auth_type plain) against any stored secret, in constant time. */
export function verifyPlainPassword(stored: string, user: string, given: string): boolean {
  const kind = classifySecret(stored);
  if (kind === 'md5') {
    return constantTimeEqual(Buffer.from(md5PasswordHash(user, given)), Buffer.from(stored));
  }
  if (kind === 'scram') {
    return ScramServerSession.passwordMatchesVerifier(given, stored);
  }
  // Compare digests so the comparison does not leak the length of the stored password.
  const a = createHash('sha256').update(given, 'utf8').digest();
  const b = createHash('sha256').update(stored, 'utf8').digest();
  return timingSafeEqual(a, b);
}

import type { KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { AgentError } from '../core/errors.js';
import type { PublicJwk } from '../core/types.js';
import {
  type EncodedKeyPair,
  keyCredentialId,
  parseKeyText,
  publicJwkOf,
  requireKeyForKind,
} from '../crypto/keys.js';
import { writeNewFile } from './new-file.js';

/** Writes PREFIX.pem and PREFIX.jwk (private, 0600) and PREFIX.pub.pem and PREFIX.pub.jwk (0644). */
export async function writeKeyFiles(prefix: string, encoded: EncodedKeyPair): Promise<string[]> {
  const files: [string, string, number][] = [
    [`${prefix}.pem`, encoded.privatePem, 0o600],
    [`${prefix}.jwk`, encoded.privateJwk, 0o600],
    [`${prefix}.pub.pem`, encoded.publicPem, 0o644],
    [`${prefix}.pub.jwk`, encoded.publicJwk, 0o644],
  ];
  for (const [path, text, mode] of files) await writeNewFile(path, text, mode);
  return files.map(([p]) => p);
}

export function readKeyFile(path: string): KeyObject {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new AgentError('key_invalid', `cannot read key file ${path}: ${(err as Error).message}`, {
      file: path,
    });
  }
  return parseKeyText(text, path);
}

export function readPrivateKeyFile(path: string): KeyObject {
  const key = readKeyFile(path);
  if (key.type !== 'private')
    throw new AgentError('key_invalid', `${path} holds a public key; a private key is needed to sign`, {
      file: path,
    });
  return key;
}

export interface SignerKey {
  readonly key: KeyObject;
  readonly publicKey: PublicJwk;
  /** Credential id as the keyring knows a signing key. */
  readonly id: string;
}

/** A private key file used to sign keyring operations or commands, with its keyring id. */
export function readSignerKey(path: string, kind: 'signer' | 'phone' = 'signer'): SignerKey {
  const key = readPrivateKeyFile(path);
  const publicKey = publicJwkOf(key);
  requireKeyForKind(kind, publicKey, path);
  return { key, publicKey, id: keyCredentialId(kind, publicKey) };
}

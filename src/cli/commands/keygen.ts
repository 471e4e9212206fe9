import { AgentError } from '../../core/errors.js';
import { encodeKeyPair, generateKeyPair, keyCredentialId, publicJwkOf } from '../../crypto/keys.js';
import { writeKeyFiles } from '../../store/key-files.js';
import { out, parse, requireString } from '../args.js';

export const KEYGEN_HELP = `vehicle-agent keygen --out PREFIX [--alg p256|ed25519] [--kind signer|phone]

Writes a new key pair: PREFIX.pem and PREFIX.jwk (private, mode 0600) and PREFIX.pub.pem and
PREFIX.pub.jwk (public). Prints the key's credential id for the keyring (the JWS kid).
P-256 is what phones and FIDO keys use; Ed25519 suits cloud signers. Phone keys are P-256 only.`;

export async function keygen(argv: readonly string[]): Promise<number> {
  const { values } = parse(argv, {
    out: { type: 'string', short: 'o' },
    alg: { type: 'string', default: 'p256' },
    kind: { type: 'string', default: 'signer' },
    json: { type: 'boolean' },
  });
  const prefix = requireString(values.out, 'out');
  const alg =
    values.alg === 'p256' || values.alg === 'P-256'
      ? 'P-256'
      : values.alg === 'ed25519' || values.alg === 'Ed25519'
        ? 'Ed25519'
        : undefined;
  if (!alg) throw new AgentError('bad_arguments', '--alg must be p256 or ed25519');
  if (values.kind !== 'signer' && values.kind !== 'phone')
    throw new AgentError('bad_arguments', '--kind must be signer or phone');
  if (values.kind === 'phone' && alg !== 'P-256')
    throw new AgentError('bad_arguments', 'phone keys are P-256');
  const pair = generateKeyPair(alg);
  const files = await writeKeyFiles(prefix, encodeKeyPair(pair));
  const publicKey = publicJwkOf(pair.publicKey);
  const id = keyCredentialId(values.kind, publicKey);
  if (values.json) out(JSON.stringify({ id, kind: values.kind, algorithm: alg, publicKey, files }));
  else out(`${id}\nwrote ${files.join(', ')}`);
  return 0;
}

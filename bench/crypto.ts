import { generateKeyPairSync, type KeyObject, sign } from 'node:crypto';
import { ed25519 } from '@noble/curves/ed25519.js';
import { p256 } from '@noble/curves/nist.js';
import { fromB64url } from '../src/crypto/encoding.js';
import { publicJwkOf } from '../src/crypto/keys.js';
import { verifyEd25519, verifyP256 } from '../src/crypto/verify.js';
import { round } from './stats.js';

/**
 * Signature verification rate, P-256 (ECDSA/SHA-256, r‖s) and Ed25519, with @noble/curves and
 * with node:crypto on the same keys, messages and signatures, in the same run: the unlock path
 * uses the faster (src/crypto/verify.ts says which and why). The implementations take turns
 * in short rounds, so a busy neighbour slows all of them alike; each figure is the median round.
 * The node:crypto figures go through src/crypto/verify.ts itself, the unlock path's verifier.
 * Every verification must succeed, or the suite fails: a fast wrong answer is no figure.
 */

/** Enough distinct keys that no implementation gains from a cache of one key. */
const KEYS = 16;
/** About the size of a BLE key answer's signed bytes. */
const MESSAGE_BYTES = 120;

interface Sample {
  readonly message: Uint8Array;
  readonly signature: Uint8Array;
  readonly raw: Uint8Array;
  readonly key: KeyObject;
}

function p256Samples(): Sample[] {
  return Array.from({ length: KEYS }, (_, i) => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const message = new Uint8Array(MESSAGE_BYTES).fill(i);
    const signature = new Uint8Array(sign('sha256', message, { key: privateKey, dsaEncoding: 'ieee-p1363' }));
    const jwk = publicJwkOf(publicKey) as { x: string; y: string };
    const raw = Uint8Array.from([0x04, ...fromB64url(jwk.x), ...fromB64url(jwk.y)]);
    return { message, signature, raw, key: publicKey };
  });
}

function ed25519Samples(): Sample[] {
  return Array.from({ length: KEYS }, (_, i) => {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const message = new Uint8Array(MESSAGE_BYTES).fill(i);
    const signature = new Uint8Array(sign(null, message, privateKey));
    const raw = fromB64url((publicJwkOf(publicKey) as { x: string }).x);
    return { message, signature, raw, key: publicKey };
  });
}

type Verifier = (s: Sample) => boolean;

/** Verifications a second over `ms` milliseconds (at least one pass over the samples). */
function rate(samples: readonly Sample[], verify: Verifier, ms: number): number {
  let count = 0;
  const t0 = performance.now();
  let elapsed = 0;
  do {
    for (const s of samples) {
      if (!verify(s)) throw new Error('bench crypto: a valid signature did not verify');
      count++;
    }
    elapsed = performance.now() - t0;
  } while (elapsed < ms);
  return count / (elapsed / 1000);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN;
}

export async function benchCrypto(options: { quick?: boolean } = {}): Promise<Record<string, number>> {
  const rounds = options.quick ? 1 : 5;
  const ms = options.quick ? 20 : 400;
  const p = p256Samples();
  const e = ed25519Samples();
  const verifiers: Record<string, [readonly Sample[], Verifier]> = {
    p256_verify_node: [p, (s) => verifyP256(s.key, s.message, s.signature)],
    p256_verify_noble: [p, (s) => p256.verify(s.signature, s.message, s.raw, { lowS: false })],
    ed25519_verify_node: [e, (s) => verifyEd25519(s.key, s.message, s.signature)],
    ed25519_verify_noble: [e, (s) => ed25519.verify(s.signature, s.message, s.raw, { zip215: false })],
  };
  const rates: Record<string, number[]> = Object.fromEntries(
    Object.keys(verifiers).map((name) => [name, []]),
  );
  // One untimed pass each first: JIT, and noble's base-point tables built on first use.
  for (const [samples, verify] of Object.values(verifiers)) rate(samples, verify, 0);
  for (let r = 0; r < rounds; r++) {
    for (const [name, [samples, verify]] of Object.entries(verifiers))
      rates[name]?.push(rate(samples, verify, ms));
    await new Promise((resolve) => setImmediate(resolve));
  }
  const figure = (name: string) => median(rates[name] ?? []);
  const p256Node = figure('p256_verify_node');
  const p256Noble = figure('p256_verify_noble');
  const edNode = figure('ed25519_verify_node');
  const edNoble = figure('ed25519_verify_noble');
  return {
    p256_verify_node_per_s: round(p256Node, 0),
    p256_verify_noble_per_s: round(p256Noble, 0),
    p256_node_over_noble_ratio: round(p256Node / p256Noble, 2),
    ed25519_verify_node_per_s: round(edNode, 0),
    ed25519_verify_noble_per_s: round(edNoble, 0),
    ed25519_node_over_noble_ratio: round(edNode / edNoble, 2),
  };
}

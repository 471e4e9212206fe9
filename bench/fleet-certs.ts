import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  sign,
  X509Certificate,
} from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Client certificates for thousands of simulated vehicles, issued in-process: a broker that ties
 * the client id to the certificate CN (ejabberd) needs one certificate per vehicle, and an openssl
 * process per certificate costs minutes at 2 000 vehicles on a loaded machine. All of them share
 * one P-256 key (the bench measures the broker, not the keys). Only what a TLS server checks is
 * written: v3, the CA's subject as issuer, a validity, CN, EKU clientAuth, ECDSA-SHA256.
 */

function tlv(tag: number, body: Buffer): Buffer {
  const n = body.length;
  const len =
    n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
  return Buffer.concat([Buffer.from([tag]), len, body]);
}
const seq = (...parts: Buffer[]) => tlv(0x30, Buffer.concat(parts));
const oid = (hex: string) => tlv(0x06, Buffer.from(hex, 'hex'));
const ECDSA_SHA256 = seq(oid('2a8648ce3d040302'));
const CN = '550403';
const EXT_KEY_USAGE = '551d25';
const CLIENT_AUTH = '2b06010505070302';

function utcTime(d: Date): Buffer {
  const iso = d.toISOString(); // 2026-12-05T21:00:00.000Z → 261205210000Z
  return tlv(
    0x17,
    Buffer.from(
      `${iso.slice(2, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`,
    ),
  );
}

/** The raw DER of the subject Name of a certificate (its 6th TBS field: v3 certificates). */
function subjectOf(der: Buffer): Buffer {
  const children = (buf: Buffer, at: number): { start: number; end: number }[] => {
    // at: the offset of a constructed TLV; returns its children's extents.
    let p = at + 1;
    let len = buf[p] ?? 0;
    p++;
    if (len & 0x80) {
      const bytes = len & 0x7f;
      len = 0;
      for (let i = 0; i < bytes; i++) len = (len << 8) | (buf[p++] ?? 0);
    }
    const end = p + len;
    const out: { start: number; end: number }[] = [];
    while (p < end) {
      const start = p;
      p++;
      let l = buf[p] ?? 0;
      p++;
      if (l & 0x80) {
        const bytes = l & 0x7f;
        l = 0;
        for (let i = 0; i < bytes; i++) l = (l << 8) | (buf[p++] ?? 0);
      }
      p += l;
      out.push({ start, end: p });
    }
    return out;
  };
  const tbs = children(der, 0)[0];
  if (tbs === undefined) throw new Error('not a certificate');
  const subject = children(der, tbs.start)[5];
  if (subject === undefined) throw new Error('not a v3 certificate');
  return der.subarray(subject.start, subject.end);
}

export interface VehicleCerts {
  /** The shared private key (PEM file). */
  readonly key: string;
  /** The certificate file of vehicle `cn`. */
  cert(cn: string): string;
}

/** Issues a certificate per CN with the CA in `caCert`/`caKey`, written under `dir`. */
export function issueVehicleCerts(
  dir: string,
  caCert: string,
  caKey: string,
  cns: readonly string[],
): VehicleCerts {
  const ca = new X509Certificate(readFileSync(caCert));
  const issuer = subjectOf(ca.raw);
  const signingKey = createPrivateKey(readFileSync(caKey));
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  const key = join(dir, 'vehicles.key');
  writeFileSync(key, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  const now = Date.now();
  const validity = seq(utcTime(new Date(now - 3_600_000)), utcTime(new Date(now + 2 * 86_400_000)));
  const extensions = tlv(0xa3, seq(seq(oid(EXT_KEY_USAGE), tlv(0x04, seq(oid(CLIENT_AUTH))))));
  const path = (cn: string) => join(dir, `${cn}.crt`);
  for (const cn of cns) {
    const serial = randomBytes(12);
    serial[0] = 0x40 | ((serial[0] ?? 0) & 0x3f); // positive, and minimal (no leading zero byte)
    const subject = seq(tlv(0x31, seq(oid(CN), tlv(0x0c, Buffer.from(cn, 'utf8')))));
    const tbs = seq(
      tlv(0xa0, tlv(0x02, Buffer.from([2]))),
      tlv(0x02, serial),
      ECDSA_SHA256,
      issuer,
      validity,
      subject,
      spki,
      extensions,
    );
    const signature = sign('sha256', tbs, signingKey);
    const der = seq(tbs, ECDSA_SHA256, tlv(0x03, Buffer.concat([Buffer.from([0]), signature])));
    const b64 = der.toString('base64').replace(/.{64}/g, '$&\n');
    writeFileSync(path(cn), `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`);
  }
  return { key, cert: path };
}

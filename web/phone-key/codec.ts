/**
 * The page's codec for mode P messages (docs/ble-protocol.md, "Mode P"): pure byte layouts, no
 * I/O, no DOM, so the unit tests run it in Node beside the agent's codec. Version byte 0x02,
 * integers big-endian, strings u8-length-prefixed ASCII.
 */

export const VERSION = 0x02;
export const TYPE = { challenge: 0x21, answer: 0x22, passkey: 0x23, result: 0x24, enroll: 0x25 } as const;
export const INTENT = { unlock: 1, lock: 2, toggle: 3, identify: 4 } as const;
export type Intent = (typeof INTENT)[keyof typeof INTENT];
/** flags bit 0: the user asked for this action (a button press). */
export const FLAG_EXPLICIT = 0x01;
export const OUTCOME = { granted: 0, denied: 1, pending: 2 } as const;
export type Outcome = keyof typeof OUTCOME;
export const ENROLL_KIND = { webkey: 1, passkey: 2 } as const;
export const NONCE_BYTES = 32;
export const MAX_MESSAGE_BYTES = 512;

const ASCII = /^[\x20-\x7e]*$/;

export class CodecError extends Error {
  override readonly name = 'CodecError';
}

export interface Challenge {
  readonly vehicleId: string;
  readonly nonce: Uint8Array;
  readonly issuedAtMs: number;
  readonly windowMs: number;
}

export interface Answer {
  readonly intent: number;
  readonly flags: number;
  readonly keyId: string;
  readonly nonce: Uint8Array;
  readonly sig: Uint8Array;
}

export interface PasskeyAnswer {
  readonly intent: number;
  readonly flags: number;
  readonly credId: Uint8Array;
  readonly nonce: Uint8Array;
  readonly authenticatorData: Uint8Array;
  readonly clientDataJSON: Uint8Array;
  readonly sig: Uint8Array;
}

export interface Enroll {
  readonly kind: number;
  readonly name: string;
  readonly nonce: Uint8Array;
  readonly spki: Uint8Array;
  readonly credId: Uint8Array;
  readonly rpId: string;
  readonly sig: Uint8Array;
}

export interface Result {
  readonly outcome: Outcome;
  readonly code: string;
  readonly sig: Uint8Array;
  readonly vehicleSpki: Uint8Array;
}

/** Appends fields; every length is checked against its prefix. */
class Writer {
  private readonly parts: number[] = [];
  u8(n: number): this {
    if (!Number.isInteger(n) || n < 0 || n > 0xff) throw new CodecError(`u8 out of range: ${n}`);
    this.parts.push(n);
    return this;
  }
  u16(n: number): this {
    if (!Number.isInteger(n) || n < 0 || n > 0xffff) throw new CodecError(`u16 out of range: ${n}`);
    this.parts.push(n >> 8, n & 0xff);
    return this;
  }
  u64(n: number): this {
    if (!Number.isSafeInteger(n) || n < 0) throw new CodecError(`u64 out of range: ${n}`);
    const hi = Math.floor(n / 2 ** 32);
    const lo = n % 2 ** 32;
    for (const word of [hi, lo])
      this.parts.push((word >>> 24) & 0xff, (word >>> 16) & 0xff, (word >>> 8) & 0xff, word & 0xff);
    return this;
  }
  bytes(b: Uint8Array): this {
    for (const x of b) this.parts.push(x);
    return this;
  }
  fixed(b: Uint8Array, length: number, what: string): this {
    if (b.length !== length) throw new CodecError(`${what} must be ${length} bytes`);
    return this.bytes(b);
  }
  u8Bytes(b: Uint8Array, what: string): this {
    if (b.length > 0xff) throw new CodecError(`${what} over 255 bytes`);
    return this.u8(b.length).bytes(b);
  }
  u16Bytes(b: Uint8Array, what: string): this {
    if (b.length > 0xffff) throw new CodecError(`${what} over 65535 bytes`);
    return this.u16(b.length).bytes(b);
  }
  str(s: string, what: string): this {
    if (!ASCII.test(s)) throw new CodecError(`${what} must be printable ASCII`);
    return this.u8Bytes(ascii(s), what);
  }
  done(): Uint8Array {
    const out = Uint8Array.from(this.parts);
    if (out.length > MAX_MESSAGE_BYTES) throw new CodecError(`message over ${MAX_MESSAGE_BYTES} bytes`);
    return out;
  }
}

/** Reads fields; any read past the end, or bytes left over, is a CodecError. */
class Reader {
  private at = 0;
  constructor(private readonly buf: Uint8Array) {}
  private take(n: number, what: string): Uint8Array {
    if (this.at + n > this.buf.length) throw new CodecError(`truncated at ${what}`);
    const out = this.buf.slice(this.at, this.at + n);
    this.at += n;
    return out;
  }
  u8(what: string): number {
    return this.take(1, what)[0] as number;
  }
  u16(what: string): number {
    const b = this.take(2, what);
    return ((b[0] as number) << 8) | (b[1] as number);
  }
  u64(what: string): number {
    const b = this.take(8, what);
    let n = 0;
    for (const x of b) n = n * 256 + x;
    if (!Number.isSafeInteger(n)) throw new CodecError(`${what} too large`);
    return n;
  }
  fixed(n: number, what: string): Uint8Array {
    return this.take(n, what);
  }
  u8Bytes(what: string): Uint8Array {
    return this.take(this.u8(what), what);
  }
  u16Bytes(what: string): Uint8Array {
    return this.take(this.u16(what), what);
  }
  str(what: string): string {
    const s = fromAscii(this.u8Bytes(what));
    if (!ASCII.test(s)) throw new CodecError(`${what} is not printable ASCII`);
    return s;
  }
  header(type: number, what: string): void {
    const v = this.u8('version');
    if (v !== VERSION) throw new CodecError(`unsupported version ${v}`);
    const t = this.u8('type');
    if (t !== type) throw new CodecError(`not a ${what} message (type ${t})`);
  }
  end(): void {
    if (this.at !== this.buf.length) throw new CodecError(`${this.buf.length - this.at} trailing bytes`);
  }
}

export function ascii(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
  return out;
}

function fromAscii(b: Uint8Array): string {
  return String.fromCharCode(...b);
}

export function concat(...parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function domain(label: string): Uint8Array {
  return concat(ascii(`vehicle-agent/ble/v2/${label}`), Uint8Array.of(0));
}

export function encodeChallenge(c: Challenge): Uint8Array {
  return new Writer()
    .u8(VERSION)
    .u8(TYPE.challenge)
    .str(c.vehicleId, 'vehicleId')
    .fixed(c.nonce, NONCE_BYTES, 'nonce')
    .u64(c.issuedAtMs)
    .u16(c.windowMs)
    .done();
}

export function decodeChallenge(bytes: Uint8Array): Challenge {
  const r = new Reader(bytes);
  r.header(TYPE.challenge, 'challenge');
  const c = {
    vehicleId: r.str('vehicleId'),
    nonce: r.fixed(NONCE_BYTES, 'nonce'),
    issuedAtMs: r.u64('issuedAtMs'),
    windowMs: r.u16('windowMs'),
  };
  r.end();
  return c;
}

export function encodeAnswer(a: Answer): Uint8Array {
  return new Writer()
    .u8(VERSION)
    .u8(TYPE.answer)
    .u8(a.intent)
    .u8(a.flags)
    .str(a.keyId, 'keyId')
    .fixed(a.nonce, NONCE_BYTES, 'nonce')
    .fixed(a.sig, 64, 'sig')
    .done();
}

export function decodeAnswer(bytes: Uint8Array): Answer {
  const r = new Reader(bytes);
  r.header(TYPE.answer, 'answer');
  const a = {
    intent: r.u8('intent'),
    flags: r.u8('flags'),
    keyId: r.str('keyId'),
    nonce: r.fixed(NONCE_BYTES, 'nonce'),
    sig: r.fixed(64, 'sig'),
  };
  r.end();
  return a;
}

export function encodePasskeyAnswer(p: PasskeyAnswer): Uint8Array {
  return new Writer()
    .u8(VERSION)
    .u8(TYPE.passkey)
    .u8(p.intent)
    .u8(p.flags)
    .u8Bytes(p.credId, 'credId')
    .fixed(p.nonce, NONCE_BYTES, 'nonce')
    .u16Bytes(p.authenticatorData, 'authenticatorData')
    .u16Bytes(p.clientDataJSON, 'clientDataJSON')
    .u8Bytes(p.sig, 'sig')
    .done();
}

export function decodePasskeyAnswer(bytes: Uint8Array): PasskeyAnswer {
  const r = new Reader(bytes);
  r.header(TYPE.passkey, 'passkey');
  const p = {
    intent: r.u8('intent'),
    flags: r.u8('flags'),
    credId: r.u8Bytes('credId'),
    nonce: r.fixed(NONCE_BYTES, 'nonce'),
    authenticatorData: r.u16Bytes('authenticatorData'),
    clientDataJSON: r.u16Bytes('clientDataJSON'),
    sig: r.u8Bytes('sig'),
  };
  r.end();
  return p;
}

/** The enroll message without its trailing sigLen|sig: what a web key's proof of possession covers. */
export function encodeEnrollBody(e: Omit<Enroll, 'sig'>): Uint8Array {
  return new Writer()
    .u8(VERSION)
    .u8(TYPE.enroll)
    .u8(e.kind)
    .str(e.name, 'name')
    .fixed(e.nonce, NONCE_BYTES, 'nonce')
    .u16Bytes(e.spki, 'spki')
    .u8Bytes(e.credId, 'credId')
    .str(e.rpId, 'rpId')
    .done();
}

export function encodeEnroll(e: Enroll): Uint8Array {
  return new Writer().bytes(encodeEnrollBody(e)).u8Bytes(e.sig, 'sig').done();
}

export function decodeEnroll(bytes: Uint8Array): Enroll {
  const r = new Reader(bytes);
  r.header(TYPE.enroll, 'enroll');
  const e = {
    kind: r.u8('kind'),
    name: r.str('name'),
    nonce: r.fixed(NONCE_BYTES, 'nonce'),
    spki: r.u16Bytes('spki'),
    credId: r.u8Bytes('credId'),
    rpId: r.str('rpId'),
    sig: r.u8Bytes('sig'),
  };
  r.end();
  return e;
}

export function encodeResult(res: Result): Uint8Array {
  return new Writer()
    .u8(VERSION)
    .u8(TYPE.result)
    .u8(OUTCOME[res.outcome])
    .str(res.code, 'code')
    .u8Bytes(res.sig, 'sig')
    .u16Bytes(res.vehicleSpki, 'vehicleSpki')
    .done();
}

export function decodeResult(bytes: Uint8Array): Result {
  const r = new Reader(bytes);
  r.header(TYPE.result, 'result');
  const o = r.u8('outcome');
  const outcome = (Object.keys(OUTCOME) as Outcome[]).find((k) => OUTCOME[k] === o);
  if (outcome === undefined) throw new CodecError(`unknown outcome ${o}`);
  const res = { outcome, code: r.str('code'), sig: r.u8Bytes('sig'), vehicleSpki: r.u16Bytes('vehicleSpki') };
  r.end();
  // Only a granted result may be signed (a passkey's enrollment grant is not: it proved nothing),
  // and the vehicle's key comes exactly with its signature.
  const signed = res.sig.length > 0;
  if ((signed && (outcome !== 'granted' || res.sig.length !== 64)) || signed !== res.vehicleSpki.length > 0) {
    throw new CodecError(`a ${outcome} result with ${res.sig.length} signature bytes`);
  }
  return res;
}

/** What a web key signs for an answer. */
export function answerSignedBytes(
  challengeMsg: Uint8Array,
  intent: number,
  flags: number,
  keyId: string,
): Uint8Array {
  return concat(domain('answer'), challengeMsg, Uint8Array.of(intent, flags), ascii(keyId));
}

/** Hashed (SHA-256) into the WebAuthn challenge of a passkey answer. */
export function passkeyChallengePreimage(
  challengeMsg: Uint8Array,
  intent: number,
  flags: number,
): Uint8Array {
  return concat(domain('passkey'), challengeMsg, Uint8Array.of(intent, flags));
}

/** What a web key signs to prove it holds the key it enrolls. */
export function enrollSignedBytes(challengeMsg: Uint8Array, enrollBody: Uint8Array): Uint8Array {
  return concat(domain('enroll'), challengeMsg, enrollBody);
}

/** What the vehicle key signs in a granted result; `id` is the key id (web key) or credential id bytes (passkey). */
export function resultSignedBytes(
  nonce: Uint8Array,
  outcome: Outcome,
  code: string,
  id: Uint8Array,
): Uint8Array {
  return concat(domain('result'), nonce, Uint8Array.of(OUTCOME[outcome]), ascii(code), id);
}

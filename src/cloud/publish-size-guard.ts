/**
 * MQTT 3.1.1 has no Maximum Packet Size to tell the broker, and mqtt.js buffers a whole packet
 * before handing it over, so a 16 MB PUBLISH would sit in memory (and be copied) before it could
 * be refused. This framer sits on the byte stream from the broker, in front of mqtt.js: packets
 * pass through untouched, except a PUBLISH whose remaining length is over the limit, which is cut
 * to its variable header (topic and packet id) while the payload streams past and is dropped. So
 * mqtt.js sees an empty PUBLISH it acknowledges as usual (the broker does not send it again) and
 * the link learns of it through `onOversized`. Memory: at most one variable header (64 KiB).
 * Pure: no I/O. MQTT 3.1.1 framing only (MQTT 5 uses the broker-side limit instead).
 */

export interface OversizedPublish {
  readonly topic: string;
  /** Remaining length of the packet as sent (variable header and payload). */
  readonly bytes: number;
}

const PUBLISH = 3;

type State =
  | { readonly kind: 'type' }
  | {
      readonly kind: 'length';
      readonly first: number;
      value: number;
      multiplier: number;
      readonly raw: number[];
    }
  | { readonly kind: 'pass'; left: number }
  | {
      readonly kind: 'varHeader';
      readonly first: number;
      readonly total: number;
      buffered: Buffer[];
      have: number;
    }
  | { readonly kind: 'skip'; left: number };

function encodeLength(n: number): Buffer {
  const bytes: number[] = [];
  let x = n;
  do {
    let b = x % 128;
    x = Math.floor(x / 128);
    if (x > 0) b |= 0x80;
    bytes.push(b);
  } while (x > 0);
  return Buffer.from(bytes);
}

export class PublishSizeGuard {
  private state: State = { kind: 'type' };
  private skippedBytes = 0;

  constructor(
    private readonly maxRemainingLength: number,
    private readonly onOversized: (publish: OversizedPublish) => void,
  ) {}

  /** Payload bytes dropped so far. */
  get skipped(): number {
    return this.skippedBytes;
  }

  /** Takes a chunk from the broker; returns what mqtt.js is to see of it (possibly nothing). */
  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let at = 0;
    while (at < chunk.length) {
      const s = this.state;
      switch (s.kind) {
        case 'type': {
          this.state = { kind: 'length', first: chunk[at] ?? 0, value: 0, multiplier: 1, raw: [] };
          at += 1;
          break;
        }
        case 'length': {
          const b = chunk[at] ?? 0;
          at += 1;
          s.raw.push(b);
          s.value += (b & 0x7f) * s.multiplier;
          s.multiplier *= 128;
          if (b & 0x80) {
            // A fifth length byte is malformed: pass it on and let mqtt.js refuse the stream.
            if (s.raw.length < 4) break;
          }
          const type = s.first >> 4;
          if (type === PUBLISH && s.value > this.maxRemainingLength && !(b & 0x80)) {
            this.state = { kind: 'varHeader', first: s.first, total: s.value, buffered: [], have: 0 };
          } else {
            out.push(Buffer.from([s.first, ...s.raw]));
            this.state = s.value === 0 || b & 0x80 ? { kind: 'type' } : { kind: 'pass', left: s.value };
          }
          break;
        }
        case 'pass': {
          const n = Math.min(s.left, chunk.length - at);
          out.push(chunk.subarray(at, at + n));
          at += n;
          s.left -= n;
          if (s.left === 0) this.state = { kind: 'type' };
          break;
        }
        case 'varHeader': {
          // Topic length (2 bytes), the topic, then a packet id when QoS > 0.
          const qos = (s.first >> 1) & 3;
          const need = (): number | undefined => {
            if (s.have < 2) return undefined;
            const head = Buffer.concat(s.buffered, s.have);
            return 2 + head.readUInt16BE(0) + (qos > 0 ? 2 : 0);
          };
          let wanted = need();
          if (wanted !== undefined && wanted > s.total) {
            // A topic longer than the packet is malformed: hand it on whole for mqtt.js to refuse.
            out.push(Buffer.from([s.first]), encodeLength(s.total), Buffer.concat(s.buffered, s.have));
            this.state = { kind: 'pass', left: s.total - s.have };
            break;
          }
          const take = Math.min(chunk.length - at, (wanted ?? 2) - s.have);
          s.buffered.push(chunk.subarray(at, at + take));
          s.have += take;
          at += take;
          wanted = need();
          if (wanted === undefined || s.have < wanted) break;
          const header = Buffer.concat(s.buffered, s.have);
          const topicLength = header.readUInt16BE(0);
          const topic = header.subarray(2, 2 + topicLength).toString('utf8');
          out.push(Buffer.from([s.first]), encodeLength(wanted), header);
          this.onOversized({ topic, bytes: s.total });
          const left = s.total - wanted;
          this.state = left > 0 ? { kind: 'skip', left } : { kind: 'type' };
          break;
        }
        case 'skip': {
          const n = Math.min(s.left, chunk.length - at);
          at += n;
          s.left -= n;
          this.skippedBytes += n;
          if (s.left === 0) this.state = { kind: 'type' };
          break;
        }
      }
    }
    return out;
  }
}

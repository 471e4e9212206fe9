/**
 * The radio time of mode P's unlock on a real BLE connection, which the stand-in does not
 * simulate: the vehicle is the peripheral, the phone the central, both already connected.
 *
 * The model counts connection events. The phone sends an ATT request in one connection event;
 * the vehicle's answer comes from bluetoothd and the agent over D-Bus, too late for that event,
 * so it goes in the next one; the phone's next request (a Read Blob, the answer write, a Prepare
 * Write) goes in the event after that. So each ATT request/response on the path costs two
 * connection intervals, and the relay is called when the answer's last request reaches the
 * vehicle (its write response is not on the path):
 *
 *   read challenge      reads = ⌊challenge / (MTU−1)⌋ + 1 (Read, then Read Blob while a reply fills MTU−1)
 *   write answer        one Write Request when it fits MTU−3; else ⌈answer / (MTU−5)⌉ Prepare Writes
 *                       then an Execute Write (BlueZ hands the value over after the Execute)
 *   events on the path  2·reads + (single write: 0 | long write: 2·prepares)
 *
 * Left out: the wait for the first connection event after the tap (0 to one interval, half on
 * average), air time (a 250-byte value is under 3 ms at the 1M PHY, in one event), and
 * retransmissions. The phone's signing is measured, not modelled; it fits in the interval.
 */

export interface LinkModelInput {
  /** Connection interval (ms). */
  readonly intervalMs: number;
  /** ATT MTU negotiated on the connection. */
  readonly mtu: number;
  readonly challengeBytes: number;
  readonly answerBytes: number;
}

export interface LinkModel {
  readonly reads: number;
  /** 1 for a single Write Request; else the Prepare Writes (plus the Execute). */
  readonly writes: number;
  readonly longWrite: boolean;
  /** Connection events between the challenge read request and the answer at the vehicle. */
  readonly events: number;
  readonly ms: number;
}

/** ATT's smallest MTU (Bluetooth Core, Vol 3 Part F, 3.2.8) and its longest attribute value. */
const MIN_MTU = 23;
const MAX_ATTRIBUTE_BYTES = 512;

/**
 * The phone-key page's connection as the model assumes it: Android's default ("balanced")
 * connection priority asks for a 30–50 ms interval, and Chrome's Web Bluetooth does not ask for
 * more; an MTU of 247, which Android and BlueZ both reach (the stand-in's default too).
 */
export const PHONE_LINK = { intervalMs: 30, mtu: 247 } as const;

export function linkModel(input: LinkModelInput): LinkModel {
  const { intervalMs, mtu, challengeBytes, answerBytes } = input;
  if (!(intervalMs > 0) || !Number.isFinite(intervalMs)) throw new RangeError('intervalMs must be positive');
  if (!Number.isInteger(mtu) || mtu < MIN_MTU) throw new RangeError(`mtu must be an integer ≥ ${MIN_MTU}`);
  for (const [name, n] of [
    ['challengeBytes', challengeBytes],
    ['answerBytes', answerBytes],
  ] as const) {
    if (!Number.isInteger(n) || n < 1 || n > MAX_ATTRIBUTE_BYTES)
      throw new RangeError(`${name} must be 1..${MAX_ATTRIBUTE_BYTES}`);
  }
  const reads = Math.floor(challengeBytes / (mtu - 1)) + 1;
  const longWrite = answerBytes > mtu - 3;
  const writes = longWrite ? Math.ceil(answerBytes / (mtu - 5)) : 1;
  const events = 2 * reads + (longWrite ? 2 * writes : 0);
  return { reads, writes, longWrite, events, ms: events * intervalMs };
}

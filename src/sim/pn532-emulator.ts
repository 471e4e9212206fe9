import { AgentError } from '../core/errors.js';
import { type Logger, silentLogger } from '../core/logger.js';
import { concatBytes } from '../crypto/encoding.js';
import {
  CMD,
  commandName,
  encodeTypeATarget,
  MAX_EXCHANGE_DATA,
  PARAM,
  STATUS_MI,
} from '../nfc/pn532/commands.js';
import {
  ACK_FRAME,
  ERROR_FRAME,
  encodeFrame,
  FrameDecoder,
  type FrameEvent,
  NACK_FRAME,
  TFI_CHIP,
  TFI_HOST,
} from '../nfc/pn532/frame.js';
import { type ByteLink, openSerialLink } from '../nfc/pn532/link.js';
import { IsoDepCard } from './cards/iso-dep.js';
import type { FrameAnswer, SimulatedCard } from './cards/types.js';

/**
 * A PN532 (firmware 1.6) on the far end of a serial line, hosting simulated cards. It speaks the
 * real host protocol — frames, ACK, NACK (resends its last answer), error frames, ACK-to-abort,
 * HSU wake-up from Low-VBat / power-down — and enough of the command set for this project's
 * driver and for libnfc's tools (nfc-list, nfc-poll, nfc-mfultralight): Diagnose,
 * GetFirmwareVersion, GetGeneralStatus, Read/WriteRegister, Read/WriteGPIO, SetParameters,
 * SAMConfiguration, PowerDown, RFConfiguration, InListPassiveTarget (106 kbps type A; other
 * modulations find nothing), InDataExchange (with MI chaining both ways), InCommunicateThru,
 * InDeselect, InRelease, InAutoPoll.
 *
 * What a selected card is sent (UM0701-02 §7.3.8, §7.3.9): InDataExchange carries APDUs to an
 * ISO-DEP card (the chip does the ISO 14443-4 blocks) and MIFARE commands to any other card: READ,
 * WRITE (4 and 16 bytes), value commands, and authentication, which fails with 0x14 and halts the
 * card as no simulated card holds Crypto-1 keys (an NTAG's GET_VERSION, 0x60, is taken for one);
 * any other code gets the error frame (PWD_AUTH, for one, must go by InCommunicateThru).
 * InCommunicateThru sends a raw frame: to an ISO-DEP card as an ISO 14443-4 block (iso-dep.ts),
 * to any other card as its ISO 14443-3 command (a Type 2 tag's READ or GET_VERSION), and RATS to
 * a card that has not had it. CRC_A is added and checked by the chip unless the host turned that
 * off in CIU_TxMode / CIU_RxMode; a 4-bit ACK/NAK comes back as the CRC error 0x02 with CRC
 * checking on, as its value with it off; a NAK to InDataExchange is 0x13. A card that does not
 * answer, is halted or is gone gives the timeout status 0x01 after `cardLossMs`. Short frames
 * (REQA, bitwise anticollision) are not modelled: they time out.
 *
 * Timing model: every byte takes 86.8 µs on the wire in each direction (115200 baud, 8N1), and an
 * APDU answer comes after the compute time the card reports. RF time is not modelled unless
 * `activationMs` is set.
 *
 * Card states follow ISO 14443-3: a card released (InRelease/InDeselect) is HALTed and does not
 * answer the next InListPassiveTarget until it leaves the field or the field is switched off
 * (set `wakeHaltedCards` to model a reader that wakes halted cards).
 */

export interface Pn532EmulatorOptions {
  readonly log?: Logger;
  /** Wire time per byte in ms (default 10 bits at 115200 baud); 0 turns the wire model off. */
  readonly byteTimeMs?: number;
  /** IC, version, revision, support (default PN532 v1.6, types A, B and ISO 18092). */
  readonly firmware?: readonly [number, number, number, number];
  /** Time from the field seeing a card to the card being active (REQA .. ATS); default 0. */
  readonly activationMs?: number;
  /** Time the chip needs to give up on a card that stopped answering (default 20 ms). */
  readonly cardLossMs?: number;
  /** Duration of one passive-activation try when no card answers (default 1 ms). */
  readonly activationTryMs?: number;
  readonly wakeHaltedCards?: boolean;
}

export type Pn532Fault =
  /** Noise on the line before the chip's next frame (default: noise with a false frame header). */
  | { readonly kind: 'garbage'; readonly bytes?: Uint8Array }
  /** The next ACK is lost (the command still runs and answers). */
  | { readonly kind: 'lose-ack' }
  /** The next command is refused with a NACK and not run. */
  | { readonly kind: 'nack' }
  /** The next command is ACKed, then answered with the error frame, and not run. */
  | { readonly kind: 'error-frame' }
  /** The next answer goes out with a bad data checksum (a NACK gets the good copy). */
  | { readonly kind: 'corrupt-response' }
  /** The next APDU takes `extraMs` longer than the card says. */
  | { readonly kind: 'slow-card'; readonly extraMs: number }
  /** The card leaves the field halfway through the next APDU. */
  | { readonly kind: 'remove-during-exchange' }
  /** The chip stops answering: until an HSU wake-up ('wakeup', default) or unwedge() ('manual'). */
  | { readonly kind: 'wedge'; readonly recoverOn?: 'wakeup' | 'manual' };

export interface Pn532EmulatorStats {
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly framesIn: number;
  readonly framesOut: number;
  /** Modelled UART time, both directions, ms. */
  readonly wireMs: number;
  /** Modelled card compute time, ms. */
  readonly computeMs: number;
  readonly apdus: number;
}

type CardState = 'idle' | 'active' | 'halted';
type PowerMode = 'low-vbat' | 'normal' | 'power-down';

interface Job {
  cancelled: boolean;
}

/** CIU registers the emulator acts on (PN532 datasheet §8.6.23). */
const REG_TX_MODE = 0x6302;
const REG_RX_MODE = 0x6303;
const REG_BIT_FRAMING = 0x633d;
const CRC_ENABLE = 0x80;

/** InDataExchange / InCommunicateThru status bytes (UM0701-02 §7.1). */
const ST = {
  ok: 0x00,
  timeout: 0x01,
  crc: 0x02,
  invalidParameter: 0x10,
  invalidFrame: 0x13,
  mifareAuth: 0x14,
  notAcceptable: 0x27,
} as const;

/** MIFARE commands the chip passes on in InDataExchange (UM0701-02 §7.3.8). */
const MIFARE = {
  authA: 0x60,
  authB: 0x61,
  read: 0x30,
  write16: 0xa0,
  write4: 0xa2,
  decrement: 0xc0,
  increment: 0xc1,
  restore: 0xc2,
  transfer: 0xb0,
} as const;
const MIFARE_PASSED_ON = new Set<number>([
  MIFARE.read,
  MIFARE.write4,
  MIFARE.decrement,
  MIFARE.increment,
  MIFARE.restore,
  MIFARE.transfer,
]);
const RATS = 0xe0;

/** CRC_A of ISO/IEC 14443-3 (initial 0x6363, reflected polynomial 0x8408), low byte first. */
export function crcA(data: Uint8Array): Uint8Array {
  let crc = 0x6363;
  for (const byte of data) {
    let b = (byte ^ crc) & 0xff;
    b = (b ^ (b << 4)) & 0xff;
    crc = ((crc >> 8) ^ (b << 8) ^ (b << 3) ^ (b >> 4)) & 0xffff;
  }
  return Uint8Array.of(crc & 0xff, crc >> 8);
}

const DEFAULT_GARBAGE = Uint8Array.of(0x13, 0x37, 0x00, 0xff, 0x05, 0xfb, 0x42, 0x7e, 0x00, 0xff, 0x10, 0xa5);

/** Runs callbacks at precise monotonic times (timers for the bulk, setImmediate for the last ms). */
class Timeline {
  private readonly queue: { at: number; fn: () => void }[] = [];
  private timer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private closed = false;

  schedule(at: number, fn: () => void): void {
    if (this.closed) return;
    let i = this.queue.length;
    while (i > 0 && (this.queue[i - 1]?.at ?? 0) > at) i--;
    this.queue.splice(i, 0, { at, fn });
    this.arm();
  }

  close(): void {
    this.closed = true;
    this.queue.length = 0;
    clearTimeout(this.timer);
    if (this.immediate) clearImmediate(this.immediate);
  }

  private arm(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.immediate) clearImmediate(this.immediate);
    this.immediate = undefined;
    const head = this.queue[0];
    if (!head || this.closed) return;
    const delay = head.at - performance.now();
    if (delay > 2) this.timer = setTimeout(() => this.run(), delay - 1.5);
    else this.immediate = setImmediate(() => this.run());
  }

  private run(): void {
    this.timer = undefined;
    this.immediate = undefined;
    const now = performance.now();
    while (!this.closed) {
      const head = this.queue[0];
      if (!head || head.at > now) break;
      this.queue.shift();
      head.fn();
    }
    this.arm();
  }
}

export class Pn532Emulator {
  private readonly link: ByteLink;
  private readonly log: Logger;
  private readonly byteTimeMs: number;
  private readonly firmware: readonly number[];
  private readonly activationMs: number;
  private readonly cardLossMs: number;
  private readonly activationTryMs: number;
  private readonly wakeHaltedCards: boolean;
  private readonly decoder = new FrameDecoder();
  private readonly timeline = new Timeline();

  private power: PowerMode = 'low-vbat';
  private wedged: 'wakeup' | 'manual' | undefined;
  private faults: Pn532Fault[] = [];
  private job: Job | undefined;
  private lastAnswer: Uint8Array | undefined;
  private rxFreeAt = 0;
  private txFreeAt = 0;

  private parameters = PARAM.automaticAtrRes | PARAM.automaticRats;
  private passiveRetries = 0xff;
  private fieldOn = false;
  private readonly registers = new Map<number, number>();

  private card: SimulatedCard | undefined;
  private cardState: CardState = 'idle';
  /** The card the chip holds as target 1 (it may have left the field since). */
  private target: SimulatedCard | undefined;
  /** The target took RATS: frames to it are ISO 14443-4 blocks. */
  private isoDepActive = false;
  private readonly isoDep = new IsoDepCard();
  private hostChain: Uint8Array[] = [];
  private hostChainBytes = 0;
  private pendingOut: Uint8Array | undefined;
  private fieldWatchers: (() => void)[] = [];
  private commandCodes: number[] = [];

  private counters = {
    bytesIn: 0,
    bytesOut: 0,
    framesIn: 0,
    framesOut: 0,
    wireMs: 0,
    computeMs: 0,
    apdus: 0,
  };

  constructor(link: ByteLink, options: Pn532EmulatorOptions = {}) {
    this.link = link;
    this.log = options.log ?? silentLogger;
    this.byteTimeMs = options.byteTimeMs ?? 10 / 115.2;
    this.firmware = options.firmware ?? [0x32, 0x01, 0x06, 0x07];
    this.activationMs = options.activationMs ?? 0;
    this.cardLossMs = options.cardLossMs ?? 20;
    this.activationTryMs = options.activationTryMs ?? 1;
    this.wakeHaltedCards = options.wakeHaltedCards ?? false;
    this.registers.set(REG_TX_MODE, CRC_ENABLE);
    this.registers.set(REG_RX_MODE, CRC_ENABLE);
    link.onData((chunk) => this.onData(chunk));
    link.onClose(() => this.timeline.close());
  }

  /** Opens the device end of a serial line (a pty path) and serves it. */
  static async open(path: string, options: Pn532EmulatorOptions = {}): Promise<Pn532Emulator> {
    return new Pn532Emulator(await openSerialLink(path), options);
  }

  // ── test and sim controls ─────────────────────────────────────────────────

  /** Puts a card in the field (replacing any card there). */
  placeCard(card: SimulatedCard): void {
    if (this.card) this.removeCard();
    card.reset();
    this.card = card;
    this.cardState = 'idle';
    this.notifyField();
  }

  /** Takes the card out of the field. */
  removeCard(): void {
    const card = this.card;
    if (!card) return;
    card.reset();
    this.card = undefined;
    this.cardState = 'idle';
    this.notifyField();
  }

  /** Queues a fault; each fault fires once, at the first moment it applies. */
  injectFault(fault: Pn532Fault): void {
    if (fault.kind === 'wedge') {
      this.wedged = fault.recoverOn ?? 'wakeup';
      this.cancelJob();
      return;
    }
    this.faults.push(fault);
  }

  /** Ends a wedge (as a power cycle would). */
  unwedge(): void {
    if (this.wedged) this.resetChip();
  }

  get isWedged(): boolean {
    return this.wedged !== undefined;
  }

  stats(): Pn532EmulatorStats {
    return { ...this.counters };
  }

  /** Codes of the commands received (newest last, at most 512). */
  commands(): readonly number[] {
    return this.commandCodes;
  }

  async close(): Promise<void> {
    this.cancelJob();
    this.timeline.close();
    await this.link.close();
  }

  // ── receive side ──────────────────────────────────────────────────────────

  private onData(chunk: Uint8Array): void {
    this.counters.bytesIn += chunk.length;
    const now = performance.now();
    const wire = chunk.length * this.byteTimeMs;
    this.counters.wireMs += wire;
    this.rxFreeAt = Math.max(now, this.rxFreeAt) + wire;
    // The HSU wake-up preamble: 0x55 0x55 (it may follow other bytes in the same chunk). It means
    // something only to a sleeping or wedged chip: an awake chip hands every byte to the frame
    // decoder, since 55 55 inside a frame's data (a ciphertext, a signature) is just data.
    const asleep = this.wedged !== undefined || this.power !== 'normal';
    let wakeAt = -1;
    for (let i = 0; asleep && i + 1 < chunk.length; i++) {
      if (chunk[i] === 0x55 && chunk[i + 1] === 0x55) {
        wakeAt = i;
        break;
      }
    }
    if (this.wedged) {
      if (this.wedged !== 'wakeup' || wakeAt < 0) return;
      this.resetChip();
      this.power = 'normal';
    } else if (this.power !== 'normal') {
      // Any byte wakes the chip, but what arrives while its oscillator starts is lost: only a
      // wake-up preamble of 0x55 bytes gets the frame behind it through.
      this.power = 'normal';
      if (wakeAt < 0) return;
    }
    let bytes = wakeAt >= 0 ? chunk.subarray(wakeAt) : chunk;
    if (wakeAt >= 0) {
      let i = 0;
      while (i < bytes.length && bytes[i] === 0x55) i++;
      bytes = bytes.subarray(i);
    }
    const events = this.decoder.push(bytes);
    if (events.length === 0) return;
    this.timeline.schedule(this.rxFreeAt, () => {
      for (const event of events) this.onEvent(event);
    });
  }

  private onEvent(event: FrameEvent): void {
    if (this.wedged) return;
    switch (event.type) {
      case 'ack':
        // ACK from the host aborts the running command.
        this.cancelJob();
        return;
      case 'nack':
        if (!this.job && this.lastAnswer) this.transmit(this.lastAnswer);
        return;
      case 'frame':
        if (event.tfi !== TFI_HOST || this.job) return; // busy: the frame is ignored
        this.onCommand(event.data);
        return;
      default:
        // A corrupted frame is ignored: the host hears nothing and sends it again.
        return;
    }
  }

  private takeFault<K extends Pn532Fault['kind']>(kind: K): Extract<Pn532Fault, { kind: K }> | undefined {
    const i = this.faults.findIndex((f) => f.kind === kind);
    if (i < 0) return undefined;
    const [fault] = this.faults.splice(i, 1);
    return fault as Extract<Pn532Fault, { kind: K }> | undefined;
  }

  private onCommand(data: Uint8Array): void {
    this.counters.framesIn++;
    const code = data[0] ?? 0xff;
    this.commandCodes.push(code);
    if (this.commandCodes.length > 512) this.commandCodes.splice(0, this.commandCodes.length - 512);
    if (this.takeFault('nack')) {
      this.transmit(NACK_FRAME);
      return;
    }
    if (!this.takeFault('lose-ack')) this.transmit(ACK_FRAME);
    if (this.takeFault('error-frame')) {
      this.answerRaw(ERROR_FRAME);
      return;
    }
    const job: Job = { cancelled: false };
    this.job = job;
    this.execute(job, code, data.subarray(1)).then(
      (answer) => {
        if (job.cancelled || this.job !== job) return;
        this.job = undefined;
        if (answer === 'syntax-error') this.answerRaw(ERROR_FRAME);
        else this.answer(code, answer);
        if (code === CMD.PowerDown && answer !== 'syntax-error') this.power = 'power-down';
      },
      (err: unknown) => {
        if (this.job === job) this.job = undefined;
        this.log.error({ err: String(err), command: commandName(code) }, 'emulator command failed');
        this.answerRaw(ERROR_FRAME);
      },
    );
  }

  // ── transmit side ─────────────────────────────────────────────────────────

  private answer(code: number, params: Uint8Array): void {
    const frame = encodeFrame(TFI_CHIP, Uint8Array.of((code + 1) & 0xff, ...params));
    this.answerRaw(frame);
  }

  private answerRaw(frame: Uint8Array): void {
    this.lastAnswer = frame;
    this.counters.framesOut++;
    if (this.takeFault('corrupt-response') && frame.length > 2) {
      const bad = frame.slice();
      const dcsAt = bad.length - 2;
      bad[dcsAt] = (bad[dcsAt] ?? 0) ^ 0x5a;
      this.transmit(bad);
      return;
    }
    this.transmit(frame);
  }

  private transmit(frame: Uint8Array): void {
    const garbage = this.takeFault('garbage');
    const bytes = garbage ? concatBytes(garbage.bytes ?? DEFAULT_GARBAGE, frame) : frame;
    const wire = bytes.length * this.byteTimeMs;
    this.counters.wireMs += wire;
    this.counters.bytesOut += bytes.length;
    this.txFreeAt = Math.max(performance.now(), this.txFreeAt) + wire;
    this.timeline.schedule(this.txFreeAt, () => {
      if (this.wedged) return;
      this.link.write(bytes).catch(() => {});
    });
  }

  // ── chip state ────────────────────────────────────────────────────────────

  private resetChip(): void {
    this.cancelJob();
    this.wedged = undefined;
    this.power = 'low-vbat';
    this.parameters = PARAM.automaticAtrRes | PARAM.automaticRats;
    this.passiveRetries = 0xff;
    this.fieldOn = false;
    this.target = undefined;
    this.hostChain = [];
    this.hostChainBytes = 0;
    this.pendingOut = undefined;
    this.lastAnswer = undefined;
    this.decoder.reset();
    if (this.card) {
      this.card.reset();
      this.cardState = 'idle';
    }
  }

  private cancelJob(): void {
    if (this.job) this.job.cancelled = true;
    this.job = undefined;
    this.notifyField();
  }

  private notifyField(): void {
    const watchers = this.fieldWatchers;
    this.fieldWatchers = [];
    for (const w of watchers) w();
  }

  /** Resolves after `ms`, or earlier when the field changes or the job is cancelled. */
  private wait(job: Job, ms: number | undefined): Promise<void> {
    if (job.cancelled) return Promise.resolve();
    return new Promise((resolve) => {
      let done = false;
      const finish = (): void => {
        if (done) return;
        done = true;
        resolve();
      };
      this.fieldWatchers.push(finish);
      if (ms !== undefined) this.timeline.schedule(performance.now() + ms, finish);
    });
  }

  private sleep(job: Job, ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (job.cancelled || ms <= 0) {
        resolve();
        return;
      }
      this.timeline.schedule(performance.now() + ms, resolve);
    });
  }

  private selectable(card: SimulatedCard | undefined): card is SimulatedCard {
    return (
      card !== undefined &&
      (this.cardState === 'idle' || (this.cardState === 'halted' && this.wakeHaltedCards))
    );
  }

  private targetRecord(card: SimulatedCard, tg: number): Uint8Array {
    let ats: Uint8Array | undefined;
    if (card.sak & 0x20 && this.parameters & PARAM.automaticRats) ats = card.ats ?? Uint8Array.of(0x01);
    return encodeTypeATarget(
      ats
        ? { tg, atqa: card.atqa, sak: card.sak, uid: card.uid, ats }
        : {
            tg,
            atqa: card.atqa,
            sak: card.sak,
            uid: card.uid,
          },
    );
  }

  private async activate(job: Job, card: SimulatedCard): Promise<boolean> {
    if (this.activationMs > 0) await this.sleep(job, this.activationMs);
    if (job.cancelled || this.card !== card) return false;
    card.reset();
    this.cardState = 'active';
    this.target = card;
    this.fieldOn = true;
    this.isoDepActive = (card.sak & 0x20) !== 0 && (this.parameters & PARAM.automaticRats) !== 0;
    this.isoDep.reset();
    // The chip leaves type A at 106 kbps with CRC_A on both ways after an activation.
    this.registers.set(REG_TX_MODE, (this.registers.get(REG_TX_MODE) ?? 0) | CRC_ENABLE);
    this.registers.set(REG_RX_MODE, (this.registers.get(REG_RX_MODE) ?? 0) | CRC_ENABLE);
    this.hostChain = [];
    this.hostChainBytes = 0;
    this.pendingOut = undefined;
    return true;
  }

  private dropTarget(): void {
    if (this.target && this.target === this.card) this.cardState = 'halted';
    this.target = undefined;
    this.hostChain = [];
    this.hostChainBytes = 0;
    this.pendingOut = undefined;
  }

  // ── commands ──────────────────────────────────────────────────────────────

  private async execute(job: Job, code: number, p: Uint8Array): Promise<Uint8Array | 'syntax-error'> {
    switch (code) {
      case CMD.Diagnose:
        return this.diagnose(p);
      case CMD.GetFirmwareVersion:
        return Uint8Array.from(this.firmware);
      case CMD.GetGeneralStatus: {
        const active = this.target ? [0x01, 0x00, 0x00, 0x10] : [];
        return Uint8Array.of(0x00, this.fieldOn ? 1 : 0, this.target ? 1 : 0, ...active, 0x00);
      }
      case CMD.ReadRegister: {
        if (p.length === 0 || p.length % 2 !== 0) return 'syntax-error';
        const out: number[] = [];
        for (let i = 0; i < p.length; i += 2)
          out.push(this.registers.get(((p[i] ?? 0) << 8) | (p[i + 1] ?? 0)) ?? 0);
        return Uint8Array.from(out);
      }
      case CMD.WriteRegister: {
        if (p.length === 0 || p.length % 3 !== 0) return 'syntax-error';
        for (let i = 0; i < p.length; i += 3)
          this.registers.set(((p[i] ?? 0) << 8) | (p[i + 1] ?? 0), p[i + 2] ?? 0);
        return new Uint8Array(0);
      }
      case CMD.ReadGPIO:
        return Uint8Array.of(0xff, 0xff, 0x00);
      case CMD.WriteGPIO:
        return new Uint8Array(0);
      case CMD.SetParameters:
        if (p.length !== 1) return 'syntax-error';
        this.parameters = p[0] ?? 0;
        return new Uint8Array(0);
      case CMD.SAMConfiguration: {
        const mode = p[0] ?? 0;
        if (mode < 1 || mode > 4) return 'syntax-error';
        this.power = 'normal';
        return new Uint8Array(0);
      }
      case CMD.PowerDown:
        if (p.length < 1) return 'syntax-error';
        this.dropTarget();
        return Uint8Array.of(0x00);
      case CMD.RFConfiguration:
        return this.rfConfiguration(p);
      case CMD.InListPassiveTarget:
        return this.inListPassiveTarget(job, p);
      case CMD.InDataExchange:
        return this.inDataExchange(job, p);
      case CMD.InCommunicateThru:
        return this.inCommunicateThru(job, p);
      case CMD.InDeselect:
      case CMD.InRelease: {
        const tg = p[0] ?? 0;
        if (tg === 0 || tg === 1) this.dropTarget();
        return Uint8Array.of(0x00);
      }
      case CMD.InAutoPoll:
        return this.inAutoPoll(job, p);
      default:
        return 'syntax-error';
    }
  }

  private diagnose(p: Uint8Array): Uint8Array {
    const test = p[0] ?? 0;
    if (test === 0x00) return p.slice(); // communication line test: echo
    if (test === 0x06) return Uint8Array.of(this.answering(this.target) ? 0x00 : 0x01);
    return Uint8Array.of(0x00);
  }

  private rfConfiguration(p: Uint8Array): Uint8Array | 'syntax-error' {
    const item = p[0];
    switch (item) {
      case 0x01: {
        const on = ((p[1] ?? 0) & 0x01) === 1;
        if (!on && this.fieldOn) {
          // Field off: every card loses power and forgets HALT.
          this.target = undefined;
          this.hostChain = [];
          this.pendingOut = undefined;
          if (this.card) {
            this.card.reset();
            this.cardState = 'idle';
          }
        }
        this.fieldOn = on;
        return new Uint8Array(0);
      }
      case 0x05:
        if (p.length !== 4) return 'syntax-error';
        this.passiveRetries = p[3] ?? 0xff;
        return new Uint8Array(0);
      case 0x02:
      case 0x04:
      case 0x0a:
      case 0x0b:
      case 0x0c:
      case 0x0d:
        return new Uint8Array(0);
      default:
        return 'syntax-error';
    }
  }

  private async inListPassiveTarget(job: Job, p: Uint8Array): Promise<Uint8Array | 'syntax-error'> {
    const maxTg = p[0] ?? 0;
    const brTy = p[1];
    if (maxTg < 1 || maxTg > 2 || brTy === undefined || brTy > 8) return 'syntax-error';
    // A new listing drops the previous target (it returns to IDLE on the next REQA).
    if (this.target && this.target === this.card && this.cardState === 'active') this.cardState = 'idle';
    this.target = undefined;
    const wanted = brTy === 0x00 && p.length > 2 ? p.subarray(2) : undefined;
    let tries = 0;
    for (;;) {
      if (job.cancelled) return new Uint8Array(0);
      this.fieldOn = true;
      const card = this.card;
      if (brTy === 0x00 && this.selectable(card) && (!wanted || wanted.every((b, i) => b === card.uid[i]))) {
        if (await this.activate(job, card)) return Uint8Array.of(0x01, ...this.targetRecord(card, 1));
        continue;
      }
      tries++;
      if (this.passiveRetries !== 0xff && tries > this.passiveRetries) {
        await this.sleep(job, this.activationTryMs);
        return Uint8Array.of(0x00);
      }
      if (this.passiveRetries === 0xff) await this.wait(job, undefined);
      else await this.sleep(job, this.activationTryMs);
    }
  }

  private async inAutoPoll(job: Job, p: Uint8Array): Promise<Uint8Array | 'syntax-error'> {
    const pollNr = p[0] ?? 0;
    const period = p[1] ?? 0;
    const types = p.subarray(2);
    if (pollNr === 0 || period < 1 || period > 0x0f || types.length < 1 || types.length > 15)
      return 'syntax-error';
    // The first listed type the card answers to, as the chip reports it. Every simulated card is
    // ISO 14443 type A at 106 kbps: 0x00 (generic passive 106 kbps) and 0x10 (MIFARE: any type A
    // card; libnfc's nfc-poll asks for it) take any of them, 0x20 (ISO 14443-4A) only ISO-DEP ones.
    const typeFor = (card: SimulatedCard): number | undefined =>
      [...types].find((t) => t === 0x00 || t === 0x10 || (t === 0x20 && (card.sak & 0x20) !== 0));
    for (let round = 0; pollNr === 0xff || round < pollNr; round++) {
      if (job.cancelled) return new Uint8Array(0);
      const card = this.card;
      const type = card ? typeFor(card) : undefined;
      if (this.selectable(card) && type !== undefined) {
        if (await this.activate(job, card)) {
          const record = this.targetRecord(card, 1);
          return Uint8Array.of(0x01, type, record.length, ...record);
        }
        continue;
      }
      await this.wait(job, period * 150);
    }
    return Uint8Array.of(0x00);
  }

  private async inDataExchange(job: Job, p: Uint8Array): Promise<Uint8Array | 'syntax-error'> {
    if (p.length < 1) return 'syntax-error';
    const tg = (p[0] ?? 0) & 0x0f;
    const more = ((p[0] ?? 0) & STATUS_MI) !== 0;
    const data = p.subarray(1);
    if (data.length > MAX_EXCHANGE_DATA) return 'syntax-error';
    const target = this.target;
    if (tg !== 1 || !target) return Uint8Array.of(ST.notAcceptable);
    // The chip still holds the target but the card is gone or halted: it times out.
    if (!this.answering(target)) return await this.noAnswer(job);
    if (this.pendingOut && data.length === 0 && !more) return this.nextOut();
    if (!this.isoDepActive) return await this.mifareExchange(job, target, data);
    this.hostChainBytes += data.length;
    if (this.hostChainBytes > 65544) {
      this.hostChain = [];
      this.hostChainBytes = 0;
      return Uint8Array.of(0x07);
    }
    this.hostChain.push(data.slice());
    if (more) return Uint8Array.of(0x00);
    const apdu = concatBytes(...this.hostChain);
    this.hostChain = [];
    this.hostChainBytes = 0;
    this.pendingOut = undefined;
    const response = await this.runApdu(job, target, apdu);
    if (typeof response === 'number') return Uint8Array.of(response);
    this.isoDep.chipExchanged(response);
    this.pendingOut = response;
    return this.nextOut();
  }

  /**
   * One APDU on the card, in the card's modelled compute time: its answer, or a status when the
   * card leaves the field (or throws) before it.
   */
  private async runApdu(job: Job, target: SimulatedCard, apdu: Uint8Array): Promise<Uint8Array | number> {
    let response: Uint8Array;
    let computeMs: number;
    // The card's modelled compute time starts when the APDU reaches it; the simulator's own work
    // (real P-256 signing, AES) happens inside that time, as a real card's would, instead of
    // before it (which would charge the simulator's CPU to the host's latency).
    const reachedCard = performance.now();
    try {
      const answer = target.transceive(apdu);
      response = answer.response;
      computeMs = Math.max(0, answer.computeMs);
    } catch (err) {
      this.log.warn({ err: err instanceof AgentError ? err.code : String(err) }, 'simulated card threw');
      await this.sleep(job, this.cardLossMs);
      return ST.timeout;
    }
    this.counters.apdus++;
    computeMs += this.takeFault('slow-card')?.extraMs ?? 0;
    if (this.takeFault('remove-during-exchange')) {
      this.timeline.schedule(reachedCard + computeMs / 2, () => {
        if (this.card === target) this.removeCard();
      });
    }
    const end = reachedCard + computeMs;
    while (!job.cancelled && performance.now() < end && this.card === target) {
      await this.wait(job, end - performance.now());
    }
    if (job.cancelled) return ST.timeout; // nobody hears it
    if (this.card !== target) {
      await this.sleep(job, this.cardLossMs);
      return ST.timeout;
    }
    this.counters.computeMs += computeMs;
    return response;
  }

  /** The selected card is in the field and answers (not halted or deselected since). */
  private answering(target: SimulatedCard | undefined): target is SimulatedCard {
    return target !== undefined && target === this.card && this.cardState === 'active';
  }

  /** Nobody answered: the chip gives up after its timeout. */
  private async noAnswer(job: Job): Promise<Uint8Array> {
    await this.sleep(job, this.cardLossMs);
    return Uint8Array.of(ST.timeout);
  }

  private crcOn(register: number): boolean {
    return ((this.registers.get(register) ?? 0) & CRC_ENABLE) !== 0;
  }

  /** A card's silence, and the state it leaves the card in. */
  private silence(after: 'active' | 'idle' | 'halt'): void {
    if (after === 'idle') this.cardState = 'idle';
    else if (after === 'halt') this.cardState = 'halted';
  }

  /** InDataExchange to a card without ISO-DEP: the chip's MIFARE mode. */
  private async mifareExchange(
    job: Job,
    target: SimulatedCard,
    data: Uint8Array,
  ): Promise<Uint8Array | 'syntax-error'> {
    const code = data[0];
    if (code === undefined) return Uint8Array.of(ST.invalidParameter);
    if (code === MIFARE.authA || code === MIFARE.authB) {
      if (data.length !== 12) return Uint8Array.of(ST.invalidParameter);
      // Crypto-1 is not modelled and no simulated card holds MIFARE keys: the authentication
      // fails, and a card that failed one is halted.
      this.cardState = 'halted';
      return Uint8Array.of(ST.mifareAuth);
    }
    let answer: FrameAnswer;
    if (code === MIFARE.write16) {
      // The chip sends COMPATIBILITY WRITE in its two parts: the address, then 16 bytes.
      if (data.length !== 18) return Uint8Array.of(ST.invalidParameter);
      answer = this.toCard(target, data.subarray(0, 2));
      if (answer.kind === 'nibble' && answer.value === 0x0a) answer = this.toCard(target, data.subarray(2));
    } else if (MIFARE_PASSED_ON.has(code)) {
      answer = this.toCard(target, data);
    } else {
      return 'syntax-error';
    }
    switch (answer.kind) {
      case 'data':
        return Uint8Array.of(ST.ok, ...answer.data);
      case 'nibble':
        // An ACK ends a write; a NAK is a frame the chip's MIFARE mode does not take.
        return Uint8Array.of(answer.value === 0x0a ? ST.ok : ST.invalidFrame);
      case 'silent':
        this.silence(answer.after);
        return await this.noAnswer(job);
    }
  }

  private toCard(target: SimulatedCard, frame: Uint8Array): FrameAnswer {
    return target.transceiveFrame?.(frame) ?? { kind: 'silent', after: 'active' };
  }

  /** InCommunicateThru: one raw frame into the field, the selected card's answer back. */
  private async inCommunicateThru(job: Job, p: Uint8Array): Promise<Uint8Array | 'syntax-error'> {
    if (p.length === 0 || p.length > MAX_EXCHANGE_DATA) return 'syntax-error';
    const target = this.target;
    if (!this.fieldOn || !this.answering(target)) return await this.noAnswer(job);
    if (((this.registers.get(REG_BIT_FRAMING) ?? 0) & 0x07) !== 0) return await this.noAnswer(job);
    let frame = p;
    if (!this.crcOn(REG_TX_MODE)) {
      // The host sends the CRC itself: a frame with a wrong one is noise to the card.
      const body = p.subarray(0, -2);
      const crc = crcA(body);
      if (p.length < 3 || crc[0] !== p[p.length - 2] || crc[1] !== p[p.length - 1])
        return await this.noAnswer(job);
      frame = body;
    }
    const thru = (data: Uint8Array): Uint8Array =>
      this.crcOn(REG_RX_MODE) ? Uint8Array.of(ST.ok, ...data) : Uint8Array.of(ST.ok, ...data, ...crcA(data));
    if (this.isoDepActive) {
      const step = this.isoDep.receive(frame);
      switch (step.kind) {
        case 'silent':
          return await this.noAnswer(job);
        case 'reply':
          return thru(step.block);
        case 'deselect':
          this.cardState = 'halted';
          return thru(step.block);
        case 'apdu': {
          const response = await this.runApdu(job, target, step.apdu);
          return typeof response === 'number' ? Uint8Array.of(response) : thru(step.reply(response));
        }
      }
    }
    if (frame[0] === RATS && frame.length === 2 && (target.sak & 0x20) !== 0) {
      this.isoDepActive = true;
      this.isoDep.reset();
      return thru(target.ats ?? Uint8Array.of(0x01));
    }
    const answer = this.toCard(target, frame);
    switch (answer.kind) {
      case 'data':
        return thru(answer.data);
      case 'nibble':
        // Four bits cannot carry a CRC: with CRC checking on, the chip reports a CRC error.
        return this.crcOn(REG_RX_MODE) ? Uint8Array.of(ST.crc) : Uint8Array.of(ST.ok, answer.value & 0x0f);
      case 'silent':
        this.silence(answer.after);
        return await this.noAnswer(job);
    }
  }

  /** The next part of the card's answer: 262 bytes at most, MI set while more remains. */
  private nextOut(): Uint8Array {
    const out = this.pendingOut ?? new Uint8Array(0);
    const part = out.subarray(0, MAX_EXCHANGE_DATA);
    const rest = out.subarray(MAX_EXCHANGE_DATA);
    this.pendingOut = rest.length > 0 ? rest : undefined;
    return Uint8Array.of(rest.length > 0 ? STATUS_MI : 0x00, ...part);
  }
}

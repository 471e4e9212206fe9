import { AgentError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import { commandName } from './commands.js';
import {
  ACK_FRAME,
  encodeFrame,
  FrameDecoder,
  type FrameEvent,
  NACK_FRAME,
  TFI_CHIP,
  TFI_HOST,
} from './frame.js';
import type { ByteLink } from './link.js';

/**
 * One command at a time to a PN532 over a byte link: frame → ACK → response, with the recovery
 * rules of the host protocol:
 *  - NACK or error frame instead of an ACK: the chip did not take the frame; send it again.
 *  - no ACK but the response arrives: the ACK was lost on the wire; take the response.
 *  - no ACK and nothing else: resend commands that are safe to repeat; for the others (card
 *    exchanges) keep waiting for the response, since the chip may be running them.
 *  - response with a bad data checksum: send NACK, the chip sends its response again.
 *  - response timeout: send ACK (which aborts the running command) and fail.
 * Responses to no pending command (a command aborted a moment too late) go to `onStale`.
 */

export interface TransportTiming {
  /** Time to wait for the ACK after the frame left (wire time is added). */
  readonly ackTimeoutMs: number;
  /**
   * Silence after which a half-received frame is given up (the line is quiet). Above the 16 ms
   * latency timer of FTDI USB-serial adapters, which deliver bytes in bursts.
   */
  readonly interByteGapMs: number;
  /** Times a command frame is sent again (after NACK, error frame or a missing ACK). */
  readonly maxResends: number;
  /** Times a corrupted response is asked for again with NACK. */
  readonly maxResponseNacks: number;
}

export const DEFAULT_TRANSPORT_TIMING: TransportTiming = {
  ackTimeoutMs: 100,
  interByteGapMs: 50,
  maxResends: 3,
  maxResponseNacks: 2,
};

/** UART wire time of one byte at 115200 baud, 8N1 (10 bits). */
export const BYTE_TIME_MS = 10 / 115.2;

export interface RequestOptions {
  /** Response deadline after sending; undefined waits for ever (a listening command). */
  readonly timeoutMs?: number;
  /** True when running the command twice is harmless. */
  readonly idempotent: boolean;
}

export interface TransportHooks {
  /** A response no request was waiting for (payload starts with the response code). */
  onStale(response: Uint8Array): void;
  /** Line noise and protocol errors (for storm detection and stats). */
  onProtocolError(kind: FrameEvent['type'] | 'stray'): void;
  /** The link closed (unplugged, or closed by us). */
  onClose(error: Error | undefined): void;
}

/** An error a request rejects with when abort() cancels it. */
export function isAbortError(err: unknown): boolean {
  return err instanceof AgentError && err.details.aborted === true;
}

interface Pending {
  readonly payload: Uint8Array;
  readonly frame: Uint8Array;
  readonly expect: number;
  readonly options: RequestOptions;
  readonly resolve: (response: Uint8Array) => void;
  readonly reject: (error: AgentError) => void;
  acked: boolean;
  sawBytes: boolean;
  resends: number;
  nacks: number;
  ackTimer: NodeJS.Timeout | undefined;
  responseTimer: NodeJS.Timeout | undefined;
}

const WAKE_UP = Uint8Array.of(0x55, 0x55, ...new Array<number>(14).fill(0));

export class Pn532Transport {
  private readonly link: ByteLink;
  private readonly log: Logger;
  private readonly timing: TransportTiming;
  private readonly hooks: TransportHooks;
  private readonly decoder = new FrameDecoder();
  private pending: Pending | undefined;
  private gapTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(link: ByteLink, log: Logger, hooks: TransportHooks, timing: Partial<TransportTiming> = {}) {
    this.link = link;
    this.log = log;
    this.hooks = hooks;
    this.timing = { ...DEFAULT_TRANSPORT_TIMING, ...timing };
    link.onData((chunk) => this.onData(chunk));
    link.onClose((error) => this.onLinkClose(error));
  }

  get isOpen(): boolean {
    return !this.closed && this.link.isOpen;
  }

  /** True while a command waits for its answer. */
  get busy(): boolean {
    return this.pending !== undefined;
  }

  /**
   * HSU wake-up: 0x55 bytes wake the chip from power-down / Low-VBat; the zeros give it time
   * before the next frame's preamble.
   */
  async wake(): Promise<void> {
    await this.link.write(WAKE_UP);
  }

  /** Sends a command payload (command code first) and resolves with the response payload. */
  request(payload: Uint8Array, options: RequestOptions): Promise<Uint8Array> {
    if (this.pending) {
      return Promise.reject(new AgentError('busy', 'a PN532 command is already running'));
    }
    if (!this.isOpen) return Promise.reject(new AgentError('reader_error', 'the serial port is closed'));
    const code = payload[0] ?? 0;
    return new Promise<Uint8Array>((resolve, reject) => {
      const pending: Pending = {
        payload,
        frame: encodeFrame(TFI_HOST, payload),
        expect: (code + 1) & 0xff,
        options,
        resolve,
        reject,
        acked: false,
        sawBytes: false,
        resends: 0,
        nacks: 0,
        ackTimer: undefined,
        responseTimer: undefined,
      };
      this.pending = pending;
      if (options.timeoutMs !== undefined) {
        const wire = pending.frame.length * BYTE_TIME_MS;
        pending.responseTimer = setTimeout(() => this.onResponseTimeout(pending), options.timeoutMs + wire);
      }
      this.send(pending);
    });
  }

  /**
   * Cancels the running command: sends ACK, which makes the PN532 drop what it is doing, and
   * rejects the request with an abort error.
   */
  async abort(): Promise<void> {
    const pending = this.pending;
    if (!pending) return;
    this.settle(pending);
    pending.reject(new AgentError('busy', 'PN532 command aborted', { aborted: true }));
    await this.writeQuietly(ACK_FRAME);
  }

  async close(): Promise<void> {
    await this.link.close();
  }

  private send(pending: Pending): void {
    clearTimeout(pending.ackTimer);
    const wire = pending.frame.length * BYTE_TIME_MS;
    pending.ackTimer = setTimeout(() => this.onAckTimeout(pending), this.timing.ackTimeoutMs + wire);
    this.link.write(pending.frame).catch((err: unknown) => {
      if (this.pending !== pending) return;
      this.settle(pending);
      pending.reject(
        err instanceof AgentError
          ? err
          : new AgentError('reader_error', 'serial write failed', {}, { cause: err }),
      );
    });
  }

  private resend(pending: Pending, why: string): void {
    if (pending.resends >= this.timing.maxResends) {
      this.settle(pending);
      pending.reject(
        new AgentError('reader_error', `PN532 did not take ${commandName(pending.expect - 1)} (${why})`, {
          command: commandName(pending.expect - 1),
          noAnswer: !pending.sawBytes,
          acked: false,
        }),
      );
      return;
    }
    pending.resends++;
    pending.acked = false;
    this.log.debug(
      { command: commandName(pending.expect - 1), why, resend: pending.resends },
      'resending PN532 command',
    );
    this.send(pending);
  }

  private onAckTimeout(pending: Pending): void {
    if (this.pending !== pending || pending.acked) return;
    if (pending.options.idempotent) {
      if (pending.resends >= this.timing.maxResends) {
        this.settle(pending);
        void this.writeQuietly(ACK_FRAME);
        pending.reject(
          new AgentError('reader_timeout', `no ACK from the PN532 for ${commandName(pending.expect - 1)}`, {
            command: commandName(pending.expect - 1),
            noAnswer: !pending.sawBytes,
            acked: false,
          }),
        );
        return;
      }
      // The chip may be running it after all: abort that before sending it again.
      void this.writeQuietly(ACK_FRAME);
      this.resend(pending, 'no ACK');
      return;
    }
    // Not safe to repeat: the response may still come (ACK lost); the response timer decides.
    this.log.debug({ command: commandName(pending.expect - 1) }, 'no ACK yet; waiting for the response');
  }

  private onResponseTimeout(pending: Pending): void {
    if (this.pending !== pending) return;
    this.settle(pending);
    void this.writeQuietly(ACK_FRAME);
    pending.reject(
      new AgentError('reader_timeout', `no answer to ${commandName(pending.expect - 1)} in time`, {
        command: commandName(pending.expect - 1),
        acked: pending.acked,
        noAnswer: !pending.sawBytes,
      }),
    );
  }

  private settle(pending: Pending): void {
    clearTimeout(pending.ackTimer);
    clearTimeout(pending.responseTimer);
    if (this.pending === pending) this.pending = undefined;
  }

  private onData(chunk: Uint8Array): void {
    if (this.pending) this.pending.sawBytes = true;
    for (const event of this.decoder.push(chunk)) this.onEvent(event);
    clearTimeout(this.gapTimer);
    if (this.decoder.hasPartial()) {
      this.gapTimer = setTimeout(() => {
        for (const event of this.decoder.flush()) this.onEvent(event);
      }, this.timing.interByteGapMs);
    }
  }

  private onEvent(event: FrameEvent): void {
    const pending = this.pending;
    switch (event.type) {
      case 'ack':
        if (pending && !pending.acked) {
          pending.acked = true;
          clearTimeout(pending.ackTimer);
        } else {
          this.hooks.onProtocolError('stray');
        }
        return;
      case 'nack':
        this.hooks.onProtocolError('nack');
        if (pending && !pending.acked) this.resend(pending, 'NACK');
        return;
      case 'error-frame':
        this.hooks.onProtocolError('error-frame');
        if (pending) this.resend(pending, 'error frame');
        return;
      case 'frame':
        if (event.tfi !== TFI_CHIP) {
          this.hooks.onProtocolError('stray');
          return;
        }
        if (pending && event.data[0] === pending.expect) {
          this.settle(pending);
          pending.resolve(event.data);
        } else {
          this.hooks.onStale(event.data);
        }
        return;
      case 'bad-checksum':
        this.hooks.onProtocolError('bad-checksum');
        if (pending && event.tfi === TFI_CHIP) {
          if (pending.nacks >= this.timing.maxResponseNacks) {
            this.settle(pending);
            void this.writeQuietly(ACK_FRAME);
            pending.reject(
              new AgentError('frame_checksum', `corrupted answer to ${commandName(pending.expect - 1)}`, {
                command: commandName(pending.expect - 1),
              }),
            );
            return;
          }
          pending.nacks++;
          void this.writeQuietly(NACK_FRAME);
        }
        return;
      default:
        this.hooks.onProtocolError(event.type);
    }
  }

  private onLinkClose(error: Error | undefined): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.gapTimer);
    const pending = this.pending;
    if (pending) {
      this.settle(pending);
      pending.reject(
        new AgentError('reader_error', 'the serial port closed', { noAnswer: true, linkClosed: true }),
      );
    }
    this.hooks.onClose(error);
  }

  private async writeQuietly(bytes: Uint8Array): Promise<void> {
    try {
      await this.link.write(bytes);
    } catch {
      // A failed write shows up as a closed link; the pending request is failed there.
    }
  }
}

/**
 * One connection the BLE central opened, as the BleChannel the reader holds: listeners, the
 * chunks that came before a listener, its timers (session bound, unproven deadline) and the
 * guard every pending step of the connection races. The D-Bus work is the link's (SessionOwner);
 * this holds no bus and loads neither node-ble nor dbus-next.
 */
import type { Code } from '../core/codes.js';
import { AgentError } from '../core/errors.js';
import { errorText, withTimeout } from './bounded-calls.js';
import { type BleChannel, type BleCloseReason, MAX_WRITE_BYTES } from './channel.js';

/** Notifications held for a channel nobody listens to yet. */
const MAX_QUEUED_CHUNKS = 64;

/** What a session needs from the link that opened it. */
export interface SessionOwner {
  end(session: Session, reason: BleCloseReason, cooldownMs: number): Promise<void>;
  cooldown(ms: number): void;
  proven(): void;
  extend(): boolean;
}

/** One session's state; the channel the reader holds. */
export class Session implements BleChannel {
  readonly address: string;
  readonly path: string;
  closed = false;
  ending: Promise<void> | undefined;
  /** Connect was sent: Disconnect must follow, whatever happened. */
  connectSent = false;
  mtu: number | undefined;
  notifyPath: string | undefined;
  /** One write request to the write characteristic, once resolved. */
  writer: ((bytes: Uint8Array) => Promise<unknown>) | undefined;
  private readonly owner: SessionOwner;
  private readonly writeTimeoutMs: number;
  private readonly dataListeners = new Set<(chunk: Uint8Array) => void>();
  private readonly closeListeners = new Set<(reason: BleCloseReason) => void>();
  private readonly endCallbacks = new Set<() => void>();
  private readonly queued: Uint8Array[] = [];
  private reason: BleCloseReason | undefined;
  private timer: NodeJS.Timeout | undefined;
  private unprovenTimer: NodeJS.Timeout | undefined;
  private proven = false;
  private unprovenExpiry: (() => void) | undefined;
  private rejectClosed: ((err: AgentError) => void) | undefined;
  /** Rejects when the session ends: every pending step races it. */
  private readonly closedSignal: Promise<never>;

  constructor(address: string, path: string, writeTimeoutMs: number, owner: SessionOwner) {
    this.address = address;
    this.path = path;
    this.owner = owner;
    this.writeTimeoutMs = writeTimeoutMs;
    this.closedSignal = new Promise<never>((_, reject) => {
      this.rejectClosed = reject;
    });
    this.closedSignal.catch(() => {});
  }

  /** Arrow so it can be passed to node-ble's emitter and removed again. */
  readonly deliver = (value: Buffer): void => {
    if (this.closed) return;
    const chunk = Uint8Array.from(value);
    if (this.dataListeners.size === 0) {
      if (this.queued.length < MAX_QUEUED_CHUNKS) this.queued.push(chunk);
      return;
    }
    for (const listener of this.dataListeners) listener(chunk);
  };

  async write(bytes: Uint8Array): Promise<void> {
    const writer = this.writer;
    if (this.closed || writer === undefined) {
      throw new AgentError('reader_error', `BLE session closed (${this.reason ?? 'not open'})`);
    }
    if (bytes.length === 0 || bytes.length > MAX_WRITE_BYTES) {
      throw new AgentError('frame_too_large', `a BLE write carries 1…${MAX_WRITE_BYTES} bytes`, {
        bytes: bytes.length,
      });
    }
    await this.guard(writer(bytes), this.writeTimeoutMs, 'write');
  }

  onData(listener: (chunk: Uint8Array) => void): () => void {
    this.dataListeners.add(listener);
    for (const chunk of this.queued.splice(0)) listener(chunk);
    return () => this.dataListeners.delete(listener);
  }

  onClose(listener: (reason: BleCloseReason) => void): () => void {
    if (this.reason !== undefined) {
      listener(this.reason);
      return () => {};
    }
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  close(options: { readonly cooldownMs?: number } = {}): Promise<void> {
    const cooldownMs = options.cooldownMs ?? 0;
    // The phone may have dropped the link already (the session then ended on its own): the
    // caller's cooldown after a grant must hold all the same.
    if (cooldownMs > 0) this.owner.cooldown(cooldownMs);
    return this.owner.end(this, 'closed', cooldownMs);
  }

  abort(reason: BleCloseReason): void {
    void this.owner.end(this, reason, 0);
  }

  armTimeout(ms: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.abort('session-timeout'), ms);
  }

  /** Drops the session `ms` from now unless it is marked proven first. */
  armUnproven(ms: number, onExpiry: () => void): void {
    clearTimeout(this.unprovenTimer);
    if (this.proven || this.closed) return;
    this.unprovenTimer = setTimeout(() => {
      if (this.proven || this.closed) return;
      onExpiry();
      this.abort('unproven-timeout');
    }, ms);
    this.unprovenExpiry = onExpiry;
  }

  markProven(): void {
    if (this.proven || this.closed) return;
    this.proven = true;
    clearTimeout(this.unprovenTimer);
    this.owner.proven();
  }

  extendTurn(ms: number): boolean {
    if (this.closed) return false;
    if (!this.proven) {
      if (!this.owner.extend()) return false;
      this.armUnproven(ms, this.unprovenExpiry ?? (() => {}));
    }
    // Proven or not, the overall session bound (ble sessionTimeoutMs, 15 s) must not cut the turn
    // short either: an owner approving an enrollment has until the request expires.
    this.armTimeout(ms + this.writeTimeoutMs);
    return true;
  }

  onEnd(callback: () => void): void {
    this.endCallbacks.add(callback);
  }

  /** Marks the session ended and tells everyone waiting on it, once. */
  finish(reason: BleCloseReason): void {
    if (this.reason !== undefined) return;
    this.reason = reason;
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.unprovenTimer);
    this.rejectClosed?.(new AgentError('reader_error', `BLE session ended: ${reason}`, { reason }));
    for (const callback of this.endCallbacks) callback();
    this.endCallbacks.clear();
    for (const listener of this.closeListeners) {
      try {
        listener(reason);
      } catch {
        // a listener's failure must not keep the device connected
      }
    }
    this.closeListeners.clear();
    this.dataListeners.clear();
    this.queued.length = 0;
  }

  /** Bounds a step by a timeout and by the session ending; maps failures to coded errors. */
  async guard<T>(
    promise: Promise<T>,
    ms: number,
    what: string,
    timeoutCode: Code = 'reader_timeout',
  ): Promise<T> {
    if (this.closed) {
      promise.catch(() => {});
      throw new AgentError('reader_error', `BLE session ended: ${this.reason ?? 'closed'}`);
    }
    try {
      return await Promise.race([withTimeout(promise, ms, what, timeoutCode), this.closedSignal]);
    } catch (err) {
      if (err instanceof AgentError) throw err;
      throw new AgentError('reader_error', `${what} failed: ${errorText(err)}`, {}, { cause: err });
    }
  }
}

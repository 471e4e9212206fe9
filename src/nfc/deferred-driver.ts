import type { Health } from '../core/types.js';
import type { FirmwareVersion } from './pn532/commands.js';
import type { Pn532Target } from './pn532/driver.js';
import type { NfcDriver } from './reader.js';

/** What the deferred driver needs from the real one (Pn532Driver satisfies it). */
export interface AttachableDriver extends NfcDriver {
  firmware(): FirmwareVersion | undefined;
}

type TargetListener = (target: Pn532Target) => void;

/**
 * Stands in for the PN532 driver while it is being loaded (serialport, and in sim mode the
 * emulator behind socat), so the agent is ready without waiting for them: listeners and a start
 * request are passed on when the real driver is attached. Health says starting until then.
 */
export class DeferredDriver implements NfcDriver {
  private driver: AttachableDriver | undefined;
  private readonly listeners = new Set<TargetListener>();
  private startRequested = false;
  private stopped = false;
  private startedPromise: Promise<void> | undefined;
  private notifyStarted: (() => void) | undefined;
  private state: Health = { state: 'degraded', detail: 'starting', since: Date.now() };
  private readonly startedSignal: Promise<void>;

  constructor() {
    this.startedSignal = new Promise((resolve) => {
      this.notifyStarted = resolve;
    });
  }

  /** Hands over to the real driver; starts it when start() was already asked for. */
  attach(driver: AttachableDriver): void {
    if (this.driver) return;
    this.driver = driver;
    for (const listener of this.listeners) driver.on('target', listener);
    if (this.startRequested && !this.stopped) this.launch(driver);
  }

  /** The driver could not be built: health says why. */
  failed(detail: string): void {
    this.state = { state: 'down', detail, since: Date.now() };
  }

  on(_event: 'target', listener: TargetListener): void {
    this.listeners.add(listener);
    this.driver?.on('target', listener);
  }

  off(_event: 'target', listener: TargetListener): void {
    this.listeners.delete(listener);
    this.driver?.off('target', listener);
  }

  /** Resolves at once: the first initialisation runs in the background. */
  async start(): Promise<void> {
    this.startRequested = true;
    if (this.driver) this.launch(this.driver);
  }

  /** Resolves once the real driver finished its first initialisation attempt. */
  started(): Promise<void> {
    return this.startedSignal;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.startedPromise?.catch(() => {});
    await this.driver?.stop();
  }

  health(): Health {
    return this.driver && this.startedPromise ? this.driver.health() : this.state;
  }

  firmware(): FirmwareVersion | undefined {
    return this.driver?.firmware();
  }

  private launch(driver: AttachableDriver): void {
    if (this.startedPromise) return;
    this.startedPromise = driver.start().finally(() => this.notifyStarted?.());
    this.startedPromise.catch(() => {});
  }
}

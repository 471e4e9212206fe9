/**
 * The agent's BLE central: the one home of node-ble. It finds devices advertising the
 * vehicle-key service through BlueZ, and opens sessions with them: connect, resolve GATT,
 * subscribe to the notify characteristic, write with response, always disconnect. It knows
 * nothing of the phone-key protocol: a session is a byte channel (BleChannel, src/ble/channel.ts),
 * the seam a peripheral transport would implement too.
 *
 * This class coordinates: the public API and the open sessions. Each other job has its module:
 * - discovery.ts: keeps BlueZ, the adapter and our discovery running, recovers when one of them
 *   goes away, and dispatches BlueZ's signals (discovery events come as ObjectManager and
 *   PropertiesChanged signals, since node-ble's waitDevice polls);
 * - bus-connection.ts: the one D-Bus connection (node-ble opens it and finds the adapter) and
 *   the link's match rules;
 * - scanner.ts: which sighted devices are offered as candidates, and when (with the session gate
 *   of link-policy.ts and the device table of bluez-model.ts);
 * - gatt-connect.ts: one session's Connect, GATT resolution, notifications and Disconnect;
 * - link-session.ts: one session's state and timers, as the channel the reader holds.
 *
 * node-ble (through dbus-next 0.10) never removes the match rules and signal listeners it adds,
 * about three a gatt(): the daemon refuses more past its limit (512 a connection on the system
 * bus), memory grows and Node warns. The link's own path_namespace rule keeps signals flowing
 * regardless, and after `recycleAfterSessions` sessions that used node-ble (or once a rule was
 * refused) it reconnects to the bus when idle, which frees them all.
 */
import type { Clock } from '../core/clock.js';
import { AgentError, toAgentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Health } from '../core/types.js';
import { devicePath } from './bluez-model.js';
import { errorText } from './bounded-calls.js';
import type { BleChannel, BleCloseReason } from './channel.js';
import { Discovery } from './discovery.js';
import { GattConnector } from './gatt-connect.js';
import {
  type BleCandidate,
  type BleLinkOptions,
  type BleLinkStats,
  DEFAULT_CONNECTS_PER_SECOND,
  type ResolvedLinkOptions,
  resolveLinkOptions,
} from './link-options.js';
import { SessionGate } from './link-policy.js';
import { Session } from './link-session.js';
import { CandidateScanner } from './scanner.js';

export type { BleChannel, BleCloseReason } from './channel.js';
export type { BleCandidate, BleLinkOptions, BleLinkStats } from './link-options.js';

const ADDRESS = /^([0-9A-F]{2}:){5}[0-9A-F]{2}$/;

export class BleLink {
  private readonly options: ResolvedLinkOptions;
  private readonly log: Logger;
  private readonly clock: Pick<Clock, 'now' | 'monotonic'>;
  private readonly gate: SessionGate;
  private readonly connector: GattConnector;
  private readonly scanner: CandidateScanner;
  private readonly discovery: Discovery;
  private readonly sessions = new Map<string, Session>();
  private readonly counters = { sessionsOpened: 0, sessionsFailed: 0, gattRetries: 0, unprovenTimeouts: 0 };

  constructor(options: BleLinkOptions) {
    this.options = resolveLinkOptions(options);
    this.log = options.logger.child({ module: 'ble-link' });
    this.clock = options.clock ?? { now: () => Date.now(), monotonic: () => performance.now() };
    this.gate = new SessionGate({
      maxSessions: this.options.maxSessions,
      spacingMs: this.options.sessionSpacingMs,
      unprovenTurnMs: this.options.unprovenTurnMs,
      ...(options.maxWaiting === undefined ? {} : { maxWaiting: options.maxWaiting }),
      ...(options.random === undefined ? {} : { random: options.random }),
      connectBudget: {
        perSecond: options.maxConnectsPerSecond ?? DEFAULT_CONNECTS_PER_SECOND,
        burst: this.options.maxSessions,
      },
    });
    this.connector = new GattConnector(this.options, this.log, () => {
      this.counters.gattRetries += 1;
    });
    // The scanner reads the discovery state only when it runs, after the constructor.
    const link = this;
    this.scanner = new CandidateScanner({
      options: this.options,
      maxConnectsPerSecond: options.maxConnectsPerSecond,
      gate: this.gate,
      clock: this.clock,
      log: this.log,
      host: {
        get running() {
          return link.discovery.running;
        },
        get ready() {
          return link.discovery.ready;
        },
        get adapter() {
          return link.discovery.adapter;
        },
        get conn() {
          return link.discovery.conn;
        },
        hasSession: (address) => this.sessions.has(address),
        evict: (address) => this.sessions.get(address)?.abort('evicted'),
      },
    });
    this.discovery = new Discovery({
      options: this.options,
      busAddress: options.busAddress,
      adapterName: options.adapter,
      log: this.log,
      clock: this.clock,
      connector: this.connector,
      scanner: this.scanner,
      host: {
        get sessionCount() {
          return link.sessions.size;
        },
        abortSessions: (reason) => {
          for (const session of this.sessions.values()) void this.endSession(session, reason, 0);
        },
        abortSession: (address, reason) => this.sessions.get(address)?.abort(reason),
        vanished: (address) => {
          this.sessions.get(address)?.abort('vanished');
          this.gate.forget(address);
        },
      },
    });
  }

  // ── public API ─────────────────────────────────────────────────────────────────

  /**
   * Connects to the bus and BlueZ and starts discovery. Resolves after the first attempt
   * whatever its outcome: a missing BlueZ or adapter shows in health() and is retried.
   */
  async start(): Promise<void> {
    await this.discovery.start();
  }

  /** Ends every session (disconnecting), stops discovery and closes the bus connection. */
  async stop(): Promise<void> {
    if (!this.discovery.running) return;
    this.discovery.halt();
    this.scanner.stop();
    await Promise.all([...this.sessions.values()].map((s) => this.endSession(s, 'stopped', 0)));
    await this.discovery.close();
  }

  health(): Health {
    return this.discovery.health();
  }

  stats(): BleLinkStats {
    const gate = this.gate.stats();
    const scan = this.scanner.stats();
    const table = this.discovery.adapter?.table;
    return {
      candidates: scan.candidates,
      sessionsOpened: this.counters.sessionsOpened,
      sessionsFailed: this.counters.sessionsFailed,
      gattRetries: this.counters.gattRetries,
      ...this.discovery.stats(),
      unprovenTimeouts: this.counters.unprovenTimeouts,
      trackedDevicesEvicted: scan.trackedDevicesEvicted,
      devicesLookedUp: scan.devicesLookedUp,
      activeSessions: this.sessions.size,
      unprovenSessions: gate.unproven,
      sightingsDeferred: gate.deferred,
      sessionsEvicted: gate.evicted,
      waitingDevices: gate.waiting,
      waitingDropped: gate.waitingDropped,
      connects: gate.connects,
      connectsDeferred: gate.budgetDeferred,
      trackedDevices: table?.size ?? 0,
      tables: {
        gattObjects: table?.attributes ?? 0,
        holds: gate.holds,
        pathWaiters: this.connector.waitingPaths,
        notifyPaths: this.connector.subscribedPaths,
        lookups: this.scanner.lookupsRunning,
      },
    };
  }

  /**
   * Called on every fresh sighting (advertisement) of a device that advertises the service,
   * is loud enough, and may have a session now. Returns an unsubscribe function.
   */
  onCandidate(listener: (candidate: BleCandidate) => void): () => void {
    return this.scanner.onCandidate(listener);
  }

  /** Holds a device back for `ms` (e.g. after a grant), whether or not a session is open. */
  setCooldown(address: string, ms: number): void {
    this.gate.setCooldown(normaliseAddress(address), this.clock.monotonic(), ms);
  }

  /**
   * Opens a session: connect, resolve GATT, subscribe. Rejects with AgentError `busy` (device
   * busy, bound reached, cooling down), `reader_timeout` or `reader_error`; always leaves the
   * device disconnected when it rejects.
   */
  async openSession(address: string): Promise<BleChannel> {
    const addr = normaliseAddress(address);
    const { conn, adapter } = this.discovery;
    if (!this.discovery.ready || conn === undefined || adapter === undefined) {
      const state = this.discovery.health();
      throw new AgentError('reader_error', `BLE link not ready: ${state.detail ?? state.state}`);
    }
    const refusal = this.gate.acquire(addr, this.clock.monotonic());
    if (refusal !== undefined) {
      throw new AgentError('busy', `no BLE session with ${addr} now: ${refusal}`, { reason: refusal });
    }
    const session = new Session(addr, devicePath(adapter.path, addr), this.options.callTimeoutMs, {
      end: (s, reason, cooldownMs) => this.endSession(s, reason, cooldownMs),
      cooldown: (ms) => this.setCooldown(addr, ms),
      proven: () => this.gate.markProven(addr),
      extend: () => this.gate.extend(addr),
    });
    this.sessions.set(addr, session);
    // Until the reader marks it proven, the whole session (connect included) has this long.
    session.armUnproven(this.options.unprovenDeadlineMs, () => {
      this.counters.unprovenTimeouts += 1;
    });
    try {
      await this.connector.establish(session, adapter, conn);
      this.counters.sessionsOpened += 1;
      session.armTimeout(this.options.sessionTimeoutMs);
      return session;
    } catch (err) {
      this.counters.sessionsFailed += 1;
      const error = toAgentError(err, 'reader_error');
      this.log.info({ address: addr, code: error.code, err: error.message }, 'BLE session failed');
      await this.endSession(session, 'failed', 0);
      throw error;
    }
  }

  // ── sessions ───────────────────────────────────────────────────────────────────

  /** Ends a session once: listeners told, writes rejected, device disconnected, slot freed. */
  private endSession(session: Session, reason: BleCloseReason, cooldownMs: number): Promise<void> {
    session.ending ??= (async () => {
      session.finish(reason);
      this.connector.unsubscribe(session);
      // The slot is free from here (a slow Disconnect must not hold it); a waiting device gets it.
      this.gate.beginClose(session.address);
      this.scanner.serveWaiting();
      const conn = this.discovery.conn;
      if (session.connectSent && conn !== undefined) {
        // Always, even after a failed or aborted connect: it also cancels a pending Connect.
        const result = await this.connector.disconnect(session, conn);
        if (result !== undefined)
          this.log.debug({ address: session.address, err: errorText(result) }, 'disconnect');
      }
      this.gate.release(session.address, this.clock.monotonic(), cooldownMs);
      this.sessions.delete(session.address);
      this.log.debug({ address: session.address, reason }, 'BLE session ended');
      this.scanner.serveWaiting();
      this.discovery.maybeRecycle();
    })();
    return session.ending;
  }
}

function normaliseAddress(address: string): string {
  const upper = address.toUpperCase();
  if (!ADDRESS.test(upper)) throw new AgentError('bad_arguments', `not a Bluetooth address: ${address}`);
  return upper;
}

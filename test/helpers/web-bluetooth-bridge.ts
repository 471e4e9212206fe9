import type { Browser, Page } from 'puppeteer-core';
import {
  ANSWER_CHAR_UUID,
  CHALLENGE_CHAR_UUID,
  PERIPHERAL_SERVICE_UUID,
  RESULT_CHAR_UUID,
} from '../../web/phone-key/constants.js';
import type { SimulatedCentral } from './phone-key-central.js';

/**
 * Puts a simulated vehicle in front of a page in Chromium through WebDriver BiDi's bluetooth
 * module (puppeteer-core launched with protocol 'webDriverBiDi'): a powered-on adapter, the
 * vehicle as a preconnected peripheral (simulated advertisements crashed the browser here) with
 * the phone-key service, the chooser answered with it, and every GATT connection, read and
 * write the page makes passed to a SimulatedCentral. Notifications cannot be simulated: the page
 * reads the result. Bridge one page per browser at a time: Chromium reports a page's GATT
 * events once for every page with a simulation (each labelled with that page's context), so
 * two bridges would both answer the same read. A page's own disconnect sends no event, and a
 * reconnection of the preconnected peripheral sent none here either: one `device` may carry
 * several of the page's connections.
 */

/** The raw BiDi connection under puppeteer's Browser (puppeteer keeps it internal). */
interface BidiConnection {
  send(method: string, params: object): Promise<{ result: unknown }>;
  on(event: string, handler: (params: never) => void): void;
  off(event: string, handler: (params: never) => void): void;
}

interface PromptEvent {
  context: string;
  prompt: string;
  devices: { id: string }[];
}
interface GattEvent {
  context: string;
  address: string;
}
interface CharacteristicEvent {
  context: string;
  address: string;
  serviceUuid: string;
  characteristicUuid: string;
  type: string;
  data?: number[];
}

const CCCD_UUID = '00002902-0000-1000-8000-00805f9b34fb';
/** GATT errors the simulated peripheral answers a refused write or a failed read with. */
const ATT_WRITE_NOT_PERMITTED = 0x03;
const ATT_UNLIKELY_ERROR = 0x0e;

export interface TrafficEntry {
  readonly op: 'connect' | 'read' | 'write';
  readonly characteristic?: 'challenge' | 'answer' | 'result';
  readonly bytes?: Uint8Array;
  readonly refused?: boolean;
}

export interface VehicleBridge {
  /** Every connection, read and write the page made, in order. */
  readonly traffic: TrafficEntry[];
  /** The chooser is answered by picking the vehicle (default) or cancelling. */
  choose: 'vehicle' | 'cancel';
  /**
   * Stands between the page's answer write and the vehicle, when set: it may hold the write (a
   * slow link) or give other bytes to write instead (an attacker's). Traffic records what the
   * vehicle was given.
   */
  onAnswer: ((bytes: Uint8Array) => Promise<Uint8Array>) | undefined;
  /** The simulated central of the page's latest connection (the vehicle's `device`). */
  readonly device: string | undefined;
  detach(): Promise<void>;
}

function bidi(browser: Browser): BidiConnection {
  const connection = (browser as unknown as { connection?: BidiConnection }).connection;
  if (!connection) throw new Error('the browser was not launched with protocol webDriverBiDi');
  return connection;
}

/** The BiDi browsing context id of the page's main frame (puppeteer's frame id). */
export function contextOf(page: Page): string {
  const id = (page.mainFrame() as unknown as { _id?: string })._id;
  if (typeof id !== 'string') throw new Error('no browsing context id on the page');
  return id;
}

export async function attachVehicle(
  page: Page,
  central: SimulatedCentral,
  peripheralAddress = '0A:11:22:33:44:55',
): Promise<VehicleBridge> {
  // Chromium reports addresses in upper case.
  const address = peripheralAddress.toUpperCase();
  const conn = bidi(page.browser());
  const context = contextOf(page);
  const send = (method: string, params: object) => conn.send(method, { context, ...params });
  const characteristicName: Record<string, 'challenge' | 'answer' | 'result'> = {
    [CHALLENGE_CHAR_UUID]: 'challenge',
    [ANSWER_CHAR_UUID]: 'answer',
    [RESULT_CHAR_UUID]: 'result',
  };
  let device: string | undefined;
  const handledPrompts = new Set<string>();
  // Events are handled one at a time, in order, as a peripheral would.
  let queue: Promise<void> = Promise.resolve();
  const serial = (work: () => Promise<void>) => {
    queue = queue.then(work).catch((err: unknown) => {
      bridge.errors.push(err);
    });
  };

  const bridge: VehicleBridge & { errors: unknown[] } = {
    traffic: [],
    errors: [],
    choose: 'vehicle',
    onAnswer: undefined,
    get device() {
      return device;
    },
    detach: async () => {
      conn.off('bluetooth.requestDevicePromptUpdated', onPrompt);
      conn.off('bluetooth.gattConnectionAttempted', onGatt);
      conn.off('bluetooth.characteristicEventGenerated', onCharacteristic);
      await queue;
      if (device !== undefined) await central.disconnect(device).catch(() => undefined);
      await send('bluetooth.disableSimulation', {}).catch(() => undefined);
    },
  };

  const onPrompt = (e: PromptEvent) => {
    // The prompt is announced again as devices show up; it is answered once.
    if (e.context !== context || handledPrompts.has(e.prompt)) return;
    const picked = e.devices.find((d) => d.id.toUpperCase() === address);
    // Until the vehicle is in the list, wait for the next update (unless cancelling).
    if (!picked && bridge.choose === 'vehicle') return;
    handledPrompts.add(e.prompt);
    serial(async () => {
      await send(
        'bluetooth.handleRequestDevicePrompt',
        bridge.choose === 'vehicle' && picked
          ? { prompt: e.prompt, accept: true, device: picked.id }
          : { prompt: e.prompt, accept: false },
      );
    });
  };
  const onGatt = (e: GattEvent) => {
    if (e.context !== context || e.address.toUpperCase() !== address) return;
    serial(async () => {
      // The page's own disconnect sends no event: a new connection ends the previous one.
      if (device !== undefined) await central.disconnect(device);
      device = await central.connect();
      bridge.traffic.push({ op: 'connect' });
      await send('bluetooth.simulateGattConnectionResponse', { address, code: 0 });
    });
  };
  const onCharacteristic = (e: CharacteristicEvent) => {
    if (e.context !== context || e.address.toUpperCase() !== address) return;
    const name = characteristicName[e.characteristicUuid];
    const respond = (type: string, code: number, data?: Uint8Array) =>
      send('bluetooth.simulateCharacteristicResponse', {
        address,
        serviceUuid: e.serviceUuid,
        characteristicUuid: e.characteristicUuid,
        type,
        code,
        ...(data ? { data: [...data] } : {}),
      });
    serial(async () => {
      if (e.type === 'subscribe-to-notifications' || e.type === 'unsubscribe-from-notifications') {
        await respond(e.type, 0);
        return;
      }
      if (device === undefined || name === undefined) {
        await respond(e.type === 'read' ? 'read' : 'write', ATT_UNLIKELY_ERROR);
        return;
      }
      if (e.type === 'read' && name !== 'answer') {
        try {
          const bytes = await central.read(device, name);
          bridge.traffic.push({ op: 'read', characteristic: name, bytes });
          await respond('read', 0, bytes);
        } catch {
          bridge.traffic.push({ op: 'read', characteristic: name, refused: true });
          await respond('read', ATT_UNLIKELY_ERROR);
        }
        return;
      }
      if (e.type === 'write-with-response' && name === 'answer') {
        const written = new Uint8Array(e.data ?? []);
        const bytes = bridge.onAnswer === undefined ? written : await bridge.onAnswer(written);
        try {
          await central.write(device, 'answer', bytes);
          bridge.traffic.push({ op: 'write', characteristic: name, bytes });
          await respond('write', 0);
        } catch {
          bridge.traffic.push({ op: 'write', characteristic: name, bytes, refused: true });
          await respond('write', ATT_WRITE_NOT_PERMITTED);
        }
        return;
      }
      await respond(e.type === 'read' ? 'read' : 'write', ATT_WRITE_NOT_PERMITTED);
    });
  };

  conn.on('bluetooth.requestDevicePromptUpdated', onPrompt);
  conn.on('bluetooth.gattConnectionAttempted', onGatt);
  conn.on('bluetooth.characteristicEventGenerated', onCharacteristic);
  await conn.send('session.subscribe', { events: ['bluetooth'], contexts: [context] });
  await send('bluetooth.simulateAdapter', { state: 'powered-on' });
  await send('bluetooth.simulatePreconnectedPeripheral', {
    address,
    name: '',
    manufacturerData: [],
    knownServiceUuids: [PERIPHERAL_SERVICE_UUID],
  });
  await send('bluetooth.simulateService', { address, uuid: PERIPHERAL_SERVICE_UUID, type: 'add' });
  const characteristics: [string, object][] = [
    [CHALLENGE_CHAR_UUID, { read: true }],
    [ANSWER_CHAR_UUID, { write: true }],
    [RESULT_CHAR_UUID, { read: true, notify: true }],
  ];
  for (const [uuid, properties] of characteristics) {
    await send('bluetooth.simulateCharacteristic', {
      address,
      serviceUuid: PERIPHERAL_SERVICE_UUID,
      characteristicUuid: uuid,
      characteristicProperties: properties,
      type: 'add',
    });
  }
  await send('bluetooth.simulateDescriptor', {
    address,
    serviceUuid: PERIPHERAL_SERVICE_UUID,
    characteristicUuid: RESULT_CHAR_UUID,
    descriptorUuid: CCCD_UUID,
    type: 'add',
  });
  return bridge;
}

/**
 * How the page reaches the vehicle's phone-key GATT service: one small interface, two radios.
 * Web Bluetooth (a phone or a laptop beside the vehicle), or the simulated radio an agent in sim
 * mode offers through its status server (sim-radio.ts). Everything above (codec, keys, passkeys,
 * pinning, words) is the same for both.
 */
import {
  ANSWER_CHAR_UUID,
  CHALLENGE_CHAR_UUID,
  PERIPHERAL_SERVICE_UUID,
  RESULT_CHAR_UUID,
} from './constants.js';

/** One GATT connection to the vehicle: the vehicle keeps nothing per connection once it ends. */
export interface VehicleLink {
  readChallenge(): Promise<Uint8Array>;
  writeAnswer(bytes: Uint8Array): Promise<void>;
  readResult(): Promise<Uint8Array>;
  disconnect(): void;
}

export interface VehicleRadio {
  readonly kind: 'bluetooth' | 'simulated';
  /** Picks the vehicle; Web Bluetooth's chooser needs the user gesture this is called in. */
  choose(): Promise<void>;
  /** A fresh connection to the chosen vehicle. */
  connect(): Promise<VehicleLink>;
  /** Forgets the chosen vehicle (the next choose asks again). */
  forget(): void;
}

/** The page as a Web Bluetooth central; the vehicle chosen is remembered for this page's life. */
export function webBluetoothRadio(): VehicleRadio {
  let remembered: BluetoothDevice | undefined;
  const choose = async (): Promise<BluetoothDevice> => {
    if (remembered) return remembered;
    if (!navigator.bluetooth)
      throw new Error('this browser has no Web Bluetooth (use Chrome on Android or desktop)');
    remembered = await navigator.bluetooth.requestDevice({
      filters: [{ services: [PERIPHERAL_SERVICE_UUID] }],
    });
    return remembered;
  };
  return {
    kind: 'bluetooth',
    choose: async () => {
      await choose();
    },
    connect: async () => connectGatt(await choose()),
    forget: () => {
      remembered = undefined;
    },
  };
}

async function connectGatt(device: BluetoothDevice): Promise<VehicleLink> {
  if (!device.gatt) throw new Error('the vehicle offers no GATT server');
  const server = await device.gatt.connect();
  try {
    const service = await server.getPrimaryService(PERIPHERAL_SERVICE_UUID);
    const [challenge, answer, result] = await Promise.all([
      service.getCharacteristic(CHALLENGE_CHAR_UUID),
      service.getCharacteristic(ANSWER_CHAR_UUID),
      service.getCharacteristic(RESULT_CHAR_UUID),
    ]);
    const read = async (c: BluetoothRemoteGATTCharacteristic) => {
      const v = await c.readValue();
      return new Uint8Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
    };
    return {
      readChallenge: () => read(challenge),
      writeAnswer: (bytes) => answer.writeValueWithResponse(bytes as BufferSource),
      readResult: () => read(result),
      disconnect: () => server.disconnect(),
    };
  } catch (err) {
    server.disconnect();
    throw err;
  }
}

/** The page as a Web Bluetooth central of the vehicle's phone-key service. */
import {
  ANSWER_CHAR_UUID,
  CHALLENGE_CHAR_UUID,
  PERIPHERAL_SERVICE_UUID,
  RESULT_CHAR_UUID,
} from './constants.js';

export interface VehicleLink {
  readChallenge(): Promise<Uint8Array>;
  writeAnswer(bytes: Uint8Array): Promise<void>;
  readResult(): Promise<Uint8Array>;
  disconnect(): void;
}

let remembered: BluetoothDevice | undefined;

/** The chooser (needs a user gesture); the vehicle chosen is remembered for this page's life. */
export async function chooseVehicle(): Promise<BluetoothDevice> {
  if (remembered) return remembered;
  if (!navigator.bluetooth)
    throw new Error('this browser has no Web Bluetooth (use Chrome on Android or desktop)');
  remembered = await navigator.bluetooth.requestDevice({
    filters: [{ services: [PERIPHERAL_SERVICE_UUID] }],
  });
  return remembered;
}

export function forgetVehicle(): void {
  remembered = undefined;
}

/** A fresh GATT connection: the vehicle keeps nothing per connection once it ends. */
export async function connect(device: BluetoothDevice): Promise<VehicleLink> {
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

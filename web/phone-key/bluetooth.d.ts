// The part of Web Bluetooth the page uses (TypeScript's DOM library does not declare it).
interface BluetoothRemoteGATTCharacteristic {
  readValue(): Promise<DataView>;
  writeValueWithResponse(value: BufferSource): Promise<void>;
}
interface BluetoothRemoteGATTService {
  getCharacteristic(uuid: string): Promise<BluetoothRemoteGATTCharacteristic>;
}
interface BluetoothRemoteGATTServer {
  readonly connected: boolean;
  connect(): Promise<BluetoothRemoteGATTServer>;
  disconnect(): void;
  getPrimaryService(uuid: string): Promise<BluetoothRemoteGATTService>;
}
interface BluetoothDevice {
  readonly id: string;
  readonly name?: string;
  readonly gatt?: BluetoothRemoteGATTServer;
}
interface Bluetooth {
  getAvailability(): Promise<boolean>;
  requestDevice(options: { filters: { services: string[] }[] }): Promise<BluetoothDevice>;
}
interface Navigator {
  readonly bluetooth?: Bluetooth;
}

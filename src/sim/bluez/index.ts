export { startBluezStandIn } from './stand-in.js';
export type {
  AdapterSpec,
  BluezStandIn,
  BluezStandInOptions,
  DeviceFaults,
  DeviceSpec,
  DeviceStats,
  LinkDelays,
  PeripheralFaults,
  RegisteredAdvertisement,
  RegisteredApplication,
  ServicesResolvedMode,
  StandInCentral,
  StandInCentralOptions,
  StandInDevice,
  StandInEvent,
} from './types.js';

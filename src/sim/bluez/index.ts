export { startBluezStandIn } from './stand-in.js';
export type {
  AdapterSpec,
  BluezStandIn,
  BluezStandInOptions,
  DeviceFaults,
  DeviceSpec,
  DeviceStats,
  LinkDelays,
  ServicesResolvedMode,
  StandInDevice,
  StandInEvent,
} from './types.js';

import type { VehicleTopics } from './topics.js';
import { haObjectId } from './topics.js';

/**
 * Home Assistant MQTT discovery for the vehicle's lock (opt-in). Pure.
 * State and availability come from the agent's own `state` and `status` topics, so Home
 * Assistant needs nothing extra from the vehicle. The command topic is always announced (the MQTT
 * lock platform requires one) but the agent only listens to it when the owner enabled unsigned
 * commands.
 */

export const HA_PAYLOAD_LOCK = 'LOCK';
export const HA_PAYLOAD_UNLOCK = 'UNLOCK';

export function haDiscoveryConfig(
  topics: VehicleTopics,
  vehicleId: string,
  name: string,
  version: string,
): Record<string, unknown> {
  const id = haObjectId(vehicleId);
  return {
    name,
    unique_id: `${id}_lock`,
    object_id: `${id}_lock`,
    state_topic: topics.state,
    value_template: '{{ value_json.lock }}',
    state_locked: 'locked',
    state_unlocked: 'unlocked',
    state_locking: 'locking',
    state_unlocking: 'unlocking',
    command_topic: topics.haCommand,
    payload_lock: HA_PAYLOAD_LOCK,
    payload_unlock: HA_PAYLOAD_UNLOCK,
    optimistic: false,
    qos: 1,
    retain: false,
    availability: [
      {
        topic: topics.status,
        value_template: '{{ value_json.state }}',
        payload_available: 'online',
        payload_not_available: 'offline',
      },
    ],
    device: {
      identifiers: [id],
      name: `Vehicle ${vehicleId}`,
      manufacturer: 'vehicle-agent',
      model: 'vehicle-agent',
      sw_version: version,
    },
  };
}

/** LOCK / UNLOCK from Home Assistant, or undefined for anything else. */
export function parseHaCommand(payload: Buffer | string): 'lock' | 'unlock' | undefined {
  const text = (typeof payload === 'string' ? payload : payload.toString('utf8')).trim();
  if (text === HA_PAYLOAD_LOCK) return 'lock';
  if (text === HA_PAYLOAD_UNLOCK) return 'unlock';
  return undefined;
}

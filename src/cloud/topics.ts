import { AgentError } from '../core/errors.js';

/**
 * The topic contract (docs/mqtt.md): everything for one vehicle
 * lives under `<prefix>/<vehicleId>`.
 */
export interface VehicleTopics {
  readonly base: string;
  /** out, QoS 1, retained, also the last will: {"state":"online"|"offline"}. */
  readonly status: string;
  /** out, QoS 1, retained: lock state, keyring digest, clock trust, version. */
  readonly state: string;
  /** in, QoS 1: a signed command (JWS compact). */
  readonly command: string;
  /** out, QoS 1: {jti, status, code, message[, data]}. */
  readonly commandResult: string;
  /** in, QoS 1, retained: the cloud's signed keyring operation set. */
  readonly keyring: string;
  /** out, QoS 1, retained: the vehicle's own operation set, signed by the vehicle key. */
  readonly keyringVehicle: string;
  /** in, QoS 1, retained: `<keyringParts>/<n>` carries part n of a cloud set too large for one message. */
  readonly keyringParts: string;
  /** out, QoS 1, retained: `<keyringVehicleParts>/<n>`, part n of the vehicle's set when chunked. */
  readonly keyringVehicleParts: string;
  /** out, QoS 1, retained: the signed manifest of the vehicle's set when chunked (its parts' sums). */
  readonly keyringVehicleManifest: string;
  /** out, QoS 1: audit records from the outbox, each with its sequence number. */
  readonly events: string;
  /** in, QoS 1: unsigned LOCK/UNLOCK from Home Assistant (only when explicitly enabled). */
  readonly haCommand: string;
  /**
   * out, QoS 1, not retained: on every connect the vehicle asks for the cloud's keyring set
   * ({vid, digest, operations}); the cloud answers on `keyring`. Retained delivery is not needed.
   */
  readonly keyringRequest: string;
  /**
   * in, QoS 1: `state` or `keyring`: publish that again now; or `{"keyring": {"vehicleParts":
   * [n, ...]}}`: those parts of the vehicle's set and its manifest (budgeted; nothing else is done).
   */
  readonly request: string;
}

const PREFIX = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;

/** Checks a topic prefix: levels of [A-Za-z0-9._-], no wildcards, no leading or trailing '/'. */
export function validateTopicPrefix(prefix: string): string {
  if (!PREFIX.test(prefix) || prefix.length > 200) {
    throw new AgentError(
      'config_invalid',
      `topic prefix "${prefix}" must be levels of letters, digits, . _ - separated by / (no wildcards)`,
      { field: 'cloud.topicPrefix' },
    );
  }
  return prefix;
}

export function vehicleTopics(prefix: string, vehicleId: string): VehicleTopics {
  const base = `${validateTopicPrefix(prefix)}/${vehicleId}`;
  return {
    base,
    status: `${base}/status`,
    state: `${base}/state`,
    command: `${base}/command`,
    commandResult: `${base}/command/result`,
    keyring: `${base}/keyring`,
    keyringVehicle: `${base}/keyring/vehicle`,
    keyringParts: `${base}/keyring/part`,
    keyringVehicleParts: `${base}/keyring/vehicle/part`,
    keyringVehicleManifest: `${base}/keyring/vehicle/manifest`,
    events: `${base}/events`,
    haCommand: `${base}/ha/command`,
    keyringRequest: `${base}/keyring/request`,
    request: `${base}/request`,
  };
}

/** The part index a topic `<partsTopic>/<n>` names (n decimal, no leading zero), else undefined. */
export function partOfTopic(topic: string, partsTopic: string): number | undefined {
  if (!topic.startsWith(`${partsTopic}/`)) return undefined;
  const rest = topic.slice(partsTopic.length + 1);
  if (!/^(0|[1-9][0-9]{0,8})$/.test(rest)) return undefined;
  return Number(rest);
}

/** Home Assistant's discovery topic for the vehicle's lock entity. */
export function haDiscoveryTopic(discoveryPrefix: string, vehicleId: string): string {
  return `${validateTopicPrefix(discoveryPrefix)}/lock/${haObjectId(vehicleId)}/lock/config`;
}

/** Home Assistant node and object ids allow [a-zA-Z0-9_-] only. */
export function haObjectId(vehicleId: string): string {
  return `vehicle_agent_${vehicleId.replace(/[^A-Za-z0-9_-]/g, '_')}`;
}

import { AgentError } from '../core/errors.js';

/** Broker URLs: pure, so the CLI can check its --broker values without loading mqtt.js. */

export interface Endpoint {
  readonly protocol: 'mqtt' | 'mqtts';
  readonly host: string;
  readonly port: number;
}

/**
 * A broker URL as an endpoint; `code` is the error code of a URL that cannot be used (a config
 * problem for the agent, a usage error for the CLI). A client certificate means TLS.
 */
export function parseBrokerUrl(
  url: string,
  tls: { readonly cert?: Buffer | undefined },
  code: 'config_invalid' | 'bad_arguments' = 'config_invalid',
): Endpoint {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new AgentError(code, `broker URL "${url}" is not a URL (mqtts://host:8883)`);
  }
  const scheme = parsed.protocol.replace(/:$/, '');
  if (scheme !== 'mqtt' && scheme !== 'mqtts')
    throw new AgentError(code, `broker URL must start with mqtts:// or mqtt:// (got ${scheme}://)`);
  // A client certificate means TLS (mqtt.js does the same silently; say it plainly instead).
  const protocol = scheme === 'mqtts' || tls.cert !== undefined ? 'mqtts' : 'mqtt';
  const host = parsed.hostname.replace(/^\[(.*)\]$/, '$1');
  if (host === '') throw new AgentError(code, `broker URL "${url}" has no host`);
  const port = parsed.port === '' ? (protocol === 'mqtts' ? 8883 : 1883) : Number(parsed.port);
  return { protocol, host, port };
}

/**
 * The common name in an X.509 subject as node:crypto prints it (`CN=VA-1`, one attribute per
 * line; a value with special characters comes quoted). Pure.
 */
export function subjectCommonName(subject: string): string | undefined {
  for (const line of subject.split('\n')) {
    if (!line.startsWith('CN=')) continue;
    const value = line.slice(3);
    if (value.startsWith('"') && value.endsWith('"') && value.length >= 2) {
      try {
        return JSON.parse(value) as string;
      } catch {
        return value;
      }
    }
    return value;
  }
  return undefined;
}

/** The default MQTT client id of a vehicle, which its certificate's CN should equal. */
export function defaultVehicleClientId(vehicleId: string): string {
  return `vehicle-agent-${vehicleId}`;
}

/** MQTT client ids the CLI accepts: 1-128 printable ASCII characters, no spaces. */
export const CLIENT_ID_PATTERN = /^[\x21-\x7e]{1,128}$/;

import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../../src/config/load.js';
import { AgentError } from '../../../src/core/errors.js';

/** ble.phoneApp.origins: the origins a passkey may be used from (mode P). */

describe('ble.phoneApp.origins', () => {
  it('defaults to the local status page origin', () => {
    expect(loadConfig({ env: {} }).config.ble.phoneApp.origins).toEqual(['http://127.0.0.1:8080']);
  });

  it('takes a comma-separated list from the environment', () => {
    const env = { VEHICLE_AGENT_BLE__PHONE_APP__ORIGINS: 'https://keys.example.org,http://[::1]:9000' };
    expect(loadConfig({ env }).config.ble.phoneApp.origins).toEqual([
      'https://keys.example.org',
      'http://[::1]:9000',
    ]);
  });

  it.each(['https://keys.example.org/key/', 'keys.example.org', 'ftp://x', 'https://a b'])(
    'refuses %s (an origin has no path)',
    (origin) => {
      let error: unknown;
      try {
        loadConfig({ env: { VEHICLE_AGENT_BLE__PHONE_APP__ORIGINS: origin } });
      } catch (err) {
        error = err;
      }
      expect(error).toBeInstanceOf(AgentError);
      expect((error as AgentError).code).toBe('config_invalid');
    },
  );
});

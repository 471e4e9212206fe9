import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { renderExampleConfig } from '../../../src/config/example.js';
import { loadConfig } from '../../../src/config/load.js';
import { AgentError } from '../../../src/core/errors.js';

function withFile(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'va-config-'));
  const file = join(dir, 'config.yaml');
  writeFileSync(file, text);
  return file;
}

function errorOf(fn: () => unknown): AgentError {
  try {
    fn();
  } catch (err) {
    if (err instanceof AgentError) return err;
    throw err;
  }
  throw new Error('expected an AgentError');
}

describe('config', () => {
  it('runs on simulated hardware with nothing configured', () => {
    const { config, file, stateDir } = loadConfig({ env: {}, cwd: '/tmp/x' });
    expect(file).toBeUndefined();
    expect(config.relay.driver).toBe('sim');
    expect(config.lock.wiring).toBe('pulse');
    expect(stateDir).toBe('/tmp/x/.state');
  });

  it('uses systemd StateDirectory when set', () => {
    expect(loadConfig({ env: { STATE_DIRECTORY: '/var/lib/vehicle-agent' } }).stateDir).toBe(
      '/var/lib/vehicle-agent',
    );
  });

  it('reads a file and applies environment overrides on top', () => {
    const file = withFile('lock:\n  wiring: hold\n  holdMs: 4000\nrelay:\n  driver: gpio\n');
    const { config } = loadConfig({
      file,
      env: { VEHICLE_AGENT_LOCK__HOLD_MS: '3000', VEHICLE_AGENT_RELAY__GPIO__UNLOCK_ACTIVE_LOW: 'true' },
    });
    expect(config.lock.wiring).toBe('hold');
    expect(config.lock.holdMs).toBe(3000);
    expect(config.relay.gpio.unlockActiveLow).toBe(true);
    expect(config.lock.pulseMs).toBe(350);
  });

  it('names the file, the field, what was wrong and what is allowed, for every problem at once', () => {
    const file = withFile('lock:\n  wiring: strike\n  pulseMs: 2\nrelay:\n  drivr: gpio\n');
    const err = errorOf(() => loadConfig({ file, env: {} }));
    expect(err.code).toBe('config_invalid');
    expect(err.message).toContain(`${file}: lock.wiring is "strike"; allowed: one of pulse, hold`);
    expect(err.message).toContain(
      `${file}: lock.pulseMs is 2, out of range; allowed: an integer from 20 to 5000`,
    );
    expect(err.message).toContain('relay.drivr is not a known option (did you mean relay.driver?)');
  });

  it('takes one broker URL or a list (from the environment, separated by commas), always as a list', () => {
    expect(loadConfig({ env: {} }).config.cloud.url).toEqual(['mqtts://localhost:8883']);
    const one = withFile('cloud:\n  url: mqtts://a.example:8883\n');
    expect(loadConfig({ file: one, env: {} }).config.cloud.url).toEqual(['mqtts://a.example:8883']);
    const two = withFile('cloud:\n  url: [mqtts://a.example:8883, "mqtts://b.example:8883"]\n');
    expect(loadConfig({ file: two, env: {} }).config.cloud.url).toEqual([
      'mqtts://a.example:8883',
      'mqtts://b.example:8883',
    ]);
    const env = { VEHICLE_AGENT_CLOUD__URL: 'mqtts://a.example, mqtt://127.0.0.1:1883' };
    expect(loadConfig({ env }).config.cloud.url).toEqual(['mqtts://a.example', 'mqtt://127.0.0.1:1883']);
  });

  it.each([
    ['cloud:\n  url: []\n', 'cloud.url is a list of 0, not 1 to 16'],
    ['cloud:\n  url: [mqtts://a.example, http://b.example]\n', 'cloud.url has "http://b.example"'],
    ['cloud:\n  url: [mqtts://a.example, 3]\n', 'cloud.url has 3'],
    [`cloud:\n  url: [${Array(17).fill('mqtts://a').join(', ')}]\n`, 'cloud.url is a list of 17'],
  ])('refuses the broker URL list in %j', (text, problem) => {
    const err = errorOf(() => loadConfig({ file: withFile(text), env: {} }));
    expect(err.code).toBe('config_invalid');
    expect(err.message).toContain(problem);
    expect(err.message).toContain('allowed: mqtts://HOST[:PORT] or mqtt://HOST[:PORT], or a list of 1 to 16');
  });

  it('names the environment variable when an override is wrong', () => {
    const err = errorOf(() => loadConfig({ env: { VEHICLE_AGENT_LOCK__PULSE_MS: 'fast' } }));
    expect(err.message).toContain('VEHICLE_AGENT_LOCK__PULSE_MS: lock.pulseMs is "fast", not an integer');
  });

  it('refuses settings that contradict each other', () => {
    const err = errorOf(() => loadConfig({ env: { VEHICLE_AGENT_LOCK__MAX_ON_MS: '300' } }));
    expect(err.message).toContain('lock.maxOnMs is 300, not above lock.pulseMs (350)');
  });

  it('reports unreadable and unparsable files with config_unreadable', () => {
    expect(errorOf(() => loadConfig({ file: '/nonexistent/config.yaml', env: {} })).code).toBe(
      'config_unreadable',
    );
    const bad = withFile('lock: [unclosed\n');
    const err = errorOf(() => loadConfig({ file: bad, env: {} }));
    expect(err.code).toBe('config_unreadable');
    expect(err.message).toContain(bad);
    const dup = withFile('lock:\n  pulseMs: 300\n  pulseMs: 400\n');
    expect(errorOf(() => loadConfig({ file: dup, env: {} })).code).toBe('config_unreadable');
  });

  it('rejects a file that is not a mapping', () => {
    const file = withFile('- a\n- b\n');
    expect(errorOf(() => loadConfig({ file, env: {} })).code).toBe('config_invalid');
  });

  it('ships an example config equal to the generated one, which itself loads', () => {
    const shipped = readFileSync(new URL('../../../config/example.yaml', import.meta.url), 'utf8');
    expect(shipped).toBe(renderExampleConfig());
    const file = withFile(shipped);
    expect(loadConfig({ file, env: {} }).config).toEqual(loadConfig({ env: {} }).config);
  });
});

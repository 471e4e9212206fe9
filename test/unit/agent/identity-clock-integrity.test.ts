import { mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/core/errors.js';
import { silentLogger } from '../../../src/core/logger.js';
import { inspectTrustedClock, openTrustedClock } from '../../../src/store/clock-store.js';
import type { IntegrityFinding } from '../../../src/store/integrity.js';
import { loadIdentity, provision } from '../../../src/store/provision.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'va-identity-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function edit(file: string, change: (bytes: Buffer) => Buffer | string): void {
  writeFileSync(join(dir, file), change(readFileSync(join(dir, file))));
}

describe('vehicle identity copies', () => {
  async function load(): Promise<{ id: string; findings: IntegrityFinding[] }> {
    const findings: IntegrityFinding[] = [];
    const identity = await loadIdentity(dir, findings);
    return { id: identity.vehicleId, findings };
  }

  it('trusts the checksummed copy when vehicle.json still parses but says something else', async () => {
    const { identity } = await provision({ stateDir: dir, demoOwner: true, vehicleId: 'VA-TESTVEHICLE1' });
    edit('vehicle.json', (b) => b.toString().replace('VA-TESTVEHICLE1', 'VA-TESTVEHICLE7'));
    const { id, findings } = await load();
    expect(id).toBe(identity.vehicleId);
    expect(findings).toMatchObject([{ file: join(dir, 'vehicle.json'), code: 'state_repaired' }]);
    expect(readFileSync(join(dir, 'vehicle.json'), 'utf8')).toContain('VA-TESTVEHICLE1');
    expect((await load()).findings).toEqual([]);
  });

  it.each([
    ['vehicle.json deleted', () => unlinkSync(join(dir, 'vehicle.json'))],
    ['vehicle.mirror.json deleted', () => unlinkSync(join(dir, 'vehicle.mirror.json'))],
    ['vehicle-key.pem deleted', () => unlinkSync(join(dir, 'vehicle-key.pem'))],
    ['vehicle-key.mirror.pem deleted', () => unlinkSync(join(dir, 'vehicle-key.mirror.pem'))],
  ])('repairs and reports %s', async (_what, damage) => {
    const { identity } = await provision({ stateDir: dir, demoOwner: true });
    damage();
    const { id, findings } = await load();
    expect(id).toBe(identity.vehicleId);
    expect(findings.map((f) => f.code)).toEqual(['state_repaired']);
    expect((await load()).findings).toEqual([]);
  });

  it('finds a private key damaged where its embedded public key still matches', async () => {
    await provision({ stateDir: dir, demoOwner: true });
    // The private scalar sits at bytes 36..67 of the P-256 PKCS#8 DER; the public key after it
    // stays intact. One bit of the scalar flipped, in the DER, so the PEM still parses.
    edit('vehicle-key.pem', (b) => {
      const pem = b.toString('utf8');
      const body = pem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, '');
      const der = Buffer.from(body, 'base64');
      der[50] = (der[50] ?? 0) ^ 0x01;
      const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
      return Buffer.from(`-----BEGIN PRIVATE KEY-----\n${lines.join('\n')}\n-----END PRIVATE KEY-----\n`);
    });
    const { findings } = await load();
    expect(findings).toMatchObject([{ file: join(dir, 'vehicle-key.pem'), code: 'state_repaired' }]);
    expect(findings[0]?.problem).toContain('does not sign');
  });

  it('refuses with state_corrupt when both copies of the key are unusable', async () => {
    await provision({ stateDir: dir, demoOwner: true });
    unlinkSync(join(dir, 'vehicle-key.pem'));
    edit('vehicle-key.mirror.pem', () => 'not a key');
    const err = await loadIdentity(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentError);
    expect(err).toMatchObject({ code: 'state_corrupt' });
  });

  it('reads a vehicle from before mirrors and makes them, without a finding', async () => {
    await provision({ stateDir: dir, demoOwner: true });
    unlinkSync(join(dir, 'vehicle.mirror.json'));
    unlinkSync(join(dir, 'vehicle-key.mirror.pem'));
    expect((await load()).findings).toEqual([]);
    expect(readdirSync(dir)).toEqual(
      expect.arrayContaining(['vehicle.mirror.json', 'vehicle-key.mirror.pem']),
    );
  });
});

describe('trusted time floor copies', () => {
  const FLOOR = Date.now() + 86_400_000;

  async function withFloor(floor: number): Promise<void> {
    writeFileSync(join(dir, 'clock.json'), JSON.stringify({ floor })); // the format before checksums
    const store = await openTrustedClock(dir, silentLogger);
    await store.close();
  }

  it('keeps the higher readable floor when one copy is damaged, and says so', async () => {
    await withFloor(FLOOR);
    edit('clock.json', (b) => {
      const copy = Buffer.from(b);
      copy[12] = (copy[12] ?? 0) ^ 0x02;
      return copy;
    });
    const store = await openTrustedClock(dir, silentLogger);
    expect(store.clock.now()).toBeGreaterThanOrEqual(FLOOR);
    expect(store.findings).toMatchObject([{ file: join(dir, 'clock.json'), code: 'state_repaired' }]);
    expect(store.existedBefore).toBe(true);
    await store.close();
    expect((await inspectTrustedClock(dir)).findings).toEqual([]);
  });

  it('starts (trusting the system clock) when both copies are unreadable, and says so', async () => {
    await withFloor(FLOOR);
    edit('clock.json', () => 'garbage');
    edit('clock.mirror.json', () => 'garbage');
    const store = await openTrustedClock(dir, silentLogger);
    expect(store.findings.map((f) => f.code)).toEqual(['state_corrupt', 'state_corrupt']);
    await store.close();
  });

  it('reports a removed mirror once the floor has been written with checksums', async () => {
    await withFloor(FLOOR);
    const again = await openTrustedClock(dir, silentLogger);
    await again.close();
    unlinkSync(join(dir, 'clock.mirror.json'));
    expect((await inspectTrustedClock(dir)).findings).toMatchObject([
      { file: join(dir, 'clock.mirror.json') },
    ]);
  });
});

/**
 * `vehicle-agent backup` and `restore` through the real CLI (dist/) on temporary state folders:
 * the same vehicle comes back on a fresh folder; a wrong passphrase, a changed byte or a cut file
 * is refused with its code and changes nothing; an older backup restored after a revoke keeps the
 * key revoked and no counter lowered; another vehicle is not overwritten unless forced; the
 * agent's lock is respected.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Keyring } from '../../src/access/keyring.js';
import { silentLogger } from '../../src/core/logger.js';
import { inspectTrustedClock, openTrustedClock } from '../../src/store/clock-store.js';
import { acquireInstanceLock } from '../../src/store/instance-lock.js';
import { JournaledMap } from '../../src/store/journaled-map.js';
import { KeyringStore } from '../../src/store/keyring-store.js';
import { loadIdentity, STATE_FILES } from '../../src/store/provision.js';
import { runCli, runCliJson } from '../helpers/agent-process.js';
import {
  type BuiltState,
  buildState,
  COUNTERS,
  FIDO_COUNTER,
  KID,
  KID_COUNTER,
  openAsAgent,
  stateFiles,
} from '../helpers/state-sweep.js';

let root: string;
let built: BuiltState;
let ownerPem: string;
const PASS = { VEHICLE_AGENT_BACKUP_PASSPHRASE: 'a long test passphrase' };

beforeEach(async () => {
  root = mkdtempSync(join(tmpdir(), 'va-backup-'));
  built = await buildState(join(root, 'state'));
  ownerPem = join(root, 'owner.pem');
  writeFileSync(ownerPem, built.ownerPem, { mode: 0o600 });
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

const at = (...parts: string[]) => join(root, ...parts);

/** Every state file's bytes: "changes nothing" is checked on these. */
function snapshot(dir: string): Map<string, string> {
  return new Map(stateFiles(dir).map((f) => [f, readFileSync(join(dir, f)).toString('base64')]));
}

async function keyringDigest(dir: string): Promise<string> {
  const identity = await loadIdentity(dir, [], false);
  const keyring = new Keyring({
    vehicleId: identity.vehicleId,
    rootKey: identity.rootKey,
    vehicleKey: identity.vehicleKey,
  });
  const store = await KeyringStore.open(dir, keyring, silentLogger);
  const digest = keyring.digest();
  await store.close();
  return digest;
}

function backup(file = at('vehicle.backup'), dir = built.dir): string {
  const r = runCli(['backup', file, '--state-dir', dir], PASS);
  expect(r.code, r.stdout + r.stderr).toBe(0);
  return file;
}

interface RestoreReport {
  mode: string;
  vehicleId: string;
  opsAdded: number;
  opsAlreadyHeld: number;
  countersRaised: number;
  countersKept: number;
  keyringDigest: string;
  movedAside?: string;
}

describe('vehicle-agent backup / restore', () => {
  it('brings the same vehicle back on a fresh state folder: identity, keyring, decisions, counters', async () => {
    const file = backup();
    expect(statSync(file).mode & 0o777).toBe(0o600);
    // The vehicle key travels encrypted only.
    expect(readFileSync(file).includes('PRIVATE KEY')).toBe(false);

    const fresh = at('fresh');
    const r = runCliJson<RestoreReport>(['restore', file, '--state-dir', fresh], PASS);
    expect(r.code, r.stderr).toBe(0);
    // Three counters: the FIDO card's, one more FIDO key's, the cloud command key's.
    expect(r.value).toMatchObject({ mode: 'fresh', opsAlreadyHeld: 0, countersRaised: 3 });

    const [before, after] = [await loadIdentity(built.dir, [], false), await loadIdentity(fresh, [], false)];
    expect(after.vehicleId).toBe(before.vehicleId);
    expect(after.vehicleKey).toEqual(before.vehicleKey);
    expect(after.rootKey).toEqual(before.rootKey);
    expect(after.vehicleKeyPem).toBe(before.vehicleKeyPem);
    expect(await keyringDigest(fresh)).toBe(await keyringDigest(built.dir));
    expect(r.value.keyringDigest).toBe(await keyringDigest(built.dir));

    const view = await openAsAgent(built, fresh);
    expect(view.refused).toBeUndefined();
    expect(view.fate(built.driver)).toBe('valid');
    expect(view.fate(built.revokedEarly)).toBe('revoked');
    expect(view.fate(built.revokedLate)).toBe('revoked');
    expect(view.fidoCounter).toBe(FIDO_COUNTER);
    expect(view.kidCounter).toBe(KID_COUNTER);
    // The trusted time did not go back either.
    expect((await inspectTrustedClock(fresh)).floor).toBeGreaterThanOrEqual(
      (await inspectTrustedClock(built.dir)).floor ?? Number.POSITIVE_INFINITY,
    );

    const keys = (dir: string) => runCliJson<unknown[]>(['keys', 'list', '--state-dir', dir]).value;
    expect(keys(fresh)).toEqual(keys(built.dir));
    const check = runCli(['state', 'check', '--state-dir', fresh]);
    expect(check.code, check.stdout).toBe(0);
    const verify = runCli(['audit', 'verify', '--state-dir', fresh]);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
  });

  it('takes the passphrase from a file too, and refuses to run without one (never from argv)', () => {
    writeFileSync(at('pass'), 'another long passphrase\n', { mode: 0o600 });
    const made = runCli(['backup', at('b1'), '--state-dir', built.dir, '--passphrase-file', at('pass')]);
    expect(made.code, made.stderr).toBe(0);
    // The same passphrase, from the environment this time.
    const ok = runCli(['restore', at('b1'), '--state-dir', at('fresh')], {
      VEHICLE_AGENT_BACKUP_PASSPHRASE: 'another long passphrase',
    });
    expect(ok.code, ok.stderr).toBe(0);

    const none = runCli(['backup', at('b2'), '--state-dir', built.dir], {
      VEHICLE_AGENT_BACKUP_PASSPHRASE: '',
    });
    expect(none.code).toBe(64);
    expect(none.stderr).toContain('[bad_arguments] no passphrase');
    const argv = runCli(['backup', at('b2'), '--state-dir', built.dir, '--passphrase', 'x'], PASS);
    expect(argv.code).toBe(64);
    const short = runCli(['backup', at('b2'), '--state-dir', built.dir], {
      VEHICLE_AGENT_BACKUP_PASSPHRASE: 'short',
    });
    expect(short.stderr).toContain('at least 10 characters');
    expect(readdirSync(root)).not.toContain('b2');
  });

  it('refuses a wrong passphrase, a changed byte and a cut file with their codes, and changes nothing', () => {
    const file = backup();
    const bytes = readFileSync(file);
    const flipped = Buffer.from(bytes);
    const middle = Math.floor(bytes.length / 2);
    flipped[middle] = (flipped[middle] ?? 0) ^ 0x20;
    writeFileSync(at('flipped'), flipped);
    writeFileSync(at('cut'), bytes.subarray(0, bytes.length - 7));

    // Into a fresh folder: nothing is created.
    const fresh = at('fresh');
    const cases: [string, NodeJS.ProcessEnv, string][] = [
      [file, { VEHICLE_AGENT_BACKUP_PASSPHRASE: 'not the passphrase' }, 'backup_auth_failed'],
      [at('flipped'), PASS, 'backup_auth_failed'],
      [at('cut'), PASS, 'backup_truncated'],
      [ownerPem, PASS, 'backup_invalid'],
    ];
    for (const [path, env, code] of cases) {
      const r = runCli(['restore', path, '--state-dir', fresh], env);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain(`[${code}]`);
      expect(() => statSync(fresh)).toThrow();
    }
    // Over the same vehicle: every file as it was.
    const before = snapshot(built.dir);
    for (const [path, env, code] of cases) {
      const r = runCli(['restore', path, '--state-dir', built.dir], env);
      expect(r.stderr).toContain(`[${code}]`);
    }
    expect(snapshot(built.dir)).toEqual(before);
  });

  it('restoring an older backup after a revoke keeps the key revoked and lowers no counter', async () => {
    const file = backup();
    // Later: the driver is revoked, a FIDO sign and a cloud command raise their counters.
    const revoke = runCli([
      'keys',
      'revoke',
      '--key',
      ownerPem,
      '--id',
      built.driver,
      '--state-dir',
      built.dir,
    ]);
    expect(revoke.code, revoke.stderr).toBe(0);
    const fido = await JournaledMap.open<number>(join(built.dir, STATE_FILES.counters), COUNTERS);
    await fido.set(built.fido, FIDO_COUNTER + 30);
    await fido.close();
    const kids = await JournaledMap.open<number>(
      join(built.dir, STATE_FILES.cloud, 'command-counters'),
      COUNTERS,
    );
    await kids.set(KID, KID_COUNTER + 5);
    await kids.close();
    const clock = await openTrustedClock(built.dir, silentLogger);
    clock.clock.advanceTo(Date.now() + 3_600_000);
    await clock.close();
    const floor = (await inspectTrustedClock(built.dir)).floor ?? 0;
    const digest = await keyringDigest(built.dir);

    const r = runCliJson<RestoreReport>(['restore', file, '--state-dir', built.dir], PASS);
    expect(r.code, r.stderr).toBe(0);
    expect(r.value).toMatchObject({ mode: 'merged', opsAdded: 0, countersRaised: 0, countersKept: 3 });
    expect(r.value.keyringDigest).toBe(digest);

    const view = await openAsAgent(built, built.dir);
    expect(view.fate(built.driver)).toBe('revoked');
    expect(view.fidoCounter).toBe(FIDO_COUNTER + 30);
    expect(view.kidCounter).toBe(KID_COUNTER + 5);
    expect((await inspectTrustedClock(built.dir)).floor).toBeGreaterThanOrEqual(floor);
    expect(runCli(['audit', 'verify', '--state-dir', built.dir]).code).toBe(0);
  });

  it('refuses to back up a state that denies a credential whose revoke was lost (a restore would let it in)', async () => {
    // The late revoke, damaged at the same byte of both journals (as in state-repair.test.ts).
    const text = readFileSync(join(built.dir, 'keyring.journal'), 'latin1');
    const inSignature = text.lastIndexOf('","signer"') - 10;
    for (const file of ['keyring.journal', 'keyring.mirror.journal']) {
      const bytes = readFileSync(join(built.dir, file));
      bytes[inSignature] = (bytes[inSignature] ?? 0) ^ 0x01;
      writeFileSync(join(built.dir, file), bytes);
    }
    for (let round = 0; round < 2; round++) {
      // Before the agent opened the folder (the journals say it), and after (keyring.suspects does).
      const r = runCli(['backup', at('b'), '--state-dir', built.dir], PASS);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('[state_corrupt]');
      expect(r.stderr).toContain('state repair');
      expect(readdirSync(root)).not.toContain('b');
      expect((await openAsAgent(built, built.dir)).fate(built.revokedLate)).toBe('suspect');
    }
  });

  it('refuses to overwrite another vehicle unless forced, and then keeps it aside', async () => {
    const file = backup();
    const other = at('other');
    expect(runCli(['init', '--demo', '--state-dir', other]).code).toBe(0);
    const otherId = (await loadIdentity(other, [], false)).vehicleId;
    const before = snapshot(other);

    const refused = runCli(['restore', file, '--state-dir', other], PASS);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('[restore_conflict]');
    expect(refused.stderr).toContain(otherId);
    expect(snapshot(other)).toEqual(before);

    const forced = runCliJson<RestoreReport>(['restore', file, '--state-dir', other, '--force'], PASS);
    expect(forced.code, forced.stderr).toBe(0);
    expect(forced.value.mode).toBe('fresh');
    expect((await loadIdentity(other, [], false)).vehicleId).toBe(
      (await loadIdentity(built.dir, [], false)).vehicleId,
    );
    const aside = join(other, String(forced.value.movedAside));
    expect((await loadIdentity(aside, [], false)).vehicleId).toBe(otherId);
  });

  it('refuses while the agent holds the state directory', async () => {
    const file = backup();
    const lock = await acquireInstanceLock(built.dir, 'agent');
    try {
      const before = snapshot(built.dir);
      const r = runCli(['restore', file, '--state-dir', built.dir], PASS);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('[busy]');
      expect(r.stderr).toContain('stop the agent');
      expect(snapshot(built.dir)).toEqual(before);
    } finally {
      await lock.release();
    }
  });

  it('carries the config file and the NTAG 424 site key; puts back neither over a different one', () => {
    const config = at('config.yaml');
    writeFileSync(config, `stateDir: ${built.dir}\nlock:\n  pulseMs: 700\n`);
    const siteKey = `${JSON.stringify({ format: 'vehicle-agent/nfc-site-key/1', siteKey: '00112233445566778899aabbccddeeff', createdAt: '2026-01-01T00:00:00.000Z' })}\n`;
    writeFileSync(join(built.dir, 'nfc-site-key.json'), siteKey, { mode: 0o600 });
    const made = runCli(['backup', at('b'), '--config', config], PASS);
    expect(made.code, made.stderr).toBe(0);

    const r = runCli(
      ['restore', at('b'), '--state-dir', at('fresh'), '--config-to', at('restored.yaml')],
      PASS,
    );
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(at('restored.yaml'), 'utf8')).toBe(readFileSync(config, 'utf8'));
    expect(readFileSync(at('fresh', 'nfc-site-key.json'), 'utf8')).toBe(siteKey);

    // Again, with a different config and site key there: both kept, the backup's config beside.
    writeFileSync(at('restored.yaml'), 'lock:\n  pulseMs: 500\n');
    const otherKey = siteKey.replace('0011', 'ffee');
    writeFileSync(at('fresh', 'nfc-site-key.json'), otherKey);
    const again = runCli(
      ['restore', at('b'), '--state-dir', at('fresh'), '--config-to', at('restored.yaml')],
      PASS,
    );
    expect(again.code, again.stderr).toBe(0);
    expect(readFileSync(at('restored.yaml'), 'utf8')).toBe('lock:\n  pulseMs: 500\n');
    expect(readFileSync(at('restored.yaml.from-backup'), 'utf8')).toBe(readFileSync(config, 'utf8'));
    expect(readFileSync(at('fresh', 'nfc-site-key.json'), 'utf8')).toBe(otherKey);
    expect(again.stderr).toContain('another NTAG 424 site key');
  });
});

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, runCli, runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import { requireTool } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

/**
 * NFC cards end to end: the real agent process in sim mode runs the PN532 emulator behind a socat
 * pty pair and the same driver as on a Pi, over serialport; the real CLI taps simulated cards
 * (`sim tap`) and enrolls new ones (`enroll card`) through the control socket.
 */

interface TapReply {
  readonly granted?: boolean;
  readonly code?: string;
  readonly credentialId?: string;
  readonly role?: string;
  readonly enrollment?: string;
  readonly ok?: boolean;
  readonly state?: string;
  readonly authorisedBy?: string;
}

interface Status {
  readonly readers: Record<string, { state: string; detail?: string }>;
  readonly decisions: { granted: number; denied: number };
}

const BASE_ENV = {
  VEHICLE_AGENT_POLICY__MAX_DENIALS: '1000',
  VEHICLE_AGENT_BLE__ENABLED: 'false',
  VEHICLE_AGENT_NFC__LIVENESS_INTERVAL_MS: '200',
  VEHICLE_AGENT_NFC__MAX_BACKOFF_MS: '400',
};

describe('NFC cards on the real agent (PN532 emulator on a socat pty)', () => {
  let dir: string;
  let agent: AgentProcess;
  const sd = () => ['--state-dir', join(dir, 'state')];
  const tap = (...args: string[]) => runCliJson<TapReply>(['sim', 'tap', ...args, ...sd()]);
  const status = () => runCliJson<Status>(['status', ...sd()]).value;

  beforeAll(async () => {
    requireTool('socat', 'apt-get install socat');
    dir = mkdtempSync(join(tmpdir(), 'va-nfc-'));
    agent = await startAgentProcess(sd(), BASE_ENV);
  });

  afterAll(async () => {
    if (agent) await agent.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('runs the emulator behind a socat pty pair and names the UID-only credentials at start', async () => {
    // The reader comes up beside the agent: ready does not wait for serialport, socat or the chip.
    await agent.waitForLog((r) => r.msg === 'simulated PN532 on a socat pty pair');
    await agent.waitForLog((r) => r.msg === 'PN532 ready');
    const warning = agent.logs.find(
      (r) => typeof r.msg === 'string' && r.msg.includes('UID-only credential'),
    );
    expect(warning?.msg).toContain('demo tag 04A2B3C4D5E6F7 (driver)');
    expect(warning?.credentials).toEqual([
      expect.objectContaining({ name: 'demo tag 04A2B3C4D5E6F7', role: 'driver' }),
    ]);
    expect(status().readers.nfc0).toMatchObject({ state: 'ok', detail: 'PN532 v1.6' });
    expect(JSON.stringify(agent.logs)).toContain('sim tap fido-owner');
  });

  it.each([
    ['fido-owner', 'fido:', 'owner'],
    ['fido-driver', 'fido:', 'driver'],
    ['ntag-driver', 'ntag424:', 'driver'],
    ['tag-insecure', 'uid:', 'driver'],
  ])('grants %s', (card, prefix, role) => {
    const r = tap(card);
    expect(r.code, r.stderr).toBe(0);
    expect(r.value).toMatchObject({ granted: true, role });
    expect(r.value.credentialId?.startsWith(prefix)).toBe(true);
  });

  it('denies an extracted copy of a FIDO key whose counter is behind (counter rollback)', () => {
    expect(tap('fido-owner').value.granted).toBe(true);
    const r = tap('fido-owner', '--counter', '0');
    expect(r.code).toBe(2);
    expect(r.value).toMatchObject({ granted: false, code: 'clone_suspected' });
    // The real key still opens: its counter is above the copy's.
    expect(tap('fido-owner').value.granted).toBe(true);
  });

  it.each([
    [['magic-tag', '--clone-of', 'fido-owner'], 'clone_suspected', 'a UID clone of a FIDO key'],
    [['fido-stranger', '--clone-of', 'fido-owner'], 'clone_suspected', 'another FIDO key showing its UID'],
    [['magic-tag', '--clone-of', 'ntag-driver'], 'clone_suspected', 'a UID clone of an NTAG 424'],
    [['ntag-blank', '--clone-of', 'ntag-driver'], 'bad_proof', 'an NTAG 424 with the wrong AES key'],
    [['fido-stranger'], 'unknown_credential', 'an unknown FIDO key'],
    [['ntag-blank'], 'unknown_credential', 'an unknown NTAG 424'],
    [['tag-new'], 'unknown_credential', 'an unknown UID tag'],
    [['tag-plain'], 'insecure_uid_disabled', 'a UID tag not marked insecure'],
    [['fido-owner', '--fault', 'remove-during-exchange'], 'card_removed', 'a card removed mid-exchange'],
    [['ntag-driver', '--fault', 'remove-during-exchange'], 'card_removed', 'an NTAG removed mid-exchange'],
    [['fido-owner', '--slow', '700'], 'timeout', 'an answer after the deadline'],
    [['fido-owner', '--slow', '3000'], 'timeout', 'a card that never answers in time'],
    [['ntag-driver', '--slow', '700'], 'timeout', 'a late NTAG 424 answer'],
  ])('denies %j with %s (%s)', (args, code) => {
    const r = tap(...args);
    expect(r.code, r.stderr).toBe(2);
    expect(r.value).toMatchObject({ granted: false, code });
  });

  it('audits denials with their codes and never a raw UID', () => {
    const tail = runCli(['audit', 'tail', '-n', '300', '--json', ...sd()]);
    expect(tail.code, tail.stderr).toBe(0);
    const records = JSON.parse(tail.stdout) as { type: string; reader?: string; code?: string }[];
    const codes = records.filter((e) => e.type === 'access' && e.reader === 'nfc0').map((e) => e.code);
    expect(codes).toEqual(
      expect.arrayContaining([
        'clone_suspected',
        'bad_proof',
        'card_removed',
        'timeout',
        'unknown_credential',
      ]),
    );
    expect(tail.stdout.toLowerCase()).not.toContain('04a2b3c4d5e6f7');
  });

  it('re-initialises a wedged reader by itself, with its health in status', async () => {
    expect(runCli(['sim', 'nfc', 'wedge', ...sd()]).code).toBe(0);
    await agent.waitForLog((r) => r.msg === 'PN532 failure; re-initialising');
    await agent.waitForLog((r) => r.msg === 'PN532 ready' && r.reason === 'liveness check');
    expect(tap('fido-owner').value.granted).toBe(true);

    // A chip that stays wedged goes down in status, and comes back when it answers again.
    expect(runCli(['sim', 'nfc', 'wedge', '--manual', ...sd()]).code).toBe(0);
    await waitFor(() => status().readers.nfc0?.state === 'down', 'the reader to be reported down', 15_000);
    expect(runCli(['sim', 'nfc', 'unwedge', ...sd()]).code).toBe(0);
    await waitFor(() => status().readers.nfc0?.state === 'ok', 'the reader to recover', 15_000);
    expect(tap('fido-owner').value.granted).toBe(true);
  });

  it('enrolls a UID tag authorised by an owner-signed request', () => {
    const owner = join(dir, 'state', 'demo', 'owner.pem');
    const open = runCliJson<{ state: string }>([
      'enroll',
      'card',
      '--kind',
      'uid',
      '--role',
      'driver',
      '--name',
      'gym tag',
      '--owner-key',
      owner,
      '--no-wait',
      ...sd(),
    ]);
    expect(open.code, open.stderr).toBe(0);
    expect(open.value.state).toBe('awaiting_card');
    const enrolled = tap('tag-new');
    expect(enrolled.code).toBe(0);
    expect(enrolled.value).toMatchObject({ enrollment: 'enroll', ok: true, state: 'completed' });
    expect(tap('tag-new').value).toMatchObject({
      granted: true,
      role: 'driver',
      credentialId: enrolled.value.credentialId,
    });
  });

  it('enrolls a FIDO key authorised by an owner FIDO key tapped first; a driver key cannot authorise', () => {
    const before = status().decisions;
    const open = runCliJson<{ state: string }>([
      'enroll',
      'card',
      '--kind',
      'fido',
      '--role',
      'driver',
      '--owner-fido',
      '--no-wait',
      ...sd(),
    ]);
    expect(open.value.state).toBe('awaiting_owner');
    expect(tap('fido-stranger').value).toMatchObject({
      enrollment: 'authorise',
      ok: false,
      code: 'unknown_credential',
    });
    expect(tap('magic-tag', '--clone-of', 'fido-owner').value).toMatchObject({
      enrollment: 'authorise',
      ok: false,
      code: 'clone_suspected',
    });
    const byDriver = tap('fido-driver');
    expect(byDriver.code).toBe(2);
    expect(byDriver.value).toMatchObject({ enrollment: 'authorise', ok: false, code: 'role_not_allowed' });
    // Taps during the enrollment neither open nor lock.
    expect(status().decisions).toEqual(before);
    const byOwner = tap('fido-owner');
    expect(byOwner.value).toMatchObject({ enrollment: 'authorise', ok: true, state: 'awaiting_card' });
    const enrolled = tap('fido-new');
    expect(enrolled.value).toMatchObject({ enrollment: 'enroll', ok: true, state: 'completed' });
    expect(tap('fido-new').value).toMatchObject({ granted: true, credentialId: enrolled.value.credentialId });
  });

  it('enrolls an NTAG 424 (personalised with the site key) and refuses a card already enrolled', () => {
    const owner = join(dir, 'state', 'demo', 'owner.pem');
    runCliJson([
      'enroll',
      'card',
      '--kind',
      'ntag424',
      '--role',
      'guest',
      '--not-after',
      '+2d',
      '--owner-key',
      owner,
      '--no-wait',
      ...sd(),
    ]);
    expect(tap('ntag-driver').value).toMatchObject({
      enrollment: 'enroll',
      ok: false,
      code: 'already_enrolled',
    });
    const enrolled = tap('ntag-blank');
    expect(enrolled.value).toMatchObject({ enrollment: 'enroll', ok: true });
    expect(tap('ntag-blank').value).toMatchObject({ granted: true, role: 'guest' });
  });

  it("tells FIDO keys apart by key handle, not UID: a key showing an enrolled key's UID enrolls and authorises as itself", () => {
    expect(runCli(['sim', 'card', 'add', 'fido', 'fido-twin', ...sd()]).code).toBe(0);
    runCliJson([
      'enroll',
      'card',
      '--kind',
      'fido',
      '--role',
      'driver',
      '--owner-fido',
      '--no-wait',
      ...sd(),
    ]);
    // The driver's key showing the owner's UID is the driver's key; the owner's showing the driver's is the owner's.
    expect(tap('fido-driver', '--clone-of', 'fido-owner').value).toMatchObject({
      enrollment: 'authorise',
      ok: false,
      code: 'role_not_allowed',
    });
    expect(tap('fido-owner', '--clone-of', 'fido-driver').value).toMatchObject({
      enrollment: 'authorise',
      ok: true,
      state: 'awaiting_card',
    });
    // An enrolled key is refused whatever UID it shows; a new key with an enrolled key's UID is taken.
    expect(tap('fido-driver', '--clone-of', 'fido-twin').value).toMatchObject({
      enrollment: 'enroll',
      ok: false,
      code: 'already_enrolled',
    });
    const enrolled = tap('fido-twin', '--clone-of', 'fido-owner');
    expect(enrolled.value).toMatchObject({ enrollment: 'enroll', ok: true, state: 'completed' });
    expect(tap('fido-twin', '--clone-of', 'fido-owner').value).toMatchObject({
      granted: true,
      role: 'driver',
      credentialId: enrolled.value.credentialId,
    });
    expect(tap('fido-owner').value).toMatchObject({ granted: true, role: 'owner' });
  });

  it('opens no window for a plain unlock, and none for a key that is not an owner', () => {
    expect(tap('fido-owner').value.granted).toBe(true);
    expect(runCliJson<{ state: string }>(['enroll', 'card', 'status', ...sd()]).value.state).toBe(
      'completed',
    );
    runCli(['sim', 'card', 'add', 'fido', 'fido-later', ...sd()]);
    expect(tap('fido-later').value).toMatchObject({ granted: false, code: 'unknown_credential' });

    // A service signing key (may revoke, never add keys) cannot authorise.
    const service = join(dir, 'service');
    expect(runCli(['keygen', '--kind', 'signer', '--out', service]).code).toBe(0);
    const owner = join(dir, 'state', 'demo', 'owner.pem');
    const grant = runCli([
      'keys',
      'grant',
      '--key',
      owner,
      '--kind',
      'signer',
      '--public',
      `${service}.pub.pem`,
      '--role',
      'service',
      ...sd(),
    ]);
    expect(grant.code, grant.stderr).toBe(0);
    const refused = runCli([
      'enroll',
      'card',
      '--kind',
      'uid',
      '--role',
      'owner',
      '--owner-key',
      `${service}.pem`,
      '--no-wait',
      ...sd(),
    ]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain('role_not_allowed');
    expect(runCliJson<{ state: string }>(['enroll', 'card', 'status', ...sd()]).value.state).toBe(
      'awaiting_owner',
    );
    expect(tap('fido-later').value).toMatchObject({ granted: false, code: 'unknown_credential' });
    expect(runCliJson<{ state: string }>(['enroll', 'card', 'cancel', ...sd()]).value.state).toBe(
      'cancelled',
    );
  });

  it('keeps enrollments and card counters across a restart', async () => {
    await agent.stop();
    agent = await startAgentProcess(sd(), BASE_ENV);
    expect(agent.logs.filter((r) => Number(r.level) >= 50)).toEqual([]);
    expect(tap('fido-new').value.granted).toBe(true);
    expect(tap('tag-new').value.granted).toBe(true);
    expect(tap('fido-owner', '--counter', '1').value).toMatchObject({
      granted: false,
      code: 'clone_suspected',
    });
  });
});

describe('NFC enrollment windows expire', () => {
  let dir: string;
  let agent: AgentProcess;
  const sd = () => ['--state-dir', dir];

  beforeAll(async () => {
    requireTool('socat', 'apt-get install socat');
    dir = mkdtempSync(join(tmpdir(), 'va-nfc-exp-'));
    agent = await startAgentProcess(sd(), {
      ...BASE_ENV,
      VEHICLE_AGENT_NFC__ENROLL_AUTHORISE_MS: '1000',
      VEHICLE_AGENT_NFC__ENROLL_WINDOW_MS: '1000',
    });
  });

  afterAll(async () => {
    if (agent) await agent.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const state = () => runCliJson<{ state: string }>(['enroll', 'card', 'status', ...sd()]).value.state;

  it('takes no card once the window has closed', async () => {
    const owner = join(dir, 'demo', 'owner.pem');
    const open = runCliJson<{ state: string }>([
      'enroll',
      'card',
      '--kind',
      'uid',
      '--role',
      'driver',
      '--owner-key',
      owner,
      '--no-wait',
      ...sd(),
    ]);
    expect(open.value.state).toBe('awaiting_card');
    await waitFor(() => state() === 'expired', 'the card window to expire', 15_000);
    const r = runCliJson<TapReply>(['sim', 'tap', 'tag-new', ...sd()]);
    expect(r.value).toMatchObject({ granted: false, code: 'unknown_credential' });
  });

  it('takes no owner tap once the authorisation has expired: the tap is an ordinary one', async () => {
    runCliJson(['enroll', 'card', '--kind', 'fido', '--role', 'owner', '--owner-fido', '--no-wait', ...sd()]);
    await waitFor(() => state() === 'expired', 'the request to expire', 15_000);
    const r = runCliJson<TapReply>(['sim', 'tap', 'fido-owner', ...sd()]);
    expect(r.value).toMatchObject({ granted: true });
    expect(r.value.enrollment).toBeUndefined();
    expect(runCliJson<TapReply>(['sim', 'tap', 'fido-new', ...sd()]).value).toMatchObject({
      code: 'unknown_credential',
    });
  });

  it('the CLI waits for the outcome and exits 2 when the window expires', () => {
    const owner = join(dir, 'demo', 'owner.pem');
    const r = runCli(['enroll', 'card', '--kind', 'uid', '--role', 'driver', '--owner-key', owner, ...sd()]);
    expect(r.code).toBe(2);
    expect(r.stdout).toContain('expired');
  });
});

describe('NFC sim without socat', () => {
  let dir: string;
  let agent: AgentProcess;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'va-nfc-mem-'));
    // No socat on PATH: the emulator runs on an in-memory line, and says so.
    agent = await startAgentProcess(['--state-dir', dir], { ...BASE_ENV, PATH: join(dir, 'empty-path') });
  });

  afterAll(async () => {
    if (agent) await agent.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('falls back to an in-memory link with a log line, and taps still work', async () => {
    const line = await agent.waitForLog(
      (r) => typeof r.msg === 'string' && r.msg.includes('socat is not installed'),
    );
    expect(line.level).toBe(40);
    expect(runCliJson<TapReply>(['sim', 'tap', 'fido-owner', '--state-dir', dir]).value).toMatchObject({
      granted: true,
    });
  });
});

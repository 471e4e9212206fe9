import { randomBytes } from 'node:crypto';
import { cpSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { Keyring, signGrant, signRevoke } from '../../src/access/keyring.js';
import { silentLogger } from '../../src/core/logger.js';
import type { Credential } from '../../src/core/types.js';
import { b64url } from '../../src/crypto/encoding.js';
import {
  credentialIdFor,
  generateKeyPair,
  keyCredentialId,
  parseKeyText,
  publicJwkOf,
} from '../../src/crypto/keys.js';
import { denyCounterSuspects } from '../../src/host/state-integrity.js';
import { AuditLog, verifyAuditLog } from '../../src/store/audit-log.js';
import { openTrustedClock } from '../../src/store/clock-store.js';
import type { IntegrityFinding } from '../../src/store/integrity.js';
import { COUNTER_MAP_OPTIONS, JournaledMap } from '../../src/store/journaled-map.js';
import { KeyringStore } from '../../src/store/keyring-store.js';
import { loadIdentity, provision, STATE_FILES } from '../../src/store/provision.js';

/**
 * A state directory as a running agent leaves it, with something to lose in every file, and a
 * way to open it exactly as the agent does (src/app/start.ts: identity, keyring, counters, clock,
 * audit; src/cloud/cloud-link.ts: the command counters and results), for the corruption tests.
 *
 * What must hold whatever happens to one file:
 * - `revokedEarly` (revoke folded into keyring.ops) and `revokedLate` (revoke still in the
 *   keyring journals) stay denied;
 * - the FIDO card's counter never reads below FIDO_COUNTER (else a clone with an older counter
 *   passes) unless the card is denied;
 * - the command counter of KID never reads below KID_COUNTER unless it reads as lost;
 * - damage to an audit file fails `audit verify`, before and after the agent opens the log.
 */

export const FIDO_COUNTER = 50;
export const KID = 'signer:cloud-service-kid-000000';
export const KID_COUNTER = 7;
export const AUDIT_OPTIONS = { maxFileBytes: 4096, keepFiles: 3 } as const;

export interface BuiltState {
  readonly dir: string;
  /** The owner root's private key (PEM). */
  readonly ownerPem: string;
  readonly driver: string;
  readonly revokedEarly: string;
  readonly revokedLate: string;
  readonly fido: string;
}

const counterValue = (v: unknown): number => {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new Error('not a counter');
  return v;
};
export const COUNTERS = { ...COUNTER_MAP_OPTIONS, parseValue: counterValue };

function phone(role: Credential['role']): Credential {
  const publicKey = publicJwkOf(generateKeyPair('P-256').publicKey);
  return { id: keyCredentialId('phone', publicKey), kind: 'phone', role, publicKey, options: {} };
}

function fidoCard(): Credential {
  const keyHandle = randomBytes(32);
  return {
    id: credentialIdFor('fido', keyHandle),
    kind: 'fido',
    role: 'driver',
    publicKey: publicJwkOf(generateKeyPair('P-256').publicKey),
    keyHandle: b64url(keyHandle),
    options: {},
  };
}

export async function buildState(dir: string): Promise<BuiltState> {
  const { identity, ownerKey } = await provision({ stateDir: dir, demoOwner: true });
  if (ownerKey === undefined) throw new Error('no owner key');
  const owner = parseKeyText(ownerKey.privatePem);
  const vid = identity.vehicleId;
  const iat = 1_800_000_000;
  const driver = phone('driver');
  const early = phone('driver');
  const late = phone('guest');
  const card = fidoCard();
  const ring = new Keyring({ vehicleId: vid, rootKey: identity.rootKey, vehicleKey: identity.vehicleKey });
  const merged = ring.merge([
    signGrant(driver, vid, owner, identity.rootId, iat),
    signGrant(early, vid, owner, identity.rootId, iat),
    signGrant({ ...late, notAfter: Date.UTC(2040, 0, 1) }, vid, owner, identity.rootId, iat),
    signGrant(card, vid, owner, identity.rootId, iat),
    signRevoke(early.id, vid, owner, identity.rootId, iat + 1),
  ]);
  if (merged.rejected.length > 0) throw new Error(JSON.stringify(merged.rejected));
  await KeyringStore.writeSnapshot(dir, ring);

  // The late revoke: in both keyring journals, not folded in (as a kill -9 leaves it).
  const live = new Keyring({ vehicleId: vid, rootKey: identity.rootKey, vehicleKey: identity.vehicleKey });
  const store = await KeyringStore.open(dir, live, silentLogger);
  const prepared = live.prepare([signRevoke(late.id, vid, owner, identity.rootId, iat + 2)]);
  await store.persist(prepared.added);
  live.apply(prepared);
  await (store as unknown as { journal: { close(): Promise<void> } }).journal.close();

  // FIDO counters: an older value in the snapshot, the newest in the journal.
  const counters = await JournaledMap.open<number>(join(dir, STATE_FILES.counters), COUNTERS);
  await counters.set(card.id, 10);
  await counters.set(driver.id, 3);
  await counters.compact();
  await counters.set(card.id, 30);
  await counters.set(card.id, FIDO_COUNTER);
  await counters.close();

  mkdirSync(join(dir, STATE_FILES.cloud), { recursive: true, mode: 0o700 });
  const kids = await JournaledMap.open<number>(join(dir, STATE_FILES.cloud, 'command-counters'), COUNTERS);
  await kids.set(KID, 5);
  await kids.compact();
  await kids.set(KID, KID_COUNTER);
  await kids.close();
  const results = await JournaledMap.open(join(dir, STATE_FILES.cloud, 'command-results'));
  await results.set(`${KID}/jti-1`, { result: { status: 'ok' }, at: 1 });
  await results.set(`${KID}/jti-2`, { result: { status: 'ok' }, at: 2 });
  await results.close();

  const clock = await openTrustedClock(dir, silentLogger);
  await clock.close();

  // The audit log: several files, the oldest rotated away.
  const audit = await AuditLog.open(join(dir, STATE_FILES.audit), AUDIT_OPTIONS);
  for (let i = 0; i < 40; i += 1)
    await audit.append({ type: 'access', result: 'granted', n: i, pad: 'p'.repeat(60) });
  await audit.close();
  return {
    dir,
    ownerPem: ownerKey.privatePem,
    driver: driver.id,
    revokedEarly: early.id,
    revokedLate: late.id,
    fido: card.id,
  };
}

/** Every state file, relative to the state directory (demo keys and lock files aside). */
export function stateFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const path = join(d, name);
      if (statSync(path).isDirectory()) {
        if (name !== STATE_FILES.demo) walk(path);
      } else if (!name.endsWith('.lock') && !name.includes('.corrupt-') && !name.includes('.tmp-')) {
        out.push(relative(dir, path));
      }
    }
  };
  walk(dir);
  return out.sort();
}

export function copyState(from: string, to: string): void {
  cpSync(from, to, { recursive: true });
}

export interface AgentView {
  /** The agent refused to start, with this code (fails secure: nothing opens). */
  readonly refused?: string;
  readonly findings: readonly IntegrityFinding[];
  /** How each credential of interest fares: valid, revoked, suspect, unknown. */
  readonly fate: (id: string) => 'valid' | 'revoked' | 'suspect' | 'unknown';
  /** The FIDO counter a presented counter must exceed (MAX_SAFE_INTEGER when lost). */
  readonly fidoCounter: number;
  readonly kidCounter: number;
  /** `audit verify` before the agent opened the log, and after. */
  readonly auditOkBefore: boolean;
  readonly auditOkAfter: boolean;
}

/** Opens the state directory as the agent does, then closes everything. */
export async function openAsAgent(built: BuiltState, dir: string): Promise<AgentView> {
  const findings: IntegrityFinding[] = [];
  const auditDir = join(dir, STATE_FILES.audit);
  const clockFiles = [STATE_FILES.clock, STATE_FILES.clockMirror];
  const ranBefore = clockFiles.some((f) => {
    try {
      statSync(join(dir, f));
      return true;
    } catch {
      return false;
    }
  });
  const auditOkBefore = (await verifyAuditLog(auditDir, { expectHistory: ranBefore })).ok;
  let refused: string | undefined;
  let fate: AgentView['fate'] = () => 'unknown';
  let fidoCounter = 0;
  let kidCounter = 0;
  const closers: (() => Promise<void>)[] = [];
  try {
    const identity = await loadIdentity(dir, findings);
    const keyring = new Keyring({
      vehicleId: identity.vehicleId,
      rootKey: identity.rootKey,
      vehicleKey: identity.vehicleKey,
    });
    const store = await KeyringStore.open(dir, keyring, silentLogger);
    closers.push(() => store.close());
    const clock = await openTrustedClock(dir, silentLogger);
    closers.push(() => clock.close());
    findings.push(...clock.findings);
    const counters = await JournaledMap.open<number>(join(dir, STATE_FILES.counters), COUNTERS);
    closers.push(() => counters.close());
    findings.push(...counters.findings);
    denyCounterSuspects(keyring, counters.suspects());
    const audit = await AuditLog.open(auditDir, { ...AUDIT_OPTIONS, expectHistory: clock.existedBefore });
    closers.push(() => audit.close());
    findings.push(...audit.findings);
    const kids = await JournaledMap.open<number>(join(dir, STATE_FILES.cloud, 'command-counters'), COUNTERS);
    closers.push(() => kids.close());
    findings.push(...kids.findings);
    const results = await JournaledMap.open(join(dir, STATE_FILES.cloud, 'command-results'));
    closers.push(() => results.close());
    findings.push(...results.findings);
    await keyring.materializeInBackground();
    findings.push(...store.findings);
    fate = (id) => {
      const s = keyring.byId(id);
      if (s === undefined) return 'unknown';
      if (s.suspect !== undefined) return 'suspect';
      return s.revoked ? 'revoked' : 'valid';
    };
    fidoCounter = counters.get(built.fido) ?? 0;
    kidCounter = kids.get(KID) ?? 0;
  } catch (err) {
    refused = (err as { code?: string }).code ?? 'uncoded';
  } finally {
    for (const close of closers.reverse()) await close().catch(() => {});
  }
  const auditOkAfter = (await verifyAuditLog(auditDir, { expectHistory: ranBefore })).ok;
  return {
    ...(refused === undefined ? {} : { refused }),
    findings,
    fate,
    fidoCounter,
    kidCounter,
    auditOkBefore,
    auditOkAfter,
  };
}

export interface Violations {
  revokedWorks: boolean;
  olderCounterPasses: boolean;
  auditUnnoticed: boolean;
}

export function isAuditFile(file: string): boolean {
  return file.startsWith(`${STATE_FILES.audit}/`) || file.startsWith(`${STATE_FILES.audit}.`);
}

/** What went wrong that must never: a revoked key works, an older counter passes, verify passes. */
export function violations(built: BuiltState, view: AgentView, damagedFile: string): Violations {
  if (view.refused !== undefined) {
    // Nothing runs, nothing opens; the audit part still applies.
    return {
      revokedWorks: false,
      olderCounterPasses: false,
      auditUnnoticed: isAuditFile(damagedFile) && view.auditOkBefore,
    };
  }
  const works = (id: string) => view.fate(id) === 'valid';
  const fidoDenied = view.fate(built.fido) !== 'valid';
  return {
    revokedWorks: works(built.revokedEarly) || works(built.revokedLate),
    olderCounterPasses: (!fidoDenied && view.fidoCounter < FIDO_COUNTER) || view.kidCounter < KID_COUNTER,
    auditUnnoticed: isAuditFile(damagedFile) && (view.auditOkBefore || view.auditOkAfter),
  };
}

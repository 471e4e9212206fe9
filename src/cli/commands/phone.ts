import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { AgentError } from '../../core/errors.js';
import { INTENTS } from '../../core/types.js';
import { b64url, fromB64url } from '../../crypto/encoding.js';
import {
  algorithmOf,
  encodeKeyPair,
  generateKeyPair,
  keyCredentialId,
  publicJwkOf,
} from '../../crypto/keys.js';
import type { ApproachReply } from '../../host/control-api.js';
import { readPrivateKeyFile, writeKeyFiles } from '../../store/key-files.js';
import { STATE_FILES } from '../../store/provision.js';
import { COMMON_OPTIONS, loadFor, out, parse, requireString } from '../args.js';
import { controlCall } from '../control-client.js';
import { denialLine } from '../denial.js';

export const PHONE_HELP = `vehicle-agent phone keygen --out PREFIX [--json]
vehicle-agent phone approach NAME|--key KEY.pem [--intent unlock|lock|toggle] [--passive]
                             [--fault FAULT] [--slow MS] [--timeout MS] [--json]
vehicle-agent phone approach --key OWNER-PHONE.pem --approve-enrollment [--for CREDENTIAL_ID]

The reference phone side of the BLE vehicle-key protocol (docs/ble-protocol.md).

keygen makes a P-256 phone key (PREFIX.pem private, 0600; PREFIX.pub.pem public) and prints what
the owner enrolls: its credential id and public JWK, and the command that enrolls it.

approach plays the phone against the running agent in BLE sim mode: the agent's simulated BlueZ
gets a phone advertising the vehicle-key service, holding this key and pinned to this vehicle;
the agent's BLE reader finds it and runs the real protocol over D-Bus. NAME is a demo key in
<stateDir>/demo (driver, guest, revoked, stranger, passive, ...). --passive answers without
explicit intent; --slow MS makes the phone answer late (the deadline is policy.bleAnswerDeadlineMs);
--fault is one of wrong_key, bad_signature, replay, wrong_vehicle, wrong_intent, garbage,
garbage_chunks, oversized, drop_notification, silent, ignore_pinning, vanish.
--approve-enrollment approves the vehicle's open enrollment request (vehicle-agent enroll phone)
with this key, which must be an owner's phone key.
Prints the decision; exits 0 when granted (or the enrollment approved), 2 when not.`;

export async function phone(argv: readonly string[]): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'keygen':
      return await keygen(rest);
    case 'approach':
      return await approach(rest);
    default:
      throw new AgentError('bad_arguments', `phone needs keygen or approach\n\n${PHONE_HELP}`);
  }
}

async function keygen(argv: readonly string[]): Promise<number> {
  const { values } = parse(argv, { out: { type: 'string', short: 'o' }, json: { type: 'boolean' } }, false);
  const prefix = requireString(values.out, 'out');
  const pair = generateKeyPair('P-256');
  const files = await writeKeyFiles(prefix, encodeKeyPair(pair));
  const publicKey = publicJwkOf(pair.publicKey);
  const credentialId = keyCredentialId('phone', publicKey);
  const grant = `vehicle-agent keys grant --key OWNER.pem --kind phone --public ${prefix}.pub.pem --role driver`;
  const enroll = `vehicle-agent enroll phone --public ${prefix}.pub.pem --role driver`;
  if (values.json) {
    out(JSON.stringify({ credentialId, kind: 'phone', publicKey, files, grant, enroll }));
    return 0;
  }
  out(`phone key ${credentialId}`);
  out(`public JWK ${JSON.stringify(publicKey)}`);
  out(`wrote ${files.join(', ')}`);
  out('');
  out('Enroll it with an owner-signed grant (add --passive for hands-free unlock, --not-after for a guest):');
  out(`  ${grant}`);
  out("or at the vehicle, approved over BLE by an owner's phone key:");
  out(`  ${enroll}`);
  return 0;
}

/** The 32-byte P-256 secret scalar of a private key file. */
export function phoneSecret(path: string): Uint8Array {
  const key = readPrivateKeyFile(path);
  if (algorithmOf(key) !== 'P-256') throw new AgentError('key_invalid', `${path}: a phone key is P-256`);
  const { d } = key.export({ format: 'jwk' });
  if (typeof d !== 'string') throw new AgentError('key_invalid', `${path}: no private scalar`);
  const secret = fromB64url(d);
  if (secret.length !== 32) throw new AgentError('key_invalid', `${path}: not a P-256 private key`);
  return secret;
}

function integer(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new AgentError('bad_arguments', `--${name} must be milliseconds`);
  return n;
}

async function approach(argv: readonly string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    ...COMMON_OPTIONS,
    key: { type: 'string', short: 'k' },
    intent: { type: 'string', default: 'unlock' },
    passive: { type: 'boolean' },
    fault: { type: 'string' },
    slow: { type: 'string' },
    timeout: { type: 'string' },
    'approve-enrollment': { type: 'boolean' },
    for: { type: 'string' },
  });
  const intent = INTENTS.find((i) => i === values.intent);
  if (intent === undefined)
    throw new AgentError('bad_arguments', `--intent must be one of ${INTENTS.join(', ')}`);
  const loaded = loadFor(values);
  const name = positionals[0];
  const keyPath = values.key ?? (name ? join(loaded.stateDir, STATE_FILES.demo, `${name}.pem`) : undefined);
  if (keyPath === undefined)
    throw new AgentError('bad_arguments', `name a demo key or give --key\n\n${PHONE_HELP}`);
  if (!existsSync(keyPath)) throw new AgentError('bad_arguments', `no key at ${keyPath}`);
  const secret = phoneSecret(keyPath);
  const timeoutMs = integer(values.timeout, 'timeout', 10_000);
  // The phone pins this vehicle (as it would at enrollment): its id and public key.
  const vehicle = await controlCall(loaded.socketPath, 'vehicle', {});
  let reply: ApproachReply;
  try {
    reply = await controlCall(
      loaded.socketPath,
      'sim.phone.approach',
      {
        secretKey: b64url(secret),
        pin: { vehicleId: vehicle.vehicleId, publicKey: vehicle.vehicleKey },
        intent,
        explicitIntent: values.passive !== true,
        ...(values.fault === undefined ? {} : { fault: values.fault }),
        answerDelayMs: integer(values.slow, 'slow', 0),
        approveEnrollment: values['approve-enrollment'] === true,
        ...(values.for === undefined ? {} : { enrollmentFor: values.for }),
        timeoutMs,
      },
      timeoutMs + 10_000,
    );
  } catch (err) {
    if (err instanceof AgentError && err.code === 'unknown_command') {
      throw new AgentError(
        'unknown_command',
        'phone approach needs the agent with BLE in sim mode (ble.enabled true, ble.driver sim or auto with relay.driver sim)',
      );
    }
    throw err;
  }
  if (values.json) out(JSON.stringify(reply));
  else if (reply.outcome === 'decision' && !reply.granted && reply.code === 'rate_limited')
    out(await denialLine(loaded.socketPath, reply.code, reply.credentialId));
  else out(describe(reply, timeoutMs));
  return reply.granted ? 0 : 2;
}

function describe(reply: ApproachReply, timeoutMs: number): string {
  switch (reply.outcome) {
    case 'decision':
      return reply.granted
        ? `granted (${reply.role ?? '?'}): lock is ${reply.lock ?? 'unknown'}${reply.answerMs === undefined ? '' : `, answered in ${reply.answerMs} ms`}`
        : `denied: ${reply.code ?? 'unknown'}`;
    case 'enrollment':
      return reply.granted
        ? `enrollment approved: ${reply.enrolled ?? '?'} is in the keyring`
        : `enrollment refused: ${reply.code ?? 'unknown'}`;
    case 'refused':
      return `the phone refused the vehicle: ${reply.code ?? 'unknown'}`;
    case 'failed':
      return `the link failed: ${reply.code ?? 'unknown'}`;
    case 'skipped':
      return `denied: ${reply.code ?? 'unknown'} (the reader is cooling down after too many denials)`;
    case 'timeout':
      return `no exchange within ${timeoutMs} ms: is the BLE reader up? (vehicle-agent status)`;
  }
}

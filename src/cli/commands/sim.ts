import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { AgentError } from '../../core/errors.js';
import { INTENTS, type Intent } from '../../core/types.js';
import { signP256, simKeyMessage } from '../../crypto/challenge.js';
import { b64url, fromB64url } from '../../crypto/encoding.js';
import type { DecisionReply, LimitsCleared } from '../../host/control-api.js';
import { readSignerKey } from '../../store/key-files.js';
import { STATE_FILES } from '../../store/provision.js';
import { COMMON_OPTIONS, loadFor, out, parse } from '../args.js';
import { controlCall } from '../control-client.js';
import { denialLine } from '../denial.js';
import { SIM_NFC_HELP, simNfc } from './sim-nfc.js';

export const SIM_HELP = `vehicle-agent sim present NAME|--key KEY.pem [--intent unlock|lock|toggle] [--passive] [--delay MS] [--tamper]
vehicle-agent sim present --uid HEX [--intent ...]

Plays a credential on the agent's simulated reader (through its control socket). NAME is a demo
key in <stateDir>/demo (driver, guest, expired-guest, revoked, stranger, ...); --key any P-256 key.
The key answers a fresh challenge with a real P-256 signature; --tamper corrupts it, --delay
claims a slow answer (relay-attack deadline), --passive answers without explicit user intent.
--uid presents a UID-only tag. Prints the decision; exits 0 when granted, 2 when denied.

vehicle-agent sim clear-limits
Failed proofs count against the credential they name: policy.maxDenials (5) within
policy.windowMs (60 s) lock it out for policy.cooldownMs (5 min), and a denial says so
(rate_limited, until when). clear-limits lifts every lockout and the UID throttle at once, on a
simulated vehicle only (audited as rate_limits.cleared).

${SIM_NFC_HELP}`;

export async function sim(argv: readonly string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'tap' || sub === 'cards' || sub === 'card' || sub === 'nfc') return await simNfc(sub, rest);
  if (sub === 'clear-limits') return await clearLimits(rest);
  if (sub !== 'present') throw new AgentError('bad_arguments', `sim needs a subcommand\n\n${SIM_HELP}`);
  const { values, positionals } = parse(rest, {
    ...COMMON_OPTIONS,
    key: { type: 'string', short: 'k' },
    uid: { type: 'string' },
    intent: { type: 'string', default: 'unlock' },
    passive: { type: 'boolean' },
    delay: { type: 'string' },
    tamper: { type: 'boolean' },
  });
  const intent = values.intent as Intent;
  if (!(INTENTS as readonly string[]).includes(intent))
    throw new AgentError('bad_arguments', `--intent must be one of ${INTENTS.join(', ')}`);
  const loaded = loadFor(values);
  let reply: DecisionReply;
  if (values.uid !== undefined) {
    reply = await controlCall(loaded.socketPath, 'sim.uid', { uid: values.uid, intent });
  } else {
    const name = positionals[0];
    const keyPath = values.key ?? (name ? join(loaded.stateDir, STATE_FILES.demo, `${name}.pem`) : undefined);
    if (!keyPath) throw new AgentError('bad_arguments', `name a demo key or give --key\n\n${SIM_HELP}`);
    if (!existsSync(keyPath)) throw new AgentError('bad_arguments', `no key at ${keyPath}`);
    const key = readSignerKey(keyPath, 'phone');
    const delayMs = values.delay === undefined ? 0 : Number(values.delay);
    if (!Number.isInteger(delayMs) || delayMs < 0)
      throw new AgentError('bad_arguments', '--delay must be milliseconds');
    const challenge = await controlCall(loaded.socketPath, 'sim.challenge', {});
    const explicitIntent = values.passive !== true;
    const message = simKeyMessage(
      fromB64url(challenge.challenge),
      challenge.vehicleId,
      intent,
      explicitIntent,
      key.id,
    );
    const signature = signP256(key.key, message);
    if (values.tamper) signature[10] = (signature[10] ?? 0) ^ 0x40;
    reply = await controlCall(loaded.socketPath, 'sim.answer', {
      challengeId: challenge.challengeId,
      credentialId: key.id,
      intent,
      explicitIntent,
      signature: b64url(signature),
      delayMs,
    });
  }
  if (values.json) out(JSON.stringify(reply));
  else if (reply.granted) out(`granted (${reply.role}): lock is ${reply.lock}`);
  else out(await denialLine(loaded.socketPath, reply.code, reply.credentialId));
  return reply.granted ? 0 : 2;
}

/** `sim clear-limits`: lifts every rate limit of a simulated vehicle (sim.limits.clear). */
async function clearLimits(argv: readonly string[]): Promise<number> {
  const { values } = parse(argv, COMMON_OPTIONS, false);
  let cleared: LimitsCleared;
  try {
    cleared = await controlCall(loadFor(values).socketPath, 'sim.limits.clear', {});
  } catch (err) {
    if (err instanceof AgentError && err.code === 'unknown_command')
      throw new AgentError(
        'unknown_command',
        'clear-limits is offered by a simulated vehicle only (relay.driver sim)',
      );
    throw err;
  }
  if (values.json) out(JSON.stringify(cleared));
  else
    out(
      `rate limits cleared: ${cleared.credentials} locked-out credential(s) released` +
        (cleared.uidThrottle ? ', UID-only tags no longer throttled' : ''),
    );
  return 0;
}

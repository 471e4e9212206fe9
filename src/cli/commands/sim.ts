import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { AgentError } from '../../core/errors.js';
import { INTENTS, type Intent } from '../../core/types.js';
import { signP256, simKeyMessage } from '../../crypto/challenge.js';
import { b64url, fromB64url } from '../../crypto/encoding.js';
import type { DecisionReply } from '../../host/control-api.js';
import { readSignerKey } from '../../store/key-files.js';
import { STATE_FILES } from '../../store/provision.js';
import { COMMON_OPTIONS, loadFor, out, parse } from '../args.js';
import { controlCall } from '../control-client.js';
import { SIM_NFC_HELP, simNfc } from './sim-nfc.js';

export const SIM_HELP = `vehicle-agent sim present NAME|--key KEY.pem [--intent unlock|lock|toggle] [--passive] [--delay MS] [--tamper]
vehicle-agent sim present --uid HEX [--intent ...]

Plays a credential on the agent's simulated reader (through its control socket). NAME is a demo
key in <stateDir>/demo (driver, guest, expired-guest, revoked, stranger, ...); --key any P-256 key.
The key answers a fresh challenge with a real P-256 signature; --tamper corrupts it, --delay
claims a slow answer (relay-attack deadline), --passive answers without explicit user intent.
--uid presents a UID-only tag. Prints the decision; exits 0 when granted, 2 when denied.

${SIM_NFC_HELP}`;

export async function sim(argv: readonly string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'tap' || sub === 'cards' || sub === 'card' || sub === 'nfc') return await simNfc(sub, rest);
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
  else out(`denied: ${reply.code}`);
  return reply.granted ? 0 : 2;
}

import { createPrivateKey, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentError } from '../core/errors.js';
import { INTENTS, type Intent } from '../core/types.js';
import { signP256, simKeyMessage } from '../crypto/challenge.js';
import { b64url, fromB64url } from '../crypto/encoding.js';
import { keyCredentialId, publicJwkOf, requireKeyForKind } from '../crypto/keys.js';
import { type CommandName, isCommandName, parseArgs } from '../host/control-api.js';
import type { ControlHandler } from '../host/control-server.js';

/**
 * The status page's sim controls. Each action calls the same control handlers the CLI reaches
 * through the control socket (`sim.challenge`/`sim.answer`, `sim.uid`, `sim.phone.approach`, …),
 * and is offered only while those handlers exist, so the page follows whatever simulators the
 * agent runs. A `sim.*` handler without a dedicated form is still reachable as the generic
 * `call` action with JSON arguments. The catalogue is rebuilt per request: handlers registered
 * after the page started are picked up.
 */

export interface Choice {
  readonly value: string;
  readonly label: string;
}

export interface SimParam {
  readonly name: string;
  readonly label: string;
  /** The value must be one of these… */
  readonly choices?: readonly Choice[];
  /** …or match this (anchored) pattern. */
  readonly pattern?: string;
  readonly default?: string;
}

export interface SimActionInfo {
  readonly id: string;
  readonly label: string;
  /** Short text for the page's button. */
  readonly button: string;
  readonly handlers: readonly string[];
  readonly params: readonly SimParam[];
}

export interface SimAction extends SimActionInfo {
  run(args: Readonly<Record<string, string>>): Promise<unknown>;
}

export type HandlerMap = ReadonlyMap<string, ControlHandler>;

/**
 * The demo credentials the page offers, passed in by whoever builds the page (src/app/): keys are
 * private-key files `<dir>/<name>.pem` (offered only when the file exists), tags are UIDs.
 */
export interface SimDemo {
  readonly dir: string;
  readonly keys: readonly { readonly name: string; readonly note: string }[];
  readonly tags: readonly { readonly uid: string; readonly note: string }[];
}

/** Handlers with a dedicated form; every other `sim.*` handler goes through `call`. */
const FORMED = new Set<string>([
  'sim.challenge',
  'sim.answer',
  'sim.uid',
  'sim.phone.approach',
  'sim.card.tap',
  'sim.card.list',
]);
const MAX_CALL_ARGS = 4096;
/** The demo's owner phone key (src/sim/demo.ts), offered first to approve enrollments. */
const DEMO_OWNER_PHONE = 'owner-phone';
/** The demo's owner FIDO key (src/sim/nfc-demo.ts), offered first to approve enrollments at the reader. */
const DEMO_OWNER_FIDO = 'fido-owner';

const INTENT_PARAM: SimParam = {
  name: 'intent',
  label: 'intent',
  choices: INTENTS.map((i) => ({ value: i, label: i })),
  default: 'unlock',
};

async function call(
  handlers: HandlerMap,
  name: CommandName,
  args: Record<string, unknown>,
): Promise<unknown> {
  const handler = handlers.get(name);
  // The agent may have stopped the simulator since the catalogue was built.
  if (!handler) throw new AgentError('unknown_command', `the agent has no ${name} handler now`);
  return await handler(args);
}

/** The page's demo credentials: none unless its builder passes them. */
export function simDemo(dir: string, credentials: Omit<SimDemo, 'dir'> = { keys: [], tags: [] }): SimDemo {
  return { dir, keys: credentials.keys, tags: credentials.tags };
}

function demoKeyChoices(demo: SimDemo): Choice[] {
  return demo.keys
    .filter((k) => existsSync(join(demo.dir, `${k.name}.pem`)))
    .map((k) => ({ value: k.name, label: `${k.name}: ${k.note}` }));
}

async function readDemoKey(demo: SimDemo, name: string): Promise<KeyObject> {
  const file = join(demo.dir, `${name}.pem`);
  let key: KeyObject;
  try {
    key = createPrivateKey(await readFile(file, 'utf8'));
  } catch (err) {
    throw new AgentError('key_invalid', `cannot read the demo key ${name}`, { file }, { cause: err });
  }
  requireKeyForKind('phone', publicJwkOf(key), file);
  return key;
}

/** Checks args against the action's params (choices or pattern) and fills defaults. */
export function validateActionArgs(
  action: SimActionInfo,
  args: Readonly<Record<string, unknown>>,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const key of Object.keys(args)) {
    if (!action.params.some((p) => p.name === key)) {
      throw new AgentError('bad_arguments', `${action.id} takes no argument ${key.slice(0, 40)}`);
    }
  }
  for (const param of action.params) {
    const raw = args[param.name] ?? param.default;
    if (typeof raw !== 'string') throw new AgentError('bad_arguments', `${param.name} must be a string`);
    const byChoice = param.choices?.some((c) => c.value === raw) ?? false;
    const byPattern = param.pattern !== undefined && new RegExp(`^(?:${param.pattern})$`).test(raw);
    if (!byChoice && !byPattern) {
      const allowed = param.choices ? param.choices.map((c) => c.value).join(', ') : `/${param.pattern}/`;
      throw new AgentError('bad_arguments', `${param.name} must be one of ${allowed}`.slice(0, 300));
    }
    out[param.name] = raw;
  }
  return out;
}

/** Labels of the simulated NFC cards (`sim.card.list`) with their kind, or none when it fails. */
async function simCardChoices(handlers: HandlerMap): Promise<(Choice & { readonly kind: string })[]> {
  try {
    const list = await call(handlers, 'sim.card.list', {});
    if (!Array.isArray(list)) return [];
    return list.flatMap((c: unknown) => {
      if (typeof c !== 'object' || c === null) return [];
      const { label, kind } = { label: undefined, kind: undefined, ...c };
      const named = typeof kind === 'string' ? kind : 'card';
      return typeof label === 'string' ? [{ value: label, label: `${label} (${named})`, kind: named }] : [];
    });
  } catch {
    return [];
  }
}

export async function buildSimActions(handlers: HandlerMap, demo: SimDemo): Promise<SimAction[]> {
  const actions: SimAction[] = [];
  const keys = demoKeyChoices(demo);

  if (handlers.has('sim.challenge') && handlers.has('sim.answer') && keys.length > 0) {
    actions.push({
      id: 'present',
      label: 'Present a key on the simulated reader',
      button: 'Present',
      handlers: ['sim.challenge', 'sim.answer'],
      params: [
        { name: 'key', label: 'demo key', choices: keys, default: keys[0]?.value ?? '' },
        INTENT_PARAM,
        {
          name: 'proof',
          label: 'answer',
          choices: [
            { value: 'valid', label: 'valid, with explicit intent' },
            { value: 'passive', label: 'valid, no explicit intent (passive)' },
            { value: 'tampered', label: 'tampered signature' },
          ],
          default: 'valid',
        },
      ],
      run: async (args) => {
        const key = await readDemoKey(demo, args.key ?? '');
        const keyId = keyCredentialId('phone', publicJwkOf(key));
        const challenge = challengeOf(await call(handlers, 'sim.challenge', {}));
        const intent: Intent = parseArgs('sim.uid', { uid: '', intent: args.intent }).intent;
        const explicitIntent = args.proof !== 'passive';
        const message = simKeyMessage(
          fromB64url(challenge.challenge),
          challenge.vehicleId,
          intent,
          explicitIntent,
          keyId,
        );
        const signature = signP256(key, message);
        if (args.proof === 'tampered') signature[10] = (signature[10] ?? 0) ^ 0x40;
        return await call(handlers, 'sim.answer', {
          challengeId: challenge.challengeId,
          credentialId: keyId,
          intent,
          explicitIntent,
          signature: b64url(signature),
          delayMs: 0,
        });
      },
    });
  }

  if (handlers.has('sim.uid')) {
    actions.push({
      id: 'uid',
      label: 'Tap a UID-only tag',
      button: 'Tap tag',
      handlers: ['sim.uid'],
      params: [
        {
          name: 'uid',
          label: 'tag UID (hex)',
          choices: demo.tags.map((t) => ({ value: t.uid, label: `${t.uid}: ${t.note}` })),
          pattern: '[0-9A-Fa-f]{8,20}',
          ...(demo.tags[0] ? { default: demo.tags[0].uid } : {}),
        },
        INTENT_PARAM,
      ],
      run: async (args) => await call(handlers, 'sim.uid', { uid: args.uid, intent: args.intent }),
    });
  }

  if (handlers.has('sim.phone.approach') && handlers.has('vehicle') && keys.length > 0) {
    actions.push({
      id: 'phone',
      label: 'Bring a simulated phone (BLE)',
      button: 'Bring phone',
      handlers: ['sim.phone.approach'],
      params: [
        { name: 'key', label: 'demo phone key', choices: keys, default: keys[0]?.value ?? '' },
        INTENT_PARAM,
        {
          name: 'mode',
          label: 'phone',
          choices: [
            { value: 'explicit', label: 'tap in the app (explicit intent)' },
            { value: 'passive', label: 'in the pocket (passive)' },
          ],
          default: 'explicit',
        },
      ],
      run: async (args) =>
        await approachWith(handlers, demo, args.key ?? '', {
          intent: args.intent,
          explicitIntent: args.mode !== 'passive',
        }),
    });
    // The simulated owner phone signs the pending request (E1) over BLE, as an owner's app would:
    // the admin token only brings the phone; the approval is the owner key's signature.
    const owner = keys.find((k) => k.value === DEMO_OWNER_PHONE) ?? keys[0];
    actions.push({
      id: 'approve-enrollment',
      label: "The owner's phone approves the pending enrollment (BLE)",
      button: 'Approve',
      handlers: ['sim.phone.approach'],
      params: [{ name: 'key', label: 'owner phone key', choices: keys, default: owner?.value ?? '' }],
      run: async (args) =>
        await approachWith(handlers, demo, args.key ?? '', {
          intent: 'unlock',
          explicitIntent: true,
          approveEnrollment: true,
        }),
    });
  }

  const cards = handlers.has('sim.card.tap') ? await simCardChoices(handlers) : [];
  if (cards.length > 0) {
    actions.push({
      id: 'tap',
      label: 'Tap a simulated NFC card on the PN532',
      button: 'Tap card',
      handlers: ['sim.card.tap'],
      params: [
        {
          name: 'card',
          label: 'card',
          choices: cards.map(({ value, label }) => ({ value, label })),
          default: cards[0]?.value ?? '',
        },
      ],
      run: async (args) => await call(handlers, 'sim.card.tap', { card: args.card }),
    });
    // Arms the reader for an owner FIDO key (what `enroll approve --owner-fido` does), then taps
    // the chosen key: the approval is the key's signature over the request, checked like any tap.
    const fido = cards.filter((c) => c.kind.includes('fido')).map(({ value, label }) => ({ value, label }));
    const owner = fido.find((c) => c.value === DEMO_OWNER_FIDO) ?? fido[0];
    if (handlers.has('enroll.approval.arm') && owner !== undefined) {
      actions.push({
        id: 'approve-enrollment-fido',
        label: "The owner's FIDO key is tapped at the reader to approve the pending enrollment",
        button: 'Approve with key',
        handlers: ['enroll.approval.arm', 'sim.card.tap'],
        params: [{ name: 'card', label: 'FIDO key', choices: fido, default: owner.value }],
        run: async (args) => {
          await call(handlers, 'enroll.approval.arm', {});
          return await call(handlers, 'sim.card.tap', { card: args.card });
        },
      });
    }
  }

  const others = [...handlers.keys()]
    .filter(
      (name): name is CommandName => isCommandName(name) && name.startsWith('sim.') && !FORMED.has(name),
    )
    .sort();
  if (others.length > 0) {
    actions.push({
      id: 'call',
      label: 'Call a simulator command',
      button: 'Call',
      handlers: others,
      params: [
        { name: 'handler', label: 'command', choices: others.map((h) => ({ value: h, label: h })) },
        { name: 'args', label: 'arguments (JSON object)', pattern: '[\\s\\S]*', default: '{}' },
      ],
      run: async (args) => {
        const text = args.args ?? '{}';
        if (text.length > MAX_CALL_ARGS) throw new AgentError('request_too_large', 'arguments too long');
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch {
          throw new AgentError('bad_arguments', 'arguments must be a JSON object');
        }
        if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
          throw new AgentError('bad_arguments', 'arguments must be a JSON object');
        }
        const name = others.find((h) => h === args.handler);
        if (name === undefined)
          throw new AgentError('bad_arguments', 'handler must be one of the listed commands');
        return await call(handlers, name, { ...parsed });
      },
    });
  }
  return actions;
}

export function describeActions(actions: readonly SimAction[]): SimActionInfo[] {
  return actions.map(({ id, label, button, handlers, params }) => ({ id, label, button, handlers, params }));
}

/** A demo phone key brought to the vehicle over the simulated BLE link (`sim.phone.approach`). */
async function approachWith(
  handlers: HandlerMap,
  demo: SimDemo,
  keyName: string,
  behaviour: { intent: string | undefined; explicitIntent: boolean; approveEnrollment?: boolean },
): Promise<unknown> {
  const privateKey = await readDemoKey(demo, keyName);
  const { d } = privateKey.export({ format: 'jwk' });
  if (typeof d !== 'string') throw new AgentError('key_invalid', 'demo phone key has no private scalar');
  const vehicle = vehicleOf(await call(handlers, 'vehicle', {}));
  return await call(handlers, 'sim.phone.approach', {
    secretKey: b64url(fromB64url(d)),
    pin: { vehicleId: vehicle.vehicleId, publicKey: vehicle.vehicleKey },
    ...behaviour,
    timeoutMs: 10_000,
  });
}

/** The handler's reply read as the table's SimChallenge (a bad one is refused, not trusted). */
function challengeOf(reply: unknown): { challengeId: string; challenge: string; vehicleId: string } {
  if (typeof reply === 'object' && reply !== null) {
    const { challengeId, challenge, vehicleId } = {
      challengeId: undefined,
      challenge: undefined,
      vehicleId: undefined,
      ...reply,
    };
    if (typeof challengeId === 'string' && typeof challenge === 'string' && typeof vehicleId === 'string')
      return { challengeId, challenge, vehicleId };
  }
  throw new AgentError('internal', 'sim.challenge answered something that is not a challenge');
}

function vehicleOf(reply: unknown): { vehicleId: unknown; vehicleKey: unknown } {
  if (typeof reply !== 'object' || reply === null) return { vehicleId: undefined, vehicleKey: undefined };
  const { vehicleId, vehicleKey } = { vehicleId: undefined, vehicleKey: undefined, ...reply };
  return { vehicleId, vehicleKey };
}

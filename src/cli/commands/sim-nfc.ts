import { AgentError } from '../../core/errors.js';
import type { TapReply } from '../../host/control-api.js';
import { COMMON_OPTIONS, loadFor, out, parse } from '../args.js';
import { controlCall } from '../control-client.js';
import { denialLine } from '../denial.js';

export const SIM_NFC_HELP = `vehicle-agent sim tap CARD [--remove-after MS] [--slow MS] [--clone-of CARD] [--counter N]
                         [--fault garbage|lose-ack|nack|error-frame|corrupt-response|remove-during-exchange]
vehicle-agent sim cards
vehicle-agent sim card add fido|ntag424|uid LABEL [--model ntag213|mifare-classic-1k]
vehicle-agent sim nfc wedge [--manual] | unwedge | garbage | nack | ...

Simulated NFC cards on the agent's PN532 emulator (nfc.driver sim): every byte goes through the
real driver over a pty. \`sim tap\` puts CARD in the field, prints what the reader did with it and
takes it away: a decision (exit 0 granted, 2 denied) or, while a card enrollment is open, the
enrollment step (exit 0 done, 2 refused), or, while the reader is armed by \`enroll approve
--owner-fido\`, the approval (exit 0 approved, 2 refused). --slow makes every APDU that much slower (a relay),
--remove-after takes the card away mid-exchange, --clone-of shows another card's UID (a UID
clone), --counter taps an extracted copy of a FIDO key whose counter is N. \`sim cards\` lists the
wallet (<stateDir>/sim/cards.json); \`sim nfc\` injects reader faults (wedge: the chip stops
answering until the driver's wake-up, or until unwedge with --manual).`;

function whole(text: string | undefined, name: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0)
    throw new AgentError('bad_arguments', `--${name} must be a whole number`);
  return n;
}

function describeTap(r: TapReply): string {
  if (r.approval !== undefined)
    return r.ok
      ? `enrollment of ${r.credentialId ?? '?'} approved by ${r.approvedBy ?? 'the owner key'}`
      : `not approved: ${r.code ?? '?'} (${r.message ?? ''}); the reader stays ${r.state ?? 'armed'}`;
  if (r.enrollment === 'authorise')
    return r.ok
      ? `enrollment authorised by ${r.credentialId ?? 'the owner key'}: tap the new card`
      : `not authorised: ${r.code ?? '?'} (${r.message ?? ''})`;
  if (r.enrollment === 'enroll')
    return r.ok ? `enrolled ${r.credentialId ?? '?'}` : `not enrolled: ${r.code ?? '?'} (${r.message ?? ''})`;
  if (r.granted) return `granted (${r.role ?? '?'}): lock is ${r.lock ?? 'unknown'}`;
  return `denied: ${r.code ?? 'unknown'}`;
}

export async function simNfc(sub: string, argv: readonly string[]): Promise<number> {
  switch (sub) {
    case 'tap':
      return await tap(argv);
    case 'cards':
      return await cards(argv);
    case 'card':
      return await card(argv);
    case 'nfc':
      return await fault(argv);
    default:
      throw new AgentError('bad_arguments', `unknown sim subcommand ${sub}\n\n${SIM_NFC_HELP}`);
  }
}

async function tap(argv: readonly string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    ...COMMON_OPTIONS,
    'remove-after': { type: 'string' },
    slow: { type: 'string' },
    'clone-of': { type: 'string' },
    counter: { type: 'string' },
    fault: { type: 'string' },
  });
  const cardName = positionals[0];
  if (cardName === undefined) throw new AgentError('bad_arguments', `name a card\n\n${SIM_NFC_HELP}`);
  const removeAfterMs = whole(values['remove-after'], 'remove-after');
  const slowMs = whole(values.slow, 'slow');
  const counter = whole(values.counter, 'counter');
  const loaded = loadFor(values);
  const reply = await controlCall(
    loaded.socketPath,
    'sim.card.tap',
    {
      card: cardName,
      ...(removeAfterMs === undefined ? {} : { removeAfterMs }),
      ...(slowMs === undefined ? {} : { slowMs }),
      ...(counter === undefined ? {} : { counter }),
      ...(values['clone-of'] === undefined ? {} : { cloneOf: values['clone-of'] }),
      ...(values.fault === undefined ? {} : { fault: values.fault }),
    },
    20_000,
  );
  const step = reply.enrollment !== undefined || reply.approval !== undefined;
  const deniedPlainly = !step && reply.granted !== true && reply.code !== undefined;
  if (values.json) out(JSON.stringify(reply));
  else if (deniedPlainly) out(await denialLine(loaded.socketPath, reply.code ?? '', reply.credentialId));
  else out(describeTap(reply));
  const ok = step ? reply.ok === true : reply.granted === true;
  return ok ? 0 : 2;
}

async function cards(argv: readonly string[]): Promise<number> {
  const { values } = parse(argv, COMMON_OPTIONS, false);
  const list = await controlCall(loadFor(values).socketPath, 'sim.card.list', {});
  if (values.json) out(JSON.stringify(list));
  else
    for (const c of list)
      out(
        `${c.label.padEnd(16)} ${c.kind.padEnd(9)} uid ${c.uid}${c.counter === undefined ? '' : `  counter ${c.counter}`}`,
      );
  return 0;
}

async function card(argv: readonly string[]): Promise<number> {
  const { values, positionals } = parse(argv, { ...COMMON_OPTIONS, model: { type: 'string' } });
  const [verb, kind, label] = positionals;
  if (verb !== 'add' || kind === undefined || label === undefined)
    throw new AgentError('bad_arguments', `usage: sim card add fido|ntag424|uid LABEL\n\n${SIM_NFC_HELP}`);
  const added = await controlCall(loadFor(values).socketPath, 'sim.card.add', {
    kind,
    label,
    ...(values.model === undefined ? {} : { model: values.model }),
  });
  out(values.json ? JSON.stringify(added) : `added ${label}`);
  return 0;
}

async function fault(argv: readonly string[]): Promise<number> {
  const { values, positionals } = parse(argv, { ...COMMON_OPTIONS, manual: { type: 'boolean' } });
  const kind = positionals[0];
  if (kind === undefined) throw new AgentError('bad_arguments', `name a fault\n\n${SIM_NFC_HELP}`);
  const result = await controlCall(loadFor(values).socketPath, 'sim.nfc.fault', {
    kind,
    ...(values.manual ? { recoverOn: 'manual' } : {}),
  });
  out(JSON.stringify(result));
  return 0;
}

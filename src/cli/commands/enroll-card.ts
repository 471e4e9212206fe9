import { AgentError } from '../../core/errors.js';
import { ROLES } from '../../core/types.js';
import { signJws } from '../../crypto/jws.js';
import type { CardEnrollmentReply, RequestOf } from '../../host/control-api.js';
import { CARD_ENROLL_TYP, CARD_KINDS, canonicalRequest } from '../../nfc/enroll-auth.js';
import { readSignerKey } from '../../store/key-files.js';
import { COMMON_OPTIONS, loadFor, out, parse, parseTime, requireString } from '../args.js';
import { controlCall } from '../control-client.js';

export const ENROLL_CARD_HELP = `vehicle-agent enroll card --kind fido|ntag424|uid --role ROLE [--name TEXT]
                          [--not-before TIME] [--not-after TIME]
                          (--owner-key OWNER.pem | --owner-fido) [--no-wait] [--json]
vehicle-agent enroll card status [--json]
vehicle-agent enroll card cancel

Enrollment of an NFC card at the vehicle (docs/cards.md). The reader takes a new card only after
the owner authorised this request, and only for nfc.enrollWindowMs:
  --owner-key OWNER.pem  signs the request with an owner signing key (the root key from init);
  --owner-fido           waits for an owner FIDO key tapped at the reader (it signs the request).
Then tap the new card: a FIDO key is registered for this vehicle, an NTAG 424 DNA is personalised
with keys derived from the site key, a UID tag is recorded as insecure (kind uid). The vehicle adds
a grant signed by its own key that carries the owner's signature. The command waits for the outcome
(exit 0 enrolled, 2 expired, cancelled or refused) unless --no-wait.
ROLE is owner, driver, guest (needs --not-after) or service. TIME is ISO 8601 or +N[smhd].`;

type View = CardEnrollmentReply;

const POLL_MS = 200;

function describe(view: View): string {
  switch (view.state) {
    case 'none':
      return 'no card enrollment';
    case 'awaiting_owner':
      return `${
        view.method === 'owner-fido'
          ? `tap an owner FIDO key at the reader to authorise enrolling a ${view.kind} card as ${view.role}`
          : `waiting for the owner's signature on request ${view.requestHash.slice(0, 16)}`
      } (until ${view.expiresAt})${view.lastRefusal ? `; refused: ${view.lastRefusal.code} (${view.lastRefusal.message})` : ''}`;
    case 'awaiting_card':
      return `authorised by ${view.authorisedBy ?? '?'}: tap the new ${view.kind} card at the reader (until ${view.expiresAt})${
        view.lastRefusal ? `; last card refused: ${view.lastRefusal.code} (${view.lastRefusal.message})` : ''
      }`;
    case 'completed':
      return `enrolled ${view.credentialId ?? '?'} as ${view.role}, authorised by ${view.authorisedBy ?? '?'}`;
    case 'expired':
      return `the card enrollment expired${view.lastRefusal ? ` (last refusal: ${view.lastRefusal.code})` : ''}`;
    case 'cancelled':
      return 'the card enrollment was cancelled';
  }
}

type CardCommand =
  | 'enroll.card.request'
  | 'enroll.card.authorise'
  | 'enroll.card.status'
  | 'enroll.card.cancel';

async function request<C extends CardCommand>(socketPath: string, cmd: C, args: RequestOf<C>): Promise<View> {
  try {
    return await controlCall(socketPath, cmd, args);
  } catch (err) {
    if (err instanceof AgentError && err.code === 'unknown_command')
      throw new AgentError('unknown_command', 'card enrollment needs the NFC reader (nfc.enabled true)');
    throw err;
  }
}

export async function enrollCard(argv: readonly string[]): Promise<number> {
  const [first, ...rest] = argv;
  if (first === 'status' || first === 'cancel') {
    const { values } = parse(rest, COMMON_OPTIONS, false);
    const view = await request(loadFor(values).socketPath, `enroll.card.${first}`, {});
    out(values.json ? JSON.stringify(view) : describe(view));
    return 0;
  }
  const { values } = parse(
    argv,
    {
      ...COMMON_OPTIONS,
      kind: { type: 'string' },
      role: { type: 'string' },
      name: { type: 'string' },
      'not-before': { type: 'string' },
      'not-after': { type: 'string' },
      'owner-key': { type: 'string' },
      'owner-fido': { type: 'boolean' },
      'no-wait': { type: 'boolean' },
    },
    false,
  );
  const kindText = requireString(values.kind, 'kind');
  const kind = CARD_KINDS.find((k) => k === kindText);
  if (kind === undefined)
    throw new AgentError('bad_arguments', `--kind must be one of ${CARD_KINDS.join(', ')}`);
  const roleText = requireString(values.role, 'role');
  const role = ROLES.find((r) => r === roleText);
  if (role === undefined) throw new AgentError('bad_arguments', `--role must be one of ${ROLES.join(', ')}`);
  if ((values['owner-key'] === undefined) === (values['owner-fido'] !== true))
    throw new AgentError('bad_arguments', 'give exactly one of --owner-key OWNER.pem and --owner-fido');
  const owner = values['owner-key'] === undefined ? undefined : readSignerKey(values['owner-key']);
  const iso = (text: string | undefined, name: string): string | undefined =>
    text === undefined ? undefined : new Date(parseTime(text, name)).toISOString();
  const notBefore = iso(values['not-before'], 'not-before');
  const notAfter = iso(values['not-after'], 'not-after');
  const asked = {
    kind,
    role,
    ...(values.name === undefined ? {} : { name: values.name }),
    ...(notBefore === undefined ? {} : { notBefore }),
    ...(notAfter === undefined ? {} : { notAfter }),
  };
  const { socketPath } = loadFor(values);
  let view = await request(socketPath, 'enroll.card.request', {
    ...asked,
    method: owner ? 'owner-key' : 'owner-fido',
  });
  if (view.state === 'none') throw new AgentError('internal', 'the agent opened no request');
  if (owner) {
    // Sign only what was asked for: the agent fills in the vehicle, nonce and times, nothing else.
    const r = view.request;
    const same =
      r.kind === asked.kind &&
      r.role === asked.role &&
      r.name === asked.name &&
      r.notBefore === asked.notBefore &&
      r.notAfter === asked.notAfter;
    if (!same) {
      await request(socketPath, 'enroll.card.cancel', {});
      throw new AgentError('bad_proof', `the agent proposed a different request: ${canonicalRequest(r)}`);
    }
    const jws = signJws(r, owner.key, owner.id, CARD_ENROLL_TYP);
    view = await request(socketPath, 'enroll.card.authorise', { jws });
  }
  if (!values.json) out(describe(view));
  if (values['no-wait']) {
    if (values.json) out(JSON.stringify(view));
    return 0;
  }
  // Print each change: the next step, and every refused tap (the window stays open after one).
  let last = JSON.stringify(view);
  while (view.state === 'awaiting_owner' || view.state === 'awaiting_card') {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    view = await request(socketPath, 'enroll.card.status', {});
    const now = JSON.stringify(view);
    if (now !== last && !values.json) out(describe(view));
    last = now;
  }
  if (values.json) out(JSON.stringify(view));
  return view.state === 'completed' ? 0 : 2;
}

import { AgentError } from '../../core/errors.js';
import { ROLES, type Role } from '../../core/types.js';
import { publicJwkOf } from '../../crypto/keys.js';
import { readKeyFile } from '../../store/key-files.js';
import { COMMON_OPTIONS, loadFor, out, parse, parseTime, requireString } from '../args.js';
import { controlCall } from '../control-client.js';

export const ENROLL_HELP = `vehicle-agent enroll phone --public NEW.pub.pem --role ROLE [--name TEXT]
                          [--not-before TIME] [--not-after TIME] [--passive] [--window MS] [--no-wait] [--json]
vehicle-agent enroll status [--json]
vehicle-agent enroll cancel
vehicle-agent enroll approve --owner-fido [--no-wait] [--json]
vehicle-agent enroll approve --cancel [--json]

Enrollment at the vehicle, approved by an owner's phone key over BLE (no owner private key on
this machine needed). \`enroll phone\` opens a request naming the new phone key; it stays open for
--window ms (default ble.enrollWindowMs) and nothing but an owner key completes it: an owner phone
key signing this request's hash over BLE, or an owner FIDO key at the reader once armed (below).
An unlock, however recent, does not. The vehicle then adds a grant
signed by the vehicle key that carries the owner's signature, verifiable anywhere.
The command waits for the outcome (exit 0 approved, 2 expired or cancelled) unless --no-wait.
ROLE is owner, driver, guest (needs --not-after) or service. TIME is ISO 8601 or +N[smhd].
The reference owner phone approves with: vehicle-agent phone approach --key OWNER-PHONE.pem --approve-enrollment

\`enroll approve --owner-fido\` arms the NFC reader to approve the pending request with an owner
FIDO key instead: for nfc.enrollWindowMs (or the request's time left, if shorter) the next FIDO
key tapped signs the request's approval challenge and nothing it taps unlocks. A key that may not
approve (not an owner, revoked, expired, unknown) is refused with its code and the reader stays
armed for the right key; the arming ends with an approval, its window, the request's end, or
\`enroll approve --cancel\`. It waits for the outcome (exit 0 approved, 2 not) unless --no-wait.`;

interface EnrollmentView {
  readonly state: 'pending' | 'completed' | 'expired' | 'cancelled' | 'none';
  readonly credentialId?: string;
  readonly role?: string;
  readonly requestHash?: string;
  readonly expiresAt?: string;
  readonly approvedBy?: string;
  readonly approvedWith?: string;
}

const POLL_MS = 250;

export async function enroll(argv: readonly string[]): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'phone':
      return await open(rest);
    case 'status':
      return await simple(rest, 'enroll.status');
    case 'cancel':
      return await simple(rest, 'enroll.cancel');
    case 'approve':
      return await approve(rest);
    default:
      throw new AgentError(
        'bad_arguments',
        `enroll needs phone, status, cancel or approve\n\n${ENROLL_HELP}`,
      );
  }
}

function describe(view: EnrollmentView): string {
  switch (view.state) {
    case 'none':
      return 'no enrollment request';
    case 'pending':
      return `waiting for an owner phone key to approve ${view.credentialId} as ${view.role} (until ${view.expiresAt}); request hash ${view.requestHash}`;
    case 'completed':
      return `enrolled ${view.credentialId} as ${view.role}, approved by ${view.approvedBy}${
        view.approvedWith === 'owner-fido' ? ' (an owner FIDO key at the reader)' : ''
      }`;
    case 'expired':
      return `the request for ${view.credentialId} expired without an owner's approval`;
    case 'cancelled':
      return `the request for ${view.credentialId} was cancelled`;
  }
}

async function simple(argv: readonly string[], cmd: 'enroll.status' | 'enroll.cancel'): Promise<number> {
  const { values } = parse(argv, COMMON_OPTIONS, false);
  const loaded = loadFor(values);
  const view = await controlCall(loaded.socketPath, cmd, {});
  out(values.json ? JSON.stringify(view) : describe(view));
  return 0;
}

async function open(argv: readonly string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      ...COMMON_OPTIONS,
      public: { type: 'string' },
      role: { type: 'string' },
      name: { type: 'string' },
      'not-before': { type: 'string' },
      'not-after': { type: 'string' },
      passive: { type: 'boolean' },
      window: { type: 'string' },
      'no-wait': { type: 'boolean' },
    },
    false,
  );
  const role = requireString(values.role, 'role') as Role;
  if (!(ROLES as readonly string[]).includes(role))
    throw new AgentError('bad_arguments', `--role must be one of ${ROLES.join(', ')}`);
  const publicKey = publicJwkOf(readKeyFile(requireString(values.public, 'public')));
  const iso = (text: string | undefined, name: string): string | undefined =>
    text === undefined ? undefined : new Date(parseTime(text, name)).toISOString();
  const notBefore = iso(values['not-before'], 'not-before');
  const notAfter = iso(values['not-after'], 'not-after');
  let windowMs: number | undefined;
  if (values.window !== undefined) {
    windowMs = Number(values.window);
    if (!Number.isInteger(windowMs) || windowMs < 1)
      throw new AgentError('bad_arguments', '--window must be milliseconds');
  }
  const loaded = loadFor(values);
  let view: EnrollmentView;
  try {
    view = await controlCall(loaded.socketPath, 'enroll.open', {
      kind: 'phone',
      publicKey,
      role,
      ...(values.name === undefined ? {} : { name: values.name }),
      ...(notBefore === undefined ? {} : { notBefore }),
      ...(notAfter === undefined ? {} : { notAfter }),
      ...(values.passive ? { passive: true } : {}),
      ...(windowMs === undefined ? {} : { windowMs }),
    });
  } catch (err) {
    if (err instanceof AgentError && err.code === 'unknown_command') {
      throw new AgentError(
        'unknown_command',
        'enrollment at the vehicle needs the BLE reader (ble.enabled true)',
      );
    }
    throw err;
  }
  if (!values.json) out(describe(view));
  if (values['no-wait']) {
    if (values.json) out(JSON.stringify(view));
    return 0;
  }
  while (view.state === 'pending') {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    view = await controlCall(loaded.socketPath, 'enroll.status', {});
  }
  out(values.json ? JSON.stringify(view) : describe(view));
  return view.state === 'completed' ? 0 : 2;
}

interface ApprovalView {
  readonly state: 'armed' | 'approved' | 'expired' | 'closed' | 'cancelled' | 'none';
  readonly credentialId?: string;
  readonly expiresAt?: string;
  readonly approvedBy?: string;
  readonly lastRefusal?: { readonly code: string; readonly message: string; readonly by?: string };
}

function describeApproval(view: ApprovalView): string {
  switch (view.state) {
    case 'none':
      return 'the reader was not armed to approve an enrollment';
    case 'armed':
      return `the reader is armed until ${view.expiresAt}: tap an owner FIDO key to approve ${view.credentialId}`;
    case 'approved':
      return `enrolled ${view.credentialId}, approved by ${view.approvedBy} (owner FIDO key)`;
    case 'expired':
      return `nobody approved ${view.credentialId} at the reader before ${view.expiresAt}`;
    case 'closed':
      return `the request for ${view.credentialId} ended (see enroll status)`;
    case 'cancelled':
      return `the reader is no longer armed for ${view.credentialId}`;
  }
}

function describeRefusal(view: ApprovalView): string | undefined {
  const r = view.lastRefusal;
  return r === undefined ? undefined : `refused ${r.by ?? 'a tap'}: ${r.code}: ${r.message}`;
}

async function approve(argv: readonly string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      ...COMMON_OPTIONS,
      'owner-fido': { type: 'boolean' },
      cancel: { type: 'boolean' },
      'no-wait': { type: 'boolean' },
    },
    false,
  );
  if (values.cancel === values['owner-fido'])
    throw new AgentError('bad_arguments', `enroll approve needs --owner-fido or --cancel\n\n${ENROLL_HELP}`);
  const loaded = loadFor(values);
  const call = async (cmd: 'enroll.approval.arm' | 'enroll.approval.status' | 'enroll.approval.cancel') => {
    try {
      return (await controlCall(loaded.socketPath, cmd, {})) as ApprovalView;
    } catch (err) {
      if (err instanceof AgentError && err.code === 'unknown_command')
        throw new AgentError(
          'unknown_command',
          'approval with an owner FIDO key needs the BLE and NFC readers (ble.enabled, nfc.enabled)',
        );
      throw err;
    }
  };
  if (values.cancel) {
    const view = await call('enroll.approval.cancel');
    out(values.json ? JSON.stringify(view) : describeApproval(view));
    return 0;
  }
  let view = await call('enroll.approval.arm');
  if (!values.json) out(describeApproval(view));
  if (values['no-wait']) {
    if (values.json) out(JSON.stringify(view));
    return 0;
  }
  let shown: string | undefined;
  while (view.state === 'armed') {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    view = await call('enroll.approval.status');
    const refusal = describeRefusal(view);
    if (!values.json && refusal !== undefined && refusal !== shown) out(refusal);
    shown = refusal;
  }
  out(values.json ? JSON.stringify(view) : describeApproval(view));
  return view.state === 'approved' ? 0 : 2;
}

/**
 * The phone-key page: enroll this phone (a web key or a passkey) with the owner's approval, pin
 * the vehicle, then unlock and lock with one press each. It talks to the vehicle only over Web
 * Bluetooth and never to any server: once loaded (and cached by sw.js) it works offline. The one
 * exception is a try-out: served by an agent in sim mode, it talks to that agent's simulated
 * radio (sim-radio.ts) unless `?radio=bluetooth` asks for Web Bluetooth.
 */
import {
  answerSignedBytes,
  ascii,
  type Challenge,
  CodecError,
  decodeChallenge,
  decodeResult,
  ENROLL_KIND,
  encodeAnswer,
  encodeEnroll,
  encodeEnrollBody,
  encodePasskeyAnswer,
  enrollSignedBytes,
  FLAG_EXPLICIT,
  INTENT,
  type Intent,
  passkeyChallengePreimage,
  type Result,
  resultSignedBytes,
} from './codec.js';
import { type VehicleLink, type VehicleRadio, webBluetoothRadio } from './gatt.js';
import {
  assertPasskey,
  createPasskey,
  createWebKey,
  credentialId,
  type PhoneKey,
  sameBytes,
  sha256,
  signWithWebKey,
  type VehiclePin,
  verifyVehicleSignature,
} from './keys.js';
import { RadioError, simulatedRadio, simulatedRadioOffered } from './sim-radio.js';
import * as store from './store.js';
import { resultInWords } from './words.js';

/** How long to wait between looks at a pending enrollment (`?poll=ms` overrides, 200 to 60 000). */
const POLL_MS = clamp(Number(new URLSearchParams(location.search).get('poll') ?? 3000), 200, 60_000);
/** Stop looking after this long; the owner may approve later and the user presses Check. */
const ENROLL_GIVE_UP_MS = 10 * 60_000;
/** A `pending` result while the vehicle decides is read again this often, this many times. */
const SETTLE_MS = 150;
const SETTLE_TRIES = 40;

function clamp(n: number, lo: number, hi: number): number {
  return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : lo;
}

function el<T extends HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (e === null) throw new Error(`#${id} is missing from the page`);
  return e as T;
}

const ui = {
  key: el('key'),
  pin: el('pin'),
  fingerprint: el('fingerprint'),
  vehicleId: el('vehicle-id'),
  name: el<HTMLInputElement>('name'),
  enrollWebKey: el<HTMLButtonElement>('enroll-webkey'),
  enrollPasskey: el<HTMLButtonElement>('enroll-passkey'),
  check: el<HTMLButtonElement>('check'),
  unlock: el<HTMLButtonElement>('unlock'),
  lock: el<HTMLButtonElement>('lock'),
  forget: el<HTMLButtonElement>('forget'),
  result: el('result'),
  offline: el('offline'),
  radio: el('radio'),
};

let radio: VehicleRadio = webBluetoothRadio();

/** The simulated radio when the serving agent offers it, unless the address asks for Bluetooth. */
async function pickRadio(): Promise<void> {
  if (new URLSearchParams(location.search).get('radio') === 'bluetooth') return;
  if (!(await simulatedRadioOffered())) return;
  radio = simulatedRadio();
  ui.radio.hidden = false;
  document.body.dataset.radio = radio.kind;
}

/** A refusal decided by the page itself (not by the vehicle). */
class Refused extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

function show(outcome: string, code: string, words: string): void {
  ui.result.dataset.outcome = outcome;
  ui.result.dataset.code = code;
  ui.result.textContent = '';
  const strong = document.createElement('strong');
  strong.textContent = words;
  const small = document.createElement('small');
  small.textContent = ` (${code})`;
  ui.result.append(strong, small);
}

async function render(): Promise<void> {
  const [key, pin, enrolling] = await Promise.all([
    store.load('key'),
    store.load('pin'),
    store.load('enrolling'),
  ]);
  ui.key.textContent = key
    ? key.kind === 'webkey'
      ? `key in this browser, ${key.keyId}`
      : `passkey on this device (${key.rpId})`
    : 'none yet';
  ui.pin.hidden = pin === undefined;
  ui.vehicleId.textContent = pin?.vehicleId ?? '';
  ui.fingerprint.textContent = pin?.fingerprint ?? '';
  ui.check.hidden = enrolling === undefined;
  ui.unlock.disabled = ui.lock.disabled = key === undefined || pin === undefined;
  document.body.dataset.ready = 'true';
}

let busy = false;
/** One action at a time; every action starts from a button press (Web Bluetooth needs the gesture). */
function action(button: HTMLButtonElement, run: () => Promise<void>): void {
  button.addEventListener('click', () => {
    if (busy) return;
    busy = true;
    document.body.dataset.busy = 'true';
    run()
      .catch((err: unknown) => {
        if (err instanceof Refused) show('refused', err.code, err.message);
        else if (err instanceof RadioError) show('error', err.code, err.message);
        else if (err instanceof CodecError)
          show('error', 'malformed', `The vehicle sent a message this page cannot read: ${err.message}`);
        else if (err instanceof DOMException && err.name === 'NotFoundError')
          show('error', 'no_vehicle', 'No vehicle was chosen.');
        else show('error', 'error', String(err instanceof Error ? err.message : err));
      })
      .finally(() => {
        busy = false;
        delete document.body.dataset.busy;
        void render();
      });
  });
}

/** Reads the result, again while the vehicle is still deciding (pending without an enrollment). */
async function settledResult(link: VehicleLink): Promise<Result> {
  for (let i = 0; ; i++) {
    const result = decodeResult(await link.readResult());
    if (result.outcome !== 'pending' || result.code === 'enrollment_pending' || i >= SETTLE_TRIES)
      return result;
    await new Promise((r) => setTimeout(r, SETTLE_MS));
  }
}

/** Writes, then reads the result; a write the vehicle refused still left its reason in the result. */
async function writeAndRead(link: VehicleLink, message: Uint8Array): Promise<Result> {
  let writeError: unknown;
  try {
    await link.writeAnswer(message);
  } catch (err) {
    writeError = err;
  }
  try {
    return await settledResult(link);
  } catch (err) {
    throw writeError ?? err;
  }
}

function keyIdBytes(key: PhoneKey): Uint8Array {
  return key.kind === 'webkey' ? ascii(key.keyId) : key.credId;
}

/** One challenge-answer-result round on an open connection. */
async function exchange(
  link: VehicleLink,
  key: PhoneKey,
  intent: Intent,
  pin: VehiclePin | undefined,
): Promise<{ challenge: Challenge; result: Result }> {
  const challengeMsg = await link.readChallenge();
  const challenge = decodeChallenge(challengeMsg);
  if (pin && challenge.vehicleId !== pin.vehicleId) {
    // Nothing is signed for a vehicle this phone is not paired with.
    throw new Refused(
      'wrong_vehicle',
      `This is vehicle ${challenge.vehicleId}, not ${pin.vehicleId} this phone is paired with.`,
    );
  }
  const flags = FLAG_EXPLICIT;
  let message: Uint8Array;
  if (key.kind === 'webkey') {
    const sig = await signWithWebKey(key, answerSignedBytes(challengeMsg, intent, flags, key.keyId));
    message = encodeAnswer({ intent, flags, keyId: key.keyId, nonce: challenge.nonce, sig });
  } else {
    const webauthnChallenge = await sha256(passkeyChallengePreimage(challengeMsg, intent, flags));
    const a = await assertPasskey(key, webauthnChallenge);
    message = encodePasskeyAnswer({
      intent,
      flags,
      credId: key.credId,
      nonce: challenge.nonce,
      authenticatorData: a.authenticatorData,
      clientDataJSON: a.clientDataJSON,
      sig: a.sig,
    });
  }
  return { challenge, result: await writeAndRead(link, message) };
}

/** A granted result must be signed by the pinned vehicle key over this exchange. */
async function checkSigned(
  result: Result,
  challenge: Challenge,
  key: PhoneKey,
  spki: Uint8Array,
): Promise<void> {
  if (!sameBytes(result.vehicleSpki, spki)) {
    const other = await credentialId('signer', result.vehicleSpki).catch(() => 'an unreadable key');
    throw new Refused(
      'wrong_vehicle',
      `Refused: the vehicle answered with key ${other}, not the one this phone pinned.`,
    );
  }
  const signed = resultSignedBytes(challenge.nonce, result.outcome, result.code, keyIdBytes(key));
  if (!(await verifyVehicleSignature(spki, result.sig, signed))) {
    throw new Refused('wrong_vehicle', 'Refused: the answer is not signed by the vehicle this phone pinned.');
  }
}

function showResult(result: Result): void {
  // A grant names no code (docs/ble-protocol.md, mode P): it reads as `granted`.
  const code = result.code === '' && result.outcome === 'granted' ? 'granted' : result.code;
  show(result.outcome, code, resultInWords(code));
}

async function enrollOnce(link: VehicleLink, key: PhoneKey, name: string): Promise<Result> {
  const challengeMsg = await link.readChallenge();
  const challenge = decodeChallenge(challengeMsg);
  const fields = {
    kind: key.kind === 'webkey' ? ENROLL_KIND.webkey : ENROLL_KIND.passkey,
    name,
    nonce: challenge.nonce,
    spki: key.spki,
    credId: key.kind === 'passkey' ? key.credId : new Uint8Array(0),
    rpId: key.kind === 'passkey' ? key.rpId : '',
  };
  // A web key proves it holds its private half by signing this connection's challenge with the body.
  const sig =
    key.kind === 'webkey'
      ? await signWithWebKey(key, enrollSignedBytes(challengeMsg, encodeEnrollBody(fields)))
      : new Uint8Array(0);
  return writeAndRead(link, encodeEnroll({ ...fields, sig }));
}

/** After approval: learn the vehicle's key from a signed `identify` result, and pin it. */
async function identifyAndPin(link: VehicleLink, key: PhoneKey): Promise<void> {
  const existing = await store.load('pin');
  const { challenge, result } = await exchange(link, key, INTENT.identify, existing);
  if (result.outcome !== 'granted') {
    showResult(result);
    return;
  }
  await checkSigned(result, challenge, key, existing?.spki ?? result.vehicleSpki);
  const pin: VehiclePin = {
    vehicleId: challenge.vehicleId,
    spki: result.vehicleSpki,
    fingerprint: await credentialId('signer', result.vehicleSpki),
  };
  await store.save('pin', pin);
  show(
    'granted',
    'enrolled',
    'Enrolled. Check that the fingerprint above matches what “vehicle-agent identity” prints on the vehicle.',
  );
}

async function pollEnrollment(key: PhoneKey, name: string): Promise<void> {
  const until = performance.now() + ENROLL_GIVE_UP_MS;
  for (;;) {
    const link = await radio.connect();
    try {
      const result = await enrollOnce(link, key, name);
      if (result.outcome === 'pending') {
        showResult(result);
      } else {
        await store.remove('enrolling');
        if (result.outcome === 'granted') await identifyAndPin(link, key);
        else showResult(result);
        return;
      }
    } finally {
      link.disconnect();
    }
    if (performance.now() > until) {
      show('pending', 'enrollment_pending', 'Still waiting for approval. Press “Check approval” later.');
      return;
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

async function enroll(kind: 'webkey' | 'passkey'): Promise<void> {
  const name = ui.name.value.trim() || 'phone';
  if (!/^[\x20-\x7e]{1,64}$/.test(name))
    throw new Refused('bad_name', 'The name must be 1 to 64 plain letters, digits or signs.');
  await radio.choose();
  let key = await store.load('key');
  if (key?.kind !== kind) {
    key = kind === 'webkey' ? await createWebKey() : await createPasskey(name);
    await store.save('key', key);
    await store.remove('pin');
  }
  await store.persist();
  await store.save('enrolling', { name });
  await render();
  await pollEnrollment(key, name);
}

async function checkEnrollment(): Promise<void> {
  const [key, enrolling] = await Promise.all([store.load('key'), store.load('enrolling')]);
  if (!key || !enrolling) throw new Refused('enrollment_closed', 'There is no enrollment to check.');
  await radio.choose();
  await pollEnrollment(key, enrolling.name);
}

async function act(intent: Intent): Promise<void> {
  const [key, pin] = await Promise.all([store.load('key'), store.load('pin')]);
  if (!key || !pin) throw new Refused('unknown_credential', 'Enroll this phone first.');
  await radio.choose();
  const link = await radio.connect();
  try {
    const { challenge, result } = await exchange(link, key, intent, pin);
    if (result.outcome === 'granted') await checkSigned(result, challenge, key, pin.spki);
    showResult(result);
  } finally {
    link.disconnect();
  }
}

async function forget(): Promise<void> {
  if (!confirm('Forget this phone’s key and the vehicle pin? The vehicle must enroll it again.')) return;
  await Promise.all([store.remove('key'), store.remove('pin'), store.remove('enrolling')]);
  radio.forget();
  show('none', 'forgotten', 'The key and the pin are gone from this browser.');
}

action(ui.enrollWebKey, () => enroll('webkey'));
action(ui.enrollPasskey, () => enroll('passkey'));
action(ui.check, checkEnrollment);
action(ui.unlock, () => act(INTENT.unlock));
action(ui.lock, () => act(INTENT.lock));
action(ui.forget, forget);

if ('serviceWorker' in navigator) {
  navigator.serviceWorker
    .register('./sw.js')
    .then(() => navigator.serviceWorker.ready)
    .then(() => {
      ui.offline.textContent = 'This page works offline now.';
      document.body.dataset.offline = 'ready';
    })
    .catch((err: unknown) => {
      ui.offline.textContent = `Offline use is not available: ${String(err)}`;
    });
}
void pickRadio().finally(() => void render());

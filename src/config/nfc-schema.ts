import { bool, int, oneOf, optStr, section, str } from './fields.js';

/**
 * The `nfc` section: keycards on a PN532 reader (docs/cards.md, hw/pn532.md). The answer deadline
 * is policy.nfcAnswerDeadlineMs.
 */
export const NFC_SCHEMA = section(
  'NFC keycards on a PN532 reader over UART (docs/cards.md, hw/pn532.md): FIDO U2F security keys, ' +
    'NTAG 424 DNA cards, and UID-only tags marked insecure.',
  {
    enabled: bool('Run the NFC reader. When false serialport is never loaded for it.', true),
    driver: oneOf(
      'pn532: a PN532 on the serial port below; sim: the PN532 emulator inside the agent with simulated ' +
        'cards (`vehicle-agent sim tap`); auto: sim when relay.driver is sim, else pn532.',
      'auto',
      ['auto', 'sim', 'pn532'] as const,
    ),
    path: str('Serial device of the PN532 (hw/pn532.md gives it a stable name).', '/dev/pn532'),
    baudRate: int('Baud rate of the PN532 UART (HSU).', 115_200, 9600, 921_600),
    commandTimeoutMs: int(
      'A PN532 housekeeping command (init, liveness, release) gives up after this long.',
      500,
      50,
      10_000,
    ),
    livenessIntervalMs: int(
      'While waiting for a card the chip is silent: check it is alive this often (a wedged or ' +
        'unplugged reader is re-initialised without restarting the agent).',
      5000,
      100,
      600_000,
    ),
    maxBackoffMs: int('Longest pause between attempts to re-initialise a failed reader.', 5000, 100, 600_000),
    lateGraceMs: int(
      'A card answer is awaited this long past policy.nfcAnswerDeadlineMs, so the audit names the ' +
        'late card (it is denied as timeout all the same); then the exchange is abandoned.',
      500,
      0,
      10_000,
    ),
    maxKeyHandleProbes: int(
      'A card whose UID matches nothing may be a FIDO key that randomises its UID: at most this many ' +
        'enrolled key handles are tried on it (check-only, no signature) before it is called unknown.',
      8,
      0,
      64,
    ),
    siteKeyFile: optStr(
      'File holding the NTAG 424 site key (0600; created on first need). Every NTAG 424 card key is ' +
        'derived from it: back it up. Default: <stateDir>/nfc-site-key.json.',
      '/var/lib/vehicle-agent/nfc-site-key.json',
    ),
    enrollAuthoriseMs: int(
      'Enrollment at the vehicle (`vehicle-agent enroll card`): how long a request waits for the ' +
        "owner's authorisation (an owner FIDO key tap or an owner-signed request).",
      60_000,
      1000,
      600_000,
    ),
    enrollWindowMs: int(
      'After the owner authorised it, how long the reader waits for the new card; also the longest ' +
        'the reader stays armed for an owner FIDO key to approve a phone enrollment (`vehicle-agent ' +
        'enroll approve --owner-fido`).',
      30_000,
      1000,
      600_000,
    ),
    simLink: oneOf(
      'sim driver: pty runs the emulator behind a socat pty pair (the real serialport path); memory ' +
        'uses an in-memory byte link; auto: pty when socat is installed, else memory.',
      'auto',
      ['auto', 'pty', 'memory'] as const,
    ),
  },
);

import { BLE_SCHEMA } from './ble-schema.js';
import { CLOUD_SCHEMA } from './cloud-schema.js';
import { bool, int, oneOf, optStr, section, str, type ValueOf } from './fields.js';
import { NFC_SCHEMA } from './nfc-schema.js';
import { STATUS_PAGE_SCHEMA } from './status-page-schema.js';

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;

/**
 * The whole configuration. Nothing configured means simulated hardware everywhere, so
 * `npm start` works on any machine. Keep config/example.yaml in step: `vehicle-agent config
 * example` prints it from this schema and a test compares the two.
 */
export const CONFIG_SCHEMA = section('vehicle-agent configuration', {
  stateDir: optStr(
    'Directory for the keyring, counters, audit log and keys (created 0700). Default: $STATE_DIRECTORY ' +
      '(systemd StateDirectory) when set, else ./.state in the working directory.',
    '/var/lib/vehicle-agent',
  ),
  log: section('Logging (pino).', {
    level: oneOf('Least severe level written.', 'info', LOG_LEVELS),
    format: oneOf('json for machines and journald; pretty for people; auto = pretty on a TTY.', 'auto', [
      'auto',
      'json',
      'pretty',
    ] as const),
  }),
  control: section('Local control socket used by the CLI (a unix socket, mode 0600).', {
    socketPath: optStr('Socket path. Default: <stateDir>/control.sock.', '/run/vehicle-agent/control.sock'),
    // Budgets (docs/local-interfaces.md): the socket shares the agent's event loop with the readers.
    maxConnections: int(
      'Connections served at once; a newcomer beyond evicts an idle one (never one younger than ' +
        '500 ms), else still gets in up to twice this, else gets busy.',
      16,
      2,
      1024,
    ),
    idleTimeoutMs: int(
      'A connection with no request in flight is closed after this long.',
      10_000,
      100,
      3_600_000,
    ),
    requestTimeoutMs: int(
      'A request line must arrive whole, and its reply be taken, within this long.',
      5000,
      100,
      600_000,
    ),
    connectionsPerSecond: int(
      'Connections accepted a second (burst twice that); beyond, newcomers get busy unread (the ' +
        'CLI tries again a few times, then says busy).',
      200,
      1,
      100_000,
    ),
    requestsPerSecond: int(
      'Requests one connection may make a second (burst twice that); beyond, busy.',
      50,
      1,
      100_000,
    ),
    maxBadRequests: int(
      'Bad requests (not JSON, unknown command) a connection may send before it is closed.',
      5,
      1,
      1000,
    ),
    workMsPerSecond: int(
      'Main-thread milliseconds a second spent reading, parsing and answering requests; past it, ' +
        'requests wait their turn.',
      250,
      10,
      1000,
    ),
  }),
  lock: section('How the lock is driven.', {
    wiring: oneOf(
      'pulse: separate lock and unlock relays given momentary pulses (car central locking); ' +
        'hold: one relay held for holdMs (door strike).',
      'pulse',
      ['pulse', 'hold'] as const,
    ),
    pulseMs: int('pulse mode: length of each lock or unlock pulse.', 350, 20, 5000),
    holdMs: int('hold mode: how long the strike stays energised after a grant.', 5000, 100, 120_000),
    autoRelockMs: int(
      'pulse mode: lock again this long after an unlock; 0 never relocks by itself.',
      30_000,
      0,
      86_400_000,
    ),
    maxOnMs: int(
      'Watchdog: no relay stays energised longer than this (must exceed pulseMs and holdMs).',
      10_000,
      100,
      600_000,
    ),
  }),
  relay: section('Relay driver.', {
    driver: oneOf(
      'sim records a timeline; gpio drives libgpiod gpioset; lcus drives a USB-serial relay board.',
      'sim',
      ['sim', 'gpio', 'lcus'] as const,
    ),
    gpio: section('GPIO relays through libgpiod gpioset (v1 or v2, detected).', {
      gpiosetPath: str('gpioset executable.', 'gpioset'),
      chip: str('GPIO chip.', 'gpiochip0'),
      unlockLine: int('Line (BCM number) of the unlock relay (the strike in hold mode).', 17, 0, 511),
      unlockActiveLow: bool('The unlock relay board energises on a low level.', false),
      lockLine: int('Line (BCM number) of the lock relay (pulse mode).', 27, 0, 511),
      lockActiveLow: bool('The lock relay board energises on a low level.', false),
    }),
    lcus: section('LCUS-type USB-serial relay board (CH340, A0 ch state sum).', {
      path: str('Serial device.', '/dev/ttyUSB0'),
      baudRate: int('Baud rate.', 9600, 1200, 115_200),
      unlockChannel: int('Board channel of the unlock relay.', 1, 1, 8),
      lockChannel: int('Board channel of the lock relay.', 2, 1, 8),
    }),
  }),
  policy: section('Access policy.', {
    maxDenials: int(
      'Rate limits are per credential, never per reader (docs/cards.md, docs/ble.md): this many failed ' +
        'proofs for one enrolled credential (bad signature, replay, clone, late answer) within windowMs ...',
      5,
      1,
      1000,
    ),
    windowMs: int('... (the window, also for maxUnknownCards) ...', 60_000, 1000, 86_400_000),
    cooldownMs: int(
      '... lock that credential out (rate_limited) for this long; every other key works on. Unknown ' +
        'keys, garbage and malformed frames never count.',
      300_000,
      1000,
      86_400_000,
    ),
    maxUnknownCards: int(
      'Unknown NFC cards within windowMs (someone trying UIDs) that throttle UID-only grants; FIDO keys, ' +
        'NTAG 424 cards and phones are never throttled.',
      10,
      1,
      100_000,
    ),
    uidThrottleMs: int('How long UID-only grants are refused once throttled.', 300_000, 1000, 86_400_000),
    denialSummaryMs: int(
      'Reader denials that name no enrolled credential (garbage, unknown keys and cards) are audited as ' +
        'the first one in full, then one summary record per reader and code per this interval.',
      60_000,
      1000,
      3_600_000,
    ),
    bleAnswerDeadlineMs: int(
      'A phone answer later than this after the hello (its last chunk handed to the link) is denied ' +
        '(timeout). Default from the measured round trip, with room for a slow radio link and a secure ' +
        'element (docs/ble-protocol.md §5).',
      800,
      50,
      30_000,
    ),
    nfcAnswerDeadlineMs: int(
      'A card answer later than this after the challenge is denied (timeout).',
      500,
      20,
      10_000,
    ),
    counterWriteDeadlineMs: int(
      'A FIDO signature counter not written to the state disk within this is a denial (state_io), ' +
        'the relay untouched: a frozen or stalled disk (docs/storage.md). Other credentials never wait on the disk.',
      250,
      10,
      10_000,
    ),
    counterSyncDeadlineMs: int(
      'A written FIDO counter not fsynced within this withdraws the grant (state_io), cutting the pulse.',
      2000,
      50,
      60_000,
    ),
  }),
  audit: section('Hash-chained audit log under <stateDir>/audit.', {
    maxFileBytes: int('Rotate the current file past this size.', 1_048_576, 4096, 1_073_741_824),
    keepFiles: int('Rotated files kept (the oldest are deleted).', 10, 1, 1000),
    maxFiles: int(
      'With the cloud link on, files holding records its outbox has not sent are kept past keepFiles, ' +
        'up to this many files (the disk budget: maxFiles x maxFileBytes; at least keepFiles). Past it ' +
        'the oldest go anyway, said with code audit_retention_exceeded (log, audit.retention record, ' +
        '/healthz, /metrics).',
      40,
      1,
      4000,
    ),
    maxPendingEvents: int(
      'Events waiting for the disk beyond which new ones are dropped (a frozen or full disk); ' +
        'drops are counted and recorded as one audit.dropped event once the log takes writes again.',
      2000,
      1,
      100_000,
    ),
  }),
  cloud: CLOUD_SCHEMA,
  ble: BLE_SCHEMA,
  nfc: NFC_SCHEMA,
  statusPage: STATUS_PAGE_SCHEMA,
  sim: section('Simulated hardware (used by drivers set to sim).', {
    demo: bool(
      'Provision a demo vehicle with demo keys on first start when the state directory is empty ' +
        '(only when every driver is simulated).',
      true,
    ),
    reader: oneOf(
      'The simulated reader behind the control socket (`vehicle-agent sim present`): auto = on when relay.driver is sim.',
      'auto',
      ['auto', 'on', 'off'] as const,
    ),
  }),
});

export type Config = ValueOf<typeof CONFIG_SCHEMA>;

import { bool, int, oneOf, optStr, section, strList } from './fields.js';

/**
 * The `ble` section: phone keys over Bluetooth Low Energy (docs/ble.md, docs/ble-protocol.md).
 * The answer deadline is policy.bleAnswerDeadlineMs.
 */
export const BLE_SCHEMA = section(
  'Phone keys over Bluetooth Low Energy (docs/ble.md). The agent is the BLE central: it finds enrolled ' +
    'phones and fobs advertising the vehicle-key service and runs the challenge-response with them.',
  {
    enabled: bool('Run the BLE reader. When false node-ble is never loaded.', true),
    driver: oneOf(
      'bluez: BlueZ (bluetoothd) on the system D-Bus; sim: a private dbus-daemon with the BlueZ stand-in ' +
        'inside the agent, phones played with `vehicle-agent phone approach`; auto: sim when relay.driver ' +
        'is sim, else bluez.',
      'auto',
      ['auto', 'sim', 'bluez'] as const,
    ),
    mode: oneOf(
      'peripheral: the vehicle advertises the phone-key service and phones connect to it (real phones, ' +
        'the phone-key web app); central: the vehicle scans for keys advertising the vehicle-key service ' +
        '(fobs, the reference phone); both: the two at once (docs/ble.md, Modes).',
      'both',
      ['peripheral', 'central', 'both'] as const,
    ),
    peripheral: section('The vehicle as a BLE peripheral (ble.mode peripheral or both).', {
      advertisedName: optStr(
        'Name in the advertisement. Unset: no name, only the service UUID (a constant name lets anyone ' +
          'follow the vehicle). At most 8 printable ASCII characters: the legacy advertisement has 31 bytes.',
        'Van 7',
      ),
    }),
    adapter: optStr('Bluetooth adapter. Default: the first adapter BlueZ lists.', 'hci0'),
    rssiThreshold: int(
      'Phones heard weaker than this (dBm) are ignored: roughly how close a phone must be.',
      -80,
      -127,
      20,
    ),
    maxSessions: int('Exchanges with different phones at the same time.', 4, 1, 8),
    unprovenTurnMs: int(
      'A session that has not shown a signature-checked answer keeps its slot this long from its start; ' +
        'then a device waiting for a slot (picked at random among those waiting) may take it.',
      1000,
      200,
      60_000,
    ),
    unprovenDeadlineMs: int(
      '... and it is dropped this long after its start even when nobody waits (an owner approving an ' +
        'enrollment has until the request expires instead).',
      4000,
      500,
      60_000,
    ),
    maxWaiting: int(
      'Devices remembered as waiting for a slot; past it a random one is forgotten (it comes back at its ' +
        'next advertisement).',
      64,
      1,
      4096,
    ),
    maxConnectsPerSecond: int(
      'Connects to devices per second, on average (bursts of up to maxSessions); devices sighted beyond ' +
        'it wait for a turn, picked at random. A real adapter makes one LE connection at a time, so this ' +
        'bounds only what radio noise costs the agent.',
      8,
      1,
      100,
    ),
    maxTrackedDevices: int(
      'Remote devices the agent keeps track of; past it the least recently heard one without a session ' +
        'is forgotten (it is looked up again when next heard).',
      256,
      16,
      65_536,
    ),
    connectTimeoutMs: int('Give up connecting to a phone after this long.', 5000, 500, 60_000),
    servicesTimeoutMs: int(
      'Connected until its GATT services are resolved, at most this long.',
      5000,
      500,
      60_000,
    ),
    gattTimeoutMs: int(
      'One GATT resolution attempt (node-ble gatt(), which can hang) gives up after this long ...',
      1000,
      100,
      30_000,
    ),
    gattAttempts: int('... and is tried this many times.', 3, 1, 10),
    grantCooldownMs: int(
      'After a grant the same phone is left alone this long, so one button press opens once.',
      5000,
      0,
      600_000,
    ),
    denialCooldownMs: int(
      'After a denial or a failed exchange the same phone is left alone this long, so a hostile ' +
        'device cannot hammer the reader.',
      2000,
      0,
      600_000,
    ),
    lateGraceMs: int(
      'A late answer is still read this long after the deadline so the audit names the late key ' +
        '(it is denied as timeout all the same).',
      500,
      0,
      10_000,
    ),
    enrollWindowMs: int(
      'Enrollment at the vehicle (`vehicle-agent enroll phone`): how long a request waits for an ' +
        "owner key's approval before it expires (the CLI may ask for less, never more than 10 minutes).",
      120_000,
      1000,
      600_000,
    ),
    enrollAnswerMs: int(
      'No longer used, accepted so that configs setting it still load: an owner key that asked for the ' +
        'enrollment offer over BLE now has until the request expires (enrollWindowMs) to approve it.',
      30_000,
      1000,
      120_000,
    ),
    phoneApp: section(
      'The phone-key web app (mode P: the phone connects to the vehicle; docs/ble-protocol.md).',
      {
        origins: strList(
          'Origins (scheme://host[:port]) the phone-key page may be served from: a passkey signed on any ' +
            "other page is refused (origin_not_allowed). The status page's own origin " +
            '(http://127.0.0.1:<statusPage.port>) is always allowed. From the environment, separated by commas.',
          ['http://127.0.0.1:8080'],
          /^https?:\/\/(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/,
          'http(s)://HOST[:PORT], no path',
          16,
        ),
      },
    ),
  },
);

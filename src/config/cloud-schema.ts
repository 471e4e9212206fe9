import { bool, int, oneOf, optStr, section, str, strList } from './fields.js';

const TOPIC_PREFIX = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;
const TOPIC_HINT = 'topic levels of letters, digits, . _ - separated by / (no wildcards)';

/** The `cloud` section: MQTT sync (docs/mqtt.md). Off by default; mqtt is not even loaded then. */
export const CLOUD_SCHEMA = section(
  'Cloud sync over MQTT (docs/mqtt.md): signed commands, keyring sync, the audit event outbox, ' +
    'state. The cloud is never on the unlock path: an unreachable, hung or hostile broker changes ' +
    'nothing about local unlocking.',
  {
    enabled: bool('Connect to the broker. When false the MQTT library is never loaded.', false),
    url: strList(
      'Broker URL, or a list of them (the nodes of a broker cluster; from the environment, separated ' +
        'by commas): each connection attempt takes the next URL in turn, so a node that is down is ' +
        'skipped. mqtts:// is TLS (use it); mqtt:// is plain TCP, for loopback tests only.',
      ['mqtts://localhost:8883'],
      /^mqtts?:\/\/(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?\/?$/,
      'mqtts://HOST[:PORT] or mqtt://HOST[:PORT]',
      16,
    ),
    caFile: optStr(
      'PEM CA certificate(s) that signed the broker certificate. Default: the system CAs.',
      '/etc/vehicle-agent/mqtt/ca.crt',
    ),
    certFile: optStr('PEM client certificate presented to the broker.', '/etc/vehicle-agent/mqtt/client.crt'),
    keyFile: optStr(
      'PEM private key of the client certificate (keep it 0600).',
      '/etc/vehicle-agent/mqtt/client.key',
    ),
    topicPrefix: str(
      'Topics live under <topicPrefix>/<vehicleId>.',
      'vehicle-agent',
      TOPIC_PREFIX,
      TOPIC_HINT,
    ),
    clientId: optStr(
      'MQTT client id. Default: vehicle-agent-<vehicleId>. Issue the client certificate with this CN ' +
        '(brokers that tie the client to its certificate require it; a warning at start says when they differ).',
      'vehicle-agent-VA-EXAMPLE',
    ),
    protocol: oneOf('MQTT version. auto: 5, falling back to 3.1.1 when the broker refuses 5.', 'auto', [
      'auto',
      '5',
      '3.1.1',
    ] as const),
    keepaliveS: int('MQTT keepalive; a dead link is noticed within about 1.5 times this.', 30, 5, 3600),
    connectTimeoutMs: int(
      'One connection attempt (DNS, TCP, TLS, CONNECT to CONNACK) gives up after this long.',
      10_000,
      500,
      120_000,
    ),
    reconnectMinMs: int(
      'Reconnect backoff: the first retry comes after about this long ...',
      1000,
      100,
      600_000,
    ),
    reconnectMaxMs: int(
      '... doubling on each failure up to this, each delay between half and all of it (random jitter).',
      60_000,
      1000,
      3_600_000,
    ),
    sessionExpiryS: int(
      'How long the broker keeps the session (subscriptions, queued commands) while the vehicle is ' +
        'offline; 0 asks for a clean session on every connect (queued commands are then lost).',
      604_800,
      0,
      4_294_967_295,
    ),
    stateIntervalMs: int(
      'How often lock state, keyring digest and clock trust are compared and `state` republished on a change.',
      1000,
      100,
      60_000,
    ),
    commands: section('Signed commands on <base>/command.', {
      maxLifetimeS: int('Longest accepted command lifetime (exp - iat).', 300, 1, 86_400),
      maxFutureS: int(
        'How far ahead of the vehicle clock a non-owner command iat may be (clock skew).',
        120,
        0,
        86_400,
      ),
      rememberResults: int(
        'Results of accepted commands remembered by signer and jti, so a redelivered command gets the ' +
          'same answer without being carried out twice.',
        1000,
        10,
        100_000,
      ),
    }),
    outbox: section('The durable outbox of audit events on <base>/events (a cursor over the audit log).', {
      maxEvents: int(
        'Most events waiting for the cloud; beyond it the oldest are skipped (down to 90 %) and an ' +
          'outbox.dropped event counts them. The audit log rotation (audit.*) also bounds what is kept.',
        100_000,
        100,
        10_000_000,
      ),
      inFlight: int(
        'Events published and not yet acknowledged (PUBACK) at once; also capped by the broker Receive Maximum.',
        100,
        1,
        65_535,
      ),
      pollMs: int('How often new audit records are looked for.', 100, 10, 60_000),
    }),
    intake: section(
      'Budgets for what arrives from the broker (docs/mqtt.md "Floods"): whatever is published to ' +
        'the vehicle topics, the MQTT work stays a small, bounded share of the CPU and memory, and ' +
        'drops are counted (status, /metrics) and audited as one summary per topic, code and interval.',
      {
        receiveMaximum: int(
          'MQTT 5 Receive Maximum sent in CONNECT: QoS 1 messages the broker may have unacknowledged ' +
            'to the vehicle at once; the rest wait at the broker.',
          10,
          1,
          65_535,
        ),
        messagesPerS: int(
          'Intake pace, every topic together: messages taken from the broker per second. Beyond, the ' +
            'next message (and its PUBACK) waits, so the broker holds the backlog.',
          500,
          1,
          1_000_000,
        ),
        bytesPerS: int(
          'Intake pace: bytes taken from the broker per second.',
          4_194_304,
          65_536,
          1_073_741_824,
        ),
        commandsPerS: int(
          'Signed commands per second (a burst of as many); more are dropped (cloud_budget_exceeded) ' +
            'before any parse or signature check.',
          10,
          1,
          10_000,
        ),
        commandBytesPerS: int('Signed commands: bytes per second.', 262_144, 65_536, 1_073_741_824),
        keyringSetsPerS: int(
          'Keyring sets and set parts per second on <base>/keyring and <base>/keyring/part/+; more ' +
            'are dropped (a dropped part is asked for again).',
          8,
          1,
          1000,
        ),
        keyringBytesPerS: int('Keyring sets: bytes per second.', 2_097_152, 65_536, 1_073_741_824),
        maxKeyringSetBytes: int(
          'Largest keyring set accepted; it also sets the MQTT 5 Maximum Packet Size sent in CONNECT ' +
            '(a v5 broker drops larger messages before sending them). Larger sets are refused ' +
            '(message_too_large). About 1 KB per operation.',
          1_048_576,
          65_536,
          16_777_216,
        ),
        haCommandsPerS: int('Home Assistant LOCK/UNLOCK messages per second; more are dropped.', 2, 1, 1000),
        summaryIntervalMs: int(
          'Rejected and dropped messages are audited in full once per topic, code and interval, the ' +
            'rest as one cloud.summary record at its end.',
          60_000,
          1000,
          86_400_000,
        ),
      },
    ),
    homeAssistant: section(
      'Home Assistant MQTT discovery (opt-in): a lock entity with state and availability.',
      {
        enabled: bool('Publish the discovery config for a lock entity.', false),
        discoveryPrefix: str("Home Assistant's discovery prefix.", 'homeassistant', TOPIC_PREFIX, TOPIC_HINT),
        name: str('Entity name shown in Home Assistant.', 'Vehicle lock'),
        allowUnsignedCommands: bool(
          'Let Home Assistant lock and unlock with plain LOCK/UNLOCK messages. This trusts the broker: ' +
            'anyone who can publish to <base>/ha/command can open the vehicle. Off: the entity shows ' +
            'state only and commands from it are ignored.',
          false,
        ),
      },
    ),
  },
);

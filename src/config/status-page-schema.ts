import { bool, int, optStr, secretStr, section, str } from './fields.js';

/** The `statusPage` section: the local HTTP status page (src/status, README "Status page"). */
export const STATUS_PAGE_SCHEMA = section(
  'Local status page over HTTP: lock state, reader and cloud health, live audit events, a keyring ' +
    'summary, /healthz and Prometheus /metrics; in sim mode, buttons that play simulated cards and ' +
    'phones. Off the unlock path. Anything that changes state needs the admin token.',
  {
    enabled: bool('Serve the status page.', false),
    host: str(
      'Address to listen on. Keep 127.0.0.1 (reach it over `ssh -L`); any other address exposes ' +
        'the read-only views to that network.',
      '127.0.0.1',
      /^[0-9A-Fa-f:.]+$|^localhost$/,
      'an IP address or localhost',
    ),
    port: int(
      'TCP port; 0 takes any free port (the log line "status page listening" names it).',
      8080,
      0,
      65_535,
    ),
    adminTokenFile: optStr(
      'File holding the admin token (one line). Default: <stateDir>/status-admin-token, created 0600 ' +
        'with a random token when missing.',
      '/etc/vehicle-agent/status-admin-token',
    ),
    adminToken: secretStr(
      'The admin token itself, at least 16 characters; prefer adminTokenFile, or set it only through ' +
        'the environment. Never printed (`config check` masks it).',
    ),
    simControls: bool(
      'In sim mode, show controls that tap simulated cards and bring simulated phones.',
      true,
    ),
    maxClients: int('Live event streams (Server-Sent Events) served at once.', 8, 1, 100),
    allowedHosts: optStr(
      'Host names the page answers to besides 127.0.0.1, localhost and [::1] on its port (and the ' +
        'listen address), comma-separated, `name` or `name:port`: e.g. localhost:9999 for an ssh ' +
        'tunnel on another local port. Any other Host header gets host_not_allowed (DNS rebinding).',
      'vehicle.lan, localhost:9999',
    ),
    // Budgets (docs/local-interfaces.md): the page shares the agent's event loop with the readers.
    requestsPerSecond: int(
      'Requests without the admin token answered a second (burst twice that); beyond, busy with Retry-After.',
      50,
      1,
      10_000,
    ),
    adminRequestsPerSecond: int(
      'Requests carrying the admin token answered a second: their own budget, which anonymous ' +
        'floods cannot drain (give Prometheus the token to scrape on it).',
      20,
      1,
      10_000,
    ),
    maxConnections: int(
      'Connections open at once, live streams included; a newcomer beyond evicts the oldest ' +
        'connection still sending headers or idle, else gets busy.',
      64,
      4,
      4096,
    ),
    maxPendingConnections: int(
      'Connections still sending their headers or idle between requests (slowloris); a newcomer ' +
        'beyond evicts the oldest of them.',
      16,
      1,
      4096,
    ),
    headersTimeoutMs: int('A request must send its headers within this long.', 5000, 100, 120_000),
    requestTimeoutMs: int(
      'A whole request must arrive within this long, and a client must take its response within ' +
        'this long.',
      10_000,
      100,
      600_000,
    ),
    keepAliveTimeoutMs: int('An idle keep-alive connection is closed after this long.', 5000, 100, 600_000),
  },
);

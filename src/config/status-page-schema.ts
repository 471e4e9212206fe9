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
  },
);

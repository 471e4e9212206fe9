#!/usr/bin/env node
import { type AgentError, toAgentError } from '../core/errors.js';

type Command = (argv: readonly string[]) => Promise<number>;

const START_HELP = `vehicle-agent start [--config FILE] [--state-dir DIR]

Runs the agent in the foreground. With no config it runs on simulated hardware and, on first
start, provisions a demo vehicle in ./.state (see the log for what to try). Ctrl-C stops it
with every relay de-energised.`;

interface Loaded {
  readonly run: Command;
  readonly help: string;
}

/**
 * Each command's module loads only when that command runs, so `vehicle-agent start` does not pay
 * for mqtt.js or the key tools, and `vehicle-agent status` does not pay for the agent.
 */
const COMMANDS: Readonly<Record<string, { summary: string; load: () => Promise<Loaded> }>> = {
  start: {
    summary: 'run the agent (simulated hardware unless configured)',
    load: async () => ({
      run: async (argv) => (await import('./commands/start.js')).runAgentCli(argv),
      help: START_HELP,
    }),
  },
  init: {
    summary: 'provision the state directory, vehicle key and owner root',
    load: async () => import('./commands/init.js').then((m) => ({ run: m.init, help: m.INIT_HELP })),
  },
  identity: {
    summary: 'show the vehicle id, public key and fingerprint a phone pins',
    load: async () =>
      import('./commands/identity.js').then((m) => ({ run: m.identity, help: m.IDENTITY_HELP })),
  },
  keygen: {
    summary: 'write a P-256 or Ed25519 key pair (PEM and JWK)',
    load: async () => import('./commands/keygen.js').then((m) => ({ run: m.keygen, help: m.KEYGEN_HELP })),
  },
  keys: {
    summary: 'list, grant, revoke, export and import credentials',
    load: async () => import('./commands/keys.js').then((m) => ({ run: m.keys, help: m.KEYS_HELP })),
  },
  sim: {
    summary: 'present simulated credentials to the running agent',
    load: async () => import('./commands/sim.js').then((m) => ({ run: m.sim, help: m.SIM_HELP })),
  },
  phone: {
    summary: 'make a phone key; play a phone against the BLE sim',
    load: async () => import('./commands/phone.js').then((m) => ({ run: m.phone, help: m.PHONE_HELP })),
  },
  'phone-app': {
    summary: 'write the phone-key web app to a folder for an HTTPS origin',
    load: async () =>
      import('./commands/phone-app.js').then((m) => ({ run: m.phoneApp, help: m.PHONE_APP_HELP })),
  },
  enroll: {
    summary: 'enroll a phone or an NFC card at the vehicle, authorised by the owner',
    // `enroll card` (NFC cards, src/cli/commands/enroll-card.ts); the rest is phone enrollment.
    load: async () => {
      const [phone, card] = await Promise.all([
        import('./commands/enroll.js'),
        import('./commands/enroll-card.js'),
      ]);
      return {
        run: (argv) => (argv[0] === 'card' ? card.enrollCard(argv.slice(1)) : phone.enroll(argv)),
        help: `${phone.ENROLL_HELP}\n\n${card.ENROLL_CARD_HELP}`,
      };
    },
  },
  status: {
    summary: 'show lock state, readers, keyring, recent events',
    load: async () => import('./commands/status.js').then((m) => ({ run: m.status, help: m.STATUS_HELP })),
  },
  audit: {
    summary: 'verify or tail the hash-chained audit log',
    load: async () => import('./commands/audit.js').then((m) => ({ run: m.audit, help: m.AUDIT_HELP })),
  },
  state: {
    summary: 'check the state files for damage; repair them',
    load: async () => import('./commands/state.js').then((m) => ({ run: m.state, help: m.STATE_HELP })),
  },
  backup: {
    summary: 'write identity, keyring, counters and config to an encrypted file',
    load: async () => import('./commands/backup.js').then((m) => ({ run: m.backup, help: m.BACKUP_HELP })),
  },
  restore: {
    summary: 'bring a backed-up vehicle back (merges: never undoes a revocation)',
    load: async () => import('./commands/backup.js').then((m) => ({ run: m.restore, help: m.RESTORE_HELP })),
  },
  config: {
    summary: 'print the example config or check one',
    load: async () => import('./commands/config.js').then((m) => ({ run: m.config, help: m.CONFIG_HELP })),
  },
  cloud: {
    summary: 'send signed commands, push the keyring (MQTT)',
    load: async () => import('./commands/cloud.js').then((m) => ({ run: m.cloud, help: m.CLOUD_HELP })),
  },
  scenario: {
    summary: 'play a YAML scenario against the running agent; pass/fail per step',
    load: async () =>
      import('./commands/scenario.js').then((m) => ({ run: m.scenario, help: m.SCENARIO_HELP })),
  },
  sign: {
    summary: 'print a signed command, keyring operation or set',
    load: async () => import('./commands/sign.js').then((m) => ({ run: m.sign, help: m.SIGN_HELP })),
  },
};

function usage(): string {
  const lines = ['usage: vehicle-agent <command> [options]   (vehicle-agent <command> --help)', ''];
  for (const [name, c] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(8)} ${c.summary}`);
  return `${lines.join('\n')}\n`;
}

/** Exit codes: 0 ok, 1 failure, 2 access denied, 3 agent not running, 64 usage, 78 configuration. */
function exitCodeFor(err: AgentError): number {
  switch (err.code) {
    case 'bad_arguments':
      return 64;
    case 'config_invalid':
    case 'config_unreadable':
      return 78;
    case 'control_unavailable':
      return 3;
    default:
      return 1;
  }
}

export async function main(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv;
  // A reader that has gone (`vehicle-agent status | head`) has what it wanted: end quietly. Not
  // for `start`, whose stdout is its log and which must outlive any reader.
  if (name !== 'start') {
    process.stdout.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(0);
      throw err;
    });
  }
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage());
    return name === undefined ? 64 : 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(`unknown command ${name}\n${usage()}`);
    return 64;
  }
  try {
    const loaded = await command.load();
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(`${loaded.help}\n`);
      return 0;
    }
    return await loaded.run(rest);
  } catch (err) {
    const e = toAgentError(err);
    process.stderr.write(`vehicle-agent ${name}: [${e.code}] ${e.message}\n`);
    return exitCodeFor(e);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`vehicle-agent: [internal] ${String(err)}\n`);
    process.exitCode = 1;
  },
);

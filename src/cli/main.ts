#!/usr/bin/env node
import { type AgentError, toAgentError } from '../core/errors.js';
import { AUDIT_HELP, audit } from './commands/audit.js';
import { CLOUD_HELP, cloud } from './commands/cloud.js';
import { CONFIG_HELP, config } from './commands/config.js';
import { ENROLL_HELP, enroll } from './commands/enroll.js';
import { ENROLL_CARD_HELP, enrollCard } from './commands/enroll-card.js';
import { INIT_HELP, init } from './commands/init.js';
import { KEYGEN_HELP, keygen } from './commands/keygen.js';
import { KEYS_HELP, keys } from './commands/keys.js';
import { PHONE_HELP, phone } from './commands/phone.js';
import { SIGN_HELP, sign } from './commands/sign.js';
import { SIM_HELP, sim } from './commands/sim.js';
import { STATUS_HELP, status } from './commands/status.js';

type Command = (argv: readonly string[]) => Promise<number>;

const START_HELP = `vehicle-agent start [--config FILE] [--state-dir DIR]

Runs the agent in the foreground. With no config it runs on simulated hardware and, on first
start, provisions a demo vehicle in ./.state (see the log for what to try). Ctrl-C stops it
with every relay de-energised.`;

const COMMANDS: Readonly<Record<string, { run: Command; help: string; summary: string }>> = {
  start: {
    run: async (argv) => (await import('../main.js')).runAgentCli(argv),
    help: START_HELP,
    summary: 'run the agent (simulated hardware unless configured)',
  },
  init: { run: init, help: INIT_HELP, summary: 'provision the state directory, vehicle key and owner root' },
  keygen: { run: keygen, help: KEYGEN_HELP, summary: 'write a P-256 or Ed25519 key pair (PEM and JWK)' },
  keys: { run: keys, help: KEYS_HELP, summary: 'list, grant and revoke credentials' },
  sim: { run: sim, help: SIM_HELP, summary: 'present simulated credentials to the running agent' },
  phone: { run: phone, help: PHONE_HELP, summary: 'make a phone key; play a phone against the BLE sim' },
  enroll: {
    // `enroll card` (NFC cards, src/cli/commands/enroll-card.ts); the rest is phone enrollment.
    run: (argv) => (argv[0] === 'card' ? enrollCard(argv.slice(1)) : enroll(argv)),
    help: `${ENROLL_HELP}\n\n${ENROLL_CARD_HELP}`,
    summary: 'enroll a phone or an NFC card at the vehicle, authorised by the owner',
  },
  status: { run: status, help: STATUS_HELP, summary: 'show lock state, readers, keyring, recent events' },
  audit: { run: audit, help: AUDIT_HELP, summary: 'verify or tail the hash-chained audit log' },
  config: { run: config, help: CONFIG_HELP, summary: 'print the example config or check one' },
  cloud: { run: cloud, help: CLOUD_HELP, summary: 'send signed commands, push the keyring (MQTT)' },
  sign: { run: sign, help: SIGN_HELP, summary: 'print a signed command, keyring operation or set' },
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
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage());
    return name === undefined ? 64 : 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(`unknown command ${name}\n${usage()}`);
    return 64;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${command.help}\n`);
    return 0;
  }
  try {
    return await command.run(rest);
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

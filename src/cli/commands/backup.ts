import { open, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { AuthVerifier } from '../../access/keyring.js';
import type { LoadedConfig } from '../../config/load.js';
import { MAX_CONFIG_BYTES } from '../../config/load.js';
import { AgentError } from '../../core/errors.js';
import {
  BACKUP_HEADER_BYTES,
  MAX_BACKUP_CIPHERTEXT,
  openBackup,
  sealBackup,
} from '../../crypto/backup-file.js';
import { createLogger } from '../../logging.js';
import { readSiteKey, SITE_KEY_FILE } from '../../nfc/site-key.js';
import { readFileIfExists, writeFileAtomic } from '../../store/atomic.js';
import { parseBackupContent, readBackupContent, restoreState } from '../../store/backup.js';
import { COMMON_OPTIONS, loadFor, out, parse } from '../args.js';

export const BACKUP_HELP = `vehicle-agent backup FILE [--passphrase-file F] [--force] [--state-dir DIR | --config FILE]

Writes the vehicle's identity (id, owner root, vehicle key pair), every signed keyring operation,
the FIDO and cloud command counters, the trusted-time floor, the NTAG 424 site key and the config
file into FILE (mode 0600), encrypted with a passphrase (scrypt N=2^15 r=8 p=1, AES-256-GCM).
Safe while the agent runs: it reads the stores' files without changing them. --force replaces
an existing FILE. See docs/backup.md.

The passphrase (at least 10 characters) comes from $VEHICLE_AGENT_BACKUP_PASSPHRASE, from
--passphrase-file F (its first line), or from a prompt when the terminal is interactive; never
from the command line, where \`ps\` would show it.`;

export const RESTORE_HELP = `vehicle-agent restore FILE [--passphrase-file F] [--force] [--config-to PATH] [--state-dir DIR | --config FILE]

Brings the backed-up vehicle back into the state directory, with the agent stopped. An empty
directory gets the vehicle as it was; a directory holding the same vehicle keeps what it has and
gains what the backup adds: keyring operations are united (a revocation stays), counters and the
trusted time take the higher value, so an older backup never undoes a revocation or lowers a
counter. A directory holding another vehicle (or state without an identity) is refused
(restore_conflict) unless --force, which moves what is there into replaced-<stamp>/ first.
The site key and the config are put back when none is there (the config at --config-to PATH, else
where it was; a different one already there is kept, the backup's written beside it as
PATH.from-backup). A wrong passphrase, a changed byte or a cut file changes nothing.`;

const PASSPHRASE_ENV = 'VEHICLE_AGENT_BACKUP_PASSPHRASE';
const MIN_PASSPHRASE = 10;

/** Reads a line from the terminal without echoing it. */
async function promptHidden(question: string): Promise<string> {
  const stdin = process.stdin;
  process.stderr.write(question);
  stdin.setRawMode(true);
  stdin.resume();
  stdin.setEncoding('utf8');
  try {
    return await new Promise<string>((resolve, reject) => {
      let text = '';
      const onData = (chunk: string) => {
        for (const ch of chunk) {
          if (ch === '\r' || ch === '\n') {
            stdin.off('data', onData);
            process.stderr.write('\n');
            resolve(text);
            return;
          }
          if (ch === '\u0003') {
            stdin.off('data', onData);
            reject(new AgentError('bad_arguments', 'interrupted'));
            return;
          }
          if (ch === '\u007f') text = text.slice(0, -1);
          else text += ch;
        }
      };
      stdin.on('data', onData);
    });
  } finally {
    stdin.setRawMode(false);
    stdin.pause();
  }
}

async function readPassphrase(file: string | undefined, confirm: boolean): Promise<string> {
  let passphrase: string | undefined;
  if (file !== undefined) {
    try {
      passphrase = (await readFile(file, 'utf8')).split(/\r?\n/)[0] ?? '';
    } catch (err) {
      throw new AgentError(
        'bad_arguments',
        `cannot read the passphrase file ${file}: ${(err as Error).message}`,
      );
    }
  } else if (process.env[PASSPHRASE_ENV]) {
    passphrase = process.env[PASSPHRASE_ENV];
  } else if (process.stdin.isTTY && process.stderr.isTTY) {
    passphrase = await promptHidden('backup passphrase: ');
    if (confirm && (await promptHidden('again: ')) !== passphrase)
      throw new AgentError('bad_arguments', 'the two passphrases differ');
  }
  if (passphrase === undefined || passphrase === '') {
    throw new AgentError(
      'bad_arguments',
      `no passphrase: set $${PASSPHRASE_ENV} or give --passphrase-file FILE (a passphrase is never taken from the command line)`,
    );
  }
  if (confirm && passphrase.length < MIN_PASSPHRASE)
    throw new AgentError('bad_arguments', `the passphrase must be at least ${MIN_PASSPHRASE} characters`);
  return passphrase;
}

const siteKeyPathOf = (loaded: LoadedConfig): string =>
  loaded.config.nfc.siteKeyFile ?? join(loaded.stateDir, SITE_KEY_FILE);

function onePath(positionals: readonly string[], what: string, help: string): string {
  if (positionals.length !== 1 || positionals[0] === undefined || positionals[0] === '')
    throw new AgentError('bad_arguments', `${what} needs one FILE\n\n${help}`);
  return positionals[0];
}

export async function backup(argv: readonly string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    ...COMMON_OPTIONS,
    'passphrase-file': { type: 'string' },
    force: { type: 'boolean' },
  });
  const file = onePath(positionals, 'backup', BACKUP_HELP);
  if (!values.force && (await readFileIfExists(file)) !== undefined)
    throw new AgentError('bad_arguments', `${file} exists; --force replaces it`);
  const loaded = loadFor(values);
  const passphrase = await readPassphrase(values['passphrase-file'], true);
  const siteKeyPath = siteKeyPathOf(loaded);
  // Checked before it is saved: a damaged site key would be restored damaged.
  const siteKey =
    (await readSiteKey(siteKeyPath)) === undefined ? undefined : await readFile(siteKeyPath, 'utf8');
  const config =
    loaded.file === undefined
      ? undefined
      : { path: loaded.file, text: await readCapped(loaded.file, MAX_CONFIG_BYTES) };
  const content = await readBackupContent(loaded.stateDir, {
    ...(siteKey !== undefined ? { siteKey } : {}),
    ...(config !== undefined ? { config } : {}),
  });
  const sealed = sealBackup(Buffer.from(JSON.stringify(content)), passphrase);
  await writeFileAtomic(file, sealed, { mode: 0o600 });
  const summary = {
    file,
    vehicleId: content.vehicle.vehicleId,
    operations: content.keyring.ops.length,
    keyringDigest: content.keyring.digest,
    counters: Object.keys(content.counters.fido).length + Object.keys(content.counters.commands).length,
    siteKey: siteKey !== undefined,
    config: config?.path ?? null,
    bytes: sealed.length,
  };
  if (values.json) out(JSON.stringify(summary));
  else {
    out(`backed up ${summary.vehicleId} to ${file} (${summary.bytes} bytes)`);
    out(`  keyring: ${summary.operations} operations, digest ${summary.keyringDigest}`);
    out(
      `  counters: ${summary.counters}; site key: ${summary.siteKey ? 'yes' : 'none'}; config: ${summary.config ?? 'none'}`,
    );
    out('  keep it off the vehicle; it holds the vehicle key (encrypted)');
  }
  return 0;
}

async function readCapped(path: string, limit: number): Promise<string> {
  const handle = await open(path, 'r');
  try {
    const size = (await handle.stat()).size;
    if (size > limit) throw new AgentError('bad_arguments', `${path} is larger than ${limit} bytes`);
    return (await handle.readFile()).toString('utf8');
  } finally {
    await handle.close();
  }
}

/** Verifiers of owner approvals carried by ops approved at the vehicle (as src/app/state.ts). */
export async function authVerifiers(): Promise<ReadonlyMap<string, AuthVerifier>> {
  // Operations approved at the vehicle (BLE and card enrollment) carry proofs these verify.
  const [{ BLE_AUTH_VERIFIERS }, { NFC_AUTH_VERIFIERS }] = await Promise.all([
    import('../../ble/protocol/enroll.js'),
    import('../../nfc/enroll-auth.js'),
  ]);
  return new Map([...BLE_AUTH_VERIFIERS, ...NFC_AUTH_VERIFIERS]);
}

/** Puts `text` at `path` when nothing is there; keeps a different file and writes `path.from-backup`. */
async function putBack(path: string, text: string): Promise<'written' | 'same' | 'beside'> {
  const existing = await readFileIfExists(path);
  if (existing === undefined) {
    await writeFileAtomic(path, text, { mode: 0o600 });
    return 'written';
  }
  if (existing.toString('utf8') === text) return 'same';
  await writeFileAtomic(`${path}.from-backup`, text, { mode: 0o600 });
  return 'beside';
}

export async function restore(argv: readonly string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    ...COMMON_OPTIONS,
    'passphrase-file': { type: 'string' },
    force: { type: 'boolean' },
    'config-to': { type: 'string' },
  });
  const file = onePath(positionals, 'restore', RESTORE_HELP);
  let bytes: Buffer;
  try {
    if ((await stat(file)).size > BACKUP_HEADER_BYTES + MAX_BACKUP_CIPHERTEXT + 16)
      throw new AgentError('backup_invalid', `${file} is larger than any backup`);
    bytes = await readFile(file);
  } catch (err) {
    if (err instanceof AgentError) throw err;
    throw new AgentError('bad_arguments', `cannot read ${file}: ${(err as Error).message}`);
  }
  const passphrase = await readPassphrase(values['passphrase-file'], false);
  // Everything is decrypted and checked before the state directory is touched.
  const content = parseBackupContent(openBackup(bytes, passphrase));
  const loaded = loadFor(values);
  const log = createLogger({ level: 'warn', format: 'auto', stream: process.stderr });
  const report = await restoreState(loaded.stateDir, content, {
    force: values.force === true,
    authVerifiers: await authVerifiers(),
    log,
  });
  const notes: string[] = [];
  let siteKey: string = 'none in the backup';
  if (content.siteKey !== undefined) {
    const path = siteKeyPathOf(loaded);
    const existing = await readFileIfExists(path);
    if (existing === undefined) {
      await writeFileAtomic(path, content.siteKey, { mode: 0o600 });
      siteKey = `restored to ${path}`;
    } else if (existing.toString('utf8') === content.siteKey) siteKey = 'already there';
    else {
      siteKey = `kept the one at ${path}`;
      notes.push(
        `${path} holds another NTAG 424 site key than the backup: it was kept. Cards personalised under the backup's key fail until it is put back (move ${path} away and restore again)`,
      );
    }
  }
  let config = 'none in the backup';
  if (content.config !== undefined) {
    const path = values['config-to'] ?? content.config.path;
    try {
      const done = await putBack(path, content.config.text);
      config =
        done === 'written'
          ? `restored to ${path}`
          : done === 'same'
            ? `already at ${path}`
            : `${path} differs: kept, the backup's written to ${path}.from-backup`;
    } catch (err) {
      // The state is restored; a config directory this user may not write (/etc) does not undo that.
      config = 'not written';
      notes.push(
        `the backup's config could not be written to ${path} (${(err as Error).message}): restore again with --config-to PATH somewhere writable`,
      );
    }
  }
  if (values.json) out(JSON.stringify({ ...report, stateDir: loaded.stateDir, siteKey, config, notes }));
  else {
    out(
      report.mode === 'fresh'
        ? `restored ${report.vehicleId} into ${loaded.stateDir}`
        : `merged the backup of ${report.vehicleId} into ${loaded.stateDir} (the state there was kept; nothing was lowered)`,
    );
    if (report.movedAside !== undefined)
      out(`  what was there is in ${join(loaded.stateDir, report.movedAside)}`);
    out(
      `  keyring: ${report.opsAdded} operation(s) added, ${report.opsAlreadyHeld} already held; digest ${report.keyringDigest}`,
    );
    out(`  counters: ${report.countersRaised} raised, ${report.countersKept} already as high or higher`);
    out(`  site key: ${siteKey}; config: ${config}`);
    out('  revocations made after the backup come back from the cloud at its first connect (docs/backup.md)');
    for (const n of notes) process.stderr.write(`warning: ${n}\n`);
  }
  return 0;
}

import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { CLI, runCli } from '../helpers/agent-process.js';
import { useAgentRig } from '../helpers/agent-rig.js';
import { runCliAsync } from '../helpers/cli-async.js';
import { stopProcess } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

/**
 * `vehicle-agent cloud fleet`: one signed command to many vehicles, and the operator's view of
 * their results, state, audit events and status, against a real Mosquitto and real agents. Two
 * vehicles are provisioned with the fleet's owner key; a third has an owner of its own (it
 * refuses the fleet's commands); a fourth id names no vehicle at all.
 */
describe('cloud fleet send and watch', () => {
  const rig = useAgentRig('va-cloud-fleet-');
  let fleetKey: string;
  let vids: string[];
  let stranger: string;
  const brokerArgs = () => {
    const { broker, pki, cloudCert } = rig.cloudParts;
    return ['--broker', broker.url, '--ca', pki.ca, '--cert', cloudCert.cert, '--client-key', cloudCert.key];
  };

  beforeAll(async () => {
    await rig.startCloud();
    fleetKey = join(rig.root, 'fleet-owner');
    expect(runCli(['keygen', '--out', fleetKey]).code).toBe(0);
    vids = [];
    for (const name of ['a', 'b']) {
      const init = runCli(['init', '--owner-key', `${fleetKey}.pem`, ...rig.sd(name)]);
      expect(init.code, init.stderr).toBe(0);
      await rig.startAgent(name, rig.cloudEnv(), { waitForLog: ['cloud link up'] });
      vids.push(rig.vehicleId(name));
    }
    await rig.startAgent('c', rig.cloudEnv(), { waitForLog: ['cloud link up'] });
    stranger = rig.vehicleId('c');
  }, 60_000);

  it('sends one command to every vehicle in the list and the file, and says who answered what', async () => {
    const file = join(rig.root, 'fleet.txt');
    writeFileSync(file, `# the fleet\n${vids[1]}\n${stranger}, VA-NOBODY\n`);
    const r = await runCliAsync([
      'cloud',
      'fleet',
      'send',
      'unlock',
      '--key',
      `${fleetKey}.pem`,
      '--vehicles',
      `${vids[0]},${vids[1]}`,
      '--vehicles-file',
      file,
      '--timeout',
      '4000',
      ...brokerArgs(),
    ]);
    expect(r.code, r.stderr).toBe(1); // VA-NOBODY never answers
    const lines = r.stdout.trim().split('\n');
    for (const vid of vids) expect(lines.filter((l) => l.includes(` ${vid} ok unlock done`))).toHaveLength(1);
    expect(lines.some((l) => l.includes(` ${stranger} refused [unknown_kid]`))).toBe(true);
    expect(lines.some((l) => l.includes(' VA-NOBODY no answer within 4000 ms'))).toBe(true);
    expect(lines.at(-1)).toBe('unlock to 4 vehicle(s): 2 ok, 1 refused, 1 no answer');
  });

  it('exits 0 when every vehicle carried it out; --json gives one object a line', async () => {
    const r = await runCliAsync([
      'cloud',
      'fleet',
      'send',
      'lock',
      '--key',
      `${fleetKey}.pem`,
      '--vehicles',
      vids.join(','),
      '--json',
      ...brokerArgs(),
    ]);
    expect(r.code, r.stderr).toBe(0);
    const objects = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(
      objects
        .filter((o) => o.status === 'ok')
        .map((o) => o.vid)
        .sort(),
    ).toEqual([...vids].sort());
    expect(objects.at(-1)).toEqual({ summary: { vehicles: 2, ok: 2, refused: 0, noAnswer: 0 } });
  });

  it('refuses a vehicle id that is a topic wildcard before connecting', () => {
    const r = runCli([
      'cloud',
      'fleet',
      'send',
      'unlock',
      '--key',
      `${fleetKey}.pem`,
      '--vehicles',
      '+',
      ...brokerArgs(),
    ]);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain('not a vehicle id: "+"');
  });

  it('watch follows the listed vehicles: their state on start, then results and audit events', async () => {
    const watch = spawn(
      process.execPath,
      [CLI, 'cloud', 'fleet', 'watch', '--vehicles', vids.join(','), '--json', ...brokerArgs()],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let output = '';
    let errors = '';
    watch.stdout.setEncoding('utf8').on('data', (c: string) => {
      output += c;
    });
    watch.stderr.setEncoding('utf8').on('data', (c: string) => {
      errors += c;
    });
    const seen = () =>
      output
        .split('\n')
        .filter((l) => l !== '')
        .map(
          (l) =>
            JSON.parse(l) as {
              vid: string;
              stream: string;
              retained: boolean;
              data: Record<string, unknown>;
            },
        );
    try {
      // Asked for on start: the state of both, live (Mosquitto also hands over the retained one).
      await waitFor(
        () => vids.every((vid) => seen().some((m) => m.vid === vid && m.stream === 'state' && !m.retained)),
        'the state of both vehicles in the watch',
        { timeoutMs: 15_000, detail: () => output + errors },
      );
      const send = await runCliAsync([
        'cloud',
        'fleet',
        'send',
        'state.refresh',
        '--key',
        `${fleetKey}.pem`,
        '--vehicles',
        vids.join(','),
        ...brokerArgs(),
      ]);
      expect(send.code, send.stderr).toBe(0);
      await waitFor(
        () =>
          vids.every(
            (vid) =>
              seen().some((m) => m.vid === vid && m.stream === 'result' && m.data.status === 'ok') &&
              seen().some((m) => m.vid === vid && m.stream === 'event' && m.data.type === 'command'),
          ),
        'a result and a command audit event from both vehicles',
        { timeoutMs: 15_000, detail: () => output + errors },
      );
      // Only the listed vehicles, each event once.
      expect(seen().some((m) => m.vid === stranger)).toBe(false);
      for (const vid of vids) {
        const seqs = seen()
          .filter((m) => m.vid === vid && m.stream === 'event')
          .map((m) => m.data.seq);
        expect(new Set(seqs).size).toBe(seqs.length);
      }
    } finally {
      await stopProcess(watch, 'SIGINT', 5000);
    }
    expect(watch.exitCode, errors).toBe(0);
  });

  it('watch in text: one line per message, the time and the vehicle first', async () => {
    const r = await runCliAsync([
      'cloud',
      'fleet',
      'watch',
      '--vehicles',
      vids[0] ?? '',
      '--streams',
      'state',
      '--duration',
      '3000',
      ...brokerArgs(),
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(
      new RegExp(`^\\d\\d:\\d\\d:\\d\\d\\.\\d{3} ${vids[0]} state lock=locked keyring=[0-9a-f]{8} `, 'm'),
    );
    expect(r.stdout).not.toContain(' event #');
  });
});

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, runCliJson, startAgentProcess } from '../helpers/agent-process.js';
import { runCliAsync } from '../helpers/cli-async.js';

/**
 * A newcomer follows the `try:` lines `npm start` logs, in order, with the default policy: each
 * does what its note says, and none trips the rate limit. The one that shows the rate limit says
 * what is limited, until when, and how to lift it in sim; lifting it works.
 */
describe('the demo, followed as logged', () => {
  let dir: string;
  let agent: AgentProcess;
  const sd = () => ['--state-dir', dir];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'va-demo-'));
    // The default policy: 5 failed proofs within 60 s lock a credential out for 5 min.
    agent = await startAgentProcess(sd());
    await agent.waitForLog((r) => r.msg === 'PN532 ready');
  });

  afterAll(async () => {
    if (agent) await agent.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  interface Hint {
    readonly command: string[];
    readonly note: string;
  }

  const hints = (): Hint[] =>
    agent.logs
      .map((r) => String(r.msg ?? ''))
      .filter((m) => m.startsWith('try: vehicle-agent '))
      .map((m) => {
        const [command = '', ...note] = m.slice('try: vehicle-agent '.length).split('   (');
        return { command: command.trim().split(/\s+/), note: note.join('   (') };
      });

  /** The outcome a note promises: the last `: code` in it, else a grant ("a guest phone key valid for 7 days"). */
  const promised = (note: string): string => [...note.matchAll(/: ([a-z_]+)\b/g)].at(-1)?.[1] ?? 'granted';

  const run = async (args: readonly string[]) => {
    const r = await runCliAsync([...args, ...sd()]);
    return { ...r, line: r.stdout.trim() };
  };

  it('every try: line does what its note says, twice over, and none is refused as rate_limited', async () => {
    const all = hints();
    const lockoutDemo = all.filter((h) => h.command.includes('--tamper'));
    const enrollment = all.filter((h) => promised(h.note) === 'enrolled');
    const plain = all.filter((h) => !lockoutDemo.includes(h) && !enrollment.includes(h));
    // Every hint is accounted for: the plain ones run below, the enrollment and the lockout each in their own way.
    expect(lockoutDemo).toHaveLength(1);
    expect(enrollment).toHaveLength(1);
    expect(plain.length).toBeGreaterThanOrEqual(20);

    for (const pass of [1, 2]) {
      for (const hint of plain) {
        const r = await run(hint.command);
        const expected = promised(hint.note);
        const what = `pass ${pass}: ${hint.command.join(' ')} → ${r.line} ${r.stderr}`;
        if (expected === 'granted') {
          expect(r.line, what).toMatch(/^granted/);
          expect(r.code, what).toBe(0);
        } else {
          expect(r.line, what).toBe(`denied: ${expected}`);
          expect(r.code, what).toBe(2);
        }
      }
    }

    // The enrollment hint, as its note says: open an enrollment, tap the owner's key, tap the new one.
    const [enroll] = enrollment;
    expect(enroll?.note).toContain('vehicle-agent enroll card --kind fido --role driver --owner-fido');
    const opened = await run([
      'enroll',
      'card',
      '--kind',
      'fido',
      '--role',
      'driver',
      '--owner-fido',
      '--no-wait',
    ]);
    expect(opened.code, opened.stderr).toBe(0);
    expect((await run(['sim', 'tap', 'fido-owner'])).code).toBe(0);
    const enrolled = await run(enroll?.command ?? []);
    expect(enrolled.line).toMatch(/^enrolled fido:/);
    expect((await run(enroll?.command ?? [])).line).toMatch(/^granted \(driver\)/);

    const status = runCliJson<{ rateLimits: { credentialLockouts: number; uidThrottles: number } }>([
      'status',
      ...sd(),
    ]);
    expect(status.value.rateLimits).toMatchObject({ credentialLockouts: 0, uidThrottles: 0 });
  }, 300_000);

  it('the lockout hint shows the limit, says what it is and until when, and sim clear-limits lifts it', async () => {
    const [hint] = hints().filter((h) => h.command.includes('--tamper'));
    expect(hint?.note).toContain('5 times within 1 min');
    expect(hint?.note).toContain('vehicle-agent sim clear-limits');
    const command = hint?.command ?? [];
    for (let i = 0; i < 5; i++) expect((await run(command)).line).toBe('denied: bad_proof');

    const limited = await run(command);
    expect(limited.code).toBe(2);
    const driverId = runCliJson<{ credentialId: string }>(['sim', 'present', 'driver', ...sd()]);
    expect(driverId.value).toMatchObject({ granted: false, code: 'rate_limited' });
    expect(limited.line).toMatch(
      new RegExp(
        `^denied: rate_limited: ${driverId.value.credentialId} is locked out until \\S+Z \\((4 min 5\\d s|5 min)` +
          ' from now\\), after 5 failed proofs within 1 min',
      ),
    );
    expect(limited.line).toContain('every other key still works');
    expect(limited.line).toContain('`vehicle-agent sim clear-limits` lifts it now');
    // Only that key: another one opens meanwhile.
    expect((await run(['sim', 'present', 'guest'])).line).toMatch(/^granted \(guest\)/);

    const cleared = await run(['sim', 'clear-limits']);
    expect(cleared.line).toBe('rate limits cleared: 1 locked-out credential(s) released');
    expect((await run(['sim', 'present', 'driver'])).line).toMatch(/^granted \(driver\)/);
    const audit = runCliJson<{ type: string; credentials?: number }[]>(['audit', 'tail', ...sd()]);
    expect(audit.value.filter((e) => e.type === 'rate_limits.cleared')).toEqual([
      expect.objectContaining({ credentials: 1, uidThrottle: false }),
    ]);
  }, 120_000);
});

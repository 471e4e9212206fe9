import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type CommandContext, checkCommand, signCommand } from '../../../src/cloud/command.js';
import { CONFIG_SCHEMA } from '../../../src/config/schema.js';
import { validateSection } from '../../../src/config/validate.js';
import { isCode } from '../../../src/core/codes.js';
import { AgentError } from '../../../src/core/errors.js';
import { b64url } from '../../../src/crypto/encoding.js';
import { COMMAND_NAMES, parseArgs } from '../../../src/host/control-api.js';
import { parseCommand, parseResponse } from '../../../src/nfc/apdu.js';
import {
  parseFirmwareVersion,
  parseInDataExchange,
  parseTypeATargets,
} from '../../../src/nfc/pn532/commands.js';
import { encodeFrame, FrameDecoder, TFI_CHIP } from '../../../src/nfc/pn532/frame.js';
import { parseAuthenticateResponse, parseRegisterResponse } from '../../../src/nfc/u2f.js';
import { decodeAuditLine } from '../../../src/store/audit-chain.js';
import { decodeChecksummedJson } from '../../../src/store/checksummed.js';
import { decodeLine } from '../../../src/store/journal.js';
import { grantBy, makeKey, makeRoot, NOW_S, newKeyring, VID } from '../../helpers/keyring-fixtures.js';

/**
 * Every decoder and parser that takes bytes or text from outside (the serial line, the card, the
 * broker, the control socket, the config file, the state files), fed arbitrary input: it returns
 * a value or throws an AgentError with a known code; nothing else escapes, nothing hangs.
 */
const SEED = Number(process.env.TEST_SEED ?? 0x5eed);
const RUNS = { seed: SEED, numRuns: 400 };

/** Runs `fn` and says how it ended: a value, or an AgentError's code. Anything else fails. */
function outcome(fn: () => unknown): 'value' | string {
  try {
    fn();
    return 'value';
  } catch (err) {
    if (!(err instanceof AgentError)) throw new Error(`not an AgentError: ${String(err)}`);
    expect(isCode(err.code)).toBe(true);
    return err.code;
  }
}

const bytes = (max = 300) => fc.uint8Array({ maxLength: max });

describe('PN532 serial line', () => {
  it('a frame surrounded by noise and split anywhere is found intact, and the buffer stays bounded', () => {
    fc.assert(
      fc.property(
        bytes(260),
        bytes(40),
        fc.array(fc.nat({ max: 400 }), { maxLength: 6 }),
        (data, noise, cuts) => {
          // Noise that cannot start a frame (no 00 FF pair), so the frame's start code is the first.
          const prefix = noise.filter((b) => b !== 0x00 && b !== 0xff);
          const frame = encodeFrame(TFI_CHIP, data);
          const stream = Uint8Array.from([...prefix, ...frame]);
          const decoder = new FrameDecoder();
          const events = [];
          let at = 0;
          for (const cut of [...cuts].sort((a, b) => a - b)) {
            const end = Math.min(cut, stream.length);
            if (end <= at) continue;
            events.push(...decoder.push(stream.subarray(at, end)));
            expect(decoder.buffered).toBeLessThanOrEqual(decoder.capacity);
            at = end;
          }
          events.push(...decoder.push(stream.subarray(at)));
          const frames = events.filter((e) => e.type === 'frame');
          expect(frames).toHaveLength(1);
          const [found] = frames;
          expect(found?.type === 'frame' && [...found.data]).toEqual([...data]);
        },
      ),
      RUNS,
    );
  });

  it('answers of the chip, cards and FIDO keys: a value or a coded error', () => {
    const parsers = [
      parseFirmwareVersion,
      parseTypeATargets,
      parseInDataExchange,
      parseCommand,
      parseResponse,
      parseRegisterResponse,
      parseAuthenticateResponse,
    ];
    fc.assert(
      fc.property(fc.constantFrom(...parsers), bytes(), (parse, input) => {
        outcome(() => parse(input));
      }),
      RUNS,
    );
  });
});

describe('MQTT commands', () => {
  const root = makeRoot();
  const ring = newKeyring(root);
  const driver = makeKey('signer', 'driver');
  ring.add(grantBy(root, driver.credential));
  const ctx: CommandContext = {
    vehicleId: VID,
    nowMs: NOW_S * 1000,
    limits: { maxLifetimeS: 300, maxFutureS: 120 },
    keys: ring,
    lastCounter: () => undefined,
    previousResult: () => undefined,
    retained: false,
  };
  const json = fc.jsonValue({ maxDepth: 3 });
  const segment = fc.oneof(
    fc.string({ maxLength: 40 }),
    json.map((v) => b64url(Buffer.from(JSON.stringify(v) ?? 'null'))),
  );
  const header = fc.record(
    {
      alg: fc.constantFrom('ES256', 'EdDSA', 'none', 'HS256', 1),
      kid: fc.oneof(fc.constant(root.id), fc.constant(driver.id), fc.string({ maxLength: 30 })),
      typ: fc.constantFrom('va-cmd+jws', 'JWT', undefined),
    },
    { requiredKeys: [] },
  );

  it('any text, or any header and payload with a bad signature: rejected with a code, never authenticated', () => {
    const shaped = fc
      .tuple(header, json, segment)
      .map(
        ([h, p, sig]) =>
          `${b64url(Buffer.from(JSON.stringify(h)))}.${b64url(Buffer.from(JSON.stringify(p) ?? 'null'))}.${sig}`,
      );
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 200 }), shaped), (compact) => {
        const check = checkCommand(compact, ctx);
        expect(check.verdict).toBe('rejected');
        if (check.verdict === 'rejected') {
          expect(check.authenticated).toBe(false);
          expect(check.result.status).toBe('error');
          expect(isCode(check.result.code)).toBe(true);
        }
      }),
      RUNS,
    );
  });

  it('genuinely signed commands with arbitrary names and arguments: accepted only when well formed, else coded', () => {
    const payload = fc.record({
      vid: fc.constantFrom(VID, 'VIN-OTHER'),
      cmd: fc.oneof(fc.constantFrom('unlock', 'lock', 'keys.grant', 'keys.revoke', 'status'), fc.string()),
      args: fc.oneof(fc.constant({}), fc.dictionary(fc.string({ maxLength: 8 }), json, { maxKeys: 3 })),
      jti: fc.string({ minLength: 1, maxLength: 40 }),
      iat: fc.constantFrom(NOW_S - 5, NOW_S + 1_000, 0),
      exp: fc.constantFrom(NOW_S + 60, NOW_S - 1, NOW_S + 100_000),
      ctr: fc.oneof(fc.nat(), fc.double()),
    });
    fc.assert(
      fc.property(payload, (p) => {
        let compact: string;
        try {
          compact = signCommand(p as never, root.privateKey, root.id);
        } catch (err) {
          expect(err).toBeInstanceOf(AgentError);
          return;
        }
        const check = checkCommand(compact, ctx);
        if (check.verdict === 'rejected') expect(isCode(check.result.code)).toBe(true);
        else expect(p.vid).toBe(VID);
      }),
      { ...RUNS, numRuns: 150 },
    );
  });
});

describe('control socket', () => {
  it('every command of the table: any JSON object of arguments is parsed or refused with a code', () => {
    const args = fc.dictionary(
      fc.oneof(
        fc.constantFrom('id', 'key', 'name', 'role', 'reader', 'limit', 'uid', 'card', 'kind'),
        fc.string(),
      ),
      fc.jsonValue({ maxDepth: 2 }),
      { maxKeys: 4 },
    );
    fc.assert(
      fc.property(fc.constantFrom(...COMMAND_NAMES), args, (name, wire) => {
        const result = outcome(() => parseArgs(name, wire as Record<string, unknown>));
        if (result !== 'value') expect(result).toBe('bad_arguments');
      }),
      RUNS,
    );
  });
});

describe('config', () => {
  it('any YAML-shaped value is validated to problems, each naming its field; it never throws', () => {
    const section = fc.dictionary(
      fc.oneof(fc.constantFrom('relay', 'nfc', 'ble', 'cloud', 'lock', 'log', 'statusPage'), fc.string()),
      fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.dictionary(fc.string(), fc.jsonValue({ maxDepth: 1 }))),
      { maxKeys: 5 },
    );
    fc.assert(
      fc.property(fc.oneof(section, fc.jsonValue({ maxDepth: 2 })), (input) => {
        const problems: { field: string; problem: string }[] = [];
        validateSection(CONFIG_SCHEMA, input, [], () => 'fuzz', problems as never);
        for (const p of problems) {
          expect(p.field.length).toBeGreaterThan(0);
          expect(p.problem.length).toBeGreaterThan(0);
        }
      }),
      RUNS,
    );
  });
});

describe('state files', () => {
  it('a line of a journal, the audit log or a checksummed file: a value or a coded error', () => {
    const line = fc.oneof(
      bytes(200),
      fc.jsonValue({ maxDepth: 2 }).map((v) => Uint8Array.from(Buffer.from(JSON.stringify(v) ?? 'null'))),
    );
    fc.assert(
      fc.property(line, (input) => {
        const buf = Buffer.from(input);
        outcome(() => decodeLine(buf));
        outcome(() => decodeAuditLine(buf));
        outcome(() => decodeChecksummedJson(input));
      }),
      RUNS,
    );
  });
});

import { describe, expect, it } from 'vitest';
import type { BleCloseReason } from '../../../src/ble/channel.js';
import { verdictForClose } from '../../../src/ble/exchange.js';
import type { ProofVerdict } from '../../../src/core/types.js';

/**
 * How a channel that ended before the key answered is recorded, for every reason a transport can
 * give (the reader's tests drive the same through a whole exchange).
 */
/** A Record, so that a new close reason does not compile until it has its row. */
const TABLE: Readonly<Record<BleCloseReason, ProofVerdict | undefined>> = {
  // The agent is stopping: nothing is decided or audited.
  stopped: undefined,
  // The key left: out of range, or it dropped the link.
  disconnected: 'removed',
  vanished: 'removed',
  // The link ended a session that proved nothing in its turn: as a key that never answered.
  evicted: 'timeout',
  'unproven-timeout': 'timeout',
  // Our side failed.
  closed: 'reader_error',
  failed: 'reader_error',
  'adapter-off': 'reader_error',
  'bluez-lost': 'reader_error',
  'bus-lost': 'reader_error',
  'session-timeout': 'reader_error',
};

const isReason = (name: string): name is BleCloseReason => Object.hasOwn(TABLE, name);

describe('verdictForClose', () => {
  it.each(Object.entries(TABLE))('%s -> %s', (reason, verdict) => {
    expect(isReason(reason)).toBe(true);
    if (isReason(reason)) expect(verdictForClose(reason)).toBe(verdict);
  });
});

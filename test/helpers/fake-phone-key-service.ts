import type { CentralRef, PhoneKeyServicePort } from '../../src/ble/peripheral/service-port.js';
import { AgentError } from '../../src/core/errors.js';

/**
 * A stand-in for p14proto's PhoneKeyService (the real one runs the protocol against the agent's
 * decision path): each read of `challenge` returns a fresh 60-byte value naming the central and a
 * counter; a write is accepted unless its first byte is 0xff (malformed), and its bytes become the
 * central's result, notified to listeners. Records every call.
 */
export interface FakePhoneKeyService extends PhoneKeyServicePort {
  readonly reads: { central: CentralRef; characteristic: string; value: Uint8Array }[];
  readonly writes: { central: CentralRef; bytes: Uint8Array }[];
  readonly disconnects: CentralRef[];
  /** Centrals with a challenge or a result held (what the real service keeps per connection). */
  readonly held: Map<string, { challenge?: Uint8Array; result?: Uint8Array }>;
  /** While set, reads wait for it (a slow service). */
  gate: Promise<void> | undefined;
}

export function fakePhoneKeyService(): FakePhoneKeyService {
  const listeners = new Set<(central: CentralRef, c: 'result', bytes: Uint8Array) => void>();
  let counter = 0;
  const service: FakePhoneKeyService = {
    reads: [],
    writes: [],
    disconnects: [],
    held: new Map(),
    gate: undefined,
    async read(central, characteristic) {
      if (service.gate !== undefined) await service.gate;
      counter += 1;
      const entry = service.held.get(central.device) ?? {};
      let value: Uint8Array;
      if (characteristic === 'challenge') {
        const text = `challenge ${central.address} #${counter}`.padEnd(60, '.');
        value = Uint8Array.from(Buffer.from(text, 'ascii'));
        entry.challenge = value;
      } else {
        value = entry.result ?? Uint8Array.from([0x02, 0x24, 0x02]);
      }
      service.held.set(central.device, entry);
      service.reads.push({ central, characteristic, value });
      return value;
    },
    async write(central, _characteristic, bytes) {
      if (bytes[0] === 0xff) throw new AgentError('malformed', 'not an answer');
      service.writes.push({ central, bytes });
      const entry = service.held.get(central.device) ?? {};
      entry.result = bytes;
      service.held.set(central.device, entry);
      for (const listener of listeners) listener(central, 'result', bytes);
    },
    disconnected(central) {
      service.disconnects.push(central);
      service.held.delete(central.device);
    },
    onNotify(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
  return service;
}

import { describe, expect, it } from 'vitest';
import type { OpTextSource } from '../../../src/access/keyring.js';
import { grantBy, makeKey, makeRoot, newKeyring } from '../../helpers/keyring-fixtures.js';

/**
 * opTexts names the set the keyring holds when it returns: the vehicle publishes these texts
 * beside its digest, and a set that does not add up to the digest can never be completed.
 */
describe('Keyring.opTexts', () => {
  it('includes an op merged while the texts on disk are read', async () => {
    const root = makeRoot();
    const ring = newKeyring(root);
    const first = [
      grantBy(root, makeKey('phone', 'driver').credential),
      grantBy(root, makeKey('phone', 'driver').credential),
    ];
    ring.merge(first);
    const onDisk = [...first];
    let mergeDuringRead: (() => void) | undefined;
    const source: OpTextSource = {
      readTexts: async (holds) => {
        const texts = onDisk.filter((jws) => {
          const id = JSON.parse(Buffer.from(jws.split('.')[1] ?? '', 'base64url').toString('utf8'))
            .id as string;
          return holds(id);
        });
        mergeDuringRead?.();
        await new Promise((resolve) => setImmediate(resolve));
        return texts;
      },
    };
    ring.keepTextsIn(source, () => true);
    const late = grantBy(root, makeKey('phone', 'driver').credential);
    mergeDuringRead = () => {
      mergeDuringRead = undefined;
      ring.merge([late]);
    };
    const texts = await ring.opTexts();
    expect(texts.sort()).toEqual([...first, late].sort());
  });

  it('refuses with state_io rather than return a set short of what the keyring holds', async () => {
    const root = makeRoot();
    const ring = newKeyring(root);
    ring.merge([grantBy(root, makeKey('phone', 'driver').credential)]);
    ring.keepTextsIn({ readTexts: async () => [] }, () => true);
    await expect(ring.opTexts()).rejects.toMatchObject({ code: 'state_io' });
  });
});

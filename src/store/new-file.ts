import { open } from 'node:fs/promises';
import { AgentError } from '../core/errors.js';

/** Writes a new file with `mode` and fsyncs it, refusing to overwrite (keys are never clobbered by accident). */
export async function writeNewFile(path: string, text: string, mode: number): Promise<void> {
  try {
    const handle = await open(path, 'wx', mode);
    try {
      await handle.writeFile(text);
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST')
      throw new AgentError('bad_arguments', `${path} exists; refusing to overwrite it`);
    throw new AgentError('state_io', `cannot write ${path}: ${(err as Error).message}`, { file: path });
  }
}

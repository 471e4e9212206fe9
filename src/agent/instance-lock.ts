import { open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentError } from '../core/errors.js';

/**
 * One writer per state directory: the running agent, or a CLI command editing state while the
 * agent is down. A pid file created with O_EXCL; a stale one (its process gone) is taken over.
 */
export interface InstanceLock {
  release(): Promise<void>;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export async function acquireInstanceLock(stateDir: string, role: string): Promise<InstanceLock> {
  const path = join(stateDir, 'agent.lock');
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const handle = await open(path, 'wx', 0o600);
      await handle.writeFile(`${process.pid} ${role}\n`);
      await handle.close();
      return {
        release: async () => {
          const owner = await readFile(path, 'utf8').catch(() => '');
          if (owner.startsWith(`${process.pid} `)) await rm(path, { force: true });
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new AgentError('state_io', `cannot create ${path}: ${(err as Error).message}`, { file: path });
      }
      const [pidText, holder] = (await readFile(path, 'utf8').catch(() => '')).trim().split(' ');
      const pid = Number(pidText);
      if (Number.isInteger(pid) && pid > 0 && alive(pid) && pid !== process.pid) {
        throw new AgentError('busy', `${stateDir} is in use by ${holder ?? 'another process'} (pid ${pid})`, {
          pid,
        });
      }
      await rm(path, { force: true });
    }
  }
  throw new AgentError('busy', `cannot take ${path}`);
}

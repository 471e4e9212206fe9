import { join } from 'node:path';
import { acquireOwnerLock } from './owner-lock.js';

/**
 * One writer per state directory: the running agent, or a CLI command editing state while the
 * agent is down. `<stateDir>/agent.lock` names its owner by pid, boot id and process start time
 * (the store's owner lock), so a lock left by a crash is taken over even when its pid now belongs
 * to another process, or the machine rebooted since.
 */
export interface InstanceLock {
  release(): Promise<void>;
}

export async function acquireInstanceLock(stateDir: string, role: string): Promise<InstanceLock> {
  return await acquireOwnerLock(stateDir, { path: join(stateDir, 'agent.lock'), holder: role });
}

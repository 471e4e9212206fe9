import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentError } from '../core/errors.js';

/**
 * A Mosquitto the scenario runner (and the soak) start themselves, for outages on cue: the agent
 * connects to a loopback port held by a small TCP relay in front of the broker, so that
 *   - `down` stops Mosquitto (the relay then closes each new connection: refused, as a dead cloud),
 *   - `hang` freezes it with SIGSTOP (connections open, nothing answers), `resume` SIGCONTs it,
 *   - `network down` makes the relay a black hole: bytes in both directions are dropped and new
 *     connections are accepted and never answered, as when the vehicle's network is gone.
 * Plain MQTT on 127.0.0.1 only, anonymous: a test broker, never a production one. Everything it
 * started is ended in `close()`, by PID (a frozen broker is thawed first).
 */
export class ManagedBroker {
  private child: ChildProcess | undefined;
  private exited: Promise<void> | undefined;
  private hung = false;
  private blackHole = false;
  private readonly sockets = new Set<Socket>();
  private server: Server | undefined;
  private brokerPort = 0;
  private dir: string | undefined;

  constructor(
    /** The port the agent connects to (the relay's). */
    readonly port: number,
  ) {}

  /** The URL the agent (cloud.url) and cloud clients use. */
  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /** The broker itself, past the relay: the cloud side uses it, so a network cut is the vehicle's alone. */
  get directUrl(): string {
    return `mqtt://127.0.0.1:${this.brokerPort}`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  async start(): Promise<void> {
    this.dir = await mkdtemp(join(tmpdir(), 'va-broker-'));
    this.brokerPort = await freePort();
    await this.startBroker();
    this.server = createServer((client) => this.relay(client));
    await new Promise<void>((resolve, reject) => {
      this.server?.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new AgentError(
            'broker_unavailable',
            `cannot listen on 127.0.0.1:${this.port}: ${err.code ?? err.message}`,
          ),
        ),
      );
      this.server?.listen(this.port, '127.0.0.1', () => resolve());
    });
  }

  private relay(client: Socket): void {
    this.sockets.add(client);
    client.on('close', () => this.sockets.delete(client));
    client.on('error', () => {});
    if (this.blackHole) {
      // Accepted and never answered: what a client sees when the network is gone.
      client.on('data', () => {});
      return;
    }
    const upstream = connect(this.brokerPort, '127.0.0.1');
    this.sockets.add(upstream);
    upstream.on('close', () => {
      this.sockets.delete(upstream);
      client.destroy();
    });
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    client.on('data', (chunk) => {
      if (!this.blackHole) upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (!this.blackHole) client.write(chunk);
    });
  }

  private async startBroker(): Promise<void> {
    const dir = this.dir ?? '';
    const conf = join(dir, 'mosquitto.conf');
    await writeFile(
      conf,
      [
        // Run as root, Debian's Mosquitto drops to its own user, which cannot write the persistence
        // file into this root-only folder: nothing was saved and every restart lost every session.
        ...(process.getuid?.() === 0 ? ['user root'] : []),
        `listener ${this.brokerPort} 127.0.0.1`,
        'allow_anonymous true',
        // Sessions and queued messages survive a restart, as a cloud broker's do.
        'persistence true',
        `persistence_location ${dir}/`,
        'log_dest none',
        'max_queued_messages 10000',
        '',
      ].join('\n'),
    );
    const bin = ['/usr/sbin/mosquitto', '/usr/bin/mosquitto'].find((p) => existsSync(p)) ?? 'mosquitto';
    const child = spawn(bin, ['-c', conf], { stdio: 'ignore' });
    this.child = child;
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    child.once('error', () => {});
    const deadline = performance.now() + 10_000;
    while (!(await canConnect(this.brokerPort))) {
      if (child.exitCode !== null || performance.now() > deadline)
        throw new AgentError(
          'broker_unavailable',
          `mosquitto (${bin}) did not start on port ${this.brokerPort}`,
        );
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  private async stopBroker(): Promise<void> {
    const child = this.child;
    if (child === undefined) return;
    this.child = undefined;
    if (this.hung) {
      child.kill('SIGCONT');
      this.hung = false;
    }
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(timer);
  }

  async broker(action: 'down' | 'up' | 'hang' | 'resume' | 'restart'): Promise<void> {
    switch (action) {
      case 'down':
        await this.stopBroker();
        return;
      case 'up':
        if (this.child === undefined) await this.startBroker();
        else await this.broker('resume');
        return;
      case 'restart':
        await this.stopBroker();
        await this.startBroker();
        return;
      case 'hang':
        if (this.child !== undefined && !this.hung) {
          this.child.kill('SIGSTOP');
          this.hung = true;
        }
        return;
      case 'resume':
        if (this.child !== undefined && this.hung) {
          this.child.kill('SIGCONT');
          this.hung = false;
        }
        return;
    }
  }

  /** `down`: every byte through the relay is dropped; `up`: open connections are cut so clients reconnect. */
  network(action: 'down' | 'up'): void {
    if (action === 'down') this.blackHole = true;
    else if (this.blackHole) {
      this.blackHole = false;
      // Connections made during the cut have no upstream, and ones from before lost bytes: end them.
      for (const s of this.sockets) s.destroy();
    }
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    this.server = undefined;
    await this.stopBroker();
    if (this.dir !== undefined) await rm(this.dir, { recursive: true, force: true });
    this.dir = undefined;
  }
}

async function canConnect(port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** A loopback port nothing listens on right now. */
export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const address = s.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      s.close(() => resolve(port));
    });
  });
}

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { requireTool, stopProcess } from './processes.js';
import { waitFor } from './wait.js';

/** The broker config the docs ship; tests start Mosquitto with it, changing only ports and paths. */
export const SHIPPED_BROKER_CONFIG = findShippedConfig();

/** docs/ of the project, from test/helpers or (for the benchmark) dist/test/helpers. */
function findShippedConfig(): string {
  for (const up of ['../../', '../../../']) {
    const path = fileURLToPath(new URL(`${up}docs/mosquitto-example.conf`, import.meta.url));
    if (existsSync(path)) return path;
  }
  throw new Error('docs/mosquitto-example.conf not found');
}

export interface ClientCert {
  readonly cert: string;
  readonly key: string;
}

/** A test PKI made with openssl (EC P-256): a CA, a server cert for localhost/127.0.0.1, client certs. */
export interface TestPki {
  readonly dir: string;
  readonly ca: string;
  readonly caKey: string;
  readonly server: ClientCert;
  /** Signs a client certificate (EKU clientAuth) for `cn` with this CA. */
  client(cn: string): ClientCert;
  /** A client certificate from a different CA the broker does not trust. */
  foreignClient(cn: string): ClientCert;
}

function openssl(args: readonly string[], cwd: string): void {
  const r = spawnSync('openssl', [...args], { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
}

function makeCa(dir: string, name: string): { crt: string; key: string } {
  const key = join(dir, `${name}.key`);
  const crt = join(dir, `${name}.crt`);
  openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', key], dir);
  openssl(
    [
      'req',
      '-x509',
      '-new',
      '-key',
      key,
      '-sha256',
      '-days',
      '2',
      '-subj',
      `/CN=${name}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
      '-out',
      crt,
    ],
    dir,
  );
  return { crt, key };
}

function issue(
  dir: string,
  ca: { crt: string; key: string },
  name: string,
  cn: string,
  extensions: string,
): ClientCert {
  const key = join(dir, `${name}.key`);
  const csr = join(dir, `${name}.csr`);
  const cert = join(dir, `${name}.crt`);
  const ext = join(dir, `${name}.ext`);
  writeFileSync(ext, extensions);
  openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', key], dir);
  openssl(['req', '-new', '-key', key, '-subj', `/CN=${cn}`, '-out', csr], dir);
  openssl(
    [
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      ca.crt,
      '-CAkey',
      ca.key,
      '-CAcreateserial',
      '-days',
      '2',
      '-sha256',
      '-extfile',
      ext,
      '-out',
      cert,
    ],
    dir,
  );
  return { cert, key };
}

export function makeTestPki(dir: string): TestPki {
  requireTool('openssl', 'apt-get install openssl');
  mkdirSync(dir, { recursive: true });
  const ca = makeCa(dir, 'ca');
  const server = issue(
    dir,
    ca,
    'server',
    'localhost',
    'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n',
  );
  let foreign: { crt: string; key: string } | undefined;
  return {
    dir,
    ca: ca.crt,
    caKey: ca.key,
    server,
    client: (cn) =>
      issue(dir, ca, `client-${cn}`, cn, 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n'),
    foreignClient: (cn) => {
      foreign ??= makeCa(dir, 'foreign-ca');
      return issue(
        dir,
        foreign,
        `foreign-${cn}`,
        cn,
        'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n',
      );
    },
  };
}

/** A free loopback TCP port (bound and released; good enough for a test's own broker). */
export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export interface BrokerOptions {
  /** Keep sessions and queued messages across restart() (the shipped default); else off. */
  readonly persistence?: boolean;
  /** An extra plain (no TLS) loopback listener, for protocol tests behind a proxy. */
  readonly plainPort?: number;
  /** Log each subscription to output() (`<client> <qos> <topic>`), for tests that wait for one. */
  readonly logSubscriptions?: boolean;
  /** Global options added before the shipped lines (e.g. `retain_available false`). */
  readonly extraConfig?: readonly string[];
}

export interface Broker {
  readonly port: number;
  readonly url: string;
  readonly plainPort: number | undefined;
  readonly configFile: string;
  readonly output: () => string;
  /** Stops (SIGTERM: persistent state is saved) and starts again on the same port. */
  restart(): Promise<void>;
  stop(): Promise<void>;
  start(): Promise<void>;
}

/**
 * Rewrites the shipped config for a test: the listener on a loopback port, the PKI paths, the
 * persistence directory, and `user root` when running as root (Debian's build otherwise drops to
 * the mosquitto user before it reads the key). Everything else is used as shipped.
 */
export function brokerConfigFor(
  shipped: string,
  pki: TestPki,
  dir: string,
  port: number,
  options: BrokerOptions = {},
): string {
  const lines = shipped.split('\n').map((line) => {
    const [directive] = line.trim().split(/\s+/);
    switch (directive) {
      case 'listener':
        return `listener ${port} 127.0.0.1`;
      case 'cafile':
        return `cafile ${pki.ca}`;
      case 'certfile':
        return `certfile ${pki.server.cert}`;
      case 'keyfile':
        return `keyfile ${pki.server.key}`;
      case 'persistence':
        return `persistence ${options.persistence === false ? 'false' : 'true'}`;
      case 'persistence_location':
        return `persistence_location ${dir}/`;
      default:
        return line;
    }
  });
  for (const required of ['listener', 'cafile', 'certfile', 'keyfile', 'require_certificate true']) {
    if (!lines.some((l) => l.startsWith(required)))
      throw new Error(`the shipped broker config has no ${required} line`);
  }
  const head = [...(process.getuid?.() === 0 ? ['user root'] : []), ...(options.extraConfig ?? [])];
  const tail =
    options.plainPort === undefined
      ? []
      : [`listener ${options.plainPort} 127.0.0.1`, 'allow_anonymous true'];
  // stderr, not the shipped stdout: a pipe buffers stdout, so a line would come only at exit.
  const logging = options.logSubscriptions ? ['log_type subscribe', 'log_dest stderr'] : [];
  return `${[...head, ...lines, ...tail, ...logging].join('\n')}\n`;
}

/** Starts Mosquitto with the shipped config on a free loopback port and waits until it listens. */
export async function startBroker(pki: TestPki, dir: string, options: BrokerOptions = {}): Promise<Broker> {
  const binary = requireTool('mosquitto', 'apt-get install mosquitto');
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const configFile = join(dir, 'mosquitto.conf');
  writeFileSync(
    configFile,
    brokerConfigFor(readFileSync(SHIPPED_BROKER_CONFIG, 'utf8'), pki, dir, port, options),
  );
  let child: ChildProcess | undefined;
  let output = '';
  const start = async (): Promise<void> => {
    const proc = spawn(binary, ['-c', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = proc;
    proc.stdout?.setEncoding('utf8').on('data', (c: string) => {
      output += c;
    });
    proc.stderr?.setEncoding('utf8').on('data', (c: string) => {
      output += c;
    });
    await waitFor(
      async () => {
        if (proc.exitCode !== null) throw new Error(`mosquitto exited: ${output}`);
        return canConnect(port);
      },
      `mosquitto to listen on ${port}`,
      { timeoutMs: 10_000, intervalMs: 25, detail: () => output },
    );
  };
  const stop = async (): Promise<void> => {
    if (child) await stopProcess(child, 'SIGTERM', 5000);
    child = undefined;
  };
  await start();
  return {
    port,
    url: `mqtts://localhost:${port}`,
    plainPort: options.plainPort,
    configFile,
    output: () => output,
    start,
    stop,
    restart: async () => {
      await stop();
      await start();
    },
  };
}

async function canConnect(port: number): Promise<boolean> {
  const { connect } = await import('node:net');
  return await new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** A "hung broker": accepts TCP connections and never answers anything. */
export async function startHungListener(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  return {
    port,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

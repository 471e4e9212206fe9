import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort, type TestPki } from './mosquitto.js';
import { requireTool, stopProcess } from './processes.js';
import { waitFor } from './wait.js';

/**
 * A private ejabberd cluster on loopback (Debian's ejabberd, its mod_mqtt): each node is an `erl`
 * started directly (not ejabberdctl, which would run as the ejabberd user with the system's
 * config), with its own config, Mnesia folder, cookie and node name, all under `dir`. The nodes
 * find each other through an epmd of their own on a free loopback port (ERL_EPMD_PORT), never
 * the machine's shared one (started with -start_epmd false, so no node spawns a daemon epmd).
 * Everything is ended by the PIDs started here.
 */

/**
 * Where Debian installs ejabberd's Erlang applications (ejabberdctl sets ERL_LIBS to it):
 * /usr/lib/<multiarch triplet>, the one that holds an ejabberd-* folder.
 */
function ejabberdLibs(): string {
  const found = readdirSync('/usr/lib')
    .filter((d) => d.endsWith('-linux-gnu'))
    .map((d) => join('/usr/lib', d))
    .find((d) => readdirSync(d).some((e) => e.startsWith('ejabberd-')));
  if (found === undefined) throw new Error('ejabberd is not installed (no /usr/lib/*-linux-gnu/ejabberd-*)');
  return found;
}
/** Open files per node: one per MQTT client and then some (Debian's default soft limit is 1024). */
export const EJABBERD_OPEN_FILES = 65_536;

const run = promisify(execFile);

export interface EjabberdNodeOptions {
  /** mod_mqtt's session_expiry, in seconds: match the agent's cloud.sessionExpiryS. */
  readonly sessionExpiryS: number;
  /** Messages a session queues while its client is away (mod_mqtt max_queue). */
  readonly maxQueue?: number;
}

export interface EjabberdNode {
  readonly name: string;
  readonly port: number;
  readonly url: string;
  readonly dir: string;
  /** The beam.smp PID while the node runs (for /proc figures and kill -9). */
  pid(): number | undefined;
  /** Starts the node (again, keeping its Mnesia folder) and waits until its MQTT listener accepts. */
  start(): Promise<void>;
  /** SIGTERM (Erlang stops cleanly), SIGKILL after a grace period. */
  stop(): Promise<void>;
  /** kill -9 of the node's PID, and waits for it to be gone. */
  kill(): Promise<void>;
  /** Everything the node printed (its log goes to stdout). */
  output(): string;
}

export interface EjabberdCluster {
  readonly nodes: readonly EjabberdNode[];
  readonly epmdPort: number;
  /** Runs an ejabberd_ctl command against `node` (e.g. list_cluster); its stdout. */
  ctl(node: EjabberdNode, args: readonly string[]): Promise<string>;
  stop(): Promise<void>;
}

export interface EjabberdClusterOptions extends EjabberdNodeOptions {
  readonly nodes?: number;
}

/**
 * The ejabberd.yml of one node: one TLS mod_mqtt listener on loopback that requires a client
 * certificate signed by the test CA (tls_verify + c2s_cafile; ejabberd then requires the client id
 * to be the certificate's CN), and sessions that outlive a disconnect for `sessionExpiryS`.
 */
export function ejabberdConfig(o: {
  readonly port: number;
  readonly serverPem: string;
  readonly caFile: string;
  readonly sessionExpiryS: number;
  readonly maxQueue: number;
}): string {
  return `${[
    'hosts: [localhost]',
    'loglevel: info',
    'log_rotate_count: 0',
    `certfiles: [${JSON.stringify(o.serverPem)}]`,
    `c2s_cafile: ${JSON.stringify(o.caFile)}`,
    `ca_file: ${JSON.stringify(o.caFile)}`,
    'acme: {auto: false}',
    'listen:',
    `  - port: ${o.port}`,
    '    ip: "127.0.0.1"',
    '    module: mod_mqtt',
    '    backlog: 4096',
    '    tls: true',
    '    tls_verify: true',
    'modules:',
    '  mod_mqtt:',
    `    session_expiry: ${o.sessionExpiryS}`,
    `    max_queue: ${o.maxQueue}`,
  ].join('\n')}\n`;
}

async function canConnect(port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Erlang's own flags for a node or a control client of this cluster. */
function erlArgs(name: string, cookie: string): string[] {
  return [
    '-name',
    name,
    '-setcookie',
    cookie,
    '-start_epmd',
    'false',
    '-kernel',
    'inet_dist_use_interface',
    '{127,0,0,1}',
  ];
}

/** Starts `nodes` (default 2) ejabberd nodes and joins the others to the first (join_cluster). */
export async function startEjabberdCluster(
  pki: TestPki,
  dir: string,
  options: EjabberdClusterOptions,
): Promise<EjabberdCluster> {
  const erl = requireTool('erl', 'apt-get install ejabberd');
  const epmdBinary = requireTool('epmd', 'apt-get install erlang-base');
  requireTool(
    'ejabberdctl',
    'apt-get install ejabberd (test/ensure-tools.sh installs it without starting it)',
  );
  mkdirSync(dir, { recursive: true });
  const home = join(dir, 'home');
  mkdirSync(home, { recursive: true });
  const cookie = randomBytes(16).toString('hex');
  const tag = randomBytes(3).toString('hex');
  const serverPem = join(dir, 'server.pem');
  writeFileSync(serverPem, readFileSync(pki.server.cert, 'utf8') + readFileSync(pki.server.key, 'utf8'), {
    mode: 0o600,
  });

  const libs = ejabberdLibs();
  const epmdPort = await freePort();
  const epmd = spawn(epmdBinary, ['-address', '127.0.0.1', '-port', String(epmdPort)], {
    stdio: 'ignore',
  });
  const env = { ...process.env, HOME: home, ERL_EPMD_PORT: String(epmdPort), ERL_LIBS: libs };
  const nodes: EjabberdNode[] = [];
  const stopAll = async () => {
    for (const n of [...nodes].reverse()) await n.stop().catch(() => {});
    await stopProcess(epmd, 'SIGTERM', 2000);
  };
  try {
    await waitFor(
      async () => {
        if (epmd.exitCode !== null) throw new Error(`epmd exited (${epmd.exitCode})`);
        return await canConnect(epmdPort);
      },
      'the private epmd to listen',
      { timeoutMs: 5000, intervalMs: 20 },
    );

    for (let i = 1; i <= (options.nodes ?? 2); i++) {
      const port = await freePort();
      const nodeDir = join(dir, `node${i}`);
      mkdirSync(join(nodeDir, 'spool'), { recursive: true });
      const configFile = join(nodeDir, 'ejabberd.yml');
      writeFileSync(
        configFile,
        ejabberdConfig({
          port,
          serverPem,
          caFile: pki.ca,
          sessionExpiryS: options.sessionExpiryS,
          maxQueue: options.maxQueue ?? 5000,
        }),
      );
      nodes.push(
        makeNode({
          erl,
          name: `va${i}-${tag}@127.0.0.1`,
          port,
          dir: nodeDir,
          configFile,
          cookie,
          env,
        }),
      );
    }
    // Started side by side: each takes a few seconds, mostly Erlang boot.
    await Promise.all(nodes.map((n) => n.start()));

    const ctl = async (node: EjabberdNode, args: readonly string[]): Promise<string> => {
      const name = `ctl-${randomBytes(3).toString('hex')}@127.0.0.1`;
      const { stdout } = await run(
        erl,
        [...erlArgs(name, cookie), '-hidden', '-noinput', '-s', 'ejabberd_ctl', '-extra', node.name, ...args],
        { env, cwd: home, timeout: 60_000 },
      );
      return stdout;
    };
    const [first, ...others] = nodes;
    if (first === undefined) throw new Error('an ejabberd cluster needs a node');
    for (const node of others) {
      // join_cluster restarts ejabberd on the joining node: wait for its listener again.
      await ctl(node, ['join_cluster', first.name]);
      await waitFor(() => canConnect(node.port), `${node.name} to listen again after join_cluster`, {
        timeoutMs: 30_000,
        intervalMs: 50,
      });
    }
    const members = await ctl(first, ['list_cluster']);
    for (const node of nodes)
      if (!members.includes(node.name)) throw new Error(`${node.name} is not in the cluster: ${members}`);
    return { nodes, epmdPort, ctl, stop: stopAll };
  } catch (error) {
    await stopAll();
    throw error;
  }
}

function makeNode(o: {
  erl: string;
  name: string;
  port: number;
  dir: string;
  configFile: string;
  cookie: string;
  env: NodeJS.ProcessEnv;
}): EjabberdNode {
  let child: ChildProcess | undefined;
  let output = '';
  const args = [
    ...erlArgs(o.name, o.cookie),
    '+K',
    'true',
    '+P',
    '250000',
    '-noinput',
    '-mnesia',
    'dir',
    JSON.stringify(join(o.dir, 'spool')),
    '-s',
    'ejabberd',
  ];
  const env = {
    ...o.env,
    EJABBERD_CONFIG_PATH: o.configFile,
    EJABBERD_LOG_PATH: join(o.dir, 'ejabberd.log'),
    ERL_CRASH_DUMP: join(o.dir, 'erl_crash.dump'),
    ERL_MAX_PORTS: String(EJABBERD_OPEN_FILES),
  };
  const node: EjabberdNode = {
    name: o.name,
    port: o.port,
    url: `mqtts://localhost:${o.port}`,
    dir: o.dir,
    pid: () => (child && child.exitCode === null && child.signalCode === null ? child.pid : undefined),
    output: () => output,
    start: async () => {
      // The open-files limit is raised (up to the hard limit, which only root may lift) in a shell
      // that then becomes erl (erl and erlexec exec in turn, so the PID is beam.smp's).
      const raise = `n=$(ulimit -Hn); if [ "$n" = unlimited ] || [ "$n" -gt ${EJABBERD_OPEN_FILES} ]; then n=${EJABBERD_OPEN_FILES}; fi; ulimit -n "$n" && exec "$0" "$@"`;
      const proc = spawn('sh', ['-c', raise, o.erl, ...args], {
        cwd: o.dir,
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      child = proc;
      for (const stream of [proc.stdout, proc.stderr])
        stream?.setEncoding('utf8').on('data', (c: string) => {
          output += c;
        });
      await waitFor(
        async () => {
          if (proc.exitCode !== null || proc.signalCode !== null)
            throw new Error(`ejabberd ${o.name} exited: ${output.slice(-2000)}`);
          return (
            output.includes(`Start accepting TLS connections at 127.0.0.1:${o.port}`) &&
            (await canConnect(o.port))
          );
        },
        `ejabberd ${o.name} to listen on ${o.port}`,
        { timeoutMs: 60_000, intervalMs: 50, detail: () => output.slice(-2000) },
      );
    },
    stop: async () => {
      if (child) await stopProcess(child, 'SIGTERM', 10_000);
      child = undefined;
    },
    kill: async () => {
      if (child) await stopProcess(child, 'SIGKILL', 1000);
      child = undefined;
    },
  };
  return node;
}

/** The open-files limit of a running process (soft or hard), from /proc ("unlimited" is Infinity). */
export function openFilesLimit(pid: number, which: 'soft' | 'hard' = 'soft'): number {
  const line = readFileSync(`/proc/${pid}/limits`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('Max open files'));
  const value = line?.split(/\s+/)[which === 'soft' ? 3 : 4];
  return value === 'unlimited' ? Number.POSITIVE_INFINITY : Number(value);
}

/** CPU seconds (user + system) and resident memory of a PID this test started, from /proc. */
export function processUsage(pid: number): { cpuS: number; rssBytes: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may contain spaces) start at state (field 3).
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return { cpuS: ticks / CLOCK_TICKS_PER_S, rssBytes: rssKb * 1024 };
}

/** USER_HZ: 100 on Linux for every common architecture (getconf CLK_TCK). */
const CLOCK_TICKS_PER_S = 100;

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseFlags, UsageError, type CommandHelp, type FlagSpecs } from '../contract/cli/flags.js';
import { EXIT_FAILURE, EXIT_OK, type Command } from '../contract/cli/runner.js';
import { ErrorCodes, WalArchiverError } from '../contract/errors.js';

/**
 * `storage-node cluster`: a local cluster for trying things out, and the same
 * thing as a library (`startLocalCluster`) for tests that SIGKILL and restart
 * nodes. Node i runs as its own process, `storage-node run --id i`, listening
 * on host:(base port + i) with its data in <data-dir>/node-i.
 */

export const CLUSTER_DEFAULTS = {
  basePort: 7100,
  host: '127.0.0.1',
  readyTimeoutMs: 60_000,
  stopTimeoutMs: 10_000,
  healthPollMs: 100,
} as const;
export const MAX_NODES = 9;

export interface LocalClusterOptions {
  nodes: number;
  partitions: number;
  dataDir: string;
  basePort?: number;
  host?: string;
  events?: string;
  /**
   * Whether sidecars archive the nodes' partitions (default true: the WAL is
   * kept until archived). False runs every node with `--archiver=false`.
   */
  archiver?: boolean;
  /** More arguments for every `storage-node run` (e.g. ['--tick', '20ms']). */
  extraArgs?: string[];
  /** The storage-node launcher; by default bin/storage-node.js of this package. */
  bin?: string;
  env?: NodeJS.ProcessEnv;
  /** Each line a node writes (stdout or stderr), without the newline. */
  onLine?: (node: LocalNode, line: string, stream: 'stdout' | 'stderr') => void;
  /** A node exited; `expected` when it was stopped or killed through this API. */
  onExit?: (node: LocalNode, info: ExitInfo) => void;
  stopTimeoutMs?: number;
  healthPollMs?: number;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
  expected: boolean;
}

/** Finds bin/storage-node.js of the package this module belongs to (from dist/ or from source). */
export function defaultStorageNodeBin(moduleUrl: string = import.meta.url): string {
  let dir = dirname(fileURLToPath(moduleUrl));
  for (let i = 0; i < 6; i++) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        const name = (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name;
        if (name === 'wal-archiver') return join(dir, 'bin', 'storage-node.js');
      } catch {
        // Not ours; keep looking upwards.
      }
    }
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  // dist/storage-node/cluster.js → bin/storage-node.js
  return fileURLToPath(new URL('../../bin/storage-node.js', moduleUrl));
}

function validate(options: LocalClusterOptions): Required<Pick<LocalClusterOptions, 'basePort' | 'host'>> {
  const basePort = options.basePort ?? CLUSTER_DEFAULTS.basePort;
  const host = options.host ?? CLUSTER_DEFAULTS.host;
  const bad = (m: string) => new UsageError(m);
  if (!Number.isInteger(options.nodes) || options.nodes < 1 || options.nodes > MAX_NODES) {
    throw bad(`--nodes must be from 1 to ${MAX_NODES} (got ${options.nodes})`);
  }
  if (!Number.isInteger(options.partitions) || options.partitions < 1) {
    throw bad(`--partitions must be at least 1 (got ${options.partitions})`);
  }
  if (!Number.isInteger(basePort) || basePort < 1 || basePort + options.nodes > 65535) {
    throw bad(
      `--base-port ${basePort}: ports ${basePort + 1}..${basePort + options.nodes} must be within 1..65535`,
    );
  }
  if (!/^[A-Za-z0-9.:[\]-]+$/.test(host)) throw bad(`--host "${host}" is not a host name or address`);
  if (options.dataDir === '') throw bad('--data-dir must not be empty');
  return { basePort, host };
}

function urlHost(host: string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

/** One node of a local cluster: its process can be killed and started again. */
export class LocalNode {
  private child: ChildProcess | undefined;
  private exited: Promise<ExitInfo> = Promise.resolve({ code: null, signal: null, expected: true });
  private expecting = false;
  private readonly recent: string[] = [];

  constructor(
    readonly id: number,
    readonly url: string,
    readonly dataDir: string,
    private readonly args: string[],
    private readonly options: LocalClusterOptions & { bin: string },
  ) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== undefined;
  }

  /** The last lines the process wrote, for diagnostics. */
  recentOutput(): string[] {
    return [...this.recent];
  }

  /** Starts the process (no-op when it runs); does not wait for it to serve. */
  async start(): Promise<void> {
    if (this.child) return;
    await mkdir(this.dataDir, { recursive: true });
    const child = spawn(process.execPath, [this.options.bin, ...this.args], {
      env: this.options.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
      // Its own process group: a Ctrl-C in the terminal reaches the cluster command only, which
      // then stops each node once, with SIGTERM.
      detached: true,
    });
    this.child = child;
    this.expecting = false;
    liveChildren.add(child);
    for (const stream of ['stdout', 'stderr'] as const) {
      createInterface({ input: child[stream]!, crlfDelay: Infinity }).on('line', (line) => {
        this.recent.push(line);
        if (this.recent.length > 50) this.recent.shift();
        this.options.onLine?.(this, line, stream);
      });
    }
    this.exited = new Promise<ExitInfo>((resolveExit) => {
      let done = false;
      const finish = (info: Omit<ExitInfo, 'expected'>) => {
        if (done) return;
        done = true;
        liveChildren.delete(child);
        if (this.child === child) this.child = undefined;
        const full = { ...info, expected: this.expecting };
        this.options.onExit?.(this, full);
        resolveExit(full);
      };
      child.once('exit', (code, signal) => finish({ code, signal }));
      child.once('error', (err) => {
        this.recent.push(`spawn failed: ${err.message}`);
        finish({ code: null, signal: null });
      });
    });
  }

  /** Resolves once GET /healthz answers 200; rejects if the process exits or the time runs out. */
  async waitReady(timeoutMs: number = CLUSTER_DEFAULTS.readyTimeoutMs, signal?: AbortSignal): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const poll = this.options.healthPollMs ?? CLUSTER_DEFAULTS.healthPollMs;
    let gone = false;
    void this.exited.then(() => (gone = true));
    for (;;) {
      if (!this.child || gone) throw this.failure('exited before it served');
      if (signal?.aborted) throw new WalArchiverError(ErrorCodes.ABORTED, 'stopped', { retryable: false });
      try {
        const res = await fetch(`${this.url}/healthz`, { signal: AbortSignal.timeout(1000) });
        await res.arrayBuffer();
        if (res.ok) return;
      } catch {
        // Not listening yet.
      }
      if (Date.now() > deadline)
        throw this.failure(`did not answer ${this.url}/healthz within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, poll));
    }
  }

  private failure(what: string): WalArchiverError {
    const last = this.recent.at(-1);
    return new WalArchiverError(
      ErrorCodes.UNAVAILABLE,
      `node ${this.id} ${what}${last ? ` (last output: ${last.slice(0, 300)})` : ''}`,
      { details: { node: this.id, url: this.url } },
    );
  }

  /** Sends a signal (SIGTERM by default) and waits for the process to exit. */
  async kill(signal: NodeJS.Signals = 'SIGTERM'): Promise<ExitInfo | undefined> {
    const child = this.child;
    if (!child) return undefined;
    this.expecting = true;
    const exited = this.exited;
    try {
      child.kill(signal);
    } catch {
      // Already gone.
    }
    return exited;
  }

  /** SIGTERM, then SIGKILL after `timeoutMs`; resolves when the process is gone. */
  async stop(
    timeoutMs: number = this.options.stopTimeoutMs ?? CLUSTER_DEFAULTS.stopTimeoutMs,
  ): Promise<void> {
    const child = this.child;
    if (!child) return;
    const exited = this.exited;
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    try {
      await this.kill('SIGTERM');
      await exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops the node if it runs, starts it again and waits until it serves. */
  async restart(timeoutMs?: number): Promise<void> {
    await this.stop();
    await this.start();
    await this.waitReady(timeoutMs);
  }

  /** Resolves when the current process exits. */
  whenExited(): Promise<ExitInfo> {
    return this.exited;
  }
}

/** Children still running; killed if this process exits without stopping them. */
const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of liveChildren) {
      try {
        child.kill('SIGKILL');
      } catch {
        // Already gone.
      }
    }
  });
}

export class LocalCluster {
  readonly nodes: LocalNode[];
  readonly urls: string[];

  constructor(readonly options: LocalClusterOptions) {
    const { basePort, host } = validate(options);
    const bin = options.bin ?? defaultStorageNodeBin();
    this.urls = Array.from(
      { length: options.nodes },
      (_, i) => `http://${urlHost(host)}:${basePort + i + 1}`,
    );
    const peers = this.urls.map((u, i) => `${i + 1}=${u}`).join(',');
    this.nodes = this.urls.map((url, i) => {
      const id = i + 1;
      const dataDir = resolve(options.dataDir, `node-${id}`);
      const args = [
        'run',
        '--id',
        String(id),
        '--data-dir',
        dataDir,
        '--listen',
        `${host}:${basePort + id}`,
        '--peers',
        peers,
        '--partitions',
        String(options.partitions),
        ...(options.events ? ['--events', options.events] : []),
        ...(options.archiver === false ? ['--archiver=false'] : []),
        ...(options.extraArgs ?? []),
      ];
      return new LocalNode(id, url, dataDir, args, { ...options, bin });
    });
  }

  /** Starts every node process; does not wait for them to serve. */
  async start(): Promise<void> {
    installExitHook();
    await Promise.all(this.nodes.map((n) => n.start()));
  }

  async waitReady(timeoutMs?: number, signal?: AbortSignal): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.waitReady(timeoutMs, signal)));
  }

  node(id: number): LocalNode {
    const n = this.nodes[id - 1];
    if (!n) throw new RangeError(`no node ${id}`);
    return n;
  }

  /** SIGTERM to every running node, SIGKILL to those that do not exit in time. */
  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.stop()));
  }
}

export interface StartedCluster {
  urls: string[];
  nodes: LocalNode[];
  cluster: LocalCluster;
  stop(): Promise<void>;
}

/**
 * Starts a local cluster and resolves once every node answers /healthz. On
 * failure the nodes already started are stopped and the error says which node
 * failed, with its last line of output.
 */
export async function startLocalCluster(
  options: LocalClusterOptions & { readyTimeoutMs?: number },
): Promise<StartedCluster> {
  const cluster = new LocalCluster(options);
  try {
    await cluster.start();
    await cluster.waitReady(options.readyTimeoutMs);
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return { urls: cluster.urls, nodes: cluster.nodes, cluster, stop: () => cluster.stop() };
}

// ---------------------------------------------------------------------------
// The command

export const CLUSTER_FLAGS = {
  nodes: { type: 'int', value: 'N', help: `nodes in the cluster (1-${MAX_NODES})`, default: 3 },
  partitions: {
    type: 'int',
    value: 'P',
    help: 'partitions 1..P, each replicated on every node',
    required: true,
    min: 1,
    max: 100_000,
  },
  'data-dir': { type: 'string', value: 'DIR', help: 'node i keeps its data in DIR/node-i', required: true },
  'base-port': {
    type: 'int',
    value: 'PORT',
    help: 'node i listens on PORT+i',
    default: CLUSTER_DEFAULTS.basePort,
  },
  events: { type: 'string', value: 'URL', help: 'event bus for leadership events (kafka://… or file://…)' },
  archiver: {
    type: 'bool',
    help: 'sidecars archive the WAL: entries stay until archived; false: prune without waiting',
    default: true,
  },
  host: {
    type: 'string',
    value: 'HOST',
    help: 'address the nodes listen on',
    default: CLUSTER_DEFAULTS.host,
  },
} as const satisfies FlagSpecs;

const CLUSTER_HELP: CommandHelp = {
  usage:
    'storage-node cluster --nodes 3 --partitions P --data-dir D [--base-port 7100] [--events URL] [--archiver=false] [--host 127.0.0.1]',
  description:
    'Runs a local storage cluster: one `storage-node run` process per node, their output prefixed with\n' +
    "[node i] on stderr. Prints each node's URL on stdout once it serves. SIGINT/SIGTERM stop every node.\n" +
    'STORAGE_NODE_BIN names another storage-node launcher to run.',
};

export function parseClusterFlags(argv: string[], env: NodeJS.ProcessEnv = {}): LocalClusterOptions {
  const f = parseFlags(argv, CLUSTER_FLAGS, CLUSTER_HELP, env);
  if (f.events !== undefined && !/^[a-z][a-z0-9+.-]*:\/\//i.test(f.events)) {
    throw new UsageError(`flag --events: "${f.events}" is not a URL (kafka://… or file://…)`);
  }
  const options: LocalClusterOptions = {
    nodes: f.nodes,
    partitions: f.partitions,
    dataDir: resolve(f['data-dir']),
    basePort: f['base-port'],
    host: f.host,
    ...(f.events ? { events: f.events } : {}),
    ...(f.archiver ? {} : { archiver: false }),
  };
  validate(options);
  return options;
}

export const clusterCommand: Command = {
  summary: 'run a local cluster of storage nodes, one process each',
  async run(argv, ctx) {
    const options = parseClusterFlags(argv, ctx.env);
    const write = (stream: NodeJS.WritableStream, line: string) => stream.write(`${line}\n`);
    let unexpected = 0;
    let allGone!: () => void;
    const everyNodeGone = new Promise<void>((r) => (allGone = r));
    const cluster = new LocalCluster({
      ...options,
      ...(ctx.env.STORAGE_NODE_BIN ? { bin: ctx.env.STORAGE_NODE_BIN } : {}),
      env: ctx.env,
      onLine: (node, line) => write(ctx.stderr, `[node ${node.id}] ${line}`),
      onExit: (node, info) => {
        if (!info.expected) {
          unexpected++;
          const how = info.signal ? `signal ${info.signal}` : `exit code ${info.code}`;
          const others = cluster.nodes.filter((n) => n.running).length;
          write(
            ctx.stderr,
            `storage-node cluster: node ${node.id} exited unexpectedly (${how}); ${others} node${others === 1 ? '' : 's'} still running`,
          );
        }
        if (cluster.nodes.every((n) => !n.running)) allGone();
      },
    });
    await mkdir(options.dataDir, { recursive: true });
    await cluster.start();
    let ready = 0;
    for (const node of cluster.nodes) {
      node.waitReady(Number.MAX_SAFE_INTEGER, ctx.signal).then(
        () => {
          write(ctx.stdout, `node ${node.id} ${node.url}`);
          if (++ready === cluster.nodes.length) {
            write(
              ctx.stderr,
              `storage-node cluster: ${ready} nodes serving; data in ${options.dataDir}; Ctrl-C stops them`,
            );
          }
        },
        () => {
          // Reported by onExit, or the command is stopping.
        },
      );
    }
    const stopped = new Promise<void>((r) => {
      if (ctx.signal.aborted) r();
      else ctx.signal.addEventListener('abort', () => r(), { once: true });
    });
    await Promise.race([stopped, everyNodeGone]);
    if (ctx.signal.aborted) write(ctx.stderr, 'storage-node cluster: stopping the nodes');
    await cluster.stop();
    if (ctx.signal.aborted) return EXIT_OK;
    write(ctx.stderr, `storage-node cluster: every node exited (${unexpected} unexpectedly)`);
    return EXIT_FAILURE;
  },
};

import { mkdir } from 'node:fs/promises';
import { parseFlags, UsageError } from '../contract/cli/flags.js';
import type { Command } from '../contract/cli/runner.js';
import type { EventBus } from '../contract/events/event-bus.js';
import { openEventBus } from '../contract/events/open.js';
import { createLogger } from '../contract/log.js';
import { DEFAULT_TICK_MS, splitHostPort, StorageNode } from './node.js';

const flags = {
  id: {
    type: 'int',
    help: "this node's id (one of the ids in --peers)",
    value: 'N',
    required: true,
    min: 1,
    max: 1_000_000,
  },
  'data-dir': {
    type: 'string',
    help: 'data directory (partitions/<id>/… below it)',
    value: 'DIR',
    required: true,
    env: 'STORAGE_NODE_DATA_DIR',
  },
  listen: {
    type: 'string',
    help: 'address to serve on',
    value: 'HOST:PORT',
    required: true,
    env: 'STORAGE_NODE_LISTEN',
  },
  peers: {
    type: 'list',
    help: 'every node of the cluster, this one included',
    value: 'ID=URL,…',
    required: true,
    env: 'STORAGE_NODE_PEERS',
  },
  events: {
    type: 'string',
    help: 'event bus for wal.leadership (kafka://… or file://…)',
    value: 'URL',
    env: 'STORAGE_NODE_EVENTS',
  },
  partitions: {
    type: 'int',
    help: 'make partitions 1..N exist on this node',
    value: 'N',
    min: 0,
    max: 100_000,
    default: 0,
  },
  'fault-injection': {
    type: 'bool',
    help: 'serve POST /v1/faults to cut the node off from its peers (tests only)',
    default: false,
    env: 'STORAGE_NODE_FAULT_INJECTION',
  },
  archiver: {
    type: 'bool',
    help: 'a sidecar archives the WAL: entries stay until archiver/position covers them; false: prune without waiting',
    default: true,
    env: 'STORAGE_NODE_ARCHIVER',
  },
  tick: {
    type: 'duration',
    help: 'Raft tick interval (elections take 10-20 ticks)',
    value: 'DURATION',
    min: 10,
    max: 10_000,
    default: DEFAULT_TICK_MS,
  },
} as const;

const help = {
  usage:
    'storage-node run --id N --data-dir DIR --listen HOST:PORT --peers ID=URL,… [--events URL] [--archiver=false]',
  description:
    "Runs one storage node: Raft-replicated partitions that write the WAL in Gitaly's entry layout, serve\nwrites, snapshots and a leadership stream over HTTP, and publish leadership changes.",
};

/** Parses `1=http://h:7101,2=…` into id → URL, with one clear error per mistake. */
export function parsePeers(items: readonly string[]): Map<number, string> {
  const peers = new Map<number, string>();
  for (const item of items) {
    const m = /^([1-9][0-9]*)=(.+)$/.exec(item);
    if (!m) throw new UsageError(`--peers: "${item}" is not ID=URL`);
    const id = Number(m[1]);
    let url: URL;
    try {
      url = new URL(m[2]!);
    } catch {
      throw new UsageError(`--peers: "${m[2]}" (node ${id}) is not a URL`);
    }
    if (url.protocol !== 'http:') throw new UsageError(`--peers: node ${id} URL must be http://HOST:PORT`);
    if (peers.has(id)) throw new UsageError(`--peers: node ${id} is listed twice`);
    peers.set(id, url.origin);
  }
  if (peers.size === 0) throw new UsageError('--peers lists no node');
  return peers;
}

export const runCommand: Command = {
  summary: 'run one storage node',
  async run(argv, ctx) {
    const f = parseFlags(argv, flags, help, ctx.env);
    const peers = parsePeers(f.peers);
    if (!peers.has(f.id))
      throw new UsageError(
        `--id ${f.id} is not one of the nodes in --peers (${[...peers.keys()].join(', ')})`,
      );
    try {
      splitHostPort(f.listen);
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    await mkdir(f['data-dir'], { recursive: true });
    const logger = createLogger({ component: 'storage-node', node: f.id });
    let events: EventBus | undefined;
    if (f.events) events = await openEventBus(f.events);
    const node = await StorageNode.start({
      id: f.id,
      dataDir: f['data-dir'],
      listen: f.listen,
      peers,
      partitions: f.partitions,
      logger,
      tickMs: f.tick,
      faultInjection: f['fault-injection'],
      archiver: f.archiver,
      ...(events ? { events } : {}),
    });
    ctx.stdout.write(`storage-node ${f.id} serving at ${node.url}\n`);
    await new Promise<void>((resolve) =>
      ctx.signal.addEventListener('abort', () => resolve(), { once: true }),
    );
    await node.stop();
    await events?.close();
    return 0;
  },
};

import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { resolve, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseFlags } from '../contract/cli/flags.js';
import type { Command } from '../contract/cli/runner.js';
import { openEventBus } from '../contract/events/open.js';
import { createLogger } from '../contract/log.js';
import { GlobalManifestProjector } from '../src/manifest/projector.js';
import { DEFAULT_ARCHIVER_CONFIG } from '../src/pipeline/partition-archiver.js';
import { DEFAULT_THRESHOLDS } from '../src/policy/index.js';
import { Sidecar } from '../src/pipeline/sidecar.js';
import { openObjectStore } from '../src/store/open.js';
import { startLocalCluster } from '../storage-node/cluster.js';
import { runLoad, LOAD_DEFAULTS, type LoadOptions } from '../storage-node/load.js';
import { sleep } from '../contract/retry.js';
import type { PartitionStatus } from '../storage-node/api.js';
import { HttpStorageNode } from '../src/node/http-node.js';
import { comparePartitionIds } from '../contract/partition-id.js';

const flags = {
  dir: {
    type: 'string',
    help: 'where nodes, archive and events are kept',
    value: 'DIR',
    default: '.quickstart',
  },
  nodes: { type: 'int', help: 'storage nodes', value: 'N', min: 1, max: 9, default: 3 },
  partitions: { type: 'int', help: 'partitions', value: 'N', min: 1, max: 64, default: 4 },
  rate: { type: 'int', help: 'writes per second', value: 'N', min: 0, max: 5000, default: 20 },
  size: { type: 'bytes', help: 'bytes per write', value: 'SIZE', min: 1, default: 4096 },
  'base-port': {
    type: 'int',
    help: 'node i listens on base-port + i',
    value: 'PORT',
    min: 1024,
    max: 65000,
    default: 7100,
  },
  duration: {
    type: 'duration',
    help: 'stop after this long (default: until Ctrl-C)',
    value: 'DURATION',
    min: 1,
  },
} as const;

const help = {
  usage: 'wal-archiver quickstart [--dir .quickstart] [--nodes 3] [--partitions 4] [--rate 20]',
  description:
    'The main job on its embedded defaults: a local storage cluster under a steady write workload, with one\n' +
    'sidecar per node archiving to a folder object store and publishing to a folder event log. Shows live\n' +
    'progress until stopped. This is what `npm start` runs.',
};

interface Row {
  partition: string;
  leader: number;
  term: number;
  committed: number;
  archived: number;
}

function table(rows: Row[], writes: string): string {
  const head = ['partition', 'leader', 'term', 'committed LSN', 'archived LSN', 'lag'];
  const body = rows.map((r) => [
    r.partition,
    r.leader ? `node ${r.leader}` : '-',
    String(r.term),
    String(r.committed),
    String(r.archived),
    String(Math.max(0, r.committed - r.archived)),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ');
  return [line(head), ...body.map(line), '', writes].join('\n');
}

/**
 * The workload's options: it writes until the quickstart stops it (Ctrl-C or
 * the quickstart's own --duration, both through its abort signal), never for
 * the load command's default duration.
 */
export function quickstartLoadOptions(
  f: { rate: number; size: number },
  nodeUrls: string[],
  log: (line: string) => void,
  seed = Date.now() % 1_000_000,
): LoadOptions {
  return {
    ...LOAD_DEFAULTS,
    // 0: no duration of its own; the signal ends it.
    durationMs: 0,
    nodeUrls,
    rate: f.rate,
    size: f.size,
    partitions: 'all',
    git: false,
    repositoriesPerPartition: 4,
    seed,
    progressIntervalMs: 0,
    log,
  };
}

/** Resolves once every partition 1..`partitions` has a leader (or after `timeoutMs`, or on the signal). */
async function waitForLeaders(
  urls: readonly string[],
  partitions: number,
  signal: AbortSignal,
  timeoutMs = 30_000,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!signal.aborted && Date.now() < until) {
    const led = new Set<string>();
    for (const url of urls) {
      const statuses = (await fetch(`${url}/v1/partitions`, { signal: AbortSignal.timeout(2000) })
        .then((r) => r.json())
        .catch(() => [])) as PartitionStatus[];
      for (const st of statuses) if (st.role === 'leader') led.add(st.partition);
    }
    if (led.size >= partitions) return;
    await sleep(100, signal).catch(() => undefined);
  }
}

export const quickstartCommand: Command = {
  summary: 'run a local cluster with sidecars and a workload, on local folders (npm start)',
  async run(argv, ctx) {
    const f = parseFlags(argv, flags, help, ctx.env);
    const dir = resolve(f.dir);
    const archiveUrl = pathToFileURL(join(dir, 'archive')).href;
    const eventsUrl = pathToFileURL(join(dir, 'events')).href;
    await mkdir(dir, { recursive: true });
    // Structured logs go to a file; the terminal shows the progress table.
    const logFile = join(dir, 'quickstart.log');
    const logStream = createWriteStream(logFile, { flags: 'a' });
    const logger = createLogger({ component: 'quickstart' }, { write: (l) => void logStream.write(l) });
    const out = ctx.stdout;
    out.write(
      `Starting ${f.nodes} storage nodes with ${f.partitions} partitions in ${join(dir, 'nodes')} …\n`,
    );
    const cluster = await startLocalCluster({
      nodes: f.nodes,
      partitions: f.partitions,
      dataDir: join(dir, 'nodes'),
      basePort: f['base-port'],
      events: eventsUrl,
      onLine: (node, line) => void logStream.write(`[node ${node.id}] ${line}\n`),
    });
    const store = await openObjectStore(archiveUrl);
    const bus = await openEventBus(eventsUrl);
    const sidecars = cluster.urls.map(
      (url, i) =>
        new Sidecar({
          dataDir: join(dir, 'nodes', `node-${i + 1}`),
          storageNode: new HttpStorageNode(url),
          store,
          events: bus,
          config: DEFAULT_ARCHIVER_CONFIG,
          uploadConcurrency: 4,
          spoolDir: join(dir, 'nodes', `node-${i + 1}`, '.wal-archiver-spool'),
          metricsPort: 0,
          logger: logger.child({ sidecar: i + 1 }),
          companions: [new GlobalManifestProjector({ store, bus, logger: logger.child({ sidecar: i + 1 }) })],
          // Small thresholds, so base backups show up within a minute of the workload.
          backups: {
            concurrency: 1,
            thresholds: { ...DEFAULT_THRESHOLDS, maxBytes: 512 * 1024, maxAge: 60_000, minInterval: 20_000 },
          },
        }),
    );
    for (const s of sidecars) await s.start();
    // Writes sent before a partition has a leader fail and back off by the dozen, each waiting on
    // the workload's signal: start writing once every partition has elected one.
    await waitForLeaders(cluster.urls, f.partitions, ctx.signal);
    out.write(
      `Nodes:    ${cluster.urls.join('  ')}\n` +
        `Sidecars: ${sidecars.map((s) => `${s.metricsUrl}/metrics`).join('  ')}\n` +
        `Archive:  ${archiveUrl}\nEvents:   ${eventsUrl}\nLogs:     ${logFile}\n\n` +
        `Writing ${f.rate} entries/s of ${f.size} bytes. Press Ctrl-C to stop.\n\n`,
    );

    const stopAll = new AbortController();
    ctx.signal.addEventListener('abort', () => stopAll.abort(), { once: true });
    if (f.duration) setTimeout(() => stopAll.abort(), f.duration).unref();
    const load =
      f.rate > 0
        ? runLoad(
            quickstartLoadOptions(f, cluster.urls, (l) => void logStream.write(`[load] ${l}\n`)),
            stopAll.signal,
          )
        : undefined;

    const tty = 'isTTY' in out && (out as NodeJS.WriteStream).isTTY;
    let lastLines = 0;
    const show = async () => {
      const rows = new Map<string, Row>();
      for (const url of cluster.urls) {
        const statuses = (await fetch(`${url}/v1/partitions`, { signal: AbortSignal.timeout(2000) })
          .then((r) => r.json())
          .catch(() => [])) as PartitionStatus[];
        for (const s of statuses) {
          const r = rows.get(s.partition) ?? {
            partition: s.partition,
            leader: 0,
            term: 0,
            committed: 0,
            archived: 0,
          };
          if (s.role === 'leader') Object.assign(r, { leader: s.node, term: s.term });
          r.committed = Math.max(r.committed, s.committed);
          rows.set(s.partition, r);
        }
      }
      for (const s of sidecars)
        for (const p of s.status()) {
          const r = rows.get(p.partition);
          if (r) r.archived = Math.max(r.archived, p.archived);
        }
      const text = table(
        [...rows.values()].sort((a, b) => comparePartitionIds(a.partition, b.partition)),
        `${new Date().toISOString()}  (refreshes every 2 s)`,
      );
      if (tty && lastLines > 0) out.write(`\x1b[${lastLines}A\x1b[J`);
      out.write(`${text}\n${tty ? '' : '\n'}`);
      lastLines = text.split('\n').length;
    };
    while (!stopAll.signal.aborted) {
      await show();
      // `sleep` removes its abort listener when the time is up: one listener at a time, not one per refresh.
      await sleep(2000, stopAll.signal).catch(() => undefined);
    }
    out.write('\nStopping …\n');
    await load?.catch(() => undefined);
    for (const s of sidecars) await s.stop();
    await cluster.stop();
    await bus.close();
    await store.close();
    out.write(
      `Stopped. Everything is in ${dir}. Inspect the archive with:\n` +
        `  npx wal-archiver manifest --object-store ${archiveUrl}\n` +
        `  npx wal-archiver manifest --object-store ${archiveUrl} --partition 1\n` +
        `  npx wal-archiver events --events ${eventsUrl} --topic archived --from-beginning --count 5\n` +
        `  npx wal-archiver verify --object-store ${archiveUrl}\n` +
        `  npx wal-archiver restore --object-store ${archiveUrl} --partition 1 --latest --target ${join(dir, 'restored', 'partition-1')}\n`,
    );
    await new Promise<void>((r) => logStream.end(() => r()));
    return 0;
  },
};

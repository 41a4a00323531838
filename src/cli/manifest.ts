import { ErrorCodes, WalArchiverError, describeError, isWalArchiverError } from '../../contract/errors.js';
import type { EventBus, SubscribeOptions } from '../../contract/events/event-bus.js';
import { encodeJson } from '../manifest/cas.js';
import { formatGlobalManifest, formatPartitionManifest } from '../manifest/format.js';
import {
  DEFAULT_REBUILD_IDLE_MS,
  GlobalManifestWriter,
  MANIFEST_TOPICS,
  readGlobalManifest,
  rebuildFromEvents,
  rebuildFromObjects,
  type GlobalManifest,
  type RebuildProblem,
} from '../manifest/global-manifest.js';
import { GLOBAL_MANIFEST_KEY, partitionPrefix } from '../manifest/keys.js';
import { readPartitionManifest, type PartitionManifest } from '../manifest/partition-manifest.js';
import { findTimeline, listTimelines } from '../timeline/history.js';
import { formatTimelineTree } from '../timeline/format.js';
import { objectStoreFlag, openBusFlag, parseCommandFlags, archiveCommand } from './shared-flags.js';
import type { ObjectStore } from '../store/object-store.js';
import { verifyConditionalWrites } from '../store/conditional-check.js';
import { UsageError, type ParsedFlags } from '../../contract/cli/flags.js';
import { EXIT_OK, type CommandContext } from '../../contract/cli/runner.js';

/**
 * `wal-archiver manifest`: shows the global manifest (every partition), one
 * partition's manifest, or rebuilds the global manifest from the events or
 * from the objects alone.
 */

const NAME = 'wal-archiver manifest';

/** After this long a rebuild starts reporting progress on stderr, then every PROGRESS_EVERY_MS. */
export const PROGRESS_AFTER_MS = 2_000;
export const PROGRESS_EVERY_MS = 5_000;

const flags = {
  'object-store': objectStoreFlag,
  partition: {
    type: 'string',
    help: "show one partition's manifest: leader, archived range, gaps, base backups",
    value: 'ID',
  },
  segments: {
    type: 'bool',
    help: 'with --partition: list every segment too',
    default: false,
  },
  timeline: {
    type: 'int',
    help: "with --partition: show that timeline's manifest (default: the latest)",
    value: 'N',
    min: 1,
  },
  json: {
    type: 'bool',
    help: 'print the manifest document as JSON instead of a table',
    default: false,
  },
  rebuild: {
    type: 'bool',
    help: 'rebuild the global manifest (from the objects, or from the events with --from-events) and store it',
    default: false,
  },
  'from-events': {
    type: 'string',
    help: 'with --rebuild: replay wal.archived, wal.backups and wal.leadership from the beginning of this bus',
    value: 'URL',
  },
  idle: {
    type: 'duration',
    help: 'with --from-events: the replay is done once no event arrived for this long',
    value: 'DURATION',
    default: DEFAULT_REBUILD_IDLE_MS,
    min: 100,
    max: 600_000,
  },
  'dry-run': {
    type: 'bool',
    help: 'with --rebuild: show what would be stored, store nothing',
    default: false,
  },
} as const;

type Flags = ParsedFlags<typeof flags>;

const help = {
  usage:
    'wal-archiver manifest --object-store URL [--partition ID [--timeline N] [--segments]] [--json]\n' +
    '       wal-archiver manifest --object-store URL --rebuild [--from-events URL] [--dry-run] [--json]',
  description:
    'Shows the global manifest: every partition with its leader, archived LSN, lag and latest base\n' +
    "backup. With --partition, shows that partition's manifest instead. When the global manifest is\n" +
    'missing, the table is derived from the objects (a note on stderr says so) and nothing is stored.\n' +
    '\n' +
    'The global manifest is a projection of the wal.archived, wal.backups and wal.leadership events,\n' +
    'kept current by the sidecars. --rebuild recomputes it: from the events with --from-events (a\n' +
    'replay from the beginning under a fresh consumer group), else from the objects alone (partition\n' +
    'manifests, or segment and base backup listings where a partition has none). The result is merged\n' +
    'into the stored manifest with a conditional write (each value keeps its larger version, so updates\n' +
    'by running sidecars are never lost); a corrupt stored manifest is replaced. --dry-run stores nothing.',
};

/** Parses and cross-checks the flags; exported for the unit tests. */
export function parseManifestFlags(argv: readonly string[], env: NodeJS.ProcessEnv): Flags {
  const f = parseCommandFlags(argv, flags, help, env);
  if (!f.rebuild) {
    if (f['from-events'] !== undefined) throw new UsageError('flag --from-events needs --rebuild');
    if (f['dry-run']) throw new UsageError('flag --dry-run needs --rebuild');
  } else if (f.partition !== undefined) {
    throw new UsageError('--rebuild rebuilds the global manifest; it takes no --partition');
  }
  if (f.segments && f.partition === undefined) throw new UsageError('flag --segments needs --partition');
  if (f.timeline !== undefined && f.partition === undefined)
    throw new UsageError('flag --timeline needs --partition');
  if (argv.some((a) => a === '--idle' || a.startsWith('--idle=')) && f['from-events'] === undefined) {
    throw new UsageError('flag --idle needs --from-events');
  }
  return f;
}

function line(stream: NodeJS.WritableStream, text: string): void {
  stream.write(`${text}\n`);
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** Reports progress on stderr while slow work runs: nothing for a fast run, then a line every few seconds. */
function progressReporter(ctx: CommandContext, describe: () => string): { stop(): void } {
  let every: NodeJS.Timeout | undefined;
  const first = setTimeout(() => {
    line(ctx.stderr, `${NAME}: ${describe()}`);
    every = setInterval(() => line(ctx.stderr, `${NAME}: ${describe()}`), PROGRESS_EVERY_MS);
    every.unref();
  }, PROGRESS_AFTER_MS);
  first.unref();
  return {
    stop() {
      clearTimeout(first);
      clearInterval(every);
    },
  };
}

/** The store, with the objects listed and read counted for progress lines. */
function countingStore(store: ObjectStore, counts: { listed: number; read: number }): ObjectStore {
  return {
    get url() {
      return store.url;
    },
    list(prefix, options) {
      const inner = store.list(prefix, options);
      return {
        async *[Symbol.asyncIterator]() {
          for await (const info of inner) {
            counts.listed++;
            yield info;
          }
        },
      };
    },
    head(key, options) {
      counts.read++;
      return store.head(key, options);
    },
    get(key, options) {
      counts.read++;
      return store.get(key, options);
    },
    create: (key, body, options) => store.create(key, body, options),
    replace: (key, body, options) => store.replace(key, body, options),
    delete: (key, options) => store.delete(key, options),
    close: () => store.close(),
  };
}

/** The bus, with the events handed to subscribers counted for progress lines. */
function countingBus(bus: EventBus, counts: { events: number }): EventBus {
  return {
    get url() {
      return bus.url;
    },
    topicName: (topic) => bus.topicName(topic),
    publish: (topic, events, options) => bus.publish(topic, events, options),
    checkConnection: () => bus.checkConnection(),
    subscribe: (options: SubscribeOptions) =>
      bus.subscribe({
        ...options,
        handler: async (batch) => {
          await options.handler(batch);
          counts.events += batch.length;
        },
      }),
    close: () => bus.close(),
  };
}

function printProblems(ctx: CommandContext, problems: readonly RebuildProblem[]): void {
  for (const p of problems)
    line(ctx.stderr, `${NAME}: problem: partition ${p.partition}, ${p.key}: ${p.message}`);
}

async function deriveFromObjects(
  store: ObjectStore,
  ctx: CommandContext,
): Promise<{
  manifest: GlobalManifest;
  problems: RebuildProblem[];
  fromManifests: number;
  fromObjects: number;
}> {
  const counts = { listed: 0, read: 0 };
  const progress = progressReporter(
    ctx,
    () => `reading the objects: ${plural(counts.listed, 'object')} listed, ${counts.read} read`,
  );
  try {
    const result = await rebuildFromObjects(countingStore(store, counts), { signal: ctx.signal });
    const sources = Object.values(result.sources);
    return {
      manifest: result.manifest,
      problems: result.problems,
      fromManifests: sources.filter((s) => s === 'manifest').length,
      fromObjects: sources.filter((s) => s === 'objects').length,
    };
  } finally {
    progress.stop();
  }
}

function printManifest(ctx: CommandContext, f: Flags, manifest: GlobalManifest): void {
  if (f.json) ctx.stdout.write(encodeJson(manifest));
  else ctx.stdout.write(formatGlobalManifest(manifest, { now: new Date() }));
}

async function showGlobal(store: ObjectStore, f: Flags, ctx: CommandContext): Promise<number> {
  const stored = await readGlobalManifest(store, { signal: ctx.signal }).catch((err: unknown) => {
    if (isWalArchiverError(err, ErrorCodes.CORRUPT)) {
      throw new WalArchiverError(
        ErrorCodes.CORRUPT,
        `the global manifest ${store.url} ${GLOBAL_MANIFEST_KEY} is corrupt (${describeError(err)}); ` +
          `run with --rebuild to replace it`,
        { cause: err, retryable: false },
      );
    }
    throw err;
  });
  if (stored) {
    printManifest(ctx, f, stored.value);
    return EXIT_OK;
  }
  const derived = await deriveFromObjects(store, ctx);
  const count = Object.keys(derived.manifest.partitions).length;
  if (count === 0) {
    printProblems(ctx, derived.problems);
    throw new WalArchiverError(
      ErrorCodes.NOT_FOUND,
      `no global manifest and no archived partition in ${store.url} (is the URL right?)`,
      { retryable: false },
    );
  }
  line(
    ctx.stderr,
    `${NAME}: ${store.url} has no global manifest yet; showing one derived from the objects ` +
      `(${plural(count, 'partition')}; leaders and lag unknown). Run with --rebuild to store it.`,
  );
  printProblems(ctx, derived.problems);
  printManifest(ctx, f, derived.manifest);
  return EXIT_OK;
}

async function showPartition(
  store: ObjectStore,
  f: Flags,
  partition: string,
  ctx: CommandContext,
): Promise<number> {
  const timelines = await listTimelines(store, partition, ctx.signal);
  const manifests = new Map<number, PartitionManifest>();
  for (const t of timelines) {
    const m = await readPartitionManifest(store, partition, { signal: ctx.signal, timeline: t.timeline });
    if (m) manifests.set(t.timeline, m.value);
  }
  const shown = f.timeline ?? timelines.at(-1)!.timeline;
  findTimeline(timelines, partition, shown);
  const value = manifests.get(shown);
  const stored = value ? { value } : undefined;
  if (!stored && shown !== 1) {
    throw new WalArchiverError(
      ErrorCodes.NOT_FOUND,
      `partition ${partition} timeline ${shown} has no manifest yet (its sidecar writes it when it starts archiving)`,
      { retryable: false },
    );
  }
  if (!stored) {
    let objects = 0;
    for await (const _ of store.list(partitionPrefix(partition), { signal: ctx.signal })) objects++;
    throw new WalArchiverError(
      ErrorCodes.NOT_FOUND,
      objects === 0
        ? `partition ${partition} has nothing archived in ${store.url}`
        : `partition ${partition} has ${plural(objects, 'object')} in ${store.url} but no manifest ` +
            `(its archiving sidecar writes it with the next segment)`,
      { retryable: false },
    );
  }
  if (f.json) ctx.stdout.write(encodeJson(stored.value));
  else {
    if (timelines.length > 1) ctx.stdout.write(`timelines:\n${formatTimelineTree(timelines, manifests)}\n`);
    if (timelines.length > 1) ctx.stdout.write(`timeline ${shown}:\n`);
    ctx.stdout.write(formatPartitionManifest(stored.value, { now: new Date(), segments: f.segments }));
  }
  return EXIT_OK;
}

/** Stores the rebuilt partitions: merged into the stored manifest, or replacing a corrupt one. */
async function storeRebuilt(
  store: ObjectStore,
  manifest: GlobalManifest,
  ctx: CommandContext,
): Promise<{ manifest: GlobalManifest; written: boolean; replacedCorrupt: boolean }> {
  const writer = new GlobalManifestWriter(store, { signal: ctx.signal });
  try {
    const result = await writer.merge(manifest.partitions, { signal: ctx.signal });
    return { manifest: result.manifest, written: result.written, replacedCorrupt: false };
  } catch (err) {
    if (!isWalArchiverError(err, ErrorCodes.CORRUPT)) throw err;
    // Only this object is unreadable; replace exactly the version that was read.
    const info = await store.head(GLOBAL_MANIFEST_KEY, { signal: ctx.signal });
    const next: GlobalManifest = { ...manifest, version: 1, updated_at: new Date().toISOString() };
    try {
      await store.replace(GLOBAL_MANIFEST_KEY, encodeJson(next), {
        ifMatch: info?.etag,
        contentType: 'application/json',
        signal: ctx.signal,
      });
    } catch (replaceErr) {
      if (
        isWalArchiverError(replaceErr, ErrorCodes.PRECONDITION_FAILED) ||
        isWalArchiverError(replaceErr, ErrorCodes.ALREADY_EXISTS)
      ) {
        throw new WalArchiverError(
          ErrorCodes.PRECONDITION_FAILED,
          `the global manifest changed while it was being replaced; run the rebuild again`,
          { cause: replaceErr, retryable: true },
        );
      }
      throw replaceErr;
    }
    line(ctx.stderr, `${NAME}: replaced a corrupt global manifest (${describeError(err)})`);
    return { manifest: next, written: true, replacedCorrupt: true };
  }
}

async function rebuild(objectStore: ObjectStore, f: Flags, ctx: CommandContext): Promise<number> {
  // Human summary lines go to stdout with the table, or to stderr when stdout carries JSON.
  const say = (text: string) => line(f.json ? ctx.stderr : ctx.stdout, text);
  if (!f['dry-run']) await verifyConditionalWrites(objectStore, { signal: ctx.signal });
  let manifest: GlobalManifest;
  if (f['from-events'] !== undefined) {
    const bus = await openBusFlag('from-events', f['from-events']);
    const counts = { events: 0 };
    const topics = MANIFEST_TOPICS.map((t) => bus.topicName(t)).join(', ');
    line(
      ctx.stderr,
      `${NAME}: replaying ${topics} from ${bus.url} from the beginning; ` +
        `done once no event arrives for ${f.idle / 1000}s`,
    );
    const progress = progressReporter(ctx, () => `replaying: ${plural(counts.events, 'event')} so far`);
    let skippedShown = 0;
    try {
      const result = await rebuildFromEvents(countingBus(bus, counts), {
        idleMs: f.idle,
        signal: ctx.signal,
        onSkip: (topic, err) => {
          if (++skippedShown <= 10)
            line(ctx.stderr, `${NAME}: skipped a malformed ${topic} event: ${describeError(err)}`);
        },
      });
      manifest = result.manifest;
      say(
        `rebuilt from ${plural(result.events, 'event')} of ${bus.url}: ` +
          `${plural(Object.keys(manifest.partitions).length, 'partition')}, ${result.skipped} malformed skipped`,
      );
      if (!result.caughtUp) {
        line(
          ctx.stderr,
          `${NAME}: the replay hit its time limit before the topics went quiet; it may be incomplete`,
        );
      }
    } finally {
      progress.stop();
      await bus.close().catch(() => undefined);
    }
  } else {
    const derived = await deriveFromObjects(objectStore, ctx);
    manifest = derived.manifest;
    say(
      `rebuilt from the objects of ${objectStore.url}: ` +
        `${plural(Object.keys(manifest.partitions).length, 'partition')} ` +
        `(${derived.fromManifests} from partition manifests, ${derived.fromObjects} from object listings), ` +
        `${plural(derived.problems.length, 'problem')}`,
    );
    printProblems(ctx, derived.problems);
  }

  if (f['dry-run']) {
    printManifest(ctx, f, manifest);
    say('dry run: nothing was stored');
    return EXIT_OK;
  }
  const result = await storeRebuilt(objectStore, manifest, ctx);
  printManifest(ctx, f, result.manifest);
  say(
    result.written
      ? `stored the global manifest, version ${result.manifest.version}`
      : `the stored global manifest (version ${result.manifest.version}) already holds all of this; nothing written`,
  );
  return EXIT_OK;
}

export const manifestCommand = archiveCommand(
  'show the global manifest or one partition, or rebuild the global manifest',
  parseManifestFlags,
  async (f, objectStore, ctx) => {
    if (f.rebuild) return rebuild(objectStore, f, ctx);
    if (f.partition !== undefined) return showPartition(objectStore, f, f.partition, ctx);
    return showGlobal(objectStore, f, ctx);
  },
);

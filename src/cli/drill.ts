import { listArchivedPartitions, holdsArchive } from '../manifest/archived-partitions.js';
import { listTimelines } from '../timeline/history.js';
import {
  DEFAULT_DRILL_CONCURRENCY,
  describeDrill,
  drillPartition,
  type DrillResult,
} from '../restore/drill.js';
import { archiveCommand, flagParser, objectStoreFlag } from './shared-flags.js';
import { progressRenderer } from './restore.js';
import { EXIT_FAILURE, EXIT_OK } from '../../contract/cli/runner.js';

/**
 * `wal-archiver drill`: proves that the archive restores, without touching a
 * live node (see src/restore/drill.ts). Without --partition every archived
 * partition is drilled, one after the other; --seed chooses, in each, which
 * pair of consecutive base backups is compared (default: the newest two).
 * One line per partition on stdout (or one JSON document with --json),
 * progress on stderr; exit 1 when any drill fails.
 */

const drillFlags = {
  'object-store': objectStoreFlag,
  partition: {
    type: 'string',
    help: 'drill only this partition (default: every archived partition)',
    value: 'ID',
  },
  seed: {
    type: 'int',
    help: 'chooses the pair of consecutive base backups compared (default: the newest two)',
    value: 'S',
    min: 0,
  },
  timeline: {
    type: 'int',
    help: "the archive timeline drilled (default: each partition's latest)",
    value: 'N',
    min: 1,
  },
  scratch: {
    type: 'string',
    help: 'where the scratch folder is made (default: the OS temp folder)',
    value: 'DIR',
  },
  'max-scratch': {
    type: 'bytes',
    help: 'refuse a drill whose objects (compressed) exceed this',
    value: 'SIZE',
    min: 1,
  },
  concurrency: {
    type: 'int',
    help: 'segments downloaded ahead',
    value: 'N',
    min: 1,
    max: 64,
    default: DEFAULT_DRILL_CONCURRENCY,
  },
  json: { type: 'bool', help: 'print the results as one JSON document', default: false },
} as const;

const drillHelp = {
  usage:
    'wal-archiver drill --object-store URL [--partition P] [--seed S] [--timeline N] [--scratch DIR] [--max-scratch SIZE] [--json]',
  description:
    'Proves that the archive restores, without touching a live node. For a partition with two base backups\n' +
    'B1 < B2 it restores B1 plus the WAL up to B2 in a scratch folder and compares the result with B2, file\n' +
    'by file and byte for byte; with one backup (or none) it replays from it (or LSN 1) to the archived end,\n' +
    'checking every checksum and entry digest. Prints one line per partition; exits 1 on any failure.',
};

export const parseDrillFlags = flagParser(drillFlags, drillHelp, () => undefined);

export const drillCommand = archiveCommand(
  'prove that the archive restores: base backup plus WAL against the next base backup',
  parseDrillFlags,
  async (f, store, ctx) => {
    const partitions =
      f.partition !== undefined
        ? [f.partition]
        : [...(await listArchivedPartitions(store, { signal: ctx.signal }))]
            .filter(([, p]) => holdsArchive(p))
            .map(([id]) => id);
    const progress = progressRenderer(ctx.stderr, { label: 'drill' });
    const results: DrillResult[] = [];
    try {
      for (const partition of partitions) {
        const timeline = f.timeline ?? (await listTimelines(store, partition, ctx.signal)).at(-1)!.timeline;
        const r = await drillPartition(store, partition, {
          timeline,
          ...(f.seed !== undefined ? { seed: f.seed } : {}),
          ...(f.scratch !== undefined ? { scratchDir: f.scratch } : {}),
          ...(f['max-scratch'] !== undefined ? { budget: { maxScratchBytes: f['max-scratch'] } } : {}),
          concurrency: f.concurrency,
          signal: ctx.signal,
          onProgress: (p) => progress.update(p),
        });
        progress.end();
        results.push(r);
        if (!f.json) ctx.stdout.write(`${describeDrill(r)}\n`);
      }
    } finally {
      progress.end();
    }
    const failures = results.filter((r) => !r.ok).length;
    if (f.json) ctx.stdout.write(`${JSON.stringify({ partitions: results, failures }, null, 2)}\n`);
    if (results.length === 0) {
      // A wrong URL must not pass as a proven archive.
      ctx.stderr.write(`wal-archiver drill: ${store.url} holds no archived partition: nothing to drill\n`);
      return EXIT_FAILURE;
    }
    if (failures > 0) {
      ctx.stderr.write(
        `wal-archiver drill: ${failures} of ${results.length} partition(s) failed (listed above)\n`,
      );
      return EXIT_FAILURE;
    }
    return EXIT_OK;
  },
);

import { Topics } from '../../contract/events/event-bus.js';
import { createLogger } from '../../contract/log.js';
import { listArchivedPartitions } from '../manifest/archived-partitions.js';
import { onTimeline, readPartitionManifest, type PartitionManifest } from '../manifest/partition-manifest.js';
import { listTimelines, type TimelineInfo } from '../timeline/history.js';
import { HttpStorageNode } from '../node/http-node.js';
import { assertLeader } from '../node/storage-node.js';
import { takeBaseBackup } from '../backup/take.js';
import { applyRetention, listPartitionObjects, planRetention } from '../backup/retention.js';
import { archiveCommand, flagParser, objectStoreFlag, openBusFlag } from './shared-flags.js';
import { verifyConditionalWrites } from '../store/conditional-check.js';
import { UsageError } from '../../contract/cli/flags.js';
import type { ObjectStore } from '../store/object-store.js';
import { EXIT_FAILURE, EXIT_OK } from '../../contract/cli/runner.js';

/**
 * `wal-archiver backup`: one base backup by hand (trigger `manual`) from the
 * partition's leader. `wal-archiver retention`: deletes the base backups and
 * WAL segments no kept backup needs (idempotent; any process may run it).
 */

const backupFlags = {
  'object-store': objectStoreFlag,
  'node-url': {
    type: 'string',
    help: "the partition's leader (storage node URL)",
    value: 'URL',
    required: true,
    env: 'WAL_ARCHIVER_NODE_URL',
  },
  partition: { type: 'string', help: 'the partition to back up', value: 'ID', required: true },
  timeline: {
    type: 'int',
    help: "the archive timeline (default: the one the leader's sidecar archives to)",
    value: 'N',
    min: 1,
  },
  events: { type: 'string', help: 'publish the wal.backups event on this bus', value: 'URL' },
  'retention-mode': {
    type: 'string',
    help: 'object lock mode for the backup object: GOVERNANCE or COMPLIANCE',
    value: 'MODE',
  },
  'retention-days': { type: 'int', help: 'object lock period in days', value: 'N', min: 1 },
  'spool-dir': {
    type: 'string',
    help: 'where the compressed backup is spooled (default: temp folder)',
    value: 'DIR',
  },
} as const;

const backupHelp = {
  usage: 'wal-archiver backup --object-store URL --node-url U --partition P [--timeline N] [--events URL]',
  description:
    'Takes one base backup of a partition now (trigger "manual"): a consistent snapshot of the\n' +
    "partition's applied state from its leader, zstd-compressed to partitions/<P>/base/<LSN>.tar.zst\n" +
    'with its SHA-256 in the metadata, then recorded in the partition manifest. The node must lead\n' +
    'the partition; otherwise the error names the leader. Prints the backup as JSON.',
};

export const parseBackupFlags = flagParser(backupFlags, backupHelp, (f) => {
  const mode = f['retention-mode'];
  if (mode !== undefined && mode !== 'GOVERNANCE' && mode !== 'COMPLIANCE') {
    throw new UsageError(`flag --retention-mode: "${mode}" is not GOVERNANCE or COMPLIANCE`);
  }
  if ((mode === undefined) !== (f['retention-days'] === undefined)) {
    throw new UsageError('flags --retention-mode and --retention-days go together');
  }
});

export const backupCommand = archiveCommand(
  'take one base backup of a partition now, from its leader',
  parseBackupFlags,
  async (f, store, ctx) => {
    await verifyConditionalWrites(store, { signal: ctx.signal });
    const storageNode = new HttpStorageNode(f['node-url']);
    const status = await assertLeader(storageNode, f.partition, undefined, ctx.signal);
    const mode = f['retention-mode'] as 'GOVERNANCE' | 'COMPLIANCE' | undefined;
    const timeline = f.timeline ?? (await leaderTimeline(store, f.partition, status, ctx.signal));
    const result = await takeBaseBackup({
      store,
      storageNode,
      partition: f.partition,
      timeline,
      node: status.node,
      term: status.term,
      trigger: 'manual',
      ...(mode !== undefined ? { retention: { mode, days: f['retention-days']! } } : {}),
      ...(f['spool-dir'] !== undefined ? { spoolDir: f['spool-dir'] } : {}),
      signal: ctx.signal,
      logger: createLogger({ component: 'backup' }),
    });
    if (f.events !== undefined) {
      const bus = await openBusFlag('events', f.events);
      try {
        await bus.publish(Topics.BACKUPS, [{ key: f.partition, value: { ...result.event } }], {
          signal: ctx.signal,
        });
      } finally {
        await bus.close().catch(() => undefined);
      }
    }
    ctx.stdout.write(
      `${JSON.stringify({ ...result.record, reused: result.reused, raw_bytes: result.rawBytes })}\n`,
    );
    return EXIT_OK;
  },
);

const retentionFlags = {
  'object-store': objectStoreFlag,
  partition: { type: 'string', help: 'one partition', value: 'ID' },
  all: { type: 'bool', help: 'every partition in the archive', default: false },
  'keep-count': { type: 'int', help: 'keep the newest N base backups', value: 'N', min: 1, required: true },
  'keep-age': {
    type: 'duration',
    help: 'also keep every base backup younger than this (e.g. 7d)',
    value: 'D',
    min: 1,
  },
  'dry-run': { type: 'bool', help: 'show what would be deleted, delete nothing', default: false },
} as const;

const retentionHelp = {
  usage:
    'wal-archiver retention --object-store URL (--partition P | --all) --keep-count N [--keep-age D] [--dry-run]',
  description:
    'Keeps the newest N base backups (and, with --keep-age, every one younger than D plus the one\n' +
    'before), and deletes older base backups and the WAL segments no kept backup needs: a restore to\n' +
    'any point from the oldest kept backup on stays possible. The newest backup is always kept; a\n' +
    'partition without base backups keeps all its WAL. Records leave the manifest first, objects are\n' +
    'deleted after, so an interruption leaves only unreferenced objects (the next run deletes them).\n' +
    'Objects under object lock are kept and reported. Safe to run twice, and beside running sidecars.',
};

export const parseRetentionFlags = flagParser(retentionFlags, retentionHelp, (f) => {
  if ((f.partition === undefined) === !f.all) throw new UsageError('give one of --partition P or --all');
});

export const retentionCommand = archiveCommand(
  'delete base backups and WAL segments no longer needed (by count and age)',
  parseRetentionFlags,
  async (f, store, ctx) => {
    let problems = 0;
    if (!f['dry-run']) await verifyConditionalWrites(store, { signal: ctx.signal });
    const partitions =
      f.partition !== undefined
        ? [f.partition]
        : [...(await listArchivedPartitions(store, { signal: ctx.signal })).keys()];
    for (const partition of partitions) {
      const timelines = await listTimelines(store, partition, ctx.signal);
      const manifests = new Map<number, PartitionManifest>();
      for (const t of timelines) {
        const stored = await readPartitionManifest(store, partition, {
          signal: ctx.signal,
          timeline: t.timeline,
        });
        if (stored) manifests.set(t.timeline, stored.value);
      }
      for (const t of timelines) {
        const which = `partition ${partition}${onTimeline(t.timeline)}`;
        const manifest = manifests.get(t.timeline);
        if (!manifest) {
          if (t.timeline === 1 || timelines.length === 1)
            ctx.stderr.write(`wal-archiver retention: ${which} has no manifest; skipped\n`);
          continue;
        }
        const now = new Date();
        const plan = planRetention(
          manifest,
          { keepCount: f['keep-count'], ...(f['keep-age'] !== undefined ? { keepAge: f['keep-age'] } : {}) },
          now,
          {
            objects: await listPartitionObjects(store, partition, ctx.signal, t.timeline),
            protect: branchPointsNeeding(timelines, manifests, t.timeline),
          },
        );
        const result = await applyRetention(store, partition, undefined, plan, {
          dryRun: f['dry-run'],
          signal: ctx.signal,
          timeline: t.timeline,
        });
        const verb = f['dry-run'] ? 'would delete' : 'deleted';
        ctx.stdout.write(
          `${which}: ${verb} ${result.deleted.length} objects ` +
            `(${plan.deleteBackups.length} base backups, ${plan.deleteSegments.length} segments, ${plan.orphans.length} leftovers); ` +
            `kept ${plan.keepBackups.length} base backups from LSN ${plan.windowStartLsn ?? '-'} on, ${plan.keepSegments} segments\n`,
        );
        for (const key of result.deleted)
          ctx.stdout.write(`  ${verb} ${key}  (${plan.reasons[key] ?? ''})\n`);
        for (const l of result.locked) {
          ctx.stdout.write(`  locked  ${l.key}${l.retainUntil ? ` until ${l.retainUntil}` : ''}: kept\n`);
        }
        for (const x of result.failed) {
          problems++;
          ctx.stderr.write(`wal-archiver retention: ${x.key}: ${x.error}\n`);
        }
      }
    }
    return problems > 0 ? EXIT_FAILURE : EXIT_OK;
  },
);

/**
 * The branch points of the timelines branching off `timeline` that have no
 * base backup of their own at their branch LSN: their history up to it is
 * this timeline's, so retention here keeps it restorable.
 */
function branchPointsNeeding(
  timelines: readonly TimelineInfo[],
  manifests: ReadonlyMap<number, PartitionManifest>,
  timeline: number,
): number[] {
  return timelines
    .filter((c) => c.parent === timeline && c.timeline !== timeline)
    .filter((c) => !(manifests.get(c.timeline)?.backups ?? []).some((b) => b.lsn <= c.branchLsn))
    .map((c) => c.branchLsn);
}

/**
 * The timeline the leader's sidecar archives a partition to: the one whose
 * manifest it claimed (same node and term). A leader whose sidecar has not
 * claimed one yet (or a node run without one) needs `--timeline`.
 */
async function leaderTimeline(
  store: ObjectStore,
  partition: string,
  leader: { node: number; term: number },
  signal: AbortSignal,
): Promise<number> {
  const timelines = await listTimelines(store, partition, signal);
  if (timelines.length === 1) return 1;
  for (const t of [...timelines].reverse()) {
    const m = (await readPartitionManifest(store, partition, { signal, timeline: t.timeline }))?.value;
    if (m?.leader?.node === leader.node && m.leader.term === leader.term) return t.timeline;
  }
  throw new UsageError(
    `partition ${partition} has timelines ${timelines.map((t) => t.timeline).join(', ')} and none is claimed by ` +
      `node ${leader.node} at term ${leader.term} (its sidecar has not started archiving); give --timeline N`,
  );
}

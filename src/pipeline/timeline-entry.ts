import { readHistory, claimTimeline } from '../timeline/history.js';
import {
  hasRestoredState,
  readRestoredMarker,
  readTimelineFile,
  removeRestoredState,
  writeTimelineFile,
  RESTORED_STATE_DIR,
  type RestoredMarker,
} from '../timeline/restored.js';
import { uploadRestoredBase, type BaseBackupResult } from '../backup/take.js';
import type { PartitionManifest } from '../manifest/partition-manifest.js';
import { ErrorCodes, WalArchiverError } from '../../contract/errors.js';
import { join } from 'node:path';
import type { PartitionContext } from './context.js';

/**
 * Which timeline of the archive this partition is written to
 * (src/timeline): the one its `archiver/timeline` names; for a directory
 * `restore` made and no sidecar has started yet, the new timeline of that
 * restore, found by its id or created (its history record first, then the
 * file); timeline 1 for every other directory. Sets `ctx.timeline` and
 * `ctx.branchLsn` and returns the restore's marker, if any.
 */
export async function enterTimeline(ctx: PartitionContext): Promise<RestoredMarker | undefined> {
  const dir = ctx.o.partitionDir;
  const marker = await readRestoredMarker(dir);
  let timeline = await readTimelineFile(dir);
  if (timeline === undefined && marker) {
    if (marker.partition !== ctx.partition) {
      throw new WalArchiverError(
        ErrorCodes.CORRUPT,
        `partition ${ctx.partition}: its restore marker is of partition ${marker.partition}`,
        { retryable: false },
      );
    }
    const claimed = await claimTimeline(
      ctx.o.store,
      ctx.partition,
      {
        parent: marker.parent_timeline,
        branchLsn: marker.branch_lsn,
        branchedAt: new Date(marker.restored_at),
        reason: marker.reason,
        restoreId: marker.restore_id,
      },
      { signal: ctx.signal },
    );
    timeline = claimed.timeline.timeline;
    await writeTimelineFile(dir, timeline);
    ctx.log.info(
      claimed.created ? 'new archive timeline' : 'continuing the archive timeline of this restore',
      {
        timeline,
        parent: marker.parent_timeline,
        branchLsn: marker.branch_lsn,
      },
    );
  }
  ctx.timeline = timeline ?? 1;
  if (ctx.timeline === 1) ctx.branchLsn = 0;
  else if (marker) ctx.branchLsn = marker.branch_lsn;
  else {
    const history = await readHistory(ctx.o.store, ctx.partition, ctx.timeline, ctx.signal);
    if (!history) {
      throw new WalArchiverError(
        ErrorCodes.CORRUPT,
        `partition ${ctx.partition}: archiver/timeline names timeline ${ctx.timeline}, which has no history record`,
        { retryable: false, details: { partition: ctx.partition, timeline: ctx.timeline } },
      );
    }
    ctx.branchLsn = history.branch_lsn;
  }
  return marker;
}

/** Whether the restored state still waits to become the timeline's first base backup. */
export function restoredBasePending(
  ctx: PartitionContext,
  marker: RestoredMarker | undefined,
): Promise<boolean> {
  return marker ? hasRestoredState(ctx.o.partitionDir) : Promise.resolve(false);
}

/**
 * The first thing a sidecar does on a restored partition's new timeline: the
 * state at the branch point, as a base backup of that timeline (so the
 * timeline is restorable without its parent's WAL), unless the manifest has
 * it already; then the local copy goes. Returns the backup, when taken here.
 */
export async function uploadRestoredBaseIfNeeded(
  ctx: PartitionContext,
  marker: RestoredMarker,
  manifest: PartitionManifest | undefined,
): Promise<BaseBackupResult | undefined> {
  const dir = ctx.o.partitionDir;
  let result: BaseBackupResult | undefined;
  if (!(manifest?.backups ?? []).some((b) => b.lsn === marker.branch_lsn)) {
    result = await uploadRestoredBase({
      store: ctx.o.store,
      partition: ctx.partition,
      node: ctx.node,
      term: ctx.term,
      timeline: ctx.timeline,
      stateDir: join(dir, RESTORED_STATE_DIR),
      lsn: marker.branch_lsn,
      lsnTerm: marker.term,
      ...(marker.max_committed_at !== undefined ? { maxCommittedAt: marker.max_committed_at } : {}),
      spoolDir: ctx.o.spoolDir,
      zstdLevel: ctx.o.config.zstdLevel,
      ...(ctx.o.backup?.retention ? { retention: ctx.o.backup.retention } : {}),
      signal: ctx.signal,
      logger: ctx.log,
    });
  }
  await removeRestoredState(dir);
  return result;
}

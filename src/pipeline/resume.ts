import { ErrorCodes, WalArchiverError } from '../../contract/errors.js';
import { readCommitLsn } from '../tail/committed.js';
import { listEntryLsns, readArchiverPosition } from '../../contract/wal/entry.js';
import type { Committer } from './committer.js';
import { jitter, type PartitionContext } from './context.js';
import type { BaseBackupResult } from '../backup/take.js';
import type { PartitionManifest } from '../manifest/partition-manifest.js';
import { enterTimeline, restoredBasePending, uploadRestoredBaseIfNeeded } from './timeline-entry.js';

/**
 * Where a new leader's archiver starts: the LSN after the archived prefix,
 * once it has claimed the partition manifest for its term. A partition with
 * nothing to do waits idle first, without touching the object store.
 * `considerBackup` runs the backup policy once the manifest is known.
 */
export async function resume(
  ctx: PartitionContext,
  committer: Committer,
  considerBackup: () => void,
  backupTaken: (result: BaseBackupResult) => void,
): Promise<number> {
  const marker = await enterTimeline(ctx);
  // A restored partition's first base backup is due before anything else: not idle.
  const pending = await restoredBasePending(ctx, marker);
  if (!pending) await idleUntilActive(ctx, committer, considerBackup);
  const release = await ctx.o.resumes?.acquire(ctx.signal);
  try {
    return await resumeFromManifest(ctx, committer, considerBackup, async (before) => {
      if (!pending || !marker) return;
      const taken = await uploadRestoredBaseIfNeeded(ctx, marker, before);
      if (taken) backupTaken(taken);
    });
  } finally {
    release?.();
  }
}

/**
 * A partition with nothing to archive or publish (its `archiver/position`
 * is at its commit LSN) needs nothing from the object store: it reports
 * `archiving` at once and reads its manifest only when new entries are
 * committed. With thousands of partitions led, a restart is then two small
 * local reads for each idle one. With base backups on, an idle partition
 * still reads its manifest once, after a spread-out delay, so the age
 * threshold is checked.
 */
async function idleUntilActive(
  ctx: PartitionContext,
  committer: Committer,
  considerBackup: () => void,
): Promise<void> {
  let waits = 0;
  while (!ctx.aborted) {
    // The first look is bounded node-wide like a resume: thousands of partitions start at once.
    const release = waits === 0 ? await ctx.o.resumes?.acquire(ctx.signal) : undefined;
    let commit: number;
    let position: number | undefined;
    try {
      commit = await readCommitLsn(ctx.o.partitionDir);
      position = await readArchiverPosition(ctx.o.partitionDir).catch(() => undefined);
    } finally {
      release?.();
    }
    if (position === undefined || commit > position) return;
    if (ctx.state === 'starting') {
      ctx.archivedLsn = position;
      ctx.committedLsn = commit;
      ctx.readThrough = position;
      ctx.publishedLsn = ctx.o.events ? position : Number.MAX_SAFE_INTEGER;
      committer.resumeIdle(position);
      ctx.markArchiving();
      ctx.updateLag();
    }
    if (waits > 0 && ctx.o.backup && !committer.manifest) {
      const manifest = await committer.readForPolicy();
      if (manifest) ctx.archivedLsn = Math.max(ctx.archivedLsn, manifest.archived?.last_lsn ?? 0);
      considerBackup();
    }
    const first = waits === 0 && ctx.o.backup !== undefined;
    waits++;
    const poll = ctx.o.config.idlePollMs;
    await ctx.wait('archive', first ? poll * (0.5 + Math.random()) : jitter(poll));
  }
}

async function resumeFromManifest(
  ctx: PartitionContext,
  committer: Committer,
  considerBackup: () => void,
  claimed: (before: PartitionManifest | undefined) => Promise<void>,
): Promise<number> {
  const before = await committer.claim();
  await claimed(before);
  // A new timeline's history up to its branch point is its parent's (and its first base backup).
  const archived = Math.max(before?.archived?.last_lsn ?? 0, ctx.branchLsn);
  ctx.archivedLsn = archived;
  ctx.readThrough = archived;
  ctx.readProgressAt = ctx.now();
  ctx.publishedLsn = Math.max(ctx.publishedLsn, before?.published_lsn ?? 0, ctx.branchLsn);
  if (!ctx.o.events) ctx.publishedLsn = Number.MAX_SAFE_INTEGER;
  const last = before?.segments.at(-1);
  if (last) ctx.lastCommitTime = Date.parse(last.last_committed_at);
  const commit = await readCommitLsn(ctx.o.partitionDir);
  if (archived < commit) {
    const lsns = await listEntryLsns(ctx.o.partitionDir);
    const first = lsns[0];
    if (first === undefined || first > archived + 1) {
      throw new WalArchiverError(
        ErrorCodes.CORRUPT,
        `partition ${ctx.partition}: the archive ends at LSN ${archived} but the WAL starts at ${first ?? 'nothing'}; ` +
          `LSNs ${archived + 1}..${(first ?? commit + 1) - 1} were pruned before they were archived`,
        { retryable: false, details: { lsn: archived + 1 } },
      );
    }
  }
  ctx.markArchiving();
  await committer.writePosition();
  considerBackup();
  ctx.log.info('archiving', { archivedLsn: archived, commitLsn: commit, publishedLsn: ctx.publishedLsn });
  return archived;
}

import { stat } from 'node:fs/promises';
import type { SegmentInspector } from '../archive/segment-writer.js';
import { ContentDigest } from '../../contract/wal/entry-info.js';
import { ErrorCodes, isWalArchiverError, WalArchiverError } from '../../contract/errors.js';
import { readPartitionManifest } from '../manifest/partition-manifest.js';
import { readCommittedEntryContent, type CommittedEntry } from '../tail/committed.js';
import { entryDir, MANIFEST_FILE, RAFT_FILE } from '../../contract/wal/entry.js';
import type { PartitionContext } from './context.js';

/**
 * Reading committed entries for the archive loop, and what a failed read
 * means: an entry removed by the node while it was read (a stale archiver
 * racing a snapshot install or a prune) is not corruption of the WAL.
 */

/** Entry files up to this size are read into memory whole; larger ones are streamed. */
const INLINE_MAX = 1024 * 1024;

/** Reads entry `lsn` (at most `commit`) with its content, for packing. */
export async function readEntryContent(ctx: PartitionContext, lsn: number, commit: number) {
  try {
    return readCommittedEntryContent(ctx.o.partitionDir, lsn, commit, INLINE_MAX);
  } catch (err) {
    throw await classifyReadError(ctx, lsn, err);
  }
}

/**
 * A read of entry `lsn` failed. If the entry's directory is gone now, the node
 * removed it while it was being read (a stale archiver racing a snapshot
 * install or a prune): that is a missing entry, not corruption.
 */
export async function classifyReadError(ctx: PartitionContext, lsn: number, err: unknown): Promise<unknown> {
  if (isWalArchiverError(err, ErrorCodes.NOT_FOUND)) return explainMissing(ctx, lsn, err);
  if (isWalArchiverError(err, ErrorCodes.CORRUPT)) {
    const gone = await stat(entryDir(ctx.o.partitionDir, lsn)).then(
      () => false,
      () => true,
    );
    if (gone) return explainMissing(ctx, lsn, err);
  }
  return err;
}

/**
 * A committed entry is gone from this node's WAL. That is legitimate when
 * another leader's sidecar archived it meanwhile (this node lost leadership
 * and caught up from a snapshot): then this archiver is stale (FENCED) or
 * resumes after what is archived. Only otherwise is it a gap: CORRUPT.
 */
async function explainMissing(ctx: PartitionContext, lsn: number, cause: unknown): Promise<WalArchiverError> {
  const m = (
    await readPartitionManifest(ctx.o.store, ctx.partition, {
      signal: ctx.signal,
      timeline: ctx.timeline,
    })
  )?.value;
  if (m?.leader && (m.leader.term > ctx.term || (m.leader.term === ctx.term && m.leader.node !== ctx.node))) {
    return new WalArchiverError(
      ErrorCodes.FENCED,
      `partition ${ctx.partition}: term ${m.leader.term} archives it now`,
      {
        cause,
        details: { lsn },
      },
    );
  }
  if ((m?.archived?.last_lsn ?? 0) >= lsn) {
    return new WalArchiverError(
      ErrorCodes.UNAVAILABLE,
      `partition ${ctx.partition}: LSN ${lsn} was archived meanwhile; resuming`,
      { cause, retryable: true, details: { lsn } },
    );
  }
  return new WalArchiverError(
    ErrorCodes.CORRUPT,
    `partition ${ctx.partition}: committed LSN ${lsn} is missing from the WAL and not archived`,
    { cause, retryable: false, details: { lsn } },
  );
}

/** Checks an entry's content against the digest in its RAFT record while it is packed. */
export function digestChecker(partition: string, e: CommittedEntry): SegmentInspector {
  let digest: ContentDigest | undefined;
  return {
    beginFile(_entry, name, size) {
      if (name === MANIFEST_FILE) digest = new ContentDigest();
      if (name !== RAFT_FILE) digest?.beginFile(name, size);
    },
    file(_entry, name, chunk) {
      if (name !== RAFT_FILE) digest?.update(chunk);
    },
    entryDone(entry) {
      const expected = e.contentSha256;
      const actual = digest?.digest();
      digest = undefined;
      if (expected && actual && !expected.equals(actual)) {
        throw new WalArchiverError(
          ErrorCodes.CORRUPT,
          `partition ${partition}: WAL entry at LSN ${entry.lsn} does not match the digest in its RAFT record (corrupt on disk)`,
          { retryable: false, details: { lsn: entry.lsn } },
        );
      }
      if (!expected && entry.files.length > 2) {
        throw new WalArchiverError(
          ErrorCodes.CORRUPT,
          `partition ${partition}: WAL entry at LSN ${entry.lsn} has files but no digest`,
          { retryable: false, details: { lsn: entry.lsn } },
        );
      }
    },
  };
}

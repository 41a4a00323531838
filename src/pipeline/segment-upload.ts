import { createReadStream } from 'node:fs';
import { SegmentWriter, type SpooledSegment } from '../archive/segment-writer.js';
import * as dfs from '../../contract/fs/durable-fs.js';
import { ErrorCodes, isWalArchiverError } from '../../contract/errors.js';
import { segmentKey } from '../manifest/keys.js';
import type { SegmentRecord } from '../manifest/partition-manifest.js';
import { retry } from '../../contract/retry.js';
import { MetadataKeys } from '../store/object-store.js';
import { checkExistingSegment, type AdoptedSegment, type WalEntryDigest } from './adopt.js';
import type { PartitionContext } from './context.js';

/** A segment being filled: entries are packed into it as they are read. */
export interface OpenSegment {
  writer: SegmentWriter;
  startedAt: number;
  bytes: number;
  firstAt: number;
  lastAt: number;
  /** The greatest commit stamp of its entries (stamps need not grow with the LSN); 0 when none has one. */
  maxAt: number;
  /** What the WAL says of each entry packed, for checking a segment found under the same key. */
  digests: WalEntryDigest[];
}

/**
 * A segment's age counts from its first entry's commit (or from now, for an
 * entry without a commit time or one stamped ahead of this clock): an entry
 * read late, because the loop was recording the previous segment, still
 * becomes durable within the segment age of its commit.
 */
export async function openSegment(
  ctx: PartitionContext,
  firstLsn: number,
  firstCommittedAt: number,
): Promise<OpenSegment> {
  const writer = await SegmentWriter.open(ctx.o.spoolDir, firstLsn, {
    level: ctx.o.config.zstdLevel,
    signal: ctx.signal,
  });
  const now = ctx.now();
  const startedAt = firstCommittedAt > 0 ? Math.min(now, firstCommittedAt) : now;
  return { writer, startedAt, bytes: 0, firstAt: 0, lastAt: 0, maxAt: 0, digests: [] };
}

/**
 * Seals a segment and uploads it (a conditional create, within the
 * node-wide upload limit, retried); returns the record for the manifest.
 * The spool file is removed either way.
 */
export async function sealAndUpload(ctx: PartitionContext, open: OpenSegment): Promise<SegmentRecord> {
  const fallback = ctx.now();
  const firstAt = open.firstAt || open.lastAt || fallback;
  const lastAt = open.lastAt || open.firstAt || fallback;
  const segment = await open.writer.seal();
  try {
    const key = segmentKey(ctx.partition, segment.firstLsn, segment.lastLsn, ctx.timeline);
    const release = await ctx.o.uploads.acquire(ctx.signal);
    const started = performance.now();
    let stored: AdoptedSegment;
    try {
      stored = await retry(() => upload(ctx, key, segment, open.maxAt, open.digests), {
        attempts: 4,
        signal: ctx.signal,
        onRetry: () => ctx.o.metrics.retries.inc({ partition: ctx.partition, operation: 'upload' }),
      });
    } finally {
      release();
    }
    ctx.o.metrics.uploadSeconds.observe((performance.now() - started) / 1000);
    return {
      key,
      first_lsn: segment.firstLsn,
      last_lsn: segment.lastLsn,
      entries: segment.entries,
      bytes: stored.bytes,
      raw_bytes: segment.rawBytes,
      sha256: stored.sha256,
      first_committed_at: new Date(firstAt).toISOString(),
      last_committed_at: new Date(lastAt).toISOString(),
      ...(open.maxAt ? { max_committed_at: new Date(open.maxAt).toISOString() } : {}),
      archived_at: new Date(ctx.now()).toISOString(),
      term: ctx.term,
      node: ctx.node,
    };
  } finally {
    await dfs.rm(segment.path, { force: true });
  }
}

async function upload(
  ctx: PartitionContext,
  key: string,
  segment: SpooledSegment,
  maxAt: number,
  wal: readonly WalEntryDigest[],
): Promise<AdoptedSegment> {
  const { path, bytes: size, sha256, firstLsn: first, lastLsn: last, entries } = segment;
  try {
    await ctx.o.store.create(key, createReadStream(path), {
      signal: ctx.signal,
      contentType: 'application/zstd',
      size,
      metadata: {
        [MetadataKeys.SHA256]: sha256,
        [MetadataKeys.FIRST_LSN]: String(first),
        [MetadataKeys.LAST_LSN]: String(last),
        [MetadataKeys.PARTITION]: ctx.partition,
        entries: String(entries),
        ...(maxAt ? { [MetadataKeys.MAX_COMMITTED_AT]: new Date(maxAt).toISOString() } : {}),
      },
    });
    return { sha256, bytes: size };
  } catch (err) {
    if (!isWalArchiverError(err, ErrorCodes.ALREADY_EXISTS)) throw err;
  }
  // Written before: by this sidecar before a restart, or by another leader's sidecar. The same
  // committed entries give the same bytes with the same zstd level and library; with another
  // (a crash across an upgrade, two versions in a rolling upgrade) the bytes differ, so the
  // existing object's entries are checked against the WAL and, when they are the same, adopted.
  const existing = await ctx.o.store.head(key, { signal: ctx.signal });
  const existingSha = existing?.metadata[MetadataKeys.SHA256];
  if (existing && existingSha === sha256) return { sha256, bytes: existing.size };
  const adopted = await checkExistingSegment({
    store: ctx.o.store,
    partition: ctx.partition,
    key,
    wal,
    scratchParent: ctx.o.spoolDir,
    signal: ctx.signal,
  });
  ctx.log.info('segment exists with other bytes but the same entries; adopting it', {
    key,
    firstLsn: first,
    lastLsn: last,
    sha256: adopted.sha256,
    packedSha256: sha256,
  });
  return adopted;
}

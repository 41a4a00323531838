import {
  readPartitionManifest,
  updatePartitionManifest,
  type PartitionManifest,
  type SegmentRecord,
} from '../manifest/partition-manifest.js';
import { retry } from '../../contract/retry.js';
import { readArchiverPosition, writeArchiverPosition } from '../../contract/wal/entry.js';
import type { PartitionContext } from './context.js';

/**
 * The committer: the only writer of this partition's manifest and of its
 * `archiver/position` while the archiver runs. It keeps the manifest and its
 * ETag as last read or written here, so the next compare-and-swap goes
 * against them without a read first; every write is fenced by the term.
 * Segments are recorded one at a time, in LSN order (the caller awaits each).
 */
export class Committer {
  /** The partition manifest as last read or written here (the backup policy decides from it). */
  manifest: PartitionManifest | undefined;
  /** The published cursor the partition manifest holds. */
  recordedPublished = 0;
  /** The manifest and its ETag as last read or written here: the next write goes against it. */
  private stored: { value: PartitionManifest; etag: string } | undefined;
  private positionWritten = -1;

  constructor(private readonly ctx: PartitionContext) {}

  private get writer() {
    return { node: this.ctx.node, term: this.ctx.term };
  }

  /**
   * Claims the manifest for this term (a stale leader's sidecar is fenced
   * from now on) and returns it as it was before the claim.
   */
  async claim(): Promise<PartitionManifest | undefined> {
    const c = this.ctx;
    const stored = await readPartitionManifest(c.o.store, c.partition, {
      signal: c.signal,
      timeline: c.timeline,
    });
    const claimed = await updatePartitionManifest(
      c.o.store,
      c.partition,
      this.writer,
      {},
      { signal: c.signal, current: stored, timeline: c.timeline },
    );
    this.remember(claimed);
    this.recordedPublished = stored?.value.published_lsn ?? 0;
    return stored?.value;
  }

  /**
   * An idle partition resumes from its `archiver/position` alone: published
   * through it (at worst a later leader republishes a few events the
   * manifest does not show as published), and it is already written.
   */
  resumeIdle(position: number): void {
    this.positionWritten = position;
    this.recordedPublished = position;
  }

  /** Reads the manifest for the backup policy only (an idle partition writes nothing). */
  async readForPolicy(): Promise<PartitionManifest | undefined> {
    const c = this.ctx;
    this.manifest = (
      await readPartitionManifest(c.o.store, c.partition, { signal: c.signal, timeline: c.timeline })
    )?.value;
    return this.manifest;
  }

  /** Records a finished segment, with the published cursor as it is now (publishing goes on meanwhile). */
  async recordSegment(record: SegmentRecord): Promise<void> {
    const c = this.ctx;
    const events = c.o.events !== undefined;
    const sentPublished = events ? c.publishedLsn : 0;
    const written = await retry(
      () =>
        updatePartitionManifest(
          c.o.store,
          c.partition,
          this.writer,
          { segments: [record], publishedLsn: sentPublished },
          { signal: c.signal, current: this.stored, timeline: c.timeline },
        ),
      {
        attempts: 5,
        signal: c.signal,
        onRetry: () => c.o.metrics.retries.inc({ partition: c.partition, operation: 'manifest' }),
      },
    );
    this.remember(written);
    c.archivedLsn = record.last_lsn;
    if (events) this.recordedPublished = Math.max(this.recordedPublished, sentPublished);
  }

  /**
   * Segments carry the published cursor into the manifest; when publishing
   * catches up on a partition with nothing left to archive (after a bus
   * outage), record it on its own so a new leader does not republish as much.
   */
  async recordPublishedIfIdle(): Promise<void> {
    const c = this.ctx;
    if (c.publishedLsn <= this.recordedPublished || c.archivedLsn < c.committedLsn) return;
    const cursor = c.publishedLsn;
    const written = await updatePartitionManifest(
      c.o.store,
      c.partition,
      this.writer,
      { publishedLsn: cursor },
      { signal: c.signal, current: this.stored, timeline: c.timeline },
    );
    this.remember(written);
    this.recordedPublished = Math.max(this.recordedPublished, cursor);
  }

  /** A base backup (and retention) wrote the manifest: keep what it returned; the next write reads it first. */
  backupWrote(manifest: PartitionManifest): void {
    this.manifest = manifest;
    this.stored = undefined;
  }

  /** `archiver/position`: what the node may prune through — archived and (with an event bus) published. */
  async writePosition(): Promise<void> {
    const c = this.ctx;
    const position = Math.min(c.archivedLsn, c.publishedLsn);
    if (position === this.positionWritten) return;
    if (this.positionWritten === -1) {
      const current = await readArchiverPosition(c.o.partitionDir).catch(() => undefined);
      // Never move it back: an older value would only make the node keep more.
      if (current !== undefined && current > position) {
        this.positionWritten = current;
        return;
      }
    }
    await writeArchiverPosition(c.o.partitionDir, position);
    this.positionWritten = position;
  }

  /** Keeps the manifest as written (or found unchanged), so the next write needs no read first. */
  private remember(w: { manifest: PartitionManifest; etag: string | undefined }): void {
    this.manifest = w.manifest;
    this.stored = w.etag === undefined ? undefined : { value: w.manifest, etag: w.etag };
  }
}

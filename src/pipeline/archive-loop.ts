import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { SegmentRecord } from '../manifest/partition-manifest.js';
import { readCommitLsn, type CommittedEntry } from '../tail/committed.js';
import { jitter, type PartitionContext } from './context.js';
import { openSegment, sealAndUpload, type OpenSegment } from './segment-upload.js';
import { classifyReadError, digestChecker, readEntryContent } from './wal-read.js';

/** Entries read between yields to the event loop (reads of small entries are synchronous). */
const READS_PER_YIELD = 32;

/** A segment sealed and uploading; `done` once its upload settled. */
export interface Pending {
  done: boolean;
  promise: Promise<SegmentRecord>;
}

export interface ArchiveLoopStages {
  /** Where to start: the last LSN archived, once the manifest is claimed. */
  resume(): Promise<number>;
  /** Records an uploaded segment (awaited, one at a time, in LSN order). */
  complete(p: Pending): Promise<void>;
  /** Sees each entry read (the entry publisher keeps its event). */
  read(e: CommittedEntry): void;
  /** Called when the loop has waited (the backup policy looks at the clock). */
  waited(): void;
}

/**
 * The archive loop: committed entries (LSN order, never above
 * hard_state.Commit) are read once each, straight into the open segment;
 * a segment is sealed when full (size / entries) or old, and uploaded while
 * the next one fills. Up to `maxInflight` segments upload at once; they are
 * recorded strictly in order, so the archived position only advances over a
 * contiguous, durable prefix.
 */
export async function archiveLoop(ctx: PartitionContext, stages: ArchiveLoopStages): Promise<void> {
  let next = (await stages.resume()) + 1;
  const inflight: Pending[] = [];
  let open: OpenSegment | undefined;
  const cfg = ctx.o.config;
  const full = (seg: OpenSegment) =>
    seg.bytes >= cfg.segmentMaxBytes || seg.writer.entries >= cfg.segmentMaxEntries;
  try {
    while (!ctx.aborted) {
      const commit = await readCommitLsn(ctx.o.partitionDir);
      ctx.committedLsn = commit;
      let read = 0;
      while (next <= commit && !(open && full(open)) && !ctx.aborted) {
        let e;
        try {
          e = await readEntryContent(ctx, next, commit);
          open ??= await openSegment(ctx, next, e.committedAt);
          await open.writer
            .append(e, e.content, digestChecker(ctx.partition, e))
            .catch(async (err: unknown) => {
              throw await classifyReadError(ctx, next, err);
            });
        } catch (err) {
          // Record the segments already uploaded (all before this entry) before giving up.
          while (inflight.length > 0 && !ctx.aborted) {
            const ok = await stages.complete(inflight.shift()!).then(
              () => true,
              () => false,
            );
            if (!ok) break;
          }
          throw err;
        }
        track(ctx, open, e);
        stages.read(e);
        if (ctx.oldestPendingTime === 0) ctx.oldestPendingTime = e.committedAt || ctx.now();
        ctx.readThrough = next;
        ctx.readProgressAt = ctx.now();
        next++;
        if (++read % READS_PER_YIELD === 0) {
          ctx.wake('publish');
          await yieldToEventLoop();
        }
      }
      if (read > 0) ctx.wake('publish');
      ctx.updateLag();
      if (open && (full(open) || ctx.now() - open.startedAt >= cfg.segmentMaxAgeMs)) {
        while (inflight.length >= cfg.maxInflight) await stages.complete(inflight.shift()!);
        const sealing = open;
        open = undefined;
        const pending: Pending = { done: false, promise: sealAndUpload(ctx, sealing) };
        pending.promise.then(
          () => ((pending.done = true), ctx.wake('archive')),
          () => ((pending.done = true), ctx.wake('archive')),
        );
        inflight.push(pending);
        continue;
      }
      while (inflight.length > 0 && inflight[0]!.done) await stages.complete(inflight.shift()!);
      const waitMs = open
        ? Math.max(1, cfg.segmentMaxAgeMs - (ctx.now() - open.startedAt))
        : next <= commit
          ? 0
          : jitter(cfg.idlePollMs);
      if (waitMs > 0) {
        await ctx.wait('archive', waitMs);
        stages.waited();
      }
    }
  } finally {
    // Stopping or failing: an unsealed segment is dropped (its entries are read again);
    // uploads in flight finish (immutable objects; harmless either way).
    if (open) await open.writer.discard();
    for (const p of inflight) await p.promise.catch(() => undefined);
  }
}

/** Adds an entry's size, digest and commit time to its segment. */
function track(ctx: PartitionContext, seg: OpenSegment, e: CommittedEntry): void {
  seg.bytes += e.bytes;
  seg.digests.push({ lsn: e.lsn, term: e.term, contentSha256: e.contentSha256 });
  const t = e.committedAt || ctx.lastCommitTime;
  if (!seg.firstAt && t) seg.firstAt = t;
  if (t) seg.lastAt = t;
  if (e.committedAt > seg.maxAt) seg.maxAt = e.committedAt;
  if (e.committedAt) ctx.lastCommitTime = Math.max(ctx.lastCommitTime, e.committedAt);
}

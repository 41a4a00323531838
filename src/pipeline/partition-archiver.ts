import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import * as dfs from '../durable-fs.js';
import { ContentDigest } from '../entry-info.js';
import { describeError, ErrorCodes, isRetryable, isWalArchiverError, WalArchiverError } from '../errors.js';
import { Topics, type EventBus } from '../events/event-bus.js';
import type { Logger } from '../log.js';
import { segmentKey } from '../manifest/keys.js';
import {
  readPartitionManifest,
  updatePartitionManifest,
  type PartitionManifest,
  type SegmentRecord,
} from '../manifest/partition-manifest.js';
import { decide, policyStateFromManifest, type BackupSlots, type Thresholds } from '../policy/index.js';
import { takeBaseBackup, type BackupRetentionConfig } from '../backup/take.js';
import { applyRetention, planRetention, type RetentionPolicy } from '../backup/retention.js';
import { Backoff, retry, sleep } from '../retry.js';
import { MetadataKeys, type ObjectStore } from '../store/object-store.js';
import {
  readCommitLsn,
  readCommittedEntry,
  readCommittedEntryContent,
  type CommittedEntry,
} from '../tail/committed.js';
import {
  entryDir,
  listEntryLsns,
  MANIFEST_FILE,
  RAFT_FILE,
  readArchiverPosition,
  writeArchiverPosition,
} from '../wal/entry.js';
import type { ArchiverMetrics } from './metrics.js';
import { checkExistingSegment, type AdoptedSegment, type WalEntryDigest } from './adopt.js';
import { isSpoolError, SegmentWriter, type SegmentInspector } from '../archive/segment-writer.js';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { Semaphore } from './semaphore.js';

/**
 * Archives one partition while this node leads it, in the term it leads in:
 *
 *   committed entries (LSN order, never above hard_state.Commit)
 *     → batched into a segment (size / entry-count / age limits)
 *     → tar + zstd, spooled with its SHA-256 (each entry's content checked
 *       against the digest in its RAFT record on the way)
 *     → conditional create of partitions/<id>/wal/<first>-<last>.tar.zst
 *     → in segment order: partition manifest (CAS, term-fenced),
 *       `wal.archived` event, `archiver/position`
 *
 * Up to `maxInflight` segments are packed and uploaded at once; the archived
 * position only advances over a contiguous, durable prefix. `wal.entries`
 * events are published by a second loop with its own cursor, so a bus that is
 * down never holds archiving back; the node keeps the WAL until entries are
 * both archived and published.
 *
 * Errors: transient ones (store or bus down) retry with capped backoff, per
 * partition; FENCED (a newer leader took over) stops quietly; CORRUPT stops
 * this partition with a metric and a log line naming the LSN.
 */

export interface ArchiverConfig {
  segmentMaxBytes: number;
  segmentMaxEntries: number;
  segmentMaxAgeMs: number;
  maxInflight: number;
  zstdLevel: number;
  /** How often to look at the hard state when no change notification came (a safety net, not the mechanism). */
  idlePollMs: number;
}

export const DEFAULT_ARCHIVER_CONFIG: ArchiverConfig = {
  segmentMaxBytes: 16 * 1024 * 1024,
  segmentMaxEntries: 10_000,
  segmentMaxAgeMs: 500,
  maxInflight: 2,
  zstdLevel: 3,
  idlePollMs: 60_000,
};

/** Base backups taken by the archiving sidecar when the policy says so (issue: thresholds on WAL volume). */
export interface BackupOptions {
  slots: BackupSlots;
  thresholds: Required<Thresholds>;
  nodeUrl: string;
  retention?: BackupRetentionConfig;
  /** Applied after each backup when set: how many / how long base backups are kept. */
  keep?: RetentionPolicy;
  spoolDir: string;
  zstdLevel?: number;
}

export interface PartitionArchiverOptions {
  backup?: BackupOptions;
  partition: string;
  partitionDir: string;
  node: number;
  term: number;
  store: ObjectStore;
  events?: EventBus;
  spoolDir: string;
  uploads: Semaphore;
  /** Bounds how many partitions read and claim their manifests at once (start-up with many partitions). */
  resumes?: Semaphore;
  config: ArchiverConfig;
  metrics: ArchiverMetrics;
  logger: Logger;
  now?: () => number;
}

export type ArchiverState = 'starting' | 'archiving' | 'fenced' | 'failed' | 'stopped';

interface Pending {
  done: boolean;
  promise: Promise<SegmentRecord>;
}

/** A segment being filled: entries are packed into it as they are read. */
interface OpenSegment {
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

/** What a `wal.entries` event needs of an entry, kept from the archive loop's read. */
interface EntryEventSource {
  term: number;
  bytes: number;
  committedAt: number;
  refs: CommittedEntry['refs'];
}

const EVENT_BATCH = 500;
/** Entry files up to this size are read into memory whole; larger ones are streamed. */
const INLINE_MAX = 1024 * 1024;
/** Entries read between yields to the event loop (reads of small entries are synchronous). */
const READS_PER_YIELD = 32;
/** Entry events remembered from the archive loop's reads for the publisher (beyond, it reads the WAL). */
const EVENT_CACHE_MAX = 2 * EVENT_BATCH;
/** The publisher reads the WAL itself when the archive loop has not read further for this long. */
const PUBLISH_READ_STALL_MS = 1_000;
/** The publisher's safety-net poll, in idle polls (the archive loop and notifications wake it). */
const PUBLISHER_IDLE_FACTOR = 5;

export class PartitionArchiver {
  readonly partition: string;
  readonly term: number;
  state: ArchiverState = 'starting';
  error: string | undefined;
  archivedLsn = 0;
  committedLsn = 0;
  publishedLsn = 0;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly abort = new AbortController();
  private wakeArchiver: (() => void) | undefined;
  private wakePublisher: (() => void) | undefined;
  private readonly woken = new Set<'archive' | 'publish'>();
  private loops: Promise<void> | undefined;
  private lastCommitTime = 0;
  private oldestPendingTime = 0;
  private positionWritten = -1;
  /** The published cursor the partition manifest holds. */
  private recordedPublished = 0;
  private readonly archivedEvents: Array<Record<string, unknown>> = [];
  private resumed!: Promise<void>;
  /** The partition manifest as last read or written here (the policy decides from it). */
  private manifest: PartitionManifest | undefined;
  private backupRun: Promise<void> | undefined;
  private backupFailedAt: number | undefined;
  private manualBackup = false;
  private readonly backupEvents: Array<Record<string, unknown>> = [];
  private resolveResumed!: () => void;
  /** The partition manifest and its etag as last read or written here: the next write goes against it. */
  private stored: { value: PartitionManifest; etag: string } | undefined;
  /** Events of entries the archive loop has read and the publisher has not yet published. */
  private readonly eventCache = new Map<number, EntryEventSource>();
  /** The highest LSN the archive loop has read, and when it last read further. */
  private readThrough = 0;
  private readProgressAt = 0;
  /** The commit LSN the publisher last saw, and since when it has seen entries the archive loop has not read. */
  private publisherCommit = 0;
  private behindSince: number | undefined;

  constructor(private readonly o: PartitionArchiverOptions) {
    this.partition = o.partition;
    this.term = o.term;
    this.log = o.logger.child({ partition: o.partition, term: o.term });
    this.now = o.now ?? Date.now;
    this.resumed = new Promise((resolve) => (this.resolveResumed = resolve));
  }

  start(): void {
    this.o.metrics.leading.set({ partition: this.partition }, 1);
    this.loops = Promise.all([this.supervise('archive', () => this.archiveLoop()), this.publishLoop()]).then(
      () => undefined,
    );
  }

  /** The hard state changed: look for newly committed entries now. */
  notify(): void {
    this.wake('archive');
    this.wake('publish');
  }

  async stop(): Promise<void> {
    this.abort.abort();
    this.notify();
    await this.loops;
    await this.backupRun;
    if (this.state === 'archiving' || this.state === 'starting') this.state = 'stopped';
    this.o.metrics.leading.set({ partition: this.partition }, 0);
  }

  /** Resolves once the position to resume from is known (for tests and start-up ordering). */
  whenResumed(): Promise<void> {
    return this.resumed;
  }

  private get aborted(): boolean {
    return this.abort.signal.aborted;
  }

  // ---- supervision: the per-loop retry layer ---------------------------------

  private async supervise(name: string, loop: () => Promise<void>): Promise<void> {
    const backoff = new Backoff({ initialMs: 250, maxMs: 30_000 });
    let failures = 0;
    while (!this.aborted) {
      try {
        await loop();
        return;
      } catch (err) {
        if (this.aborted) return;
        if (isWalArchiverError(err, ErrorCodes.FENCED)) {
          this.state = 'fenced';
          this.error = describeError(err);
          this.log.warn('a newer leader archives this partition; stopping', { error: err });
          this.o.metrics.leading.set({ partition: this.partition }, 0);
          this.abort.abort();
          return;
        }
        if (!isRetryable(err)) {
          this.state = 'failed';
          this.error = describeError(err);
          this.o.metrics.errors.inc({ partition: this.partition, kind: errorKind(err) });
          this.o.metrics.stopped.set({ partition: this.partition }, 1);
          this.log.error('archiving stopped', {
            error: err,
            loop: name,
            ...(isWalArchiverError(err) ? err.details : {}),
          });
          this.abort.abort();
          return;
        }
        failures++;
        this.o.metrics.errors.inc({ partition: this.partition, kind: errorKind(err) });
        this.o.metrics.retries.inc({ partition: this.partition, operation: name });
        const delay = backoff.next();
        // Rate-limited: the first failure and then every tenth.
        if (failures === 1 || failures % 10 === 0) {
          this.log.warn('archiving failed; retrying', { error: err, loop: name, failures, retryInMs: delay });
        }
        await sleep(delay, this.abort.signal).catch(() => undefined);
      }
    }
  }

  // ---- archiving ------------------------------------------------------------------

  /**
   * A partition with nothing to archive or publish (its `archiver/position`
   * is at its commit LSN) needs nothing from the object store: it reports
   * `archiving` at once and reads its manifest only when new entries are
   * committed. With thousands of partitions led, a restart is then two small
   * local reads for each idle one. With base backups on, an idle partition
   * still reads its manifest once, after a spread-out delay, so the age
   * threshold is checked.
   */
  private async idleUntilActive(): Promise<void> {
    let waits = 0;
    while (!this.aborted) {
      // The first look is bounded node-wide like a resume: thousands of partitions start at once.
      const release = waits === 0 ? await this.o.resumes?.acquire(this.abort.signal) : undefined;
      let commit: number;
      let position: number | undefined;
      try {
        commit = await readCommitLsn(this.o.partitionDir);
        position = await readArchiverPosition(this.o.partitionDir).catch(() => undefined);
      } finally {
        release?.();
      }
      if (position === undefined || commit > position) return;
      if (this.state === 'starting') {
        this.archivedLsn = position;
        this.committedLsn = commit;
        this.readThrough = position;
        this.positionWritten = position;
        this.publishedLsn = this.o.events ? position : Number.MAX_SAFE_INTEGER;
        // Published through the position; nothing to record in the manifest for that (at worst a
        // later leader republishes a few events the manifest does not show as published).
        this.recordedPublished = position;
        this.state = 'archiving';
        this.resolveResumed();
        this.updateLag();
      }
      if (waits > 0 && this.o.backup && !this.manifest) {
        const stored = await readPartitionManifest(this.o.store, this.partition, {
          signal: this.abort.signal,
        });
        this.manifest = stored?.value;
        if (this.manifest)
          this.archivedLsn = Math.max(this.archivedLsn, this.manifest.archived?.last_lsn ?? 0);
        this.considerBackup();
      }
      const first = waits === 0 && this.o.backup !== undefined;
      waits++;
      await this.wait(
        'archive',
        first ? this.o.config.idlePollMs * (0.5 + Math.random()) : jitter(this.o.config.idlePollMs),
      );
    }
  }

  private async resume(): Promise<number> {
    await this.idleUntilActive();
    const release = await this.o.resumes?.acquire(this.abort.signal);
    try {
      return await this.resumeFromManifest();
    } finally {
      release?.();
    }
  }

  private async resumeFromManifest(): Promise<number> {
    const stored = await readPartitionManifest(this.o.store, this.partition, { signal: this.abort.signal });
    const archived = stored?.value.archived?.last_lsn ?? 0;
    // Claim the manifest for this term first: a stale leader's sidecar is fenced from now on.
    const claimed = await updatePartitionManifest(
      this.o.store,
      this.partition,
      { node: this.o.node, term: this.term },
      {},
      {
        signal: this.abort.signal,
        current: stored,
      },
    );
    this.remember(claimed);
    this.archivedLsn = archived;
    this.readThrough = archived;
    this.readProgressAt = this.now();
    this.publishedLsn = Math.max(this.publishedLsn, stored?.value.published_lsn ?? 0);
    this.recordedPublished = stored?.value.published_lsn ?? 0;
    if (!this.o.events) this.publishedLsn = Number.MAX_SAFE_INTEGER;
    const last = stored?.value.segments.at(-1);
    if (last) this.lastCommitTime = Date.parse(last.last_committed_at);
    const commit = await readCommitLsn(this.o.partitionDir);
    if (archived < commit) {
      const lsns = await listEntryLsns(this.o.partitionDir);
      const first = lsns[0];
      if (first === undefined || first > archived + 1) {
        throw new WalArchiverError(
          ErrorCodes.CORRUPT,
          `partition ${this.partition}: the archive ends at LSN ${archived} but the WAL starts at ${first ?? 'nothing'}; ` +
            `LSNs ${archived + 1}..${(first ?? commit + 1) - 1} were pruned before they were archived`,
          { retryable: false, details: { lsn: archived + 1 } },
        );
      }
    }
    this.state = 'archiving';
    this.resolveResumed();
    await this.writePosition();
    this.considerBackup();
    this.log.info('archiving', { archivedLsn: archived, commitLsn: commit, publishedLsn: this.publishedLsn });
    return archived;
  }

  private async archiveLoop(): Promise<void> {
    let next = (await this.resume()) + 1;
    const inflight: Pending[] = [];
    let open: OpenSegment | undefined;
    const cfg = this.o.config;
    const full = (seg: OpenSegment) =>
      seg.bytes >= cfg.segmentMaxBytes || seg.writer.entries >= cfg.segmentMaxEntries;
    try {
      while (!this.aborted) {
        const commit = await readCommitLsn(this.o.partitionDir);
        this.committedLsn = commit;
        let read = 0;
        while (next <= commit && !(open && full(open)) && !this.aborted) {
          let e;
          try {
            e = await this.readEntryContent(next, commit);
            open ??= await this.openSegment(next, e.committedAt);
            await open.writer
              .append(e, e.content, digestChecker(this.partition, e))
              .catch(async (err: unknown) => {
                throw await this.classifyReadError(next, err);
              });
          } catch (err) {
            // Record the segments already uploaded (all before this entry) before giving up.
            while (inflight.length > 0 && !this.aborted) {
              const ok = await this.complete(inflight.shift()!).then(
                () => true,
                () => false,
              );
              if (!ok) break;
            }
            throw err;
          }
          this.track(open, e);
          if (this.oldestPendingTime === 0) this.oldestPendingTime = e.committedAt || this.now();
          this.readThrough = next;
          this.readProgressAt = this.now();
          next++;
          if (++read % READS_PER_YIELD === 0) {
            this.wake('publish');
            await yieldToEventLoop();
          }
        }
        if (read > 0) this.wake('publish');
        this.updateLag();
        if (open && (full(open) || this.now() - open.startedAt >= cfg.segmentMaxAgeMs)) {
          while (inflight.length >= cfg.maxInflight) await this.complete(inflight.shift()!);
          const sealing = open;
          open = undefined;
          const pending: Pending = { done: false, promise: this.archiveSegment(sealing) };
          pending.promise.then(
            () => ((pending.done = true), this.wake('archive')),
            () => ((pending.done = true), this.wake('archive')),
          );
          inflight.push(pending);
          continue;
        }
        while (inflight.length > 0 && inflight[0]!.done) await this.complete(inflight.shift()!);
        const waitMs = open
          ? Math.max(1, cfg.segmentMaxAgeMs - (this.now() - open.startedAt))
          : next <= commit
            ? 0
            : jitter(cfg.idlePollMs);
        if (waitMs > 0) {
          await this.wait('archive', waitMs);
          this.considerBackup();
        }
      }
    } finally {
      // Stopping or failing: an unsealed segment is dropped (its entries are read again);
      // uploads in flight finish (immutable objects; harmless either way).
      if (open) await open.writer.discard();
      for (const p of inflight) await p.promise.catch(() => undefined);
    }
  }

  /**
   * A segment's age counts from its first entry's commit (or from now, for an
   * entry without a commit time or one stamped ahead of this clock): an entry
   * read late, because the loop was recording the previous segment, still
   * becomes durable within the segment age of its commit.
   */
  private async openSegment(firstLsn: number, firstCommittedAt: number): Promise<OpenSegment> {
    const writer = await SegmentWriter.open(this.o.spoolDir, firstLsn, {
      level: this.o.config.zstdLevel,
      signal: this.abort.signal,
    });
    const now = this.now();
    const startedAt = firstCommittedAt > 0 ? Math.min(now, firstCommittedAt) : now;
    return { writer, startedAt, bytes: 0, firstAt: 0, lastAt: 0, maxAt: 0, digests: [] };
  }

  /** Adds an entry's size and commit time to its segment, and keeps its event for the publisher. */
  private track(seg: OpenSegment, e: CommittedEntry): void {
    seg.bytes += e.bytes;
    seg.digests.push({ lsn: e.lsn, term: e.term, contentSha256: e.contentSha256 });
    const t = e.committedAt || this.lastCommitTime;
    if (!seg.firstAt && t) seg.firstAt = t;
    if (t) seg.lastAt = t;
    if (e.committedAt > seg.maxAt) seg.maxAt = e.committedAt;
    if (e.committedAt) this.lastCommitTime = Math.max(this.lastCommitTime, e.committedAt);
    if (this.o.events && e.lsn > this.publishedLsn && this.eventCache.size < EVENT_CACHE_MAX) {
      this.eventCache.set(e.lsn, { term: e.term, bytes: e.bytes, committedAt: e.committedAt, refs: e.refs });
    }
  }

  private async readEntryContent(lsn: number, commit: number) {
    try {
      return readCommittedEntryContent(this.o.partitionDir, lsn, commit, INLINE_MAX);
    } catch (err) {
      throw await this.classifyReadError(lsn, err);
    }
  }

  /**
   * A read of entry `lsn` failed. If the entry's directory is gone now, the node
   * removed it while it was being read (a stale archiver racing a snapshot
   * install or a prune): that is a missing entry, not corruption.
   */
  private async classifyReadError(lsn: number, err: unknown): Promise<unknown> {
    if (isWalArchiverError(err, ErrorCodes.NOT_FOUND)) return this.explainMissing(lsn, err);
    if (isWalArchiverError(err, ErrorCodes.CORRUPT)) {
      const gone = await stat(entryDir(this.o.partitionDir, lsn)).then(
        () => false,
        () => true,
      );
      if (gone) return this.explainMissing(lsn, err);
    }
    return err;
  }

  /**
   * A committed entry is gone from this node's WAL. That is legitimate when
   * another leader's sidecar archived it meanwhile (this node lost leadership
   * and caught up from a snapshot): then this archiver is stale (FENCED) or
   * resumes after what is archived. Only otherwise is it a gap: CORRUPT.
   */
  private async explainMissing(lsn: number, cause: unknown): Promise<WalArchiverError> {
    const m = (await readPartitionManifest(this.o.store, this.partition, { signal: this.abort.signal }))
      ?.value;
    if (
      m?.leader &&
      (m.leader.term > this.term || (m.leader.term === this.term && m.leader.node !== this.o.node))
    ) {
      return new WalArchiverError(
        ErrorCodes.FENCED,
        `partition ${this.partition}: term ${m.leader.term} archives it now`,
        {
          cause,
          details: { lsn },
        },
      );
    }
    if ((m?.archived?.last_lsn ?? 0) >= lsn) {
      return new WalArchiverError(
        ErrorCodes.UNAVAILABLE,
        `partition ${this.partition}: LSN ${lsn} was archived meanwhile; resuming`,
        {
          cause,
          retryable: true,
          details: { lsn },
        },
      );
    }
    return new WalArchiverError(
      ErrorCodes.CORRUPT,
      `partition ${this.partition}: committed LSN ${lsn} is missing from the WAL and not archived`,
      { cause, retryable: false, details: { lsn } },
    );
  }

  /** Records a finished segment, strictly in LSN order. */
  private async complete(p: Pending): Promise<void> {
    const record = await p.promise;
    // The cursor this write records (publishing goes on meanwhile).
    const sentPublished = this.o.events ? this.publishedLsn : 0;
    const written = await retry(
      () =>
        updatePartitionManifest(
          this.o.store,
          this.partition,
          { node: this.o.node, term: this.term },
          { segments: [record], publishedLsn: sentPublished },
          { signal: this.abort.signal, current: this.stored },
        ),
      {
        attempts: 5,
        signal: this.abort.signal,
        onRetry: () => this.o.metrics.retries.inc({ partition: this.partition, operation: 'manifest' }),
      },
    );
    this.remember(written);
    this.archivedLsn = record.last_lsn;
    if (this.o.events) this.recordedPublished = Math.max(this.recordedPublished, sentPublished);
    const m = this.o.metrics;
    const l = { partition: this.partition };
    m.archivedLsn.set(l, this.archivedLsn);
    m.segments.inc(l);
    m.entries.inc(l, record.entries);
    m.bytesIn.inc(l, record.raw_bytes);
    m.bytesOut.inc(l, record.bytes);
    if (record.bytes > 0) m.compressionRatio.set(l, record.raw_bytes / record.bytes);
    this.oldestPendingTime = 0;
    this.updateLag();
    if (this.o.events) {
      this.archivedEvents.push({
        schema: 1,
        partition: this.partition,
        first_lsn: record.first_lsn,
        last_lsn: record.last_lsn,
        key: record.key,
        bytes: record.bytes,
        raw_bytes: record.raw_bytes,
        entries: record.entries,
        sha256: record.sha256,
        term: record.term,
        node: record.node,
        committed_lsn: this.committedLsn,
        first_committed_at: record.first_committed_at,
        last_committed_at: record.last_committed_at,
        archived_at: record.archived_at,
      });
      this.wake('publish');
    }
    await this.writePosition();
    // Publishing may have moved on while this write was in flight: let the
    // publisher record its cursor once the partition is idle.
    if (this.o.events && this.publishedLsn > this.recordedPublished) this.wake('publish');
    this.considerBackup();
    this.log.debug('segment archived', {
      key: record.key,
      firstLsn: record.first_lsn,
      lastLsn: record.last_lsn,
      bytes: record.bytes,
    });
  }

  private async archiveSegment(open: OpenSegment): Promise<SegmentRecord> {
    const fallback = this.now();
    const firstAt = open.firstAt || open.lastAt || fallback;
    const lastAt = open.lastAt || open.firstAt || fallback;
    const segment = await open.writer.seal();
    try {
      const key = segmentKey(this.partition, segment.firstLsn, segment.lastLsn);
      const release = await this.o.uploads.acquire(this.abort.signal);
      const started = performance.now();
      let stored: AdoptedSegment;
      try {
        stored = await retry(
          () =>
            this.upload(
              key,
              segment.path,
              segment.bytes,
              segment.sha256,
              segment.firstLsn,
              segment.lastLsn,
              segment.entries,
              open.maxAt,
              open.digests,
            ),
          {
            attempts: 4,
            signal: this.abort.signal,
            onRetry: () => this.o.metrics.retries.inc({ partition: this.partition, operation: 'upload' }),
          },
        );
      } finally {
        release();
      }
      this.o.metrics.uploadSeconds.observe((performance.now() - started) / 1000);
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
        archived_at: new Date(this.now()).toISOString(),
        term: this.term,
        node: this.o.node,
      };
    } finally {
      await dfs.rm(segment.path, { force: true });
    }
  }

  private async upload(
    key: string,
    path: string,
    size: number,
    sha256: string,
    first: number,
    last: number,
    entries: number,
    maxAt: number,
    wal: readonly WalEntryDigest[],
  ): Promise<AdoptedSegment> {
    try {
      await this.o.store.create(key, createReadStream(path), {
        signal: this.abort.signal,
        contentType: 'application/zstd',
        size,
        metadata: {
          [MetadataKeys.SHA256]: sha256,
          [MetadataKeys.FIRST_LSN]: String(first),
          [MetadataKeys.LAST_LSN]: String(last),
          [MetadataKeys.PARTITION]: this.partition,
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
    const existing = await this.o.store.head(key, { signal: this.abort.signal });
    const existingSha = existing?.metadata[MetadataKeys.SHA256];
    if (existing && existingSha === sha256) return { sha256, bytes: existing.size };
    const adopted = await checkExistingSegment({
      store: this.o.store,
      partition: this.partition,
      key,
      wal,
      scratchParent: this.o.spoolDir,
      signal: this.abort.signal,
    });
    this.log.info('segment exists with other bytes but the same entries; adopting it', {
      key,
      firstLsn: first,
      lastLsn: last,
      sha256: adopted.sha256,
      packedSha256: sha256,
    });
    return adopted;
  }

  // ---- events -----------------------------------------------------------------------

  private async publishLoop(): Promise<void> {
    const bus = this.o.events;
    if (!bus) return;
    await Promise.race([
      this.resumed,
      new Promise((r) => this.abort.signal.addEventListener('abort', r, { once: true })),
    ]);
    const backoff = new Backoff({ initialMs: 250, maxMs: 15_000 });
    let failures = 0;
    while (!this.aborted) {
      try {
        const moved = await this.publishOnce(bus);
        backoff.reset();
        failures = 0;
        // Recording the cursor saves a new leader some republishing; a failure only defers it.
        await this.recordPublishedIfIdle().catch((err: unknown) => {
          if (isWalArchiverError(err, ErrorCodes.FENCED)) throw err;
          this.log.debug('could not record the published cursor yet', { error: err });
        });
        // Entries committed but not yet read by the archive loop: look again once it may have stalled.
        // Otherwise the archive loop and commit notifications wake it: the safety-net poll can be rare.
        if (!moved)
          await this.wait(
            'publish',
            this.publishedLsn < this.publisherCommit
              ? PUBLISH_READ_STALL_MS
              : jitter(this.o.config.idlePollMs * PUBLISHER_IDLE_FACTOR),
          );
      } catch (err) {
        if (this.aborted) break;
        if (!isRetryable(err)) {
          // A corrupt entry is reported by the archive loop; events wait until it is resolved.
          this.log.error('publishing entry events stopped', { error: err });
          return;
        }
        failures++;
        this.o.metrics.retries.inc({ partition: this.partition, operation: 'publish' });
        if (failures === 1 || failures % 10 === 0)
          this.log.warn('event bus unavailable; will publish when it is back', { error: err, failures });
        await sleep(backoff.next(), this.abort.signal).catch(() => undefined);
      }
    }
  }

  /** Publishes what is pending; false when there was nothing to do. */
  private async publishOnce(bus: EventBus): Promise<boolean> {
    let moved = false;
    if (this.archivedEvents.length > 0) {
      const batch = this.archivedEvents.slice(0, EVENT_BATCH);
      await bus.publish(
        Topics.ARCHIVED,
        batch.map((value) => ({ key: this.partition, value })),
        { signal: this.abort.signal },
      );
      this.archivedEvents.splice(0, batch.length);
      moved = true;
    }
    if (this.backupEvents.length > 0) {
      const batch = this.backupEvents.slice(0, EVENT_BATCH);
      await bus.publish(
        Topics.BACKUPS,
        batch.map((value) => ({ key: this.partition, value })),
        { signal: this.abort.signal },
      );
      this.backupEvents.splice(0, batch.length);
      moved = true;
    }
    const commit = await readCommitLsn(this.o.partitionDir);
    this.publisherCommit = commit;
    const limit = this.publishLimit(commit);
    if (this.publishedLsn < limit) {
      const from = await this.firstPublishable(this.publishedLsn + 1);
      const to = Math.min(limit, from + EVENT_BATCH - 1);
      const values: Array<{ key: string; value: Record<string, unknown> }> = [];
      for (let lsn = from; lsn <= to; lsn++) {
        const e = this.eventCache.get(lsn) ?? (await this.readForEvent(lsn, commit));
        values.push({
          key: this.partition,
          value: {
            schema: 1,
            partition: this.partition,
            lsn,
            term: e.term,
            node: this.o.node,
            bytes: e.bytes,
            refs: e.refs,
            committed_at: new Date(e.committedAt || this.lastCommitTime || this.now()).toISOString(),
          },
        });
      }
      await bus.publish(Topics.ENTRIES, values, { signal: this.abort.signal });
      for (let lsn = from; lsn <= to; lsn++) this.eventCache.delete(lsn);
      this.publishedLsn = to;
      this.o.metrics.publishedLsn.set({ partition: this.partition }, to);
      await this.writePosition();
      moved = true;
    }
    this.o.metrics.eventsPending.set(
      { partition: this.partition },
      this.archivedEvents.length + Math.max(0, commit - this.publishedLsn),
    );
    return moved;
  }

  /**
   * How far entry events may go now: as far as the archive loop has read
   * (its reads are shared, so each entry is read once), or to the commit LSN
   * when the archive loop has not read further for a while (the object store
   * is slow or down) and events must not wait for it.
   */
  private publishLimit(commit: number): number {
    if (this.readThrough >= commit) {
      this.behindSince = undefined;
      return commit;
    }
    this.behindSince ??= this.now();
    const since = Math.max(this.readProgressAt, this.behindSince);
    if (this.state !== 'archiving' || this.now() - since >= PUBLISH_READ_STALL_MS) return commit;
    return this.readThrough;
  }

  /**
   * The first LSN to publish: `from`, unless the node pruned it. A node prunes
   * only through a sidecar's min(archived, published): entries gone from the
   * WAL were published by an earlier leader's sidecar, whose cursor had not
   * reached the manifest yet. Only when no cursor was ever recorded (events
   * configured after archiving began) were they never published.
   */
  private async firstPublishable(from: number): Promise<number> {
    if (this.eventCache.has(from)) return from;
    const present = await stat(entryDir(this.o.partitionDir, from)).then(
      () => true,
      () => false,
    );
    if (present) return from;
    const lsns = await listEntryLsns(this.o.partitionDir);
    const first = lsns[0];
    if (first === undefined || first <= from) return from;
    if (this.recordedPublished === 0) {
      this.log.warn('entry events for LSNs pruned before events were configured cannot be published', {
        from,
        to: first - 1,
      });
      this.o.metrics.errors.inc({ partition: this.partition, kind: 'events_skipped' });
    } else {
      this.log.info(
        'entry events already published by an earlier leader\u2019s sidecar; continuing after them',
        {
          from,
          to: first - 1,
        },
      );
    }
    for (const lsn of this.eventCache.keys()) if (lsn < first) this.eventCache.delete(lsn);
    return first;
  }

  private async readForEvent(lsn: number, commit: number): Promise<EntryEventSource> {
    return readCommittedEntry(this.o.partitionDir, lsn, commit).catch((err: unknown) => {
      if (!isWalArchiverError(err, ErrorCodes.NOT_FOUND)) throw err;
      throw new WalArchiverError(
        ErrorCodes.UNAVAILABLE,
        `LSN ${lsn} left the WAL while publishing; retrying`,
        {
          cause: err,
          retryable: true,
        },
      );
    });
  }

  // ---- base backups ---------------------------------------------------------------------

  /** Asks for a base backup at the next decision (`wal-archiver backup` goes through the node instead). */
  requestBackup(): void {
    this.manualBackup = true;
    this.considerBackup();
  }

  /** Time of the last base backup and WAL archived since, for metrics and status. */
  backupState():
    { lastBackupAt: number | undefined; walBytesSince: number; walEntriesSince: number } | undefined {
    if (!this.manifest) return undefined;
    const st = policyStateFromManifest(this.manifest, {
      leading: true,
      backupRunning: false,
      manualRequested: false,
    });
    return {
      lastBackupAt: st.lastBackupAt,
      walBytesSince: st.walBytesSinceBackup,
      walEntriesSince: st.walEntriesSinceBackup,
    };
  }

  /**
   * Runs the policy; when it says so and a node-wide slot is free, takes a
   * base backup beside archiving (never blocking it). A failed attempt leaves
   * nothing that looks complete and is retried by the policy later.
   */
  private considerBackup(): void {
    const b = this.o.backup;
    if (!b || this.backupRun || this.aborted || this.state !== 'archiving') return;
    const state = policyStateFromManifest(this.manifest, {
      leading: true,
      backupRunning: false,
      manualRequested: this.manualBackup,
      ...(this.backupFailedAt === undefined ? {} : { lastFailureAt: this.backupFailedAt }),
    });
    const d = decide(state, this.now(), b.thresholds);
    this.log.debug('base backup policy', {
      decision: d,
      walBytes: state.walBytesSinceBackup,
      archivedLsn: state.archivedLsn,
    });
    if (d.action !== 'backup') return;
    const release = b.slots.tryAcquire(this.partition);
    if (!release) return;
    const trigger = d.reason;
    this.backupRun = (async () => {
      const started = performance.now();
      try {
        const result = await takeBaseBackup({
          store: this.o.store,
          nodeUrl: b.nodeUrl,
          partition: this.partition,
          node: this.o.node,
          term: this.term,
          trigger,
          ...(b.retention ? { retention: b.retention } : {}),
          signal: this.abort.signal,
          logger: this.log,
          spoolDir: b.spoolDir,
          ...(b.zstdLevel === undefined ? {} : { zstdLevel: b.zstdLevel }),
        });
        this.manifest = result.manifest;
        // The backup (and retention) wrote the manifest: the next write reads it first.
        this.stored = undefined;
        this.manualBackup = false;
        this.backupFailedAt = undefined;
        const l = { partition: this.partition, reason: trigger };
        this.o.metrics.backups.inc(l);
        this.o.metrics.backupBytes.inc({ partition: this.partition }, result.record.bytes);
        this.o.metrics.backupSeconds.observe((performance.now() - started) / 1000);
        // takeBaseBackup logged it (with key, LSN, trigger, sizes and duration): once is enough.
        if (this.o.events) {
          this.backupEvents.push(result.event as unknown as Record<string, unknown>);
          this.wake('publish');
        }
        if (b.keep) {
          const plan = planRetention(result.manifest, b.keep, new Date(this.now()));
          const outcome = await applyRetention(
            this.o.store,
            this.partition,
            { node: this.o.node, term: this.term },
            plan,
            {
              logger: this.log,
            },
          );
          if (outcome.locked.length > 0)
            this.log.info('retention kept objects still under lock', { locked: outcome.locked.length });
        }
      } catch (err) {
        if (this.aborted) return;
        if (isWalArchiverError(err, ErrorCodes.FENCED)) {
          this.log.warn('base backup abandoned: a newer leader owns the partition', { error: err });
          return;
        }
        this.backupFailedAt = this.now();
        this.o.metrics.errors.inc({ partition: this.partition, kind: 'backup' });
        this.log.warn('base backup failed; the policy will try again later', { error: err, trigger });
      } finally {
        release();
        this.backupRun = undefined;
      }
    })();
  }

  /**
   * Segments carry the published cursor into the manifest; when publishing
   * catches up on a partition with nothing left to archive (after a bus
   * outage), record it on its own so a new leader does not republish as much.
   */
  private async recordPublishedIfIdle(): Promise<void> {
    if (this.publishedLsn <= this.recordedPublished || this.archivedLsn < this.committedLsn) return;
    const cursor = this.publishedLsn;
    const written = await updatePartitionManifest(
      this.o.store,
      this.partition,
      { node: this.o.node, term: this.term },
      { publishedLsn: cursor },
      { signal: this.abort.signal, current: this.stored },
    );
    this.remember(written);
    this.recordedPublished = Math.max(this.recordedPublished, cursor);
  }

  // ---- shared ---------------------------------------------------------------------------

  /** Keeps the manifest as written (or found unchanged), so the next write needs no read first. */
  private remember(w: { manifest: PartitionManifest; etag: string | undefined }): void {
    this.manifest = w.manifest;
    this.stored = w.etag === undefined ? undefined : { value: w.manifest, etag: w.etag };
  }

  /** `archiver/position`: what the node may prune through — archived and (with an event bus) published. */
  private async writePosition(): Promise<void> {
    const position = Math.min(this.archivedLsn, this.publishedLsn);
    if (position === this.positionWritten) return;
    if (this.positionWritten === -1) {
      const current = await readArchiverPosition(this.o.partitionDir).catch(() => undefined);
      // Never move it back: an older value would only make the node keep more.
      if (current !== undefined && current > position) {
        this.positionWritten = current;
        return;
      }
    }
    await writeArchiverPosition(this.o.partitionDir, position);
    this.positionWritten = position;
  }

  private updateLag(): void {
    const l = { partition: this.partition };
    this.o.metrics.committedLsn.set(l, this.committedLsn);
    this.o.metrics.lagEntries.set(l, Math.max(0, this.committedLsn - this.archivedLsn));
    this.o.metrics.lagSeconds.set(
      l,
      this.oldestPendingTime ? Math.max(0, (this.now() - this.oldestPendingTime) / 1000) : 0,
    );
  }

  /**
   * Wakes a loop; a wake-up while it is busy is remembered, so the next
   * `wait` returns at once (a change noticed mid-iteration is never lost).
   */
  private wake(which: 'archive' | 'publish'): void {
    const waiter = which === 'archive' ? this.wakeArchiver : this.wakePublisher;
    if (waiter) waiter();
    else this.woken.add(which);
  }

  private wait(which: 'archive' | 'publish', ms: number): Promise<void> {
    if (this.woken.delete(which) || this.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        if (which === 'archive') this.wakeArchiver = undefined;
        else this.wakePublisher = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      if (which === 'archive') this.wakeArchiver = done;
      else this.wakePublisher = done;
    });
  }
}

/** `ms` ± 25 %, so thousands of idle partitions do not all look at their hard state in the same instant. */
function jitter(ms: number): number {
  return ms * (0.75 + Math.random() / 2);
}

function errorKind(err: unknown): string {
  if (isSpoolError(err)) return 'spool';
  return isWalArchiverError(err) ? err.code.toLowerCase() : 'internal';
}

/** Checks an entry's content against the digest in its RAFT record while it is packed. */
function digestChecker(partition: string, e: CommittedEntry): SegmentInspector {
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
          {
            retryable: false,
            details: { lsn: entry.lsn },
          },
        );
      }
    },
  };
}

import { createReadStream } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
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
import { takeBaseBackup, type BackupRetentionConfig } from './base-backup.js';
import { applyRetention, planRetention, type RetentionPolicy } from './retention.js';
import { Backoff, retry, sleep } from '../retry.js';
import { MetadataKeys, type ObjectStore } from '../store/object-store.js';
import { readCommitLsn, readCommittedEntry, type CommittedEntry } from '../tail/committed.js';
import {
  entryDir,
  listEntryLsns,
  MANIFEST_FILE,
  RAFT_FILE,
  readArchiverPosition,
  writeArchiverPosition,
} from '../wal/entry.js';
import type { ArchiverMetrics } from './metrics.js';
import { spoolSegment, type SegmentEntry, type SegmentInspector } from './segment.js';
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
  config: ArchiverConfig;
  metrics: ArchiverMetrics;
  logger: Logger;
  now?: () => number;
}

export type ArchiverState = 'starting' | 'archiving' | 'fenced' | 'failed' | 'stopped';

interface Pending {
  done: boolean;
  promise: Promise<SegmentRecord>;
  entries: CommittedEntry[];
}

const EVENT_BATCH = 500;

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
    this.wakeArchiver?.();
    this.wakePublisher?.();
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

  private async resume(): Promise<number> {
    const stored = await readPartitionManifest(this.o.store, this.partition, { signal: this.abort.signal });
    const archived = stored?.value.archived?.last_lsn ?? 0;
    // Claim the manifest for this term first: a stale leader's sidecar is fenced from now on.
    await updatePartitionManifest(
      this.o.store,
      this.partition,
      { node: this.o.node, term: this.term },
      {},
      {
        signal: this.abort.signal,
      },
    );
    this.archivedLsn = archived;
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
    let batch: CommittedEntry[] = [];
    let batchBytes = 0;
    let batchStart = 0;
    const cfg = this.o.config;
    while (!this.aborted) {
      const commit = await readCommitLsn(this.o.partitionDir);
      this.committedLsn = commit;
      while (next <= commit && batchBytes < cfg.segmentMaxBytes && batch.length < cfg.segmentMaxEntries) {
        const e = await this.readEntry(next, commit);
        if (batch.length === 0) batchStart = this.now();
        if (this.oldestPendingTime === 0) this.oldestPendingTime = e.committedAt || this.now();
        batch.push(e);
        batchBytes += e.bytes;
        next++;
      }
      this.updateLag();
      const full = batchBytes >= cfg.segmentMaxBytes || batch.length >= cfg.segmentMaxEntries;
      const aged = batch.length > 0 && this.now() - batchStart >= cfg.segmentMaxAgeMs;
      if (full || aged) {
        while (inflight.length >= cfg.maxInflight) await this.complete(inflight.shift()!);
        const entries = batch;
        const pending: Pending = { done: false, entries, promise: this.archiveSegment(entries) };
        pending.promise.then(
          () => ((pending.done = true), this.wakeArchiver?.()),
          () => ((pending.done = true), this.wakeArchiver?.()),
        );
        inflight.push(pending);
        batch = [];
        batchBytes = 0;
        continue;
      }
      while (inflight.length > 0 && inflight[0]!.done) await this.complete(inflight.shift()!);
      const waitMs =
        batch.length > 0
          ? Math.max(1, cfg.segmentMaxAgeMs - (this.now() - batchStart))
          : next <= commit
            ? 0
            : cfg.idlePollMs;
      if (waitMs > 0) {
        await this.wait('archive', waitMs);
        this.considerBackup();
      }
    }
    // Stopping: let uploads in flight finish recording (immutable objects; harmless either way).
    for (const p of inflight) await p.promise.catch(() => undefined);
  }

  private async readEntry(lsn: number, commit: number): Promise<CommittedEntry> {
    try {
      return await readCommittedEntry(this.o.partitionDir, lsn, commit);
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
          { signal: this.abort.signal },
        ),
      {
        attempts: 5,
        signal: this.abort.signal,
        onRetry: () => this.o.metrics.retries.inc({ partition: this.partition, operation: 'manifest' }),
      },
    );
    this.manifest = written.manifest;
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
      this.wakePublisher?.();
    }
    await this.writePosition();
    // Publishing may have moved on while this write was in flight: let the
    // publisher record its cursor once the partition is idle.
    if (this.o.events && this.publishedLsn > this.recordedPublished) this.wakePublisher?.();
    this.considerBackup();
    this.log.debug('segment archived', {
      key: record.key,
      firstLsn: record.first_lsn,
      lastLsn: record.last_lsn,
      bytes: record.bytes,
    });
  }

  private commitTimes(entries: readonly CommittedEntry[]): [number, number] {
    let first = 0;
    let last = 0;
    for (const e of entries) {
      const t = e.committedAt || this.lastCommitTime;
      if (!first && t) first = t;
      if (t) last = t;
      if (e.committedAt) this.lastCommitTime = Math.max(this.lastCommitTime, e.committedAt);
    }
    const fallback = this.now();
    return [first || last || fallback, last || first || fallback];
  }

  private async archiveSegment(entries: CommittedEntry[]): Promise<SegmentRecord> {
    const [firstAt, lastAt] = this.commitTimes(entries);
    const segment = await spoolSegment(
      entries.map<SegmentEntry>((e) => ({ lsn: e.lsn, name: e.name, dir: e.dir, files: e.files })),
      this.o.spoolDir,
      {
        level: this.o.config.zstdLevel,
        signal: this.abort.signal,
        inspect: digestChecker(this.partition, entries),
      },
    ).catch(async (err: unknown) => {
      const lsn = isWalArchiverError(err) ? err.details['lsn'] : undefined;
      throw typeof lsn === 'number' ? await this.classifyReadError(lsn, err) : err;
    });
    try {
      const key = segmentKey(this.partition, segment.firstLsn, segment.lastLsn);
      const release = await this.o.uploads.acquire(this.abort.signal);
      const started = performance.now();
      try {
        await retry(
          () =>
            this.upload(
              key,
              segment.path,
              segment.bytes,
              segment.sha256,
              segment.firstLsn,
              segment.lastLsn,
              segment.entries,
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
        bytes: segment.bytes,
        raw_bytes: segment.rawBytes,
        sha256: segment.sha256,
        first_committed_at: new Date(firstAt).toISOString(),
        last_committed_at: new Date(lastAt).toISOString(),
        archived_at: new Date(this.now()).toISOString(),
        term: this.term,
        node: this.o.node,
      };
    } finally {
      await rm(segment.path, { force: true });
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
  ): Promise<void> {
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
        },
      });
    } catch (err) {
      if (!isWalArchiverError(err, ErrorCodes.ALREADY_EXISTS)) throw err;
      // Written before: by this sidecar before a restart, or by another leader's sidecar.
      // Segments are deterministic, so the same committed entries give the same bytes.
      const existing = await this.o.store.head(key, { signal: this.abort.signal });
      if (existing?.metadata[MetadataKeys.SHA256] !== sha256) {
        throw new WalArchiverError(
          ErrorCodes.CORRUPT,
          `segment ${key} exists with SHA-256 ${existing?.metadata[MetadataKeys.SHA256] ?? 'unknown'}, but the committed entries give ${sha256}`,
          { retryable: false, details: { key, lsn: first } },
        );
      }
    }
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
        await this.recordPublishedIfIdle();
        if (!moved) await this.wait('publish', this.o.config.idlePollMs);
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
    if (this.publishedLsn < commit) {
      let from = this.publishedLsn + 1;
      const lsns = await listEntryLsns(this.o.partitionDir);
      if (lsns.length > 0 && lsns[0]! > from) {
        // A node prunes only through a sidecar's min(archived, published): entries
        // gone from the WAL were published by an earlier leader's sidecar, whose
        // cursor had not reached the manifest yet. Only when no cursor was ever
        // recorded (events configured after archiving began) were they never published.
        if (this.recordedPublished === 0) {
          this.log.warn('entry events for LSNs pruned before events were configured cannot be published', {
            from,
            to: lsns[0]! - 1,
          });
          this.o.metrics.errors.inc({ partition: this.partition, kind: 'events_skipped' });
        } else {
          this.log.info(
            'entry events already published by an earlier leader\u2019s sidecar; continuing after them',
            {
              from,
              to: lsns[0]! - 1,
            },
          );
        }
        from = lsns[0]!;
      }
      const to = Math.min(commit, from + EVENT_BATCH - 1);
      const values: Array<{ key: string; value: Record<string, unknown> }> = [];
      for (let lsn = from; lsn <= to; lsn++) {
        const e = await readCommittedEntry(this.o.partitionDir, lsn, commit).catch((err: unknown) => {
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
        this.manualBackup = false;
        this.backupFailedAt = undefined;
        const l = { partition: this.partition, reason: trigger };
        this.o.metrics.backups.inc(l);
        this.o.metrics.backupBytes.inc({ partition: this.partition }, result.record.bytes);
        this.o.metrics.backupSeconds.observe((performance.now() - started) / 1000);
        this.log.info('base backup taken', {
          key: result.record.key,
          lsn: result.record.lsn,
          trigger,
          bytes: result.record.bytes,
        });
        if (this.o.events) {
          this.backupEvents.push(result.event as unknown as Record<string, unknown>);
          this.wakePublisher?.();
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
    await updatePartitionManifest(
      this.o.store,
      this.partition,
      { node: this.o.node, term: this.term },
      { publishedLsn: cursor },
      { signal: this.abort.signal },
    );
    this.recordedPublished = Math.max(this.recordedPublished, cursor);
  }

  // ---- shared ---------------------------------------------------------------------------

  /** `archiver/position`: what the node may prune through — archived and (with an event bus) published. */
  private async writePosition(): Promise<void> {
    const position = Math.min(this.archivedLsn, this.publishedLsn);
    if (position === this.positionWritten) return;
    const current = await readArchiverPosition(this.o.partitionDir).catch(() => undefined);
    // Never move it back: an older value would only make the node keep more.
    if (current !== undefined && current > position && this.positionWritten === -1) {
      this.positionWritten = current;
      return;
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

  private wait(which: 'archive' | 'publish', ms: number): Promise<void> {
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
      if (this.aborted) done();
    });
  }
}

function errorKind(err: unknown): string {
  return isWalArchiverError(err) ? err.code.toLowerCase() : 'internal';
}

/** Checks each entry's content against the digest in its RAFT record while the segment is packed. */
function digestChecker(partition: string, entries: readonly CommittedEntry[]): SegmentInspector {
  const byLsn = new Map(entries.map((e) => [e.lsn, e]));
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
      const expected = byLsn.get(entry.lsn)?.contentSha256;
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

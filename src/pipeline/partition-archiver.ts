import { backupProgress, BackupTrigger } from '../backup/trigger.js';
import type { BaseBackupResult } from '../backup/take.js';
import { archiveLoop, type Pending } from './archive-loop.js';
import { Committer } from './committer.js';
import { PartitionContext } from './context.js';
import { EntryPublisher } from './entry-publisher.js';
import { EventOutbox } from './event-outbox.js';
import { reportSegment } from './metrics.js';
import type { ArchiverState, PartitionArchiverOptions } from './options.js';
import { resume } from './resume.js';
import { supervise } from './supervisor.js';

export { DEFAULT_ARCHIVER_CONFIG } from './options.js';
export type { ArchiverConfig, PartitionArchiverOptions } from './options.js';

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
 * This class is the wiring between the stages, each in its own file:
 * - resume.ts: where to start (idle partitions touch no object store);
 * - archive-loop.ts: read → segment → upload (segment-upload.ts, wal-read.ts);
 * - committer.ts: the ordered manifest writes and `archiver/position`;
 * - entry-publisher.ts: `wal.entries` behind its own cursor, and the
 *   outbox's `wal.archived` / `wal.backups` (event-outbox.ts), on a second
 *   loop, so a bus that is down never holds archiving back;
 * - supervisor.ts: retry, FENCED, failed;
 * - src/backup/trigger.ts: base backups and retention when the policy says so.
 *
 * Errors: transient ones (store or bus down) retry with capped backoff, per
 * partition; FENCED (a newer leader took over) stops quietly; CORRUPT stops
 * this partition with a metric and a log line naming the LSN.
 */
export class PartitionArchiver {
  readonly partition: string;
  readonly term: number;
  private readonly ctx: PartitionContext;
  private readonly committer: Committer;
  private readonly outbox: EventOutbox;
  private readonly publisher: EntryPublisher | undefined;
  private readonly backups: BackupTrigger | undefined;
  private loops: Promise<void> | undefined;

  constructor(private readonly o: PartitionArchiverOptions) {
    this.partition = o.partition;
    this.term = o.term;
    const ctx = (this.ctx = new PartitionContext(o));
    this.committer = new Committer(ctx);
    this.outbox = new EventOutbox(o.partition);
    this.publisher = o.events && new EntryPublisher(ctx, o.events, this.committer, this.outbox);
    this.backups =
      o.backup &&
      new BackupTrigger({
        backup: o.backup,
        store: o.store,
        partition: o.partition,
        node: o.node,
        term: o.term,
        timeline: () => ctx.timeline,
        signal: ctx.signal,
        metrics: o.metrics,
        logger: ctx.log,
        now: ctx.now,
        onTaken: (result) => this.backupTaken(result),
      });
  }

  get state(): ArchiverState {
    return this.ctx.state;
  }
  get error(): string | undefined {
    return this.ctx.error;
  }
  /** The archive timeline it writes to (1 until it resumed). */
  get timeline(): number {
    return this.ctx.timeline;
  }
  get archivedLsn(): number {
    return this.ctx.archivedLsn;
  }
  get committedLsn(): number {
    return this.ctx.committedLsn;
  }
  get publishedLsn(): number {
    return this.ctx.publishedLsn;
  }

  start(): void {
    this.o.metrics.leading.set({ partition: this.partition }, 1);
    const ctx = this.ctx;
    const archiving = supervise(ctx, 'archive', () =>
      archiveLoop(ctx, {
        resume: () =>
          resume(
            ctx,
            this.committer,
            () => this.considerBackup(),
            (result) => this.backupTaken(result),
          ),
        complete: (p) => this.complete(p),
        read: (e) => this.publisher?.keep(e),
        waited: () => this.considerBackup(),
      }),
    );
    this.loops = Promise.all([archiving, this.publisher?.run()]).then(() => undefined);
  }

  /** The hard state changed: look for newly committed entries now. */
  notify(): void {
    this.ctx.wake('archive');
    this.ctx.wake('publish');
  }

  async stop(): Promise<void> {
    this.ctx.stop();
    this.notify();
    await this.loops;
    await this.backups?.settled();
    if (this.ctx.state === 'archiving' || this.ctx.state === 'starting') this.ctx.state = 'stopped';
    this.o.metrics.leading.set({ partition: this.partition }, 0);
  }

  /** Resolves once the position to resume from is known (for tests and start-up ordering). */
  whenResumed(): Promise<void> {
    return this.ctx.resumed;
  }

  /** Asks for a base backup at the next decision (`wal-archiver backup` goes through the node instead). */
  requestBackup(): void {
    this.backups?.request();
    this.considerBackup();
  }

  /** Time of the last base backup and WAL archived since, for metrics and status. */
  backupState(): ReturnType<typeof backupProgress> {
    return backupProgress(this.committer.manifest);
  }

  /** An uploaded segment, in LSN order: manifest, metrics, `wal.archived`, position, backup policy. */
  private async complete(p: Pending): Promise<void> {
    const ctx = this.ctx;
    const record = await p.promise;
    await this.committer.recordSegment(record);
    reportSegment(this.o.metrics, ctx.labels, record);
    ctx.oldestPendingTime = 0;
    ctx.updateLag();
    if (this.publisher) {
      this.outbox.archived(record, ctx.committedLsn, ctx.timeline);
      ctx.wake('publish');
    }
    await this.committer.writePosition();
    // Publishing may have moved on while this write was in flight: let the
    // publisher record its cursor once the partition is idle.
    if (this.publisher && ctx.publishedLsn > this.committer.recordedPublished) ctx.wake('publish');
    this.considerBackup();
    ctx.log.debug('segment archived', {
      key: record.key,
      firstLsn: record.first_lsn,
      lastLsn: record.last_lsn,
      bytes: record.bytes,
    });
  }

  private considerBackup(): void {
    if (this.ctx.aborted || this.ctx.state !== 'archiving') return;
    this.backups?.consider(this.committer.manifest);
  }

  private backupTaken(result: BaseBackupResult): void {
    this.committer.backupWrote(result.manifest);
    if (this.publisher) {
      this.outbox.backup(result.event);
      this.ctx.wake('publish');
    }
  }
}
